// The lock table: every live key's leases and FIFO waiters, and one ordered deadline index.
//
// A plain class: no sockets, no Asio, no logging, no clock. Time comes in as `now` on every
// call, so every behaviour (FIFO, limits, expiry, lock delay, cancel, disconnect, fencing) is
// tested deterministically with a fake clock. The table never calls out except to its
// token_source. Results that concern other connections (a waiter granted because someone
// released, a lease that expired) are returned as table_event values appended to a caller-owned
// vector; the server delivers them.
//
// A request (an acquire) names one key or a set of keys and a mode. Per key, holders are up to
// `limit` exclusive holders (a semaphore), or any number of shared holders and no exclusive one
// (a read-write lock, limit 1). Each key has one FIFO queue; a request over several keys sits
// in every one of those queues, placed at one instant (one global arrival order), and is
// granted all at once: one token, one ttl, one deadline for the whole set.
//
// The grant rule: a queued request is granted when, at every one of its keys, it is at the head
// of the queue and the key has room for its mode (exclusive: fewer than `limit` exclusive
// holders and no shared one; shared: no exclusive holder), and none of its keys is in its lock
// delay or stalled. Granted requests leave the queues, so a run of shared waiters behind a
// granted shared head goes in together, and the first exclusive waiter ends the run. Requests
// for overlapping sets never deadlock: the older one is ahead in every queue they share.
//
// Invariants (checked by check_invariants(), used by tests and the fuzzer):
//  - a key has at most `limit` exclusive holders, and shared holders only with no exclusive
//    holder (and limit 1);
//  - after every public call, no queued request is grantable by the rule above (so a newcomer
//    never jumps the queue, and every change of a queue's head has been followed up);
//  - the leases of one set share token, owner, ttl and deadline; a queued set request is in the
//    queue of every one of its keys;
//  - a key with no holder, no waiter and no running lock delay is not in the table;
//  - every token handed out is greater than every token before it, and none is handed out
//    while the token_source is not ready();
//  - an owner's leases plus queued acquires never exceed max_leases_per_owner, and the leases
//    of all owners never exceed max_leases (each key of a set counts as one lease, and a queued
//    set as one queued acquire per key).
//
// Keys are found through an open-addressing index keyed by SipHash under a per-table seed, so
// clients cannot craft keys that collide. `now` never goes backwards between calls (the server
// passes steady_clock time).
//
// Single-threaded: the daemon calls it on its io_context thread only.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "keylock/protocol.hpp"  // lock_mode

