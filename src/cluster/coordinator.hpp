// Cluster mode's brain: which keys' global rights this daemon holds, wants, and gives up.
//
// Every daemon pointed at the same etcd and prefix runs one. For each key with local demand it
// takes the key's global right with etcd's lock recipe: a key
//     <prefix>k/<md5(key) hex>/<etcd lease id hex>   (value: node_name)
// bound to the daemon's etcd lease. The right belongs to the oldest such key (lowest create
// revision). Every daemon mirrors the whole <prefix>k/ range through one watch, so it learns
// that its predecessor left (never by polling) and that other daemons wait behind it.
//
// While it holds a key's right the daemon grants its local waiters in FIFO order (the table's
// key is open). It gives the right up (deletes its etcd key, after closing the key and waiting
// for its local holders to leave):
//  - after `handoff_limit` local grants in this tenure while another daemon waits (lock
//    cohorting: local handoffs are cheap, but other hosts must not starve);
//  - at once when another daemon waits and nothing here can use the right now (no holder, and
//    no waiter that could be granted: e.g. a set waiting for another key, which must not
//    deadlock against a daemon holding that key and waiting for this one);
//  - after `idle_keep` without any holder or waiter here, when nobody else wants it, so a key
//    used from one host costs no etcd round trip per acquire.
// If local demand remains, the transaction that deletes its etcd key also creates a new one,
// so it queues again behind the daemons that waited at the cost of one etcd write.
//
// Fencing tokens (token_source): token = H * 2^20 + s, where H is the highest etcd revision
// this daemon has observed and s counts grants since H last grew. A tenure of the right on
// key K starts at a win observed at revision W (so H >= W from then on) and ends with the
// deletion of our etcd key at revision D > every revision observed before it. The next tenure
// on K (any daemon) wins at a revision >= D. So tokens of K strictly increase across the
// cluster and across restarts, as long as s < 2^20 (when half of that is used a put is made to
// learn a newer revision; tokens are not ready while s is exhausted) and H < 2^33 (tokens stay
// below 2^53).
//
// Pure loop-side logic: no threads, no gRPC, no Asio. The runtime (cluster_runtime) carries out
// its etcd_port requests on its own threads and calls the on_* functions on the loop thread.
#pragma once

