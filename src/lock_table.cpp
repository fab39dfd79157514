#include "lock_table.hpp"

#include <algorithm>
#include <string>

#include "metrics.hpp"
#include "siphash.hpp"

namespace keylock {

namespace {

std::uint64_t ms_left(tick deadline, tick now) {
  if (deadline <= now) return 0;
  // Round up: a lease with 0.4 ms left is not "0 ms left" to a reader deciding to renew.
  auto ns = (deadline - now).count();
  return static_cast<std::uint64_t>((ns + 999'999) / 1'000'000);
}

tick ms(std::uint64_t n) { return std::chrono::milliseconds(n); }

constexpr std::size_t min_index_capacity = 16;

}  // namespace

// --- slab ---------------------------------------------------------------------------------

template <class T>
std::uint32_t lock_table::slab<T>::alloc() {
  if (!free_.empty()) {
    std::uint32_t i = free_.back();
    free_.pop_back();
    return i;
  }
  if ((high_water_ >> chunk_bits) == chunks_.size()) chunks_.emplace_back(new T[chunk_mask + 1]);
  return high_water_++;
}

template <class T>
void lock_table::slab<T>::release(std::uint32_t i) {
  (*this)[i] = T{};
  free_.push_back(i);
  if (free_.size() == high_water_ && chunks_.size() > 1) {
    // Everything is free after a burst: give the memory back but the first chunk, so a busy
    // table that empties and refills all the time does not allocate on every cycle.
    chunks_.resize(1);
    chunks_.shrink_to_fit();
    free_.clear();
    free_.shrink_to_fit();
    high_water_ = 0;
  } else if (free_.size() == high_water_) {
    free_.clear();
    high_water_ = 0;
  }
}

// --- key index ----------------------------------------------------------------------------

std::uint32_t lock_table::hash_of(std::string_view key) const {
  return static_cast<std::uint32_t>(siphash24(seed_.k0, seed_.k1, key.data(), key.size()));
}

bool lock_table::queue_order::operator()(std::uint32_t a, std::uint32_t b) const {
  const entry_rec& ea = table->entries_[a];
  const entry_rec& eb = table->entries_[b];
  if (ea.waiting != eb.waiting) return ea.waiting > eb.waiting;
  return ea.key < eb.key;  // char_traits<char>: bytewise, as unsigned char
}

std::uint32_t lock_table::find_entry(std::string_view key, std::uint32_t hash) const {
  if (index_.empty()) return nil;
  const std::size_t mask = index_.size() - 1;
  for (std::size_t pos = hash & mask;; pos = (pos + 1) & mask) {
    std::uint32_t e = index_[pos];
    if (e == nil) return nil;
    const entry_rec& rec = entries_[e];
    if (rec.hash == hash && rec.key == key) return e;
  }
}

void lock_table::index_insert(std::uint32_t e) {
  // Keep the load at most 1/2: linear probing stays short, and 4 bytes a slot is cheap.
  if ((index_count_ + 1) * 2 > index_.size()) {
    index_resize(std::max(min_index_capacity, index_.size() * 2));
  }
  const std::size_t mask = index_.size() - 1;
  std::size_t pos = entries_[e].hash & mask;
  while (index_[pos] != nil) pos = (pos + 1) & mask;
  index_[pos] = e;
  ++index_count_;
}

void lock_table::index_erase(std::uint32_t e) {
  const std::size_t mask = index_.size() - 1;
  std::size_t hole = entries_[e].hash & mask;
  while (index_[hole] != e) hole = (hole + 1) & mask;
  // Backward-shift deletion: move later members of the probe run into the hole when their
  // home position does not lie cyclically within (hole, j].
  for (std::size_t j = (hole + 1) & mask; index_[j] != nil; j = (j + 1) & mask) {
    std::size_t home = entries_[index_[j]].hash & mask;
    bool stays = hole < j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (!stays) {
      index_[hole] = index_[j];
      hole = j;
    }
  }
  index_[hole] = nil;
  --index_count_;
  if (index_count_ == 0 && index_.size() > 1024) {
    index_.clear();
    index_.shrink_to_fit();
  } else if (index_.size() > min_index_capacity && index_count_ * 8 < index_.size()) {
    index_resize(index_.size() / 4);
  }
}

void lock_table::index_resize(std::size_t capacity) {
  std::vector<std::uint32_t> old = std::move(index_);
  index_.assign(capacity, nil);
  const std::size_t mask = capacity - 1;
  for (std::uint32_t e : old) {
    if (e == nil) continue;
    std::size_t pos = entries_[e].hash & mask;
    while (index_[pos] != nil) pos = (pos + 1) & mask;
    index_[pos] = e;
  }
}

std::uint32_t lock_table::new_entry(std::uint32_t hash, std::string_view key,
                                    std::uint32_t limit) {
  std::uint32_t e = entries_.alloc();
  entry_rec& rec = entries_[e];
  rec.key.assign(key);
  rec.hash = hash;
  rec.limit = limit;
  index_insert(e);
  return e;
}

bool lock_table::erase_if_idle(std::uint32_t e) {
  const entry_rec& rec = entries_[e];
  if (rec.held != 0 || rec.waiting != 0 || in_delay(e)) return false;
  if (rec.stall_pos != nil) unstall(e);
  if (rec.in_queues) queues_.erase(rec.queue_it);
  index_erase(e);
  entries_.release(e);
  return true;
}

// --- deadline heap ------------------------------------------------------------------------

void lock_table::heap_place(std::uint32_t pos, heap_node node) {
  deadlines_[pos] = node;
  std::uint32_t slot = node.ref & max_slot;
  switch (static_cast<ref_kind>(node.ref >> 30)) {
    case ref_kind::lease:
      leases_[slot].heap_pos = pos;
      break;
    case ref_kind::waiter:
      waiters_[slot].heap_pos = pos;
      break;
    case ref_kind::delay:
      entries_[slot].delay_pos = pos;
      break;
  }
}

void lock_table::heap_sift_up(std::uint32_t pos) {
  heap_node node = deadlines_[pos];
  while (pos > 0) {
    std::uint32_t parent = (pos - 1) / 2;
    if (deadlines_[parent].when <= node.when) break;
    heap_place(pos, deadlines_[parent]);
    pos = parent;
  }
  heap_place(pos, node);
}

void lock_table::heap_sift_down(std::uint32_t pos) {
  heap_node node = deadlines_[pos];
  const auto n = static_cast<std::uint32_t>(deadlines_.size());
  for (;;) {
    std::uint32_t child = 2 * pos + 1;
    if (child >= n) break;
    if (child + 1 < n && deadlines_[child + 1].when < deadlines_[child].when) ++child;
    if (node.when <= deadlines_[child].when) break;
    heap_place(pos, deadlines_[child]);
    pos = child;
  }
  heap_place(pos, node);
}

std::uint32_t lock_table::heap_push(tick when, ref_kind kind, std::uint32_t slot) {
  auto pos = static_cast<std::uint32_t>(deadlines_.size());
  deadlines_.push_back({when.count(), (static_cast<std::uint32_t>(kind) << 30) | slot});
  heap_sift_up(pos);
  return pos;
}

void lock_table::heap_remove(std::uint32_t pos) {
  auto last = static_cast<std::uint32_t>(deadlines_.size() - 1);
  if (pos != last) {
    heap_node moved = deadlines_[last];
    deadlines_.pop_back();
    heap_place(pos, moved);
    heap_sift_up(pos);
    heap_sift_down(pos);  // a no-op when the moved node went up
  } else {
    deadlines_.pop_back();
  }
  if (deadlines_.empty() && deadlines_.capacity() > 4096) deadlines_.shrink_to_fit();
}

void lock_table::heap_update(std::uint32_t pos, tick when) {
  std::int64_t old = deadlines_[pos].when;
  deadlines_[pos].when = when.count();
  if (when.count() < old) {
    heap_sift_up(pos);
  } else {
    heap_sift_down(pos);
  }
}

// --- leases and waiters -------------------------------------------------------------------

lock_table::lock_table(table_limits limits, token_source& tokens, table_histograms histograms,
                       hash_seed seed)
    : limits_(limits),
      tokens_(tokens),
      seed_(seed),
      histograms_(histograms),
      queues_(queue_order{this}) {
  // Lease slots are 30-bit references in heap nodes; the bound keeps them in range.
  limits_.max_leases = std::min(limits_.max_leases, max_slot - 1);
}

owner_id lock_table::connect() {
  std::uint32_t o = owners_.alloc();
  owners_[o].live = true;
  return o;
}

std::size_t lock_table::held() const { return leases_.live(); }
std::size_t lock_table::waiting() const { return waiters_.live(); }
std::size_t lock_table::owner_leases(owner_id owner) const { return owners_[owner].leases; }
std::size_t lock_table::owner_waiters(owner_id owner) const { return owners_[owner].waiters; }

std::size_t lock_table::held(tick now) const {
  // The due nodes of a min-heap form a subtree at its root: walk only that subtree, in
  // preorder without a stack (climb back up until a right sibling is due).
  const std::size_t n = deadlines_.size();
  auto due = [&](std::size_t i) { return i < n && deadlines_[i].when <= now.count(); };
  std::size_t due_leases = 0;
  if (due(0)) {
    std::size_t i = 0;
    for (;;) {
      due_leases += static_cast<ref_kind>(deadlines_[i].ref >> 30) == ref_kind::lease;
      if (due(2 * i + 1)) {
        i = 2 * i + 1;
        continue;
      }
      if (due(2 * i + 2)) {
        i = 2 * i + 2;
        continue;
      }
      while (i != 0 && !(i % 2 == 1 && due(i + 1))) i = (i - 1) / 2;
      if (i == 0) break;
      ++i;  // the due right sibling
    }
  }
  return leases_.live() - due_leases;
}

std::uint32_t lock_table::find_lease(std::uint32_t e, std::uint64_t token) const {
  for (std::uint32_t l = entries_[e].first_lease; l != nil; l = leases_[l].key_next) {
    if (leases_[l].token == token) return l;
  }
  return nil;
}

std::uint32_t lock_table::live_holders(const entry_rec& ent, tick now) const {
  if (!any_due(now)) return ent.held;  // the common case: nothing anywhere is due
  std::uint32_t n = 0;
  for (std::uint32_t l = ent.first_lease; l != nil; l = leases_[l].key_next) {
    n += deadline_of(leases_[l].heap_pos) > now;
  }
  return n;
}

std::uint64_t lock_table::grant(std::uint32_t e, std::uint32_t owner, std::uint32_t ttl_ms,
                                tick now) {
  std::uint32_t l = leases_.alloc();
  std::uint64_t token = tokens_.next();
  last_token_ = token;
  lease_rec& rec = leases_[l];
  entry_rec& ent = entries_[e];
  owner_rec& own = owners_[owner];
  rec.token = token;
  rec.entry = e;
  rec.owner = owner;
  rec.ttl_ms = ttl_ms;
  rec.granted = now.count();
  if (ent.last_lease != nil) {
    leases_[ent.last_lease].key_next = l;
  } else {
    ent.first_lease = l;
  }
  ent.last_lease = l;
  rec.owner_prev = own.last_lease;
  if (own.last_lease != nil) {
    leases_[own.last_lease].owner_next = l;
  } else {
    own.first_lease = l;
  }
  own.last_lease = l;
  rec.all_prev = last_granted_;
  (last_granted_ != nil ? leases_[last_granted_].all_next : first_granted_) = l;
  last_granted_ = l;
  reserved_ -= reserved_of(ent);
  ++ent.held;
  reserved_ += reserved_of(ent);
  ++own.leases;
  ++counters_.grants;
  heap_push(now + ms(ttl_ms), ref_kind::lease, l);
  return token;
}

void lock_table::unlink_lease(std::uint32_t l, tick now) {
  lease_rec& rec = leases_[l];
  if (histograms_.hold) histograms_.hold->observe(now - as_tick(rec.granted));
  entry_rec& ent = entries_[rec.entry];
  owner_rec& own = owners_[rec.owner];
  // The key's holder list is singly linked: find the predecessor (holders <= limit).
  std::uint32_t prev = nil;
  for (std::uint32_t i = ent.first_lease; i != l; i = leases_[i].key_next) prev = i;
  (prev != nil ? leases_[prev].key_next : ent.first_lease) = rec.key_next;
  if (ent.last_lease == l) ent.last_lease = prev;
  (rec.owner_prev != nil ? leases_[rec.owner_prev].owner_next : own.first_lease) = rec.owner_next;
  (rec.owner_next != nil ? leases_[rec.owner_next].owner_prev : own.last_lease) = rec.owner_prev;
  (rec.all_prev != nil ? leases_[rec.all_prev].all_next : first_granted_) = rec.all_next;
  (rec.all_next != nil ? leases_[rec.all_next].all_prev : last_granted_) = rec.all_prev;
  reserved_ -= reserved_of(ent);
  --ent.held;
  reserved_ += reserved_of(ent);
  --own.leases;
  heap_remove(rec.heap_pos);
  leases_.release(l);
}

// Moves the key's node in queues_ for a change of its waiter count by `delta` (+1 or -1).
// extract + insert reuses the node: no allocation but the key's first waiter ever.
void lock_table::requeue(std::uint32_t e, int delta) {
  entry_rec& ent = entries_[e];
  reserved_ -= reserved_of(ent);
  if (ent.in_queues) {
    auto node = queues_.extract(ent.queue_it);
    ent.waiting = static_cast<std::uint32_t>(static_cast<std::int64_t>(ent.waiting) + delta);
    ent.queue_it = queues_.insert(std::move(node)).position;
  } else {
    ent.waiting = static_cast<std::uint32_t>(static_cast<std::int64_t>(ent.waiting) + delta);
    ent.queue_it = queues_.insert(e).first;
    ent.in_queues = true;
  }
  reserved_ += reserved_of(ent);
}

void lock_table::link_waiter(std::uint32_t w) {
  waiter_rec& rec = waiters_[w];
  entry_rec& ent = entries_[rec.entry];
  owner_rec& own = owners_[rec.owner];
  rec.key_prev = ent.last_waiter;
  (ent.last_waiter != nil ? waiters_[ent.last_waiter].key_next : ent.first_waiter) = w;
  ent.last_waiter = w;
  rec.owner_prev = own.last_waiter;
  (own.last_waiter != nil ? waiters_[own.last_waiter].owner_next : own.first_waiter) = w;
  own.last_waiter = w;
  ++own.waiters;
  requeue(rec.entry, +1);
}

void lock_table::unlink_waiter(std::uint32_t w) {
  waiter_rec& rec = waiters_[w];
  entry_rec& ent = entries_[rec.entry];
  owner_rec& own = owners_[rec.owner];
  (rec.key_prev != nil ? waiters_[rec.key_prev].key_next : ent.first_waiter) = rec.key_next;
  (rec.key_next != nil ? waiters_[rec.key_next].key_prev : ent.last_waiter) = rec.key_prev;
  (rec.owner_prev != nil ? waiters_[rec.owner_prev].owner_next : own.first_waiter) =
      rec.owner_next;
  (rec.owner_next != nil ? waiters_[rec.owner_next].owner_prev : own.last_waiter) =
      rec.owner_prev;
  --own.waiters;
  requeue(rec.entry, -1);
  if (rec.heap_pos != nil) heap_remove(rec.heap_pos);
  waiters_.release(w);
}

// A lease that ends without a release (expiry, disconnect): start the key's lock delay.
void lock_table::lose_lease(std::uint32_t l, tick now) {
  std::uint32_t e = leases_[l].entry;
  unlink_lease(l, now);
  if (limits_.lock_delay_ms == 0) return;
  tick until = now + ms(limits_.lock_delay_ms);
  std::uint32_t pos = entries_[e].delay_pos;
  if (pos == nil) {
    ++delays_;
    heap_push(until, ref_kind::delay, e);  // records the node's position in delay_pos
  } else if (until > deadline_of(pos)) {
    heap_update(pos, until);
  }
}

void lock_table::end_delay(std::uint32_t e) {
  std::uint32_t pos = entries_[e].delay_pos;
  entries_[e].delay_pos = nil;  // first: heap_remove must not record a position for this node
  --delays_;
  heap_remove(pos);
}

void lock_table::stall(std::uint32_t e) {
  entry_rec& ent = entries_[e];
  if (ent.stall_pos != nil) return;
  ent.stall_pos = static_cast<std::uint32_t>(stalled_.size());
  stalled_.push_back(e);
}

void lock_table::unstall(std::uint32_t e) {
  std::uint32_t pos = entries_[e].stall_pos;
  std::uint32_t moved = stalled_.back();
  stalled_[pos] = moved;
  entries_[moved].stall_pos = pos;
  stalled_.pop_back();
  entries_[e].stall_pos = nil;
}

void lock_table::expire_lease(std::uint32_t l, tick now, std::vector<table_event>& events) {
  const lease_rec& rec = leases_[l];
  std::uint32_t e = rec.entry;
  table_event ev;
  ev.kind = event_kind::expired;
  ev.owner = rec.owner;
  ev.token = rec.token;
  ev.key = entries_[e].key;
  events.push_back(std::move(ev));
  ++counters_.expirations;
  lose_lease(l, now);
  promote(e, now, events);
  erase_if_idle(e);
}

// Expires the holders of `e` whose deadline has passed (their timers have not run yet), then
// grants the freed slots. Returns false when `e` left the table.
bool lock_table::expire_due_holders(std::uint32_t e, tick now, std::vector<table_event>& events) {
  bool any = false;
  for (std::uint32_t l = entries_[e].first_lease; l != nil;) {
    const lease_rec& rec = leases_[l];
    std::uint32_t next = rec.key_next;
    if (deadline_of(rec.heap_pos) <= now) {
      table_event ev;
      ev.kind = event_kind::expired;
      ev.owner = rec.owner;
      ev.token = rec.token;
      ev.key = entries_[e].key;
      events.push_back(std::move(ev));
      ++counters_.expirations;
      lose_lease(l, now);
      any = true;
    }
    l = next;
  }
  if (any) promote(e, now, events);
  return !erase_if_idle(e);
}

// Processes the earliest deadline (it must be due).
void lock_table::expire_front(tick now, std::vector<table_event>& events) {
  std::uint32_t ref = deadlines_.front().ref;
  std::uint32_t slot = ref & max_slot;
  switch (static_cast<ref_kind>(ref >> 30)) {
    case ref_kind::lease:
      expire_lease(slot, now, events);
      break;
    case ref_kind::waiter: {
      const waiter_rec& rec = waiters_[slot];
      table_event ev;
      ev.kind = event_kind::wait_timeout;
      ev.owner = rec.owner;
      if (rec.has_request_id) ev.request_id = rec.request_id;
      events.push_back(std::move(ev));
      ++counters_.timeouts;
      std::uint32_t e = rec.entry;
      unlink_waiter(slot);
      erase_if_idle(e);
      break;
    }
    case ref_kind::delay:
      promote(slot, now, events);  // ends the delay, then grants
      erase_if_idle(slot);
      break;
  }
}

// Grants free slots of `e` to its waiters in arrival order. A waiter whose own deadline has
// passed (the timer has not run yet) is answered `wait_timeout` instead: it must not get a
// lease it no longer waits for. While tokens are not ready() the key is stalled instead of
// granted, and resume_grants() comes back to it.
void lock_table::promote(std::uint32_t e, tick now, std::vector<table_event>& events) {
  if (in_delay(e)) {
    if (deadline_of(entries_[e].delay_pos) > now) return;
    end_delay(e);
  }
  for (;;) {
    const entry_rec& ent = entries_[e];
    if (ent.first_waiter == nil || ent.held >= ent.limit) break;
    std::uint32_t w = ent.first_waiter;
    const waiter_rec& wr = waiters_[w];
    table_event ev;
    ev.owner = wr.owner;
    if (wr.has_request_id) ev.request_id = wr.request_id;
    if (wr.heap_pos != nil && deadline_of(wr.heap_pos) <= now) {
      ev.kind = event_kind::wait_timeout;
      ++counters_.timeouts;
      unlink_waiter(w);
    } else if (!tokens_.ready()) {
      stall(e);
      return;
    } else {
      ev.kind = event_kind::granted;
      ev.ttl_ms = wr.ttl_ms;
      if (histograms_.wait) histograms_.wait->observe(now - wr.arrived);
      std::uint32_t owner = wr.owner;
      unlink_waiter(w);
      ev.token = grant(e, owner, ev.ttl_ms, now);
    }
    events.push_back(std::move(ev));
  }
  if (entries_[e].stall_pos != nil) unstall(e);
}

void lock_table::resume_grants(tick now, std::vector<table_event>& events) {
  // promote() re-stalls a key if tokens run out again midway; the loop then stops.
  while (!stalled_.empty() && tokens_.ready()) {
    std::uint32_t e = stalled_.back();
    unstall(e);
    promote(e, now, events);
    erase_if_idle(e);
  }
}

acquire_result lock_table::acquire(owner_id owner, const acquire_args& args, tick now,
                                   std::vector<table_event>& events) {
  ++counters_.acquires;
  if (!tokens_.ready()) return {acquire_status::unavailable, 0};
  // At the lease bound, deadlines that are due but whose timer has not run yet are processed
  // now: a lease that is over must not count against the bound.
  while (at_lease_bound() && any_due(now)) expire_front(now, events);
  std::uint32_t hash = hash_of(args.key);
  std::uint32_t e = find_entry(args.key, hash);
  if (e != nil) {
    // Holders whose deadline passed, and a lock delay that ran out, end now: their timers are
    // late, and a try-lock must not be refused because of a lease that is over.
    if (any_due(now) && !expire_due_holders(e, now, events)) e = nil;
    if (e != nil && in_delay(e) && deadline_of(entries_[e].delay_pos) <= now) {
      promote(e, now, events);
      if (erase_if_idle(e)) e = nil;
    }
  }
  if (e != nil && entries_[e].limit != args.limit) return {acquire_status::conflict, 0};
  const owner_rec& own = owners_[owner];
  if (own.leases + own.waiters >= limits_.max_leases_per_owner) {
    return {acquire_status::too_many_owner_leases, 0};
  }
  if (e == nil) {
    if (index_count_ >= limits_.max_keys || entries_.high_water() >= max_slot) {
      return {acquire_status::too_many_keys, 0};
    }
    if (at_lease_bound()) return {acquire_status::too_many_leases, 0};
    e = new_entry(hash, args.key, args.limit);
    if (histograms_.wait) histograms_.wait->observe(tick{0});
    return {acquire_status::granted, grant(e, owner, args.ttl_ms, now)};
  }
  const entry_rec& ent = entries_[e];
  const bool free_slot = ent.held < ent.limit;
  if (free_slot && ent.first_waiter == nil && !in_delay(e)) {
    if (at_lease_bound()) return {acquire_status::too_many_leases, 0};
    if (histograms_.wait) histograms_.wait->observe(tick{0});
    return {acquire_status::granted, grant(e, owner, args.ttl_ms, now)};
  }
  if (args.wait_ms && *args.wait_ms == 0) {
    ++counters_.timeouts;
    return {acquire_status::busy, 0};
  }
  if (ent.waiting >= limits_.max_waiters_per_key) return {acquire_status::too_many_waiters, 0};
  if (own.waiters >= limits_.max_pending_per_owner) {
    return {acquire_status::too_many_pending, 0};
  }
  if (waiters_.high_water() >= max_slot) return {acquire_status::too_many_waiters, 0};
  // A waiter queued at a free slot (lock delay or stall) will be granted without another
  // lease ending: it reserves that slot (see reserved_).
  if (ent.waiting < ent.limit - ent.held && at_lease_bound()) {
    return {acquire_status::too_many_leases, 0};
  }

  std::uint32_t w = waiters_.alloc();
  waiter_rec& rec = waiters_[w];
  rec.seq = next_seq_++;
  rec.arrived = now;
  rec.request_id = args.request_id.value_or(0);
  rec.has_request_id = args.request_id.has_value();
  rec.entry = e;
  rec.owner = owner;
  rec.ttl_ms = args.ttl_ms;
  rec.mode = args.mode;
  link_waiter(w);
  if (args.wait_ms) heap_push(now + ms(*args.wait_ms), ref_kind::waiter, w);
  return {acquire_status::queued, 0};
}

lease_status lock_table::release(std::string_view key, std::uint64_t token, tick now,
                                 std::vector<table_event>& events) {
  std::uint32_t e = find_entry(key);
  if (e == nil) return lease_status::not_held;
  std::uint32_t l = find_lease(e, token);
  if (l == nil) return lease_status::not_held;
  if (deadline_of(leases_[l].heap_pos) <= now) {
    expire_lease(l, now, events);
    return lease_status::not_held;
  }
  unlink_lease(l, now);
  ++counters_.releases;
  promote(e, now, events);
  erase_if_idle(e);
  return lease_status::ok;
}

lease_status lock_table::extend(std::string_view key, std::uint64_t token,
                                std::optional<std::uint32_t> ttl_ms, tick now,
                                std::vector<table_event>& events, std::uint32_t* ttl_out) {
  std::uint32_t e = find_entry(key);
  if (e == nil) return lease_status::not_held;
  std::uint32_t l = find_lease(e, token);
  if (l == nil) return lease_status::not_held;
  lease_rec& rec = leases_[l];
  if (deadline_of(rec.heap_pos) <= now) {
    expire_lease(l, now, events);
    return lease_status::not_held;
  }
  if (ttl_ms) rec.ttl_ms = *ttl_ms;
  ++counters_.extends;
  if (ttl_out) *ttl_out = rec.ttl_ms;
  heap_update(rec.heap_pos, now + ms(rec.ttl_ms));
  return lease_status::ok;
}

bool lock_table::cancel(owner_id owner, std::uint64_t request_id,
                        std::vector<table_event>& events) {
  for (std::uint32_t w = owners_[owner].first_waiter; w != nil; w = waiters_[w].owner_next) {
    const waiter_rec& rec = waiters_[w];
    if (!rec.has_request_id || rec.request_id != request_id) continue;
    table_event ev;
    ev.kind = event_kind::cancelled;
    ev.owner = owner;
    ev.request_id = request_id;
    events.push_back(std::move(ev));
    std::uint32_t e = rec.entry;
    unlink_waiter(w);
    ++counters_.cancels;
    erase_if_idle(e);
    return true;
  }
  return false;
}

void lock_table::cancel_waiters(owner_id owner, std::vector<table_event>& events) {
  // A waiter leaving never frees a slot, so nobody is granted here.
  while (owners_[owner].first_waiter != nil) {
    std::uint32_t w = owners_[owner].first_waiter;
    const waiter_rec& rec = waiters_[w];
    table_event ev;
    ev.kind = event_kind::cancelled;
    ev.owner = owner;
    if (rec.has_request_id) ev.request_id = rec.request_id;
    events.push_back(std::move(ev));
    std::uint32_t e = rec.entry;
    unlink_waiter(w);
    ++counters_.cancels;
    erase_if_idle(e);
  }
}

void lock_table::disconnect(owner_id owner, tick now, std::vector<table_event>& events) {
  // Waiters first, so that the slots freed below are not granted back to this owner.
  while (owners_[owner].first_waiter != nil) {
    std::uint32_t w = owners_[owner].first_waiter;
    std::uint32_t e = waiters_[w].entry;
    unlink_waiter(w);
    erase_if_idle(e);
  }
  while (owners_[owner].first_lease != nil) {
    std::uint32_t l = owners_[owner].first_lease;
    std::uint32_t e = leases_[l].entry;
    ++counters_.disconnect_releases;
    lose_lease(l, now);
    promote(e, now, events);
    erase_if_idle(e);
  }
  owners_.release(owner);
}

void lock_table::abort_waiters(std::vector<table_event>& events) {
  for (std::uint32_t w = 0; w < waiters_.high_water(); ++w) {
    const waiter_rec& rec = waiters_[w];
    if (rec.seq == 0) continue;
    table_event ev;
    ev.kind = event_kind::aborted;
    ev.owner = rec.owner;
    if (rec.has_request_id) ev.request_id = rec.request_id;
    events.push_back(std::move(ev));
    std::uint32_t e = rec.entry;
    unlink_waiter(w);
    erase_if_idle(e);
    if (waiters_.high_water() == 0) break;  // the slab gave its memory back
  }
}

std::optional<tick> lock_table::next_deadline() {
  if (deadlines_.empty()) return std::nullopt;
  return as_tick(deadlines_.front().when);
}

bool lock_table::expire_due(tick now, std::vector<table_event>& events,
                            std::size_t max_deadlines) {
  for (std::size_t done = 0; done < max_deadlines && any_due(now); ++done) {
    expire_front(now, events);
  }
  return any_due(now);
}

inspect_result lock_table::inspect(std::string_view key, tick now) const {
  inspect_result out;
  std::uint32_t e = find_entry(key);
  if (e == nil) return out;
  const entry_rec& ent = entries_[e];
  out.limit = ent.limit;
  out.waiters = ent.waiting;
  out.holders.reserve(ent.held);
  for (std::uint32_t l = ent.first_lease; l != nil; l = leases_[l].key_next) {
    const lease_rec& rec = leases_[l];
    tick deadline = deadline_of(rec.heap_pos);
    if (deadline <= now) continue;  // over: its timer has not run yet
    out.holders.push_back({rec.token, ms_left(deadline, now), rec.owner});
  }
  return out;
}

top_result lock_table::top(std::size_t n, tick now) const {
  top_result out;
  if (n == 0) return out;
  // queues_ is in the documented order; keys without waiters sit at its tail.
  for (std::uint32_t e : queues_) {
    const entry_rec& ent = entries_[e];
    if (ent.waiting == 0 || out.queues.size() == n) break;
    out.queues.push_back({ent.key, ent.waiting, live_holders(ent, now), ent.limit});
  }
  // Grant order is token order and, as `now` never goes back, longest-held-first order.
  for (std::uint32_t l = first_granted_; l != nil && out.oldest.size() < n;
       l = leases_[l].all_next) {
    const lease_rec& rec = leases_[l];
    tick deadline = deadline_of(rec.heap_pos);
    if (deadline <= now) continue;  // over: its timer has not run yet
    out.oldest.push_back({entries_[rec.entry].key, rec.token, now - as_tick(rec.granted),
                          ms_left(deadline, now), rec.owner});
  }
  return out;
}

std::string lock_table::check_invariants() const {
  std::size_t live_entries = 0;
  std::size_t leases_seen = 0;
  std::size_t waiters_seen = 0;
  std::size_t delays_seen = 0;
  std::size_t stalled_seen = 0;
  std::size_t queued_keys = 0;
  std::size_t reserved = 0;
  for (std::uint32_t e = 0; e < entries_.high_water(); ++e) {
    const entry_rec& ent = entries_[e];
    if (ent.limit == 0) continue;
    ++live_entries;
    if (find_entry(ent.key) != e) return "entry '" + ent.key + "' not found through the index";
    if (ent.hash != hash_of(ent.key)) return "entry '" + ent.key + "' has a stale hash";
    std::uint32_t held = 0;
    std::uint32_t last = nil;
    std::uint64_t prev_token = 0;
    for (std::uint32_t l = ent.first_lease; l != nil; l = leases_[l].key_next) {
      const lease_rec& rec = leases_[l];
      if (rec.entry != e) return "lease linked into the wrong key";
      if (rec.token <= prev_token) return "holders not in token order";
      if (rec.token > last_token_) return "lease token above the last token issued";
      if (rec.heap_pos >= deadlines_.size() ||
          deadlines_[rec.heap_pos].ref != ((static_cast<std::uint32_t>(ref_kind::lease) << 30) | l)) {
        return "lease without its deadline node";
      }
      prev_token = rec.token;
      last = l;
      ++held;
    }
    if (last != ent.last_lease) return "holder list tail is wrong on '" + ent.key + "'";
    if (held != ent.held) return "holder count mismatch on '" + ent.key + "'";
    if (held > ent.limit) return "more holders than the limit on '" + ent.key + "'";
    std::uint32_t waiting = 0;
    std::uint64_t prev_seq = 0;
    for (std::uint32_t w = ent.first_waiter; w != nil; w = waiters_[w].key_next) {
      const waiter_rec& rec = waiters_[w];
      if (rec.entry != e) return "waiter linked into the wrong key";
      if (rec.seq <= prev_seq) return "waiters out of arrival order";
      if (rec.heap_pos != nil &&
          (rec.heap_pos >= deadlines_.size() ||
           deadlines_[rec.heap_pos].ref !=
               ((static_cast<std::uint32_t>(ref_kind::waiter) << 30) | w))) {
        return "waiter with a wrong deadline node";
      }
      prev_seq = rec.seq;
      ++waiting;
    }
    if (waiting != ent.waiting) return "waiter count mismatch on '" + ent.key + "'";
    const bool stalled = ent.stall_pos != nil;
    if (waiting > 0 && held < ent.limit && !in_delay(e) && !stalled) {
      return "waiters queued behind a free slot on '" + ent.key + "'";
    }
    if (held == 0 && waiting == 0 && !in_delay(e)) {
      return "idle key '" + ent.key + "' left in the table";
    }
    if (in_delay(e)) {
      ++delays_seen;
      if (ent.delay_pos >= deadlines_.size() ||
          deadlines_[ent.delay_pos].ref !=
              ((static_cast<std::uint32_t>(ref_kind::delay) << 30) | e)) {
        return "lock delay without its deadline node on '" + ent.key + "'";
      }
    }
    if (stalled) {
      ++stalled_seen;
      if (ent.stall_pos >= stalled_.size() || stalled_[ent.stall_pos] != e) {
        return "stalled key '" + ent.key + "' not at its place in the stalled list";
      }
    }
    if (waiting > 0 && !ent.in_queues) return "key with waiters missing from the queue index";
    if (ent.in_queues) {
      ++queued_keys;
      if (*ent.queue_it != e) return "queue index node of '" + ent.key + "' names another key";
    }
    reserved += reserved_of(ent);
    leases_seen += held;
    waiters_seen += waiting;
  }
  if (live_entries != index_count_) return "index count differs from live entries";
  std::size_t in_index = 0;
  for (std::uint32_t e : index_) in_index += e != nil;
  if (in_index != index_count_) return "index slots differ from its count";
  if (leases_seen != leases_.live()) return "lease slab count differs from linked leases";
  if (waiters_seen != waiters_.live()) return "waiter slab count differs from linked waiters";
  if (delays_seen != delays_) return "lock delay count differs from keys in their delay";
  if (stalled_seen != stalled_.size()) return "stalled list holds keys not marked stalled";
  if (reserved != reserved_) return "reserved slot count is stale";
  if (leases_.live() + reserved_ > limits_.max_leases) return "more leases than max_leases";

  // The queue index: exactly the keys that ever had a waiter, in (waiting desc, key) order.
  if (queued_keys != queues_.size()) return "queue index holds keys that left the table";
  const queue_order order{this};
  std::uint32_t prev_e = nil;
  for (std::uint32_t e : queues_) {
    if (entries_[e].limit == 0 || !entries_[e].in_queues) return "queue index names a free key";
    if (prev_e != nil && !order(prev_e, e)) return "queue index out of order";
    prev_e = e;
  }

  // The grant-order list: every lease once, tokens (and grant times) increasing.
  std::size_t in_list = 0;
  std::uint32_t prev_l = nil;
  for (std::uint32_t l = first_granted_; l != nil; l = leases_[l].all_next) {
    const lease_rec& rec = leases_[l];
    if (rec.token == 0) return "grant-order list names a free lease";
    if (rec.all_prev != prev_l) return "grant-order list back link is wrong";
    if (prev_l != nil && (leases_[prev_l].token >= rec.token ||
                          leases_[prev_l].granted > rec.granted)) {
      return "grant-order list out of order";
    }
    prev_l = l;
    if (++in_list > leases_.live()) return "grant-order list has a cycle";
  }
  if (prev_l != last_granted_) return "grant-order list tail is wrong";
  if (in_list != leases_.live()) return "grant-order list misses leases";

  for (std::size_t i = 1; i < deadlines_.size(); ++i) {
    if (deadlines_[(i - 1) / 2].when > deadlines_[i].when) return "deadline heap out of order";
  }
  std::size_t bounded_waiters = 0;
  for (std::uint32_t w = 0; w < waiters_.high_water(); ++w) {
    bounded_waiters += waiters_[w].seq != 0 && waiters_[w].heap_pos != nil;
  }
  if (deadlines_.size() != leases_.live() + bounded_waiters + delays_) {
    return "deadline heap holds stale nodes";
  }
  std::size_t owner_leases_seen = 0;
  std::size_t owner_waiters_seen = 0;
  for (std::uint32_t o = 0; o < owners_.high_water(); ++o) {
    const owner_rec& own = owners_[o];
    if (!own.live) continue;
    std::uint32_t n = 0;
    for (std::uint32_t l = own.first_lease; l != nil; l = leases_[l].owner_next) {
      if (leases_[l].owner != o) return "lease linked to the wrong owner";
      ++n;
    }
    if (n != own.leases) return "owner lease count mismatch";
    owner_leases_seen += n;
    n = 0;
    for (std::uint32_t w = own.first_waiter; w != nil; w = waiters_[w].owner_next) {
      if (waiters_[w].owner != o) return "waiter linked to the wrong owner";
      ++n;
    }
    if (n != own.waiters) return "owner waiter count mismatch";
    owner_waiters_seen += n;
    if (own.leases + own.waiters > limits_.max_leases_per_owner) {
      return "owner above max_leases_per_owner";
    }
  }
  if (owner_leases_seen != leases_.live()) return "leases not owned by a live owner";
  if (owner_waiters_seen != waiters_.live()) return "waiters not owned by a live owner";
  return {};
}

}  // namespace keylock