namespace keylock {

struct duration_histogram;  // metrics.hpp

// Monotonic time since an arbitrary epoch. The server passes steady_clock time; tests pass
// whatever they like.
using tick = std::chrono::nanoseconds;

// A party that holds leases and waits: one client connection in the daemon. Opaque handle
// from lock_table::connect(); valid until disconnect().
using owner_id = std::uint32_t;

// Source of fencing tokens. The table calls next() only when ready() is true; while it is
// false, acquires answer `unavailable` and waiters whose slot freed stay queued (stalled) until
// lock_table::resume_grants().
class token_source {
 public:
  virtual ~token_source() = default;
  // True when next() may be called: the next token is covered by a durable reservation.
  virtual bool ready() const = 0;
  // Only when ready(). Strictly increasing, below 2^53.
  virtual std::uint64_t next() = 0;
};

// Cluster mode: which keys this daemon may grant on. A key's right to grant is global (one
// daemon at a time holds it, through etcd); the table asks the gate when a key enters the table
// and tells it what happens on gated keys, and the gate's owner opens and closes keys with
// open_key() / close_key() between table calls. The table never waits for the gate: a key
// without its right simply does not grant (its waiters queue), like a key in its lock delay.
// Callbacks must not call back into the table.
class key_gate {
 public:
  virtual ~key_gate() = default;
  // May a key entering the table grant at once (this daemon holds its right)?
  virtual bool holds(std::string_view key) const = 0;
  // A request queued on a key that is closed: the key's right is wanted here.
  virtual void wanted(std::string_view key) = 0;
  // A lease was granted on the key (each key of a set counts one).
  virtual void granted(std::string_view key) = 0;
  // The key's last holder left, or the key left the table (no holder, no waiter).
  virtual void quiet(std::string_view key) = 0;
  // The longest ttl a lease granted at `now` may have (its daemon's proof of holding the
  // keys' rights must outlast it). A queued request granted later gets at most this.
  virtual std::uint32_t ttl_cap(tick now) const = 0;
};

// What the gate's owner reads of one key (key_activity()).
struct key_activity {
  std::uint32_t held = 0;     // leases on the key, live or due
  std::uint32_t waiting = 0;  // queued requests on the key
  bool in_delay = false;      // its lock delay runs
  bool open = false;          // the key may grant (in the table and not closed)
};

// The 128-bit SipHash key of the key index. The server draws it from getrandom() at start-up;
// tests may leave it zero.
struct hash_seed {
  std::uint64_t k0 = 0, k1 = 0;
};

// Where the table records wait and hold times. A null pointer is not recorded.
struct table_histograms {
  duration_histogram* wait = nullptr;  // arrival of an acquire -> its grant (0 when at once)
  duration_histogram* hold = nullptr;  // grant -> end of the lease, however it ended
};


struct table_limits {
  std::uint32_t max_keys = 1u << 20;              // live keys
  std::uint32_t max_waiters_per_key = 10000;      // queued acquires on one key
  std::uint32_t max_pending_per_owner = 4096;     // queued acquires of one connection
  std::uint32_t lock_delay_ms = 0;                // see PROTOCOL.md "Lock delay"
  std::uint32_t max_leases_per_owner = 65536;     // leases + queued acquires of one connection
  std::uint32_t max_leases = 1u << 24;            // leases of all connections (see acquire());
                                                  // clamped below the table's slot range
};

struct acquire_args {
  std::string_view key;  // the key, when `keys` is empty
  // When not empty: the keys, used instead of `key`: 1..max_keys_per_request distinct keys
  // (the caller validated them). One key is the same as `key`.
  std::span<const std::string_view> keys;
  std::uint32_t ttl_ms = 30000;
  std::optional<std::uint32_t> wait_ms;  // nullopt: wait until granted; 0: try once
  std::uint32_t limit = 1;               // per key; must be 1 for lock_mode::shared
  lock_mode mode = lock_mode::exclusive;
  std::optional<std::uint64_t> request_id;  // echoed in the events that answer this acquire
};

enum class acquire_status : std::uint8_t {
  granted,           // result.token holds the lease's token
  queued,            // a `granted`, `wait_timeout`, `cancelled` or `aborted` event follows
  busy,              // wait_ms == 0 and not free now
  conflict,          // the live key has another limit
  too_many_keys,     // table_limits::max_keys
  too_many_waiters,  // table_limits::max_waiters_per_key
  too_many_pending,  // table_limits::max_pending_per_owner
  too_many_owner_leases,  // table_limits::max_leases_per_owner
  too_many_leases,        // table_limits::max_leases
  unavailable,            // the token_source is not ready(): no fencing token can be issued
};

struct acquire_result {
  acquire_status status = acquire_status::granted;
  std::uint64_t token = 0;
};

enum class event_kind : std::uint8_t {
  granted,       // a queued acquire got its lease: token, ttl_ms
  wait_timeout,  // a queued acquire's wait_ms ran out
  cancelled,     // a queued acquire was cancelled
  aborted,       // a queued acquire was dropped by abort_waiters() (shutdown)
  expired,       // a lease ran out: key, token, keys for a set (the lease is gone)
  busy,          // a try-lock (wait_ms 0) queued on a closed key: another daemon has the key
};

// Something the server must tell `owner`. `request_id` is the id of the acquire it answers.
struct table_event {
  event_kind kind = event_kind::granted;
  owner_id owner = 0;
  std::optional<std::uint64_t> request_id;
  std::uint64_t token = 0;
  std::uint32_t ttl_ms = 0;
  std::string key;  // set for `expired` only: the lease's (first) key
  // `expired` of a lease over several keys: every key, in the order requested (key == keys[0]).
  // Empty for a lease over one key.
  std::vector<std::string> keys;
};

enum class lease_status : std::uint8_t { ok, not_held };

struct lease_view {
  std::uint64_t token = 0;
  std::uint64_t ttl_ms_left = 0;
  owner_id owner = 0;
  lock_mode mode = lock_mode::exclusive;
  // Every key of a lease over several keys, in the order requested; empty for one key. The
  // views are valid until the table changes.
  std::vector<std::string_view> keys;
};

struct inspect_result {
  std::vector<lease_view> holders;  // in grant order
  std::uint64_t waiters = 0;
  std::uint32_t limit = 0;          // 0 when the key is not live
};

struct table_counters {
  std::uint64_t acquires = 0;
  std::uint64_t grants = 0;         // a set counts one
  std::uint64_t grants_shared = 0;  // of `grants`, those in shared mode
  std::uint64_t releases = 0;
  std::uint64_t timeouts = 0;
  std::uint64_t expirations = 0;
  std::uint64_t cancels = 0;
  std::uint64_t extends = 0;
  std::uint64_t disconnect_releases = 0;
};

// The `top` snapshot: the longest queues and the oldest leases.
struct top_queue {
  std::string_view key;  // valid until the table changes
  std::uint32_t waiters = 0;
  std::uint32_t held = 0;  // live holders: a lease past its deadline is not counted
  std::uint32_t limit = 0;
};
struct top_lease {
  std::string_view key;  // valid until the table changes
  std::uint64_t token = 0;
  tick held_for{0};
  std::uint64_t ttl_ms_left = 0;
  owner_id owner = 0;
  lock_mode mode = lock_mode::exclusive;
};
struct top_result {
  std::vector<top_queue> queues;  // most waiters first, then key order (bytewise)
  // Longest held first, then token order; live leases only. Each key of a set is one lease
  // (same token, in the order requested).
  std::vector<top_lease> oldest;
};

class lock_table {
 public:
  // `histograms` may name where wait and hold times go; `seed` keys the hash of the key index.
  // limits.max_leases is clamped below the table's slot range (2^30 - 1).
  lock_table(table_limits limits, token_source& tokens, table_histograms histograms = {},
             hash_seed seed = {}, key_gate* gate = nullptr);
  lock_table(const lock_table&) = delete;
  lock_table& operator=(const lock_table&) = delete;