#include "cluster/etcd_client.hpp"  // etcd_kv, etcd_watch_batch (plain types)
#include "keylock/protocol.hpp"     // cluster_view
#include "lock_table.hpp"

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace keylock {

struct coordinator_options {
  std::string prefix = "/keylock/";
  std::uint32_t handoff_limit = 64;  // local grants per tenure while another daemon waits
  tick idle_keep{std::chrono::milliseconds(500)};
  std::uint32_t max_ttl_ms = 0;  // static cap of leases' ttl (0: none)
  // The clock of ready() (the table's token_source check has no `now`); empty: steady_clock.
  std::function<tick()> clock;
};

struct coordinator_counters {
  std::uint64_t global_acquisitions = 0;  // rights won in etcd
  std::uint64_t local_grants = 0;         // grants made while holding a right
  std::uint64_t local_handoffs = 0;       // of those, grants after the first of a tenure
  std::uint64_t remote_handoffs = 0;      // rights given up while another daemon waited
  std::uint64_t idle_releases = 0;        // rights given up after idle_keep
  std::uint64_t sessions_lost = 0;        // etcd leases that could not be proven alive
};

// The etcd work the coordinator asks for. Implementations queue it and answer later, on the
// loop thread, in the order asked.
class etcd_port {
 public:
  virtual ~etcd_port() = default;
  // Create `etcd_key` (if absent) bound to `lease`, value node_name, and delete `leaving` (when
  // not empty) in the same transaction -> on_created.
  virtual void create(const std::string& key, const std::string& etcd_key, std::int64_t lease,
                      const std::string& leaving) = 0;
  // Delete `etcd_key` -> on_removed.
  virtual void remove(const std::string& key, const std::string& etcd_key) = 0;
  // Make the store's revision grow (a put) -> on_revision.
  virtual void bump_revision() = 0;
};

class coordinator final : public key_gate, public token_source {
 public:
  // `proven_until` reads the daemon's etcd session: until when its lease is proven alive.
  coordinator(coordinator_options options, etcd_port& port, std::function<tick()> proven_until);
  coordinator(const coordinator&) = delete;
  coordinator& operator=(const coordinator&) = delete;

  // The table this coordinator gates (constructed with it as its key_gate and token_source).
  void attach(lock_table& table) { table_ = &table; }

  // key_gate (called by the table)
  bool holds(std::string_view key) const override;
  void wanted(std::string_view key) override;
  void granted(std::string_view key) override;
  void quiet(std::string_view key) override;
  std::uint32_t ttl_cap(tick now) const override;

  // token_source (called by the table)
  bool ready() const override;
  std::uint64_t next() override;

  // The daemon's etcd lease: up (a new lease, rights may be requested) and lost (it can no
  // longer be proven alive: every lease ends, every key closes, every right is forgotten).
  void session_up(std::int64_t lease, tick now, std::vector<table_event>& events);
  void session_lost(tick now, std::vector<table_event>& events);
  bool up() const { return lease_ != 0; }

  // Answers from etcd (on the loop thread).
  void on_created(const std::string& key, const std::string& etcd_key, bool ok,
                  std::int64_t create_revision, tick now, std::vector<table_event>& events);
  void on_removed(const std::string& key, const std::string& etcd_key, bool ok, tick now,
                  std::vector<table_event>& events);
  void on_revision(std::int64_t revision, tick now, std::vector<table_event>& events);
  // A fresh listing of <prefix>k/ at `revision` (the watch (re)started): replaces the mirror.
  void on_snapshot(std::int64_t revision, const std::vector<etcd_kv>& kvs, tick now,
                   std::vector<table_event>& events);
  void on_watch(const etcd_watch_batch& batch, tick now, std::vector<table_event>& events);
  bool mirrored() const { return mirror_revision_ != 0; }

  // Acts on every key the table or etcd changed since the last call, and on idle timers due.
  // The server calls it after each batch of work.
  void process(tick now, std::vector<table_event>& events);
  bool has_work() const { return !dirty_.empty() || !kept_.empty(); }
  std::optional<tick> next_deadline() const;

  cluster_view view(std::string_view key) const;
  const coordinator_counters& counters() const { return counters_; }
  // Rights held here now.
  std::size_t rights_held() const;

  // The etcd key prefix of `key`'s right queue: <prefix>k/<md5 hex>/.
  std::string queue_prefix(std::string_view key) const;
  static std::string md5_hex(std::string_view key);

 private:
  enum class phase : std::uint8_t { none, creating, queued, held, removing };
  struct right {
    phase at = phase::none;
    std::string hash;
    std::string etcd_key;
    std::string leaving;  // our previous key, deleted by the same transaction as etcd_key's put
    std::int64_t create_revision = 0;
    std::uint32_t grants = 0;  // local grants in this tenure
    bool closing = false;      // handing off: closed, waiting for local holders to leave
    bool idle = false;         // idle_until is armed
    tick idle_until{0};
    // No etcd key any more (given up, or gone with the lease): back to wanting or not.
    void forget() {
      at = phase::none;
      etcd_key.clear();
      leaving.clear();
      create_revision = 0;
      grants = 0;
      closing = false;
      idle = false;
    }
  };
  struct mirror_entry {
    std::string etcd_key;
    std::string node;
  };
  using queue = std::map<std::int64_t, mirror_entry>;  // by create revision

  void mark(std::string_view key);
  void evaluate(const std::string& key, tick now, std::vector<table_event>& events);
  void request(const std::string& key, right& r);
  void give_up(const std::string& key, right& r, bool to_other);
  std::size_t others_behind(const right& r) const;
  bool head_known(const right& r, bool* head) const;
  void apply_event(const etcd_event& ev);
  bool parse_key(const std::string& etcd_key, std::string* hash) const;
  void resume(tick now, std::vector<table_event>& events);

  coordinator_options options_;
  etcd_port& port_;
  std::function<tick()> proven_until_;
  lock_table* table_ = nullptr;
  std::int64_t lease_ = 0;
  std::string lease_hex_;
  std::uint64_t requests_ = 0;  // names our etcd keys: <prefix>k/<hash>/<lease hex>.<n>
  // Tokens.
  std::uint64_t high_revision_ = 0;  // H
  std::uint64_t seq_ = 0;            // s
  bool bump_pending_ = false;
  // Lookups by string_view without building a std::string (a grant on the hot path).
  struct text_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  // Rights this daemon holds or wants, by user key; and user key by hash.
  std::unordered_map<std::string, right, text_hash, std::equal_to<>> rights_;
  std::unordered_map<std::string, std::string> key_of_hash_;
  // The mirror of <prefix>k/: per key hash, every daemon's queue entry.
  std::unordered_map<std::string, queue> mirror_;
  std::int64_t mirror_revision_ = 0;
  // Idle timers in the order armed (idle_keep is one constant, so also in deadline order);
  // an entry whose right is no longer idle at that time is skipped.
  std::deque<std::pair<tick, std::string>> idle_timers_;
  // Rights kept (others waiting, nothing to grant here) for a set taking rights in key order:
  // looked at again after every batch, which may have ended the reason to keep them.
  std::vector<std::string> kept_;
  // Keys to look at in process().
  std::vector<std::string> dirty_;
  std::unordered_set<std::string, text_hash, std::equal_to<>> dirty_set_;
  coordinator_counters counters_;
};

}  // namespace keylock
