// A small, blocking client of etcd's v3 gRPC API: what keylock's cluster mode needs to build
// etcd's own lock recipe (client/v3/concurrency: one lease per process kept alive, a key per
// waiter bound to that lease, ordered by create revision, each waiter watching the deletion
// of its predecessor).
//
// No gRPC type appears here (pimpl), so only etcd_client.cpp and the generated code include
// gRPC headers. Calls block for at most options.rpc_timeout and report failures as values
// (etcd_status), never by exception. One etcd_client may be used from several threads; the
// cluster mode's etcd thread owns it and posts results into the daemon's io_context.
#pragma once

#include <chrono>
#include <functional>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace keylock {

struct etcd_options {
  // Members to connect to: "http://HOST:PORT" or "HOST:PORT", IPv4 or a name. gRPC keeps one
  // channel over all of them and moves to another member when one is unreachable.
  std::vector<std::string> endpoints;
  // Bound of each unary call, and of the wait for a connection.
  std::chrono::milliseconds rpc_timeout{2000};
  // TLS (https:// endpoints, or any endpoint when ca_pem is set): PEM texts, not paths.
  std::string ca_pem, cert_pem, key_pem;
  // etcd authentication: the client authenticates (Auth.Authenticate) before its first call
  // and again when etcd says its token is no longer valid.
  std::string user, password;
};

// The outcome of a call: ok, or why not. `unavailable` when etcd could not be reached (or
// did not answer in time): the caller cannot tell whether a write took effect.
struct etcd_status {
  enum class code : std::uint8_t { ok, unavailable, failed };
  code what = code::ok;
  std::string message;

  bool ok() const { return what == code::ok; }
  static etcd_status success() { return {}; }
};

struct etcd_kv {
  std::string key;
  std::string value;
  std::int64_t create_revision = 0;
  std::int64_t mod_revision = 0;
  std::int64_t lease = 0;
};

// One change seen by a watch.
struct etcd_event {
  enum class kind : std::uint8_t { put, remove } what = kind::put;
  etcd_kv kv;  // for remove: key and mod_revision (the deletion's revision) only
};

// One watch response: its events, in revision order, and the store's revision when etcd sent
// it (every revision up to it has been delivered).
struct etcd_watch_batch {
  std::int64_t revision = 0;
  std::vector<etcd_event> events;
};

class etcd_client {
 public:
  // Parses the endpoints and creates the channel; connects lazily. Never fails: an endpoint
  // list that cannot be used makes every call answer `failed` with the reason.
  explicit etcd_client(etcd_options options);
  ~etcd_client();
  etcd_client(etcd_client&&) noexcept;
  etcd_client& operator=(etcd_client&&) noexcept;
  etcd_client(const etcd_client&) = delete;
  etcd_client& operator=(const etcd_client&) = delete;

  // LeaseGrant: a new lease of `ttl` (etcd rounds it up to its minimum). Sets *id, and
  // *granted_ttl (seconds) when given.
  etcd_status lease_grant(std::chrono::seconds ttl, std::int64_t* id,
                          std::int64_t* granted_ttl = nullptr);
  // One LeaseKeepAlive round trip on a stream, bounded by `timeout` (the client's rpc timeout
  // when zero). Sets *ttl_left to the seconds etcd granted (0 when the lease no longer exists:
  // it expired or was revoked).
  etcd_status lease_keep_alive(std::int64_t id, std::int64_t* ttl_left,
                               std::chrono::milliseconds timeout = std::chrono::milliseconds{0});
  // LeaseRevoke: the lease ends now and every key bound to it is deleted.
  etcd_status lease_revoke(std::int64_t id);

  // Txn: if `key` does not exist, put it with `value` bound to `lease`. *created tells whether
  // this call created it; *create_revision is the key's create revision either way (so a
  // caller whose earlier attempt timed out can recognise its own key by value). When `leaving`
  // is not empty, that key is deleted in the same transaction (one revision, one write).
  etcd_status create(const std::string& key, const std::string& value, std::int64_t lease,
                     bool* created, std::int64_t* create_revision, std::string* value_now,
                     const std::string& leaving = {});
  // Range over every key starting with `prefix`, oldest create revision first. Sets *revision
  // to the store's revision at the time of the read.
  etcd_status list_prefix(const std::string& prefix, std::vector<etcd_kv>* out,
                          std::int64_t* revision);
  // DeleteRange of one key. *deleted tells whether it existed.
  etcd_status remove(const std::string& key, bool* deleted);

  // Put: `key` = `value`, bound to `lease` (0: none). Sets *revision to the store's revision
  // after the put.
  etcd_status put(const std::string& key, const std::string& value, std::int64_t lease,
                  std::int64_t* revision);

  // Watches every key starting with `prefix` from `start_revision`, calling on_batch for each
  // response (with progress notifications, so `revision` advances even when nothing changes)
  // until on_batch returns false, cancel_watch() is called, or the stream fails (the status
  // says why; a compacted start revision is `failed`). Blocks; one watch_prefix per client at
  // a time.
  etcd_status watch_prefix(const std::string& prefix, std::int64_t start_revision,
                           const std::function<bool(const etcd_watch_batch&)>& on_batch);
  // Ends a running watch_prefix from another thread (and any later one). Thread-safe.
  void cancel_watch();

  // Watches `key` from `start_revision` and returns once it is deleted (*deleted = true) or
  // `timeout` passes (*deleted = false). A key already deleted at or after start_revision
  // counts. This is etcd's waitDelete: a waiter watches its predecessor, never polls.
  // `timeout` counts from etcd's confirmation of the watch; reaching etcd until then is
  // bounded by options.rpc_timeout, and running out of that is `unavailable`.
  etcd_status wait_deleted(const std::string& key, std::int64_t start_revision,
                           std::chrono::milliseconds timeout, bool* deleted);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace keylock