  // A new owner (connection). Never fails.
  owner_id connect();

  // Releases every lease of `owner` (applying the lock delay: these leases were lost, not
  // released; a set frees all its keys), drops its queued requests without events (from every
  // queue of a set), and grants what that frees to waiters of other owners (or stalls them while
  // no token is ready()). The handle is invalid afterwards.
  void disconnect(owner_id owner, tick now, std::vector<table_event>& events);

  // Acquires `args.key` (or every key of `args.keys`, all or nothing) in `args.mode` for
  // `owner`. The caller validated ranges (keys non-empty and distinct, at most
  // max_keys_per_request, ttl_ms > 0, limit > 0, limit == 1 when shared). First the holders of
  // each key whose deadline has passed are expired (their `expired` events appended, lock delay
  // applied, what they free granted to waiters), so a lease that is over never makes a key look
  // busy. Then: granted at once when every key has room for the mode, nobody waits on it and no
  // lock delay runs; else queued in every key's queue at once (wait_ms != 0) or busy
  // (wait_ms == 0). May append events for other owners (expiries, a waiter whose deadline
  // passed). Errors, each without side effects on the keys or owner:
  //  - unavailable: tokens are not ready(); checked before anything else;
  //  - conflict: a live key has another limit;
  //  - too_many_owner_leases: the owner's leases + queued acquires (each key counts one) + the
  //    keys asked for > max_leases_per_owner (whether the acquire would be granted, queued or
  //    busy);
  //  - too_many_keys: new keys beyond max_keys;
  //  - too_many_leases: the acquire would be granted at once and leases + reserved + keys >
  //    max_leases, or it would queue and reserve slots beyond max_leases (see reserved_); a
  //    lease whose deadline passed is expired first rather than counted;
  //  - too_many_waiters / too_many_pending: it would queue beyond max_waiters_per_key on one of
  //    its keys / beyond max_pending_per_owner (a set counts one pending acquire).
  acquire_result acquire(owner_id owner, const acquire_args& args, tick now,
                         std::vector<table_event>& events);

  // Ends the lease `token` held on `key`; `key` may be any key of a lease over several keys,
  // and the whole set is released. not_held when no such live lease exists (including one whose
  // deadline has passed: it is expired now, with its event). Grants what it frees.
  lease_status release(std::string_view key, std::uint64_t token, tick now,
                       std::vector<table_event>& events);
  // The same, naming the lease by all its keys (any order): not_held unless `keys` are exactly
  // the keys of the lease `token` (one key: as above).
  lease_status release(std::span<const std::string_view> keys, std::uint64_t token, tick now,
                       std::vector<table_event>& events);

