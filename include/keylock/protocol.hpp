// keylock wire protocol v1: the request and reply types every peer speaks.
//
// This header is the contract shared by keylockd and its clients. It holds plain data only
// (no JSON library, no sockets); bytes <-> these types is codec.hpp's job. The normative
// description of every field is proto/PROTOCOL.md; the machine-readable op table is
// proto/ops.json. Change both, compatibly, before changing anything here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace keylock {

// The protocol version a server announces in its `hello` reply.
inline constexpr int protocol_version = 1;

// Default TCP port of keylockd's lock protocol.
inline constexpr std::uint16_t default_port = 7400;

// Every error code the daemon can answer with. Enumerators are spelled exactly as on the wire.
enum class errc : std::uint8_t {
  bad_request,      // malformed JSON, wrong field types, out-of-range values; connection stays
  unknown_op,       // `op` names no operation; connection stays
  frame_too_large,  // a frame exceeded max_frame_bytes; the server closes after replying
  unauthenticated,  // auth required and missing or wrong; the server closes after replying
  timeout,          // acquire not granted within wait_ms (0 = immediately)
  not_held,         // release/extend of a lease that is not (or no longer) held
  cancelled,        // a waiting acquire was cancelled by the `cancel` op
  not_found,        // `cancel` named no pending acquire of this connection
  conflict,         // acquire with a limit different from the live key's limit
  limit_exceeded,   // a server limit (connections, keys, waiters, pending) was hit
  shutting_down,    // the server is stopping; waiting acquires get this
  unavailable,      // the server cannot grant now (fencing state not durable); retry later
  denied,           // the user lacks the permission for this op on a key it names (ACL)
};

// The number of error codes (the last enumerator's value + 1), for tables indexed by errc.
inline constexpr std::size_t errc_count = static_cast<std::size_t>(errc::denied) + 1;

// The wire spelling of `code` ("bad_request", ...).
std::string_view to_string(errc code) noexcept;

// The code spelled `name` on the wire, or nullopt for a string that names no code (a newer
// server's code: clients treat it as a generic failure).
std::optional<errc> errc_from_string(std::string_view name) noexcept;

// How a lease holds its key(s): exclusive (the default; with limit N, up to N exclusive holders)
// or shared (read-write lock: shared holders coexist; limit must be 1).
enum class lock_mode : std::uint8_t { exclusive, shared };

std::string_view to_string(lock_mode mode) noexcept;
std::optional<lock_mode> lock_mode_from_string(std::string_view name) noexcept;

// Most keys one acquire may name in `keys`.
inline constexpr std::size_t max_keys_per_request = 64;

// Operations of protocol v1. `unknown` stands for any op string this build does not know.
enum class op : std::uint8_t {
  hello,
  ping,
  acquire,
  release,
  extend,
  cancel,
  inspect,
  stats,
  top,
  unknown,
};

std::string_view to_string(op kind) noexcept;
op op_from_string(std::string_view name) noexcept;  // op::unknown when not known

// The request fields a frame may carry, as bits of request::fields. One bit per field so that
// "present" is tracked without optional<> overhead and the dispatcher can check the required
// and allowed sets of an op with two mask tests.
enum class field : std::uint16_t {
  id = 1u << 0,
  key = 1u << 1,
  token = 1u << 2,
  ttl_ms = 1u << 3,
  wait_ms = 1u << 4,
  limit = 1u << 5,
  target = 1u << 6,
  auth = 1u << 7,
  client = 1u << 8,
  n = 1u << 9,
  noreply = 1u << 10,
  keys = 1u << 11,
  mode = 1u << 12,
  user = 1u << 13,
};

constexpr std::uint16_t operator|(field a, field b) noexcept {
  return static_cast<std::uint16_t>(static_cast<std::uint16_t>(a) | static_cast<std::uint16_t>(b));
}
constexpr std::uint16_t operator|(std::uint16_t a, field b) noexcept {
  return static_cast<std::uint16_t>(a | static_cast<std::uint16_t>(b));
}

// One decoded request frame. Only the fields whose bit is set in `fields` are meaningful;
// the others keep their zero values. Unknown JSON members are ignored by the decoder (a newer
// client may send more), so the presence of a field is all the decoder promises: ranges and
// which fields an op needs are checked by the server's dispatcher.
struct request {
  op kind = op::unknown;
  std::uint16_t fields = 0;

