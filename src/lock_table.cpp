#include "lock_table.hpp"

// MD5() is deprecated in OpenSSL 3 in favour of EVP, whose one-shot call allocates a context on
// every digest. Keys are hashed on every request, so we keep the allocation-free low-level call.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/md5.h>

#include <algorithm>
#include <cstring>
#include <string>

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

std::uint32_t lock_table::hash_of(std::string_view key) {
  unsigned char d[MD5_DIGEST_LENGTH];
  MD5(reinterpret_cast<const unsigned char*>(key.data()), key.size(), d);
  std::uint32_t h;
  std::memcpy(&h, d, sizeof h);
  return h;
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

void lock_table::erase_if_idle(std::uint32_t e) {
  const entry_rec& rec = entries_[e];
  if (rec.held != 0 || rec.waiting != 0 || in_delay(e)) return;
  index_erase(e);
  entries_.release(e);
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
      delays_[slot] = pos;
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

lock_table::lock_table(table_limits limits, token_source& tokens)
    : limits_(limits), tokens_(tokens) {}

owner_id lock_table::connect() {
  std::uint32_t o = owners_.alloc();
  owners_[o].live = true;
  return o;
}

std::size_t lock_table::held() const { return leases_.live(); }
std::size_t lock_table::waiting() const { return waiters_.live(); }
std::size_t lock_table::owner_leases(owner_id owner) const { return owners_[owner].leases; }
std::size_t lock_table::owner_waiters(owner_id owner) const { return owners_[owner].waiters; }

std::uint32_t lock_table::find_lease(std::uint32_t e, std::uint64_t token) const {
  for (std::uint32_t l = entries_[e].first_lease; l != nil; l = leases_[l].key_next) {
    if (leases_[l].token == token) return l;
  }
  return nil;
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
  ++ent.held;
  ++own.leases;
  ++counters_.grants;
  heap_push(now + ms(ttl_ms), ref_kind::lease, l);
  return token;
}

void lock_table::unlink_lease(std::uint32_t l, tick now) {
  lease_rec& rec = leases_[l];
  counters_.hold.observe(now - as_tick(rec.granted));
  entry_rec& ent = entries_[rec.entry];
  owner_rec& own = owners_[rec.owner];
  // The key's holder list is singly linked: find the predecessor (holders <= limit).
  std::uint32_t prev = nil;
  for (std::uint32_t i = ent.first_lease; i != l; i = leases_[i].key_next) prev = i;
  (prev != nil ? leases_[prev].key_next : ent.first_lease) = rec.key_next;
  if (ent.last_lease == l) ent.last_lease = prev;
  (rec.owner_prev != nil ? leases_[rec.owner_prev].owner_next : own.first_lease) = rec.owner_next;
  (rec.owner_next != nil ? leases_[rec.owner_next].owner_prev : own.last_lease) = rec.owner_prev;
  --ent.held;
  --own.leases;
  heap_remove(rec.heap_pos);
  leases_.release(l);
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
  --ent.waiting;
  --own.waiters;
  if (rec.heap_pos != nil) heap_remove(rec.heap_pos);
  waiters_.release(w);
}

// A lease that ends without a release (expiry, disconnect): start the key's lock delay.
void lock_table::lose_lease(std::uint32_t l, tick now) {
  std::uint32_t e = leases_[l].entry;
  unlink_lease(l, now);
  if (limits_.lock_delay_ms == 0) return;
  tick until = now + ms(limits_.lock_delay_ms);
  auto it = delays_.find(e);
  if (it == delays_.end()) {
    delays_[e] = nil;  // heap_push records the node's position here
    heap_push(until, ref_kind::delay, e);
  } else if (until > deadline_of(it->second)) {
    heap_update(it->second, until);
  }
}

void lock_table::end_delay(std::uint32_t e) {
  auto it = delays_.find(e);
  std::uint32_t pos = it->second;
  delays_.erase(it);  // first: heap_remove must not record a position for this node
  heap_remove(pos);
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

// Grants free slots of `e` to its waiters in arrival order. A waiter whose own deadline has
// passed (the timer has not run yet) is answered `wait_timeout` instead: it must not get a
// lease it no longer waits for.
void lock_table::promote(std::uint32_t e, tick now, std::vector<table_event>& events) {
  if (in_delay(e)) {
    if (deadline_of(delays_[e]) > now) return;
    end_delay(e);
  }
  for (;;) {
    const entry_rec& ent = entries_[e];
    if (ent.first_waiter == nil || ent.held >= ent.limit) return;
    std::uint32_t w = ent.first_waiter;
    const waiter_rec& wr = waiters_[w];
    table_event ev;
    ev.owner = wr.owner;
    if (wr.has_request_id) ev.request_id = wr.request_id;
    if (wr.heap_pos != nil && deadline_of(wr.heap_pos) <= now) {
      ev.kind = event_kind::wait_timeout;
      ++counters_.timeouts;
      unlink_waiter(w);
    } else {
      ev.kind = event_kind::granted;
      ev.ttl_ms = wr.ttl_ms;
      counters_.wait.observe(now - wr.arrived);
      std::uint32_t owner = wr.owner;
      unlink_waiter(w);
      ev.token = grant(e, owner, ev.ttl_ms, now);
    }
    events.push_back(std::move(ev));
  }
}

acquire_result lock_table::acquire(owner_id owner, const acquire_args& args, tick now,
                                   std::vector<table_event>& events) {
  ++counters_.acquires;
  std::uint32_t hash = hash_of(args.key);
  std::uint32_t e = find_entry(args.key, hash);
  if (e == nil) {
    if (index_count_ >= limits_.max_keys || entries_.high_water() >= max_slot ||
        leases_.high_water() >= max_slot) {
      return {acquire_status::too_many_keys, 0};
    }
    e = new_entry(hash, args.key, args.limit);
  } else {
    if (entries_[e].limit != args.limit) return {acquire_status::conflict, 0};
    // A lock delay that has run out but whose timer has not run yet ends now.
    if (in_delay(e) && deadline_of(delays_[e]) <= now) promote(e, now, events);
  }
  const entry_rec& ent = entries_[e];
  if (ent.held < ent.limit && ent.first_waiter == nil && !in_delay(e)) {
    if (leases_.high_water() >= max_slot) return {acquire_status::too_many_keys, 0};
    counters_.wait.observe(tick{0});
    return {acquire_status::granted, grant(e, owner, args.ttl_ms, now)};
  }
  if (args.wait_ms && *args.wait_ms == 0) {
    ++counters_.timeouts;
    return {acquire_status::busy, 0};
  }
  if (ent.waiting >= limits_.max_waiters_per_key) return {acquire_status::too_many_waiters, 0};
  if (owners_[owner].waiters >= limits_.max_pending_per_owner) {
    return {acquire_status::too_many_pending, 0};
  }
  if (waiters_.high_water() >= max_slot) return {acquire_status::too_many_waiters, 0};

  std::uint32_t w = waiters_.alloc();
  waiter_rec& rec = waiters_[w];
  entry_rec& ent_w = entries_[e];
  owner_rec& own = owners_[owner];
  rec.seq = next_seq_++;
  rec.arrived = now;
  rec.request_id = args.request_id.value_or(0);
  rec.has_request_id = args.request_id.has_value();
  rec.entry = e;
  rec.owner = owner;
  rec.ttl_ms = args.ttl_ms;
  rec.mode = args.mode;
  rec.key_prev = ent_w.last_waiter;
  if (ent_w.last_waiter != nil) {
    waiters_[ent_w.last_waiter].key_next = w;
  } else {
    ent_w.first_waiter = w;
  }
  ent_w.last_waiter = w;
  rec.owner_prev = own.last_waiter;
  if (own.last_waiter != nil) {
    waiters_[own.last_waiter].owner_next = w;
  } else {
    own.first_waiter = w;
  }
  own.last_waiter = w;
  ++ent_w.waiting;
  ++own.waiters;
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

void lock_table::expire_due(tick now, std::vector<table_event>& events) {
  while (!deadlines_.empty() && as_tick(deadlines_.front().when) <= now) {
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
    out.holders.push_back({rec.token, ms_left(deadline_of(rec.heap_pos), now), rec.owner});
  }
  return out;
}

top_result lock_table::top(std::size_t n, tick now) const {
  top_result out;
  if (n == 0) return out;
  auto longer_queue = [](const top_queue& a, const top_queue& b) {
    return a.waiters != b.waiters ? a.waiters > b.waiters : a.key < b.key;
  };
  auto older = [](const top_lease& a, const top_lease& b) {
    return a.held_for != b.held_for ? a.held_for > b.held_for : a.token < b.token;
  };
  // Bounded heaps whose top is the worst kept candidate: O(keys * log n).
  for (std::uint32_t e = 0; e < entries_.high_water(); ++e) {
    const entry_rec& ent = entries_[e];
    if (ent.limit == 0) continue;
    if (ent.waiting > 0) {
      out.queues.push_back({ent.key, ent.waiting, ent.held, ent.limit});
      std::push_heap(out.queues.begin(), out.queues.end(), longer_queue);
      if (out.queues.size() > n) {
        std::pop_heap(out.queues.begin(), out.queues.end(), longer_queue);
        out.queues.pop_back();
      }
    }
    for (std::uint32_t l = ent.first_lease; l != nil; l = leases_[l].key_next) {
      const lease_rec& rec = leases_[l];
      out.oldest.push_back({ent.key, rec.token, now - as_tick(rec.granted),
                            ms_left(deadline_of(rec.heap_pos), now), rec.owner});
      std::push_heap(out.oldest.begin(), out.oldest.end(), older);
      if (out.oldest.size() > n) {
        std::pop_heap(out.oldest.begin(), out.oldest.end(), older);
        out.oldest.pop_back();
      }
    }
  }
  std::sort_heap(out.queues.begin(), out.queues.end(), longer_queue);
  std::sort_heap(out.oldest.begin(), out.oldest.end(), older);
  return out;
}

std::string lock_table::check_invariants() const {
  std::size_t live_entries = 0;
  std::size_t leases_seen = 0;
  std::size_t waiters_seen = 0;
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
    if (waiting > 0 && held < ent.limit && !in_delay(e)) {
      return "waiters queued behind a free slot on '" + ent.key + "'";
    }
    if (held == 0 && waiting == 0 && !in_delay(e)) {
      return "idle key '" + ent.key + "' left in the table";
    }
    leases_seen += held;
    waiters_seen += waiting;
  }
  if (live_entries != index_count_) return "index count differs from live entries";
  std::size_t in_index = 0;
  for (std::uint32_t e : index_) in_index += e != nil;
  if (in_index != index_count_) return "index slots differ from its count";
  if (leases_seen != leases_.live()) return "lease slab count differs from linked leases";
  if (waiters_seen != waiters_.live()) return "waiter slab count differs from linked waiters";
  for (std::size_t i = 1; i < deadlines_.size(); ++i) {
    if (deadlines_[(i - 1) / 2].when > deadlines_[i].when) return "deadline heap out of order";
  }
  std::size_t bounded_waiters = 0;
  for (std::uint32_t w = 0; w < waiters_.high_water(); ++w) {
    bounded_waiters += waiters_[w].seq != 0 && waiters_[w].heap_pos != nil;
  }
  if (deadlines_.size() != leases_.live() + bounded_waiters + delays_.size()) {
    return "deadline heap holds stale nodes";
  }
  for (const auto& [e, pos] : delays_) {
    if (pos >= deadlines_.size() ||
        deadlines_[pos].ref != ((static_cast<std::uint32_t>(ref_kind::delay) << 30) | e)) {
      return "lock delay without its deadline node";
    }
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
  }
  if (owner_leases_seen != leases_.live()) return "leases not owned by a live owner";
  if (owner_waiters_seen != waiters_.live()) return "waiters not owned by a live owner";
  return {};
}

}  // namespace keylock