  // Makes lease `token` on `key` (any key of a set: the whole set) run out `ttl_ms` from now
  // (nullopt: its last ttl again). On success `*ttl_out` is the ttl applied. not_held as for
  // release.
  lease_status extend(std::string_view key, std::uint64_t token, std::optional<std::uint32_t> ttl_ms,
                      tick now, std::vector<table_event>& events, std::uint32_t* ttl_out);
  // The same, naming the lease by all its keys (any order); not_held as for release(keys).
  lease_status extend(std::span<const std::string_view> keys, std::uint64_t token,
                      std::optional<std::uint32_t> ttl_ms, tick now,
                      std::vector<table_event>& events, std::uint32_t* ttl_out);

  // Cancels the oldest queued acquire of `owner` whose request id is `request_id` (a set: from
  // every queue), appending its `cancelled` event, then grants the waiters its leaving unblocks
  // (a shared run behind it, or requests it held back on another key; hence `now`). False when
  // there is none.
  bool cancel(owner_id owner, std::uint64_t request_id, tick now,
              std::vector<table_event>& events);

  // Cancels every queued acquire of `owner` (the client half-closed): one `cancelled` event
  // each, in the owner's arrival order, first in `events`; counted as cancels. Then grants the
  // waiters of other owners that this unblocks. Its leases stay.
  void cancel_waiters(owner_id owner, tick now, std::vector<table_event>& events);

  // Processes deadlines at or before `now`, earliest first: lease expiries (`expired` event,
  // then grants), wait timeouts (`wait_timeout` events, then the grants a request's leaving
  // unblocks) and ends of lock delays (grants). A set has one deadline. At
  // most `max_deadlines` of them, so one call's work is bounded; returns true when due
  // deadlines remain (call again after flushing output).
  bool expire_due(tick now, std::vector<table_event>& events,
                  std::size_t max_deadlines = SIZE_MAX);

  // Grants the free slots of every key stalled because tokens were not ready() when a slot
  // freed, in each key's FIFO order. The server calls it when its token source becomes ready
  // again. Cheap when nothing is stalled; while tokens are still not ready, keys stay stalled.
  void resume_grants(tick now, std::vector<table_event>& events);

  // --- cluster mode (a key_gate was given) ---
  // A try-lock (wait_ms 0) on a closed key is not answered `busy` at once: this daemon cannot
  // know whether the key is free elsewhere. It queues (as a try, bounded by `try_wait_ms`) and
  // the gate is told the key is wanted; it is granted when the key opens, or answered with a
  // `busy` event by drop_tries() or when try_wait_ms runs out.
  void set_try_wait(std::uint32_t try_wait_ms) { try_wait_ms_ = try_wait_ms; }
  // The key may grant again: its waiters are granted in FIFO order. A key not in the table
  // needs nothing (the gate's holds() answers for it when it enters).
  void open_key(std::string_view key, tick now, std::vector<table_event>& events);
  // The key stops granting; its holders keep their leases, its waiters stay queued.
  void close_key(std::string_view key);
  // Answers every queued try-lock of the key `busy` (another daemon holds or waits for the
  // key), then grants what their leaving unblocks.
  void drop_tries(std::string_view key, tick now, std::vector<table_event>& events);
  // Every lease ends now, lost (its `expired` event), and every key closes: the daemon can no
  // longer prove it holds the keys' rights. Waiters stay queued.
  void lose_all(tick now, std::vector<table_event>& events);
  key_activity activity(std::string_view key) const;
  // Whether the first request queued on `key` is a set that heads the queue of every one of
  // its keys, and whose keys sorting before `key` (bytewise) all satisfy `has_right`: this
  // daemon is taking that set's rights in key order, has reached `key`, and the set waits for
  // nothing but rights of later keys. Rights kept only for such sets never wait in a cycle
  // (cluster mode's sets).
  bool set_needs_in_order(std::string_view key,
                          const std::function<bool(std::string_view)>& has_right) const;

  // The earliest pending deadline, if any. The server arms its one timer for it.
  std::optional<tick> next_deadline();

  // Answers every queued acquire with an `aborted` event and empties every queue (shutdown).
  void abort_waiters(std::vector<table_event>& events);

  // The key's live holders with their modes (and every key of a set; a lease whose deadline
  // passed is left out: the key is not held if all of them are due), its waiters (queued
  // requests on this key) and limit. limit 0 when the key is not in the table.
  inspect_result inspect(std::string_view key, tick now) const;