  std::uint64_t id = 0;       // echoed in the reply
  std::string key;            // acquire, release, extend, inspect
  std::vector<std::string> keys;  // acquire, release, extend: several keys, in place of `key`
  lock_mode mode = lock_mode::exclusive;  // acquire
  std::uint64_t token = 0;    // release, extend
  std::uint64_t ttl_ms = 0;   // acquire, extend
  std::uint64_t wait_ms = 0;  // acquire; absent = wait until granted
  std::uint64_t limit = 0;    // acquire
  std::uint64_t target = 0;   // cancel: id of the pending acquire to cancel
  std::uint64_t n = 0;        // top: how many keys and leases to list
  std::string auth;           // hello
  std::string client;         // hello: a name for people (shown by inspect)
  std::string user;           // hello: log in as this user of the users_file
  std::string op_name;        // the op string as sent when kind == op::unknown (<= 64 bytes)
  bool noreply = false;       // release: do not answer (PROTOCOL.md "noreply")

  bool has(field f) const noexcept { return (fields & static_cast<std::uint16_t>(f)) != 0; }
  void set(field f) noexcept { fields = fields | f; }
};

// A holder of a key as reported by `inspect`.
struct holder_info {
  std::uint64_t token = 0;
  std::uint64_t ttl_ms_left = 0;
  std::string client;  // name given at hello; empty when none (optional on the wire)
  std::string peer;    // "ip:port" of the holder's connection; empty when unknown
  lock_mode mode = lock_mode::exclusive;
  std::vector<std::string> keys;  // every key of the lease when it holds several; else empty
};

// The `stats` reply body.
struct stats_info {
  std::uint64_t connections = 0;
  std::uint64_t keys = 0;
  std::uint64_t held = 0;
  std::uint64_t waiting = 0;
  std::uint64_t acquires = 0;
  std::uint64_t grants = 0;
  std::uint64_t releases = 0;
  std::uint64_t timeouts = 0;
  std::uint64_t expirations = 0;
  std::uint64_t uptime_ms = 0;
  std::uint64_t grants_shared = 0;  // of `grants`, those in shared mode (added last: see codec)
};

// One key of the `top` reply's `queues` list.
// Cluster mode: where a key's global right is (PROTOCOL.md "Cluster mode").
struct cluster_view {
  std::string holder;                // node_name of the daemon holding the right; empty: none
  std::uint64_t daemons_waiting = 0; // other daemons queued in etcd for the right
};

struct queue_info {
  std::string key;
  std::uint64_t waiters = 0;
  std::uint64_t held = 0;
  std::uint64_t limit = 0;
  std::optional<cluster_view> cluster;  // cluster mode only
};

// One lease of the `top` reply's `oldest` list.
struct lease_info {
  std::string key;
  std::uint64_t token = 0;
  std::uint64_t held_ms = 0;
  std::uint64_t ttl_ms_left = 0;
  std::string client;  // empty when unknown (optional on the wire)
  std::string peer;    // empty when unknown (optional on the wire)
};

// One frame from the server: a reply to a request (ok or error) or a pushed event.
//
// Replies are a union of every op's body: the encoder writes the members that are set, in a
// fixed order; the decoder sets the members it finds and ignores unknown ones. A reply to a
// request that carried no usable id has no id.
struct reply {
  enum class kind : std::uint8_t { ok, error, event };
  kind type = kind::ok;
  std::optional<std::uint64_t> id;

  // kind::error
  errc code = errc::bad_request;
  std::string code_name;  // decoder only: the code as received (for codes newer than this build)
  std::string message;

  // kind::event: event name ("expired") with key and token; `keys` lists every key of a lease
  // over several keys (empty otherwise).
  std::string event;
  std::string key;
  std::vector<std::string> keys;

  // ok bodies; each member present only in the replies that carry it.
  std::optional<std::uint64_t> token;   // acquire, expired event
  std::optional<std::uint64_t> ttl_ms;  // acquire, extend
  std::string server;                   // hello
  std::string version;                  // hello
  std::optional<int> protocol;          // hello
  std::optional<bool> held;             // inspect
  std::vector<holder_info> holders;     // inspect (written whenever `held` is set)
  std::optional<std::uint64_t> waiters; // inspect
  std::optional<std::uint64_t> limit;   // inspect
  std::optional<cluster_view> cluster;  // inspect, in cluster mode
  std::optional<stats_info> stats;      // stats, top (its members are written flat)
  std::optional<std::vector<queue_info>> queues;  // top
  std::optional<std::vector<lease_info>> oldest;  // top
};

}  // namespace keylock
