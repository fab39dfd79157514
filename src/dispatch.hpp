// The command dispatcher: validates decoded requests once, up front, runs them against the
// lock table, and writes replies. Pure protocol logic, no sockets: the server hands it each
// decoded frame and the connection's state, and gets replies appended to output buffers.
//
// Replies for other connections (a grant pushed because someone released, an expiry event)
// go through the `delivery` interface the server implements. Events for the connection being
// served are written before that request's own reply, so a `cancel` is answered after the
// `cancelled` reply of the acquire it cancelled.
//
// Runs on the io_context thread only.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "config.hpp"
#include "keylock/codec.hpp"
#include "keylock/protocol.hpp"
#include "lock_table.hpp"
#include "users.hpp"

namespace keylock {

// What the dispatcher knows of a connection.
struct connection_info {
  owner_id owner = 0;
  bool authenticated = false;
  bool close_after_reply = false;  // set on frame_too_large / unauthenticated
  bool warned = false;             // a client fault of this connection was logged already
  std::string client;              // name from hello
  std::string peer;                // "ip:port"
  // The users_file user this connection logged in as (hello with user, or a client
  // certificate); nullptr: every permission (no auth, or the shared secret).
  std::shared_ptr<const user_account> user;
};

// Implemented by the server: where replies for a connection go.
class delivery {
 public:
  virtual ~delivery() = default;
  // The output buffer of `owner`'s connection, or nullptr when it is gone. The server flushes
  // every buffer handed out once the current batch of work is done.
  virtual std::string* output_for(owner_id owner) = 0;
  virtual const connection_info* info_for(owner_id owner) const = 0;
  virtual std::uint64_t connections() const = 0;
};

class dispatcher;

// What an op needs beyond its fields, as bits of op_spec::flags.
enum class op_flag : std::uint8_t {
  before_auth = 1u << 0,  // may run before the connection has authenticated (hello)
  admin = 1u << 1,        // reads the whole server's state (stats, top): admin-only under ACLs
};

// One row of the command table (after Redis's command table): the op, the fields it requires
// and may carry (besides `op` and `id`), its flags and its handler. proto/ops.json says the
// same of names and fields; a test holds the two together. Rows are found by op, never by
// their position in the table.
struct op_spec {
  using handler = void (dispatcher::*)(connection_info&, const request&, tick, std::string&);
  std::string_view name;
  op kind;
  std::uint16_t required;
  std::uint16_t optional;
  std::uint16_t one_of;  // of these optional fields exactly one must be present (0: no rule)
  std::uint8_t flags;
  handler run;

  bool has(op_flag f) const { return (flags & static_cast<std::uint8_t>(f)) != 0; }
};

std::span<const op_spec> op_table();

// Counters the dispatcher keeps beyond the table's own (for stats and metrics).
struct dispatch_counters {
  std::array<std::uint64_t, errc_count> errors{};  // by errc, indexed by its value
};

class dispatcher {
 public:
  dispatcher(const config& settings, lock_table& table, delivery& out, tick started);

  // Runs one decoded request from `conn`, appending its reply (and any events for `conn`) to
  // `out`. May set conn.close_after_reply. Never throws on client input.
  void handle(connection_info& conn, const request& req, tick now, std::string& out);

  // Answers a frame that could not be decoded.
  void handle_decode_error(connection_info& conn, const decode_error& err, std::string& out);

  // Answers a frame longer than max_frame_bytes and marks the connection for closing.
  void handle_oversized_frame(connection_info& conn, std::string& out);

  // Processes at most `max_deadlines` due deadlines (expiries, wait timeouts, lock-delay ends)
  // and delivers the results. True when due deadlines remain (the server flushes output, then
  // calls again on the next turn of its loop).
  bool expire_due(tick now, std::size_t max_deadlines);

  // The connection half-closed: every acquire of it still waiting is answered `cancelled` into
  // `out` (PROTOCOL.md "Half-close"). Its leases stay until disconnect().
  void half_close(const connection_info& conn, tick now, std::string& out);

  // The connection is gone: drop its waiters, release its leases, deliver the grants.
  void disconnect(const connection_info& conn, tick now);

  // Fencing tokens are available again: grant the waiters that queued behind free slots.
  void resume_grants(tick now);

  // Replaces the shared secret (SIGHUP re-read auth_file). Connections already authenticated
  // keep their session; later hellos are checked against the new secret.
  void set_auth_secret(std::string_view secret);