  // Up to `n` of each list, leaving out leases whose deadline passed. Costs O(n log keys) plus
  // the due leases skipped, independent of the keys and leases not shown.
  top_result top(std::size_t n, tick now) const;
  // The same, listing only keys for which `visible` is true (a user's ACL): it reads past the
  // keys it skips, so it costs in proportion to what it skips as well.
  top_result top(std::size_t n, tick now,
                 const std::function<bool(std::string_view key)>& visible) const;
  // The connection that acquired the live lease `token` on `key`, or nullopt when there is none.
  std::optional<owner_id> lease_owner(std::string_view key, std::uint64_t token, tick now) const;

  std::size_t keys() const { return index_count_; }
  // Leases (each key of a set counts one), including those whose deadline has passed but were
  // not expired yet.
  std::size_t held() const;
  // Live leases at `now`: held() minus those due. O(due deadlines).
  std::size_t held(tick now) const;
  // Queued acquires (a set counts one).
  std::size_t waiting() const { return queued_; }
  // The owner's leases (each key of a set counts one).
  std::size_t owner_leases(owner_id owner) const;
  // The owner's queued acquires (a set counts one).
  std::size_t owner_waiters(owner_id owner) const;
  const table_counters& counters() const { return counters_; }

  // The index hash of `key` under this table's seed (the low 32 bits of its SipHash-2-4).
  // Public for tests.
  std::uint32_t hash_of(std::string_view key) const;

  // Recomputes every invariant from scratch; returns a description of the first one broken,
  // or an empty string. O(size of the table): for tests and fuzzing.
  std::string check_invariants() const;

 private:
  static constexpr std::uint32_t nil = 0xffffffffu;

  // Records live in chunked slabs (no per-record allocation, no doubling slack, stable
  // indices) and link to each other by 32-bit index. Sizes matter: a held lease on its own key
  // costs one entry_rec, one lease_rec, one heap node and ~8 bytes of index.
  template <class T>
  class slab {
   public:
    T& operator[](std::uint32_t i) { return chunks_[i >> chunk_bits][i & chunk_mask]; }
    const T& operator[](std::uint32_t i) const {
      return chunks_[i >> chunk_bits][i & chunk_mask];
    }
    std::uint32_t alloc();
    void release(std::uint32_t i);
    std::size_t live() const { return high_water_ - free_.size(); }
    std::uint32_t high_water() const { return high_water_; }

   private:
    static constexpr std::uint32_t chunk_bits = 12;
    static constexpr std::uint32_t chunk_mask = (1u << chunk_bits) - 1;
    std::vector<std::unique_ptr<T[]>> chunks_;
    std::vector<std::uint32_t> free_;
    std::uint32_t high_water_ = 0;
  };

  // The keys that ever had a waiter, most waiters first, then by key bytes; `top` reads its
  // head. Ordered through the table (it compares entries_[e].waiting and .key).
  struct queue_order {
    const lock_table* table;
    bool operator()(std::uint32_t a, std::uint32_t b) const;
  };
  using queue_index = std::set<std::uint32_t, queue_order>;

