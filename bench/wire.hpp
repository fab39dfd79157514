// keylock-bench's wire helpers: target URLs, hand-formatted keylock request frames, a minimal
// scan of keylock reply frames, and RESP command formatting for Redis.
//
// The load generator must not be the bottleneck, so its hot path does not go through the
// project's JSON codec: requests are formatted by hand (std::to_chars, no allocation once the
// output string has grown) and replies are scanned for the few members the bench needs.
// tests/bench checks both against the real codec (keylock_proto). Pure functions, no sockets.
#pragma once

#include "keylock/protocol.hpp"

#include <array>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace keylock::bench {

enum class target_kind : std::uint8_t { keylock, redis, etcd };

std::string_view to_string(target_kind kind) noexcept;  // "keylock", "redis", "etcd"

struct endpoint {
  std::string host;
  std::uint16_t port = 0;
};

// A server to load: `keylock://HOST:PORT`, `redis://HOST:PORT` or `etcd://HOST:PORT` (HOST may
// be a bracketed IPv6 address); `keylocks://` and `rediss://` are the same over TLS. keylock and
// etcd targets may list several servers, `keylock://H1:P1,H2:P2,...`: the daemons of one cluster
// (clients are spread over them, client i on server i mod n), or the members of one etcd cluster
// (each client's channel balances over all of them).
struct target {
  target_kind kind = target_kind::keylock;
  std::string host;        // of the first server
  std::uint16_t port = 0;  // of the first server
  std::vector<endpoint> endpoints;  // every server, in order (one for redis)
  std::string url;  // as given
  bool tls = false;  // keylocks:// or rediss:// (the scheme's 's')
};

// Parses a target URL. On failure returns nullopt and sets `error`: unknown scheme, missing or
// malformed HOST:PORT, port 0 or above 65535, anything after the port, a list for redis.
std::optional<target> parse_target(std::string_view url, std::string& error);

// The target client `client` talks to: its server is endpoints[client % n].
target client_target(const target& t, std::uint32_t client);
// Which server (index into endpoints) client `client` talks to.
inline std::size_t server_of(const target& t, std::uint32_t client) {
  return t.endpoints.empty() ? 0 : client % t.endpoints.size();
}
// "H1:P1,H2:P2" (IPv6 hosts in brackets), as gRPC's ipv4: targets take it.
std::string endpoint_list(const target& t);

// Jain's fairness index of `counts`: (sum x)^2 / (n * sum x^2), 1 when all are equal, 1/n when
// one has everything; 1 for no counts or all zero.
double jain_index(std::span<const std::uint64_t> counts) noexcept;

// ---------------------------------------------------------------------------------------------
// keylock frames (PROTOCOL.md), each appended with its '\n'. Keys are written as JSON strings
// (escaped where JSON requires).

void append_ping(std::string& out, std::uint64_t id);
// `wait_ms` nullopt: wait until granted (no wait_ms member); 0: try once. `limit` 1 is written
// too (explicit is cheap and keeps the frame the same shape for every key).
// `mode` shared adds "mode":"shared" (exclusive, the default, is not written: the frame keeps
// its old shape); shared needs limit 1 (PROTOCOL.md, Modes).
void append_acquire(std::string& out, std::uint64_t id, std::string_view key, std::uint32_t ttl_ms,
                    std::optional<std::uint32_t> wait_ms, std::uint32_t limit,
                    keylock::lock_mode mode = keylock::lock_mode::exclusive);
// An acquire of several keys at once, all or nothing: "keys":[...] in place of "key" (1 to 64
// distinct keys; PROTOCOL.md, Several keys at once). Such a lease is released whole by naming
// any one of its keys as `key` (append_release with keys.front()).
void append_acquire_set(std::string& out, std::uint64_t id, std::span<const std::string> keys,
                        std::uint32_t ttl_ms, std::optional<std::uint32_t> wait_ms,
                        std::uint32_t limit,
                        keylock::lock_mode mode = keylock::lock_mode::exclusive);
// `noreply` adds "noreply":true: the server answers nothing unless the frame is invalid
// (PROTOCOL.md, release).
void append_release(std::string& out, std::uint64_t id, std::string_view key, std::uint64_t token,
                    bool noreply = false);

// What the bench needs of a keylock reply or event frame.
struct reply_view {
  bool is_event = false;  // a pushed event ({"event":...}): no id, not an answer
  bool ok = false;
  bool has_id = false;
  std::uint64_t id = 0;
  bool has_token = false;  // ok replies to acquire
  std::uint64_t token = 0;
  std::string_view error;  // the error code of an ok:false reply ("timeout", ...)
};

// Scans one frame (without its '\n'). Returns false when the frame is neither an event nor a
// reply with an `ok` member. Relies on the daemon writing no spaces inside members
// (`"id":3`), which append_reply guarantees; unknown members are skipped.
bool scan_reply(std::string_view frame, reply_view& out) noexcept;

// ---------------------------------------------------------------------------------------------
// Redis

// Appends one RESP command (an array of bulk strings).
void append_resp_command(std::string& out, std::initializer_list<std::string_view> args);
void append_resp_command(std::string& out, std::span<const std::string_view> args);

// redis-py's Lock release script (compare-and-delete), loaded once with SCRIPT LOAD and run
// with EVALSHA: KEYS[1] = lock key, ARGV[1] = the acquirer's token; returns 1 when deleted.
extern const std::string_view redis_release_script;

// The bench's counting semaphore for Redis (redis-py has none): a key of limit N is N lock
// keys KEY#1..KEY#N, and one script call tries each with SET NX PX in order and returns the
// slot taken (1..N) or 0 when all are held. KEYS[1] = key, ARGV = token, ttl ms, limit.
extern const std::string_view redis_semaphore_script;

// The name of semaphore slot `slot` (1-based) of `key`: "KEY#slot".
std::string semaphore_slot_key(std::string_view key, std::uint32_t slot);

// A Redis lock token: 32 lowercase hex digits, the shape of redis-py's uuid1().hex.
using token_text = std::array<char, 32>;

// The token of two random words.
void format_token(std::uint64_t a, std::uint64_t b, token_text& out) noexcept;

}  // namespace keylock::bench