  // The users of the users_file (nullptr: none). Set at start and on SIGHUP; the server moves
  // logged-in connections to the new directory's accounts itself.
  void set_users(std::shared_ptr<const user_directory> users) { users_ = std::move(users); }
  const std::shared_ptr<const user_directory>& users() const { return users_; }

  // Whether a connection must authenticate before anything but hello (auth or users_file).
  bool auth_required() const { return !settings_.auth.empty() || users_ != nullptr; }

  // At most this many failed logins (hello with user) per second run PBKDF2; beyond it a
  // login whose secret is not already verified is refused without the work (it would stall
  // the event loop for every client).
  static constexpr std::uint32_t max_failed_logins_per_second = 5;

  // Runs `fn` (cluster mode: the coordinator acting on the table) and delivers the events it
  // appends to their connections.
  void run_and_deliver(const std::function<void(std::vector<table_event>&)>& fn);

  // Shutdown: every waiting acquire is answered shutting_down.
  void abort_waiters();

  const dispatch_counters& counters() const { return counters_; }

  // Called for each error reply caused by the client's own input or a limit it hit
  // (bad_request, unknown_op, frame_too_large, unauthenticated, limit_exceeded), so the server
  // can log a bad client once. Not called for timeout, not_held and the like: those are normal.
  std::function<void(connection_info&, errc, std::string_view)> on_client_error;

  // Cluster mode (etcd_endpoints set); left empty in standalone mode.
  struct cluster_hooks {
    // Leases' ttl at `now` is at most this (an acquire's or extend's larger ttl_ms is lowered,
    // and the reply says the ttl applied).
    std::function<std::uint32_t(tick now)> ttl_cap;
    // Whether the daemon's etcd lease is known alive now: extend is confirmed only then.
    std::function<bool()> proven;
    // Where the key's global right is, for inspect and top.
    std::function<cluster_view(std::string_view key)> view;
  };
  cluster_hooks cluster;

 private:
  friend std::span<const op_spec> op_table();

  void reply_error(connection_info& conn, const request* req, errc code,
                   std::string_view message, std::string& out);
  void deliver_events(const connection_info* current, std::string* current_out);
  bool authorize_or_reply(connection_info& conn, const request& req, tick now, std::string& out);
  bool log_in_or_reply(connection_info& conn, const request& req, tick now, std::string& out);
  bool permitted_or_reply(connection_info& conn, const request& req, tick now, std::string& out);
  bool deny(connection_info& conn, const request& req, std::string_view what,
            std::string_view key, std::string& out);
  bool validate_or_reply(connection_info& conn, const request& req, std::string& out);
  [[gnu::cold, gnu::noinline]] bool reject_range(connection_info& conn, const request& req,
                                                 std::string_view name, std::uint64_t lo,
                                                 std::uint64_t hi, std::string& out);

  // Handlers: one per op, all of op_spec::handler's shape.
  void do_hello(connection_info& conn, const request& req, tick now, std::string& out);
  void do_ping(connection_info& conn, const request& req, tick now, std::string& out);
  void do_acquire(connection_info& conn, const request& req, tick now, std::string& out);
  void do_release(connection_info& conn, const request& req, tick now, std::string& out);
  void do_extend(connection_info& conn, const request& req, tick now, std::string& out);
  void do_cancel(connection_info& conn, const request& req, tick now, std::string& out);
  void do_inspect(connection_info& conn, const request& req, tick now, std::string& out);
  void do_stats(connection_info& conn, const request& req, tick now, std::string& out);
  void do_top(connection_info& conn, const request& req, tick now, std::string& out);
  stats_info current_stats(tick now) const;

  const config& settings_;
  lock_table& table_;
  delivery& delivery_;
  tick started_;
  std::array<const op_spec*, static_cast<std::size_t>(op::unknown)> specs_{};  // by op
  std::array<unsigned char, 32> auth_digest_{};  // SHA-256 of the secret, when auth is set
  std::shared_ptr<const user_directory> users_;
  tick failed_logins_since_{0};          // start of the current one-second window
  std::uint32_t failed_logins_ = 0;      // failed logins in that window
  // The request's keys as views, for the table (`keys`, or `key` alone). Scratch, reused.
  std::span<const std::string_view> keys_of(const request& req);
  bool validate_keys_or_reply(connection_info& conn, const request& req, std::string& out);

  std::array<std::string_view, max_keys_per_request> key_views_{};
  std::vector<table_event> events_;              // scratch, reused
  reply reply_;                                  // scratch, reused
  dispatch_counters counters_;
};

}  // namespace keylock