  struct entry_rec {  // one live key; free when limit == 0
    std::string key;
    std::uint32_t hash = 0;  // hash_of(key): index position and quick compare
    std::uint32_t limit = 0;
    std::uint32_t held = 0;            // holders: all exclusive or (shared_held) all shared
    std::uint32_t waiting = 0;         // waiter records (one per request queued here), of which
    std::uint32_t waiting_shared = 0;  //   in shared mode
    std::uint32_t first_lease = nil, last_lease = nil;    // holders, singly linked, grant order
    std::uint32_t first_waiter = nil, last_waiter = nil;  // FIFO queue, doubly linked
    std::uint32_t delay_pos = nil;  // heap node of its running lock delay, or nil
    std::uint32_t stall_pos = nil;  // its place in stalled_, or nil when not stalled
    bool in_queues = false;         // queue_it is valid
    bool shared_held = false;       // the holders are in shared mode (never both modes at once)
    bool closed = false;            // cluster mode: the daemon lacks the key's right
    queue_index::iterator queue_it{};
    std::uint32_t held_shared() const { return shared_held ? held : 0; }
  };
  // A lease or waiter record that belongs to a set has no deadline node of its own: its
  // heap_pos is in_set | the index of its group_rec, which holds the set's one node.
  static constexpr std::uint32_t in_set = 1u << 31;
  static bool is_member(std::uint32_t heap_pos) {
    return heap_pos != nil && (heap_pos & in_set) != 0;
  }
#pragma pack(push, 4)
  struct lease_rec {  // free when token == 0
    std::uint64_t token = 0;
    std::uint32_t entry = nil, owner = nil, ttl_ms = 0;
    std::uint32_t key_next = nil;
    std::uint32_t owner_prev = nil, owner_next = nil;
    std::uint32_t all_prev = nil, all_next = nil;  // every lease, in grant order (for `top`)
    std::uint32_t heap_pos = nil;  // its deadline in deadlines_, or in_set | group
    std::uint32_t set_next = nil;  // the next lease of its set, in the order requested
    std::int64_t granted = 0;      // tick count of the grant, for hold times and `top`
    lock_mode mode = lock_mode::exclusive;
  };
  // One node of the deadline index, a binary min-heap. Each record it names knows its node's
  // position (heap_pos), so an extend moves the node and a release removes it: the heap holds
  // exactly one node per live lease (or set), bounded request and running lock delay.
  struct heap_node {
    std::int64_t when;  // tick count
    std::uint32_t ref;  // kind in the top two bits, slot below
  };
#pragma pack(pop)
  struct waiter_rec {  // one request's place in one key's queue; free when seq == 0
    std::uint64_t seq = 0;  // arrival order, for the invariant checker (one per request)
    std::uint64_t request_id = 0;
    tick arrived{0};        // for the wait-time histogram
    std::uint32_t entry = nil, owner = nil, ttl_ms = 0;
    std::uint32_t key_prev = nil, key_next = nil;
    // The owner's queued requests, in arrival order: only the first record of a set is linked.
    std::uint32_t owner_prev = nil, owner_next = nil;
    std::uint32_t heap_pos = nil;  // nil when waiting without bound; in_set | group in a set
    std::uint32_t set_next = nil;  // the next record of its set, in the order requested
    bool has_request_id = false;
    bool is_try = false;  // a try-lock queued on a closed key (cluster mode)
    lock_mode mode = lock_mode::exclusive;
  };
  // A request or lease over several keys (never one key: those need no group). Its members are
  // the waiter records of a queued request or the lease records of a granted one, chained by
  // set_next from `first` (the first key requested). A grant turns a waiting group into a held
  // one in place.
  struct group_rec {  // free when size == 0
    std::uint32_t first = nil;
    std::uint32_t heap_pos = nil;  // the set's deadline: its ttl when held, its wait_ms else
    std::uint32_t size = 0;        // keys
    bool held = false;
  };
  struct owner_rec {
    std::uint32_t first_lease = nil, last_lease = nil;
    std::uint32_t first_waiter = nil, last_waiter = nil;  // requests, arrival order
    std::uint32_t leases = 0;       // lease records (each key of a set counts one)
    std::uint32_t waiters = 0;      // queued requests
    std::uint32_t waiter_keys = 0;  // waiter records (each key of a queued set counts one)
    bool live = false;
  };
  enum class ref_kind : std::uint32_t { lease = 0, waiter = 1, delay = 2, group = 3 };
  static constexpr std::uint32_t max_slot = (1u << 30) - 1;

