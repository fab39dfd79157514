// The lock table: every live key's leases and FIFO waiters, and one ordered deadline index.
//
// A plain class: no sockets, no Asio, no logging, no clock. Time comes in as `now` on every
// call, so every behaviour (FIFO, limits, expiry, lock delay, cancel, disconnect, fencing) is
// tested deterministically with a fake clock. The table never calls out except to its
// token_source. Results that concern other connections (a waiter granted because someone
// released, a lease that expired) are returned as table_event values appended to a caller-owned
// vector; the server delivers them.
//
// Invariants (checked by check_invariants(), used by tests and the fuzzer):
//  - a key has at most `limit` holders;
//  - a key has waiters only while it has no free slot or is in its lock delay (so a newcomer
//    never jumps the queue);
//  - a key with no holder, no waiter and no running lock delay is not in the table;
//  - every token handed out is greater than every token before it.
//
// Single-threaded: the daemon calls it on its io_context thread only.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace keylock {

// Monotonic time since an arbitrary epoch. The server passes steady_clock time; tests pass
// whatever they like.
using tick = std::chrono::nanoseconds;

// A party that holds leases and waits: one client connection in the daemon. Opaque handle
// from lock_table::connect(); valid until disconnect().
using owner_id = std::uint32_t;

// Source of fencing tokens. next() must return strictly increasing values below 2^53.
class token_source {
 public:
  virtual ~token_source() = default;
  virtual std::uint64_t next() = 0;
};

// How a lease is held. Only exclusive (up to `limit` holders, each counted) exists in protocol
// v1; a shared (reader) mode is planned and will be a new enumerator, not a new type.
enum class lock_mode : std::uint8_t { exclusive };

struct table_limits {
  std::uint32_t max_keys = 1u << 20;              // live keys
  std::uint32_t max_waiters_per_key = 10000;      // queued acquires on one key
  std::uint32_t max_pending_per_owner = 4096;     // queued acquires of one connection
  std::uint32_t lock_delay_ms = 0;                // see PROTOCOL.md "Lock delay"
};

struct acquire_args {
  std::string_view key;
  std::uint32_t ttl_ms = 30000;
  std::optional<std::uint32_t> wait_ms;  // nullopt: wait until granted; 0: try once
  std::uint32_t limit = 1;
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
  expired,       // a lease ran out: key, token (the lease is gone)
};

// Something the server must tell `owner`. `request_id` is the id of the acquire it answers.
struct table_event {
  event_kind kind = event_kind::granted;
  owner_id owner = 0;
  std::optional<std::uint64_t> request_id;
  std::uint64_t token = 0;
  std::uint32_t ttl_ms = 0;
  std::string key;  // set for `expired` only
};

enum class lease_status : std::uint8_t { ok, not_held };

struct lease_view {
  std::uint64_t token = 0;
  std::uint64_t ttl_ms_left = 0;
  owner_id owner = 0;
};

struct inspect_result {
  std::vector<lease_view> holders;  // in grant order
  std::uint64_t waiters = 0;
  std::uint32_t limit = 0;          // 0 when the key is not live
};

struct table_counters {
  std::uint64_t acquires = 0;
  std::uint64_t grants = 0;
  std::uint64_t releases = 0;
  std::uint64_t timeouts = 0;
  std::uint64_t expirations = 0;
  std::uint64_t cancels = 0;
  std::uint64_t extends = 0;
  std::uint64_t disconnect_releases = 0;
};

class lock_table {
 public:
  lock_table(table_limits limits, token_source& tokens);
  lock_table(const lock_table&) = delete;
  lock_table& operator=(const lock_table&) = delete;

  // A new owner (connection). Never fails.
  owner_id connect();

  // Releases every lease of `owner` (applying the lock delay: these leases were lost, not
  // released), drops its waiters without events, and grants the freed slots to waiters of
  // other owners. The handle is invalid afterwards.
  void disconnect(owner_id owner, tick now, std::vector<table_event>& events);

  // Acquires `args.key` for `owner`. Granted at once when the key has a free slot, nobody
  // waits and no lock delay runs; else queued (wait_ms != 0) or busy (wait_ms == 0). The
  // caller validated ranges (key non-empty, ttl_ms > 0, limit > 0). May append events
  // (a waiter of another owner whose deadline passed is answered first).
  acquire_result acquire(owner_id owner, const acquire_args& args, tick now,
                         std::vector<table_event>& events);

  // Ends the lease `token` on `key`. not_held when no such live lease exists (including one
  // whose deadline has passed: it is expired now, with its event). Grants freed slots.
  lease_status release(std::string_view key, std::uint64_t token, tick now,
                       std::vector<table_event>& events);

  // Makes lease `token` on `key` run out `ttl_ms` from now (nullopt: its last ttl again).
  // On success `*ttl_out` is the ttl applied. not_held as for release.
  lease_status extend(std::string_view key, std::uint64_t token, std::optional<std::uint32_t> ttl_ms,
                      tick now, std::vector<table_event>& events, std::uint32_t* ttl_out);