  std::uint32_t find_entry(std::string_view key, std::uint32_t hash) const;
  std::uint32_t find_entry(std::string_view key) const { return find_entry(key, hash_of(key)); }
  void index_insert(std::uint32_t e);
  void index_erase(std::uint32_t e);
  void index_resize(std::size_t capacity);
  std::uint32_t new_entry(std::uint32_t hash, std::string_view key, std::uint32_t limit);
  bool in_delay(std::uint32_t e) const { return entries_[e].delay_pos != nil; }
  // No grant may happen on the key now: its lock delay runs or (cluster mode) it is closed.
  bool blocked(std::uint32_t e) const { return in_delay(e) || entries_[e].closed; }
  bool erase_if_idle(std::uint32_t e);
  std::uint32_t find_lease(std::uint32_t e, std::uint64_t token) const;
  // Takes the count by value: packed members must be loaded, never bound to a reference
  // (tick's constructor takes const Rep&, which would be misaligned).
  static tick as_tick(std::int64_t count) { return tick(count); }
  tick deadline_of(std::uint32_t heap_pos) const { return as_tick(deadlines_[heap_pos].when); }
  bool any_due(tick now) const {
    return !deadlines_.empty() && as_tick(deadlines_.front().when) <= now;
  }
  // The deadline node of lease `l` (its set's for a member of a set).
  std::uint32_t lease_node(std::uint32_t l) const {
    std::uint32_t pos = leases_[l].heap_pos;
    return is_member(pos) ? groups_[pos & ~in_set].heap_pos : pos;
  }
  tick lease_deadline(std::uint32_t l) const { return deadline_of(lease_node(l)); }
  // The deadline node of the request that waiter record `w` belongs to, or nil.
  std::uint32_t request_node(std::uint32_t w) const {
    std::uint32_t pos = waiters_[w].heap_pos;
    return is_member(pos) ? groups_[pos & ~in_set].heap_pos : pos;
  }
  // The first record of the request (or lease) that record `r` belongs to.
  std::uint32_t first_waiter_of(std::uint32_t w) const {
    std::uint32_t pos = waiters_[w].heap_pos;
    return is_member(pos) ? groups_[pos & ~in_set].first : w;
  }
  std::uint32_t first_lease_of(std::uint32_t l) const {
    std::uint32_t pos = leases_[l].heap_pos;
    return is_member(pos) ? groups_[pos & ~in_set].first : l;
  }
  // Whether `mode` has room on the key now: exclusive needs a free exclusive slot and no shared
  // holder, shared needs no exclusive holder.
  static bool has_room(const entry_rec& ent, lock_mode mode) {
    return mode == lock_mode::shared ? ent.held == 0 || ent.shared_held
                                     : ent.held < ent.limit && !ent.shared_held;
  }
  // Waiter records of the key that may be granted without one of its leases ending (see
  // reserved_): every shared waiter, and exclusive waiters up to the free exclusive slots.
  static std::uint32_t reserved_of(const entry_rec& ent) {
    const std::uint32_t exclusive_held = ent.held - ent.held_shared();
    return ent.waiting_shared +
           std::min(ent.waiting - ent.waiting_shared, ent.limit - exclusive_held);
  }
  // How much one more waiter record in `mode` raises reserved_of(ent).
  static std::uint32_t reserve_delta(const entry_rec& ent, lock_mode mode) {
    if (mode == lock_mode::shared) return 1;
    return ent.waiting - ent.waiting_shared < ent.limit - (ent.held - ent.held_shared()) ? 1 : 0;
  }
  // Whether `n` more leases (or reserved slots) would pass max_leases.
  bool over_lease_bound(std::size_t n) const {
    return leases_.live() + reserved_ + n > limits_.max_leases;
  }
  acquire_result acquire_one(owner_id owner, const acquire_args& args, std::string_view key,
                             tick now, std::vector<table_event>& events);
  acquire_result queue_one(std::uint32_t e, owner_id owner, const acquire_args& args, tick now);
  acquire_result acquire_set(owner_id owner, const acquire_args& args, tick now,
                             std::vector<table_event>& events);
  std::uint32_t add_lease(std::uint32_t e, std::uint32_t owner, std::uint32_t ttl_ms,
                          lock_mode mode, std::uint64_t token, tick now);
  std::uint64_t grant(std::uint32_t e, std::uint32_t owner, std::uint32_t ttl_ms, lock_mode mode,
                      tick now);
  std::uint64_t grant_request(std::uint32_t w, tick now);
  void unlink_lease(std::uint32_t l);
  void end_lease(std::uint32_t l, tick now, bool lost);
  std::uint32_t new_waiter(std::uint32_t e, std::uint32_t owner, const acquire_args& args,
                           std::uint64_t seq, tick now);
  void link_waiter(std::uint32_t w, bool first_of_request);
  void unlink_waiter(std::uint32_t w, bool first_of_request);
  void remove_request(std::uint32_t w);
  void requeue(std::uint32_t e, int delta, lock_mode mode);
  void set_holders(std::uint32_t e, int delta, lock_mode mode);
  void start_delay(std::uint32_t e, tick now);
  void end_delay(std::uint32_t e);
  void expired_event(std::uint32_t l, std::vector<table_event>& events) const;
  void request_event(std::uint32_t w, event_kind kind, std::vector<table_event>& events) const;
  void expire_lease(std::uint32_t l, tick now, std::vector<table_event>& events);
  void end_due_holders(std::uint32_t e, tick now, std::vector<table_event>& events);
  void expire_front(tick now, std::vector<table_event>& events);
  bool blocked_elsewhere(std::uint32_t w, tick now);
  void promote(std::uint32_t e, tick now, std::vector<table_event>& events);
  void settle(tick now, std::vector<table_event>& events);
  void erase_idle_work();
  bool member_set_is(std::uint32_t l, std::span<const std::string_view> keys) const;
  std::uint32_t find_set_lease(std::span<const std::string_view> keys, std::uint64_t token) const;
  lease_status release_lease(std::uint32_t l, tick now, std::vector<table_event>& events);
  lease_status extend_lease(std::uint32_t l, std::optional<std::uint32_t> ttl_ms, tick now,
                            std::vector<table_event>& events, std::uint32_t* ttl_out);
  void stall(std::uint32_t e);
  void unstall(std::uint32_t e);
  std::uint32_t live_holders(const entry_rec& ent, tick now) const;
  bool grantable(std::uint32_t w) const;