  // Cancels the oldest queued acquire of `owner` whose request id is `request_id`, appending
  // its `cancelled` event. False when there is none.
  bool cancel(owner_id owner, std::uint64_t request_id, std::vector<table_event>& events);

  // Processes every deadline at or before `now`: lease expiries (`expired` event, then grants),
  // wait timeouts (`wait_timeout` events) and ends of lock delays (grants).
  void expire_due(tick now, std::vector<table_event>& events);

  // The earliest pending deadline, if any. The server arms its one timer for it.
  std::optional<tick> next_deadline();

  // Answers every queued acquire with an `aborted` event and empties every queue (shutdown).
  void abort_waiters(std::vector<table_event>& events);

  inspect_result inspect(std::string_view key, tick now) const;

  std::size_t keys() const { return index_.size(); }
  std::size_t held() const;
  std::size_t waiting() const;
  std::size_t owner_leases(owner_id owner) const;
  std::size_t owner_waiters(owner_id owner) const;
  const table_counters& counters() const { return counters_; }

  // Recomputes every invariant from scratch; returns a description of the first one broken,
  // or an empty string. O(size of the table): for tests and fuzzing.
  std::string check_invariants() const;

 private:
  using digest = std::array<std::uint8_t, 16>;
  struct digest_hash {
    std::size_t operator()(const digest& d) const noexcept;
  };
  static constexpr std::uint32_t nil = 0xffffffffu;

  // Records live in slabs (vectors with free lists) and link to each other by index, so a
  // lease costs one slot and no allocation of its own.
  struct entry_rec {
    digest hash{};
    std::string key;
    std::uint64_t incarnation = 0;  // tells a recycled slot from the one a deadline names
    tick delay_until{0};            // lock delay end; 0 when none runs
    std::uint32_t limit = 0;
    std::uint32_t held = 0;
    std::uint32_t waiting = 0;
    std::uint32_t first_lease = nil, last_lease = nil;
    std::uint32_t first_waiter = nil, last_waiter = nil;
    bool live = false;
  };
  struct lease_rec {
    std::uint64_t token = 0;  // 0 marks a free slot
    tick deadline{0};
    std::uint32_t entry = nil, owner = nil, ttl_ms = 0;
    std::uint32_t key_prev = nil, key_next = nil;
    std::uint32_t owner_prev = nil, owner_next = nil;
  };
  struct waiter_rec {
    std::uint64_t ticket = 0;  // 0 marks a free slot
    std::uint64_t request_id = 0;
    tick deadline{0};          // tick::max() when waiting without bound
    std::uint32_t entry = nil, owner = nil, ttl_ms = 0;
    std::uint32_t key_prev = nil, key_next = nil;
    std::uint32_t owner_prev = nil, owner_next = nil;
    bool has_request_id = false;
    lock_mode mode = lock_mode::exclusive;
  };
  struct owner_rec {
    std::uint32_t first_lease = nil, last_lease = nil;
    std::uint32_t first_waiter = nil, last_waiter = nil;
    std::uint32_t leases = 0, waiters = 0;
    bool live = false;
  };
  // One entry of the deadline index: a binary min-heap with lazy deletion. An item is stale
  // when the record it names was freed or got another deadline; stale items are skipped when
  // they reach the top, and the heap is rebuilt when they outnumber the live ones.
  enum class deadline_kind : std::uint8_t { lease, waiter, delay };
  struct deadline_item {
    tick when;
    std::uint64_t ident;  // lease token, waiter ticket or entry incarnation
    std::uint32_t slot;
    deadline_kind kind;
  };

  template <class T>
  struct slab {
    std::vector<T> items;
    std::vector<std::uint32_t> free;
    std::uint32_t alloc();
    void release(std::uint32_t i);
    std::size_t live() const { return items.size() - free.size(); }
  };

  static digest md5_of(std::string_view key);
  std::uint32_t find_entry(std::string_view key) const;
  std::uint32_t new_entry(const digest& hash, std::string_view key, std::uint32_t limit);
  void erase_if_idle(std::uint32_t e);
  std::uint32_t find_lease(std::uint32_t e, std::uint64_t token) const;
  std::uint64_t grant(std::uint32_t e, std::uint32_t owner, std::uint32_t ttl_ms, tick now);
  void unlink_lease(std::uint32_t l);
  void unlink_waiter(std::uint32_t w);
  void lose_lease(std::uint32_t l, tick now);
  void expire_lease(std::uint32_t l, tick now, std::vector<table_event>& events);
  void promote(std::uint32_t e, tick now, std::vector<table_event>& events);
  void push_deadline(const deadline_item& item);
  bool is_current(const deadline_item& item) const;
  void compact_deadlines();

  table_limits limits_;
  token_source& tokens_;
  std::unordered_map<digest, std::uint32_t, digest_hash> index_;
  slab<entry_rec> entries_;
  slab<lease_rec> leases_;
  slab<waiter_rec> waiters_;
  slab<owner_rec> owners_;
  std::vector<deadline_item> deadlines_;
  std::uint64_t next_ticket_ = 1;
  std::uint64_t next_incarnation_ = 1;
  std::uint64_t last_token_ = 0;
  table_counters counters_;
};

}  // namespace keylock