  std::uint32_t heap_push(tick when, ref_kind kind, std::uint32_t slot);
  void heap_remove(std::uint32_t pos);
  void heap_update(std::uint32_t pos, tick when);
  void heap_place(std::uint32_t pos, heap_node node);  // writes node, tells its record
  void heap_sift_up(std::uint32_t pos);
  void heap_sift_down(std::uint32_t pos);

  table_limits limits_;
  token_source& tokens_;
  key_gate* gate_ = nullptr;
  std::uint32_t try_wait_ms_ = 5000;
  hash_seed seed_;
  table_histograms histograms_;
  std::vector<std::uint32_t> index_;  // open addressing, linear probing: entry slot or nil
  std::size_t index_count_ = 0;
  slab<entry_rec> entries_;
  slab<lease_rec> leases_;
  slab<waiter_rec> waiters_;
  slab<group_rec> groups_;
  slab<owner_rec> owners_;
  std::vector<heap_node> deadlines_;
  std::size_t delays_ = 0;  // running lock delays (entries with delay_pos != nil)
  // Every lease in grant order. Tokens increase with grant time and `now` never goes back, so
  // the head is the oldest lease: `top` reads it from the head, and a lease unlinks in O(1).
  std::uint32_t first_granted_ = nil, last_granted_ = nil;
  // Keys with waiters, for `top`: a std::set ordered by (waiting desc, key bytes). A key's
  // node is inserted at its first waiter and stays, at the tail with 0 waiters, until the key
  // leaves the table; a change of its waiter count moves the node with extract + insert
  // (O(log keys), no allocation). So a key cycling between 0 and 1 waiters never allocates,
  // and `top` reads the head and stops at the first key without waiters.
  queue_index queues_;
  // Keys whose grantable head waits for a token (promote() found tokens not ready()).
  std::vector<std::uint32_t> stalled_;
  // Keys whose queue head may have changed (a grant, a lease ending, a request leaving, a lock
  // delay ending) and must be looked at again before the public call returns; settle() works
  // through it to a fixpoint, then erases the keys that became idle. Reused: no allocation in
  // the steady state.
  std::vector<std::uint32_t> work_;
  std::size_t queued_ = 0;  // queued requests (a set counts one)
  // The max_leases bound. "A queued waiter is promoted only into a slot a lease just freed"
  // is not enough on its own: a slot freed during a key's lock delay (or while its grants are
  // stalled, or while a set holds the key's queue back for another of its keys) stays free, and
  // meanwhile another key could take that capacity at once; when the waiter is granted it would
  // be one lease over. And one lease ending may let a whole run of shared waiters in. So waiter
  // records that may be granted without a lease of their key ending count like leases:
  // reserved_ is the sum over keys of reserved_of(key) = shared waiters + min(exclusive
  // waiters, limit - exclusive holders), and
  //   leases + reserved_ <= max_leases
  // always holds: an immediate grant of k keys needs leases + reserved_ + k <= max_leases, and
  // a queued request the rise of reserved_ it causes (else too_many_leases); a grant of k keys
  // turns k reserved records into k leases (at each key the request is a reserved head: the sum
  // is unchanged); a lease that ends lowers leases by one and raises reserved_ by at most one
  // (one exclusive slot; shared waiters were counted already); a waiter that leaves only lowers
  // reserved_. For exclusive single keys this is min(waiting, limit - held), nonzero only while
  // waiters sit at a free slot.
  std::size_t reserved_ = 0;
  std::uint64_t next_seq_ = 1;
  std::uint64_t last_token_ = 0;
  table_counters counters_;
};

}  // namespace keylock
