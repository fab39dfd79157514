#include "lock_table.hpp"

#include <algorithm>
#include <array>
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
  rec.closed = gate_ != nullptr && !gate_->holds(key);
  index_insert(e);
  return e;
}

bool lock_table::erase_if_idle(std::uint32_t e) {
  const entry_rec& rec = entries_[e];
  if (rec.held != 0 || rec.waiting != 0 || in_delay(e)) return false;
  if (rec.stall_pos != nil) unstall(e);
  if (rec.in_queues) queues_.erase(rec.queue_it);
  if (gate_ != nullptr) gate_->quiet(rec.key);
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
    case ref_kind::group:
      groups_[slot].heap_pos = pos;
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
                       hash_seed seed, key_gate* gate)
    : limits_(limits),
      tokens_(tokens),
      gate_(gate),
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
      const std::uint32_t ref = deadlines_[i].ref;
      switch (static_cast<ref_kind>(ref >> 30)) {
        case ref_kind::lease:
          ++due_leases;
          break;
        case ref_kind::group:
          if (groups_[ref & max_slot].held) due_leases += groups_[ref & max_slot].size;
          break;
        default:
          break;
      }
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
    n += lease_deadline(l) > now;
  }
  return n;
}

// Changes the key's holder count in `mode` by `delta`, keeping reserved_ in step.
void lock_table::set_holders(std::uint32_t e, int delta, lock_mode mode) {
  entry_rec& ent = entries_[e];
  reserved_ -= reserved_of(ent);
  ent.held = static_cast<std::uint32_t>(static_cast<std::int64_t>(ent.held) + delta);
  // Only one mode holds at a time (has_room), so a flag tells which.
  ent.shared_held = ent.held != 0 && mode == lock_mode::shared;
  reserved_ += reserved_of(ent);
  if (gate_ != nullptr) {
    if (delta > 0) {
      gate_->granted(ent.key);
    } else if (ent.held == 0) {
      gate_->quiet(ent.key);
    }
  }
}

// A lease record on `e`, linked into the key's holders, the owner's leases and the grant
// order; no deadline node (the caller adds the lease's or its set's).
std::uint32_t lock_table::add_lease(std::uint32_t e, std::uint32_t owner, std::uint32_t ttl_ms,
                                    lock_mode mode, std::uint64_t token, tick now) {
  std::uint32_t l = leases_.alloc();
  lease_rec& rec = leases_[l];
  entry_rec& ent = entries_[e];
  owner_rec& own = owners_[owner];
  rec.token = token;
  rec.entry = e;
  rec.owner = owner;
  rec.ttl_ms = ttl_ms;
  rec.granted = now.count();
  rec.mode = mode;
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
  ++own.leases;
  set_holders(e, +1, mode);
  return l;
}

// A new lease over the one key `e` (tokens must be ready()).
std::uint64_t lock_table::grant(std::uint32_t e, std::uint32_t owner, std::uint32_t ttl_ms,
                                lock_mode mode, tick now) {
  std::uint64_t token = tokens_.next();
  last_token_ = token;
  std::uint32_t l = add_lease(e, owner, ttl_ms, mode, token, now);
  ++counters_.grants;
  counters_.grants_shared += mode == lock_mode::shared;
  heap_push(now + ms(ttl_ms), ref_kind::lease, l);
  return token;
}

// Grants the queued request whose first record is `w` (it is grantable, tokens are ready()):
// its waiter records leave every queue and become its leases, under one token and deadline.
std::uint64_t lock_table::grant_request(std::uint32_t w, tick now) {
  const waiter_rec& first = waiters_[w];
  const std::uint32_t owner = first.owner;
  const std::uint32_t ttl_ms =
      gate_ != nullptr ? std::min(first.ttl_ms, gate_->ttl_cap(now)) : first.ttl_ms;
  const lock_mode mode = first.mode;
  if (histograms_.wait) histograms_.wait->observe(now - first.arrived);
  if (!is_member(first.heap_pos)) {
    std::uint32_t e = first.entry;
    unlink_waiter(w, true);
    return grant(e, owner, ttl_ms, mode, now);
  }
  const std::uint32_t g = first.heap_pos & ~in_set;
  std::uint64_t token = tokens_.next();
  last_token_ = token;
  if (groups_[g].heap_pos != nil) {
    heap_remove(groups_[g].heap_pos);  // the wait deadline; the ttl's replaces it
    groups_[g].heap_pos = nil;
  }
  std::uint32_t prev = nil;
  bool first_record = true;
  for (std::uint32_t m = groups_[g].first; m != nil;) {
    const std::uint32_t next = waiters_[m].set_next;
    const std::uint32_t e = waiters_[m].entry;
    unlink_waiter(m, first_record);
    first_record = false;
    std::uint32_t l = add_lease(e, owner, ttl_ms, mode, token, now);
    leases_[l].heap_pos = in_set | g;
    (prev == nil ? groups_[g].first : leases_[prev].set_next) = l;
    prev = l;
    work_.push_back(e);  // its queue's head changed: the next waiter may go too
    m = next;
  }
  groups_[g].held = true;
  heap_push(now + ms(ttl_ms), ref_kind::group, g);
  ++counters_.grants;
  counters_.grants_shared += mode == lock_mode::shared;
  return token;
}

// Unlinks one lease record from its key, owner and the grant order (not from the deadline
// index: end_lease removes the lease's or set's node).
void lock_table::unlink_lease(std::uint32_t l) {
  lease_rec& rec = leases_[l];
  entry_rec& ent = entries_[rec.entry];
  owner_rec& own = owners_[rec.owner];
  // The key's holder list is singly linked: find the predecessor (exclusive holders <= limit;
  // shared holders are many only while they coexist).
  std::uint32_t prev = nil;
  for (std::uint32_t i = ent.first_lease; i != l; i = leases_[i].key_next) prev = i;
  (prev != nil ? leases_[prev].key_next : ent.first_lease) = rec.key_next;
  if (ent.last_lease == l) ent.last_lease = prev;
  (rec.owner_prev != nil ? leases_[rec.owner_prev].owner_next : own.first_lease) = rec.owner_next;
  (rec.owner_next != nil ? leases_[rec.owner_next].owner_prev : own.last_lease) = rec.owner_prev;
  (rec.all_prev != nil ? leases_[rec.all_prev].all_next : first_granted_) = rec.all_next;
  (rec.all_next != nil ? leases_[rec.all_next].all_prev : last_granted_) = rec.all_prev;
  --own.leases;
  set_holders(rec.entry, -1, rec.mode);
  leases_.release(l);
}

// Ends the lease `l` belongs to (every key of a set). `lost` (expiry, disconnect) starts the
// lock delay of each key. Its keys go on the worklist; the caller settles.
void lock_table::end_lease(std::uint32_t l, tick now, bool lost) {
  const std::uint32_t f = first_lease_of(l);
  if (histograms_.hold) histograms_.hold->observe(now - as_tick(leases_[f].granted));
  const std::uint32_t pos = leases_[f].heap_pos;
  if (!is_member(pos)) {
    const std::uint32_t e = leases_[f].entry;
    heap_remove(pos);
    unlink_lease(f);
    if (lost) start_delay(e, now);
    work_.push_back(e);
    return;
  }
  const std::uint32_t g = pos & ~in_set;
  heap_remove(groups_[g].heap_pos);
  for (std::uint32_t m = groups_[g].first; m != nil;) {
    const std::uint32_t next = leases_[m].set_next;
    const std::uint32_t e = leases_[m].entry;
    unlink_lease(m);
    if (lost) start_delay(e, now);
    work_.push_back(e);
    m = next;
  }
  groups_.release(g);
}

// Moves the key's node in queues_ for a change of its waiter count by `delta` (+1 or -1) in
// `mode`. extract + insert reuses the node: no allocation but the key's first waiter ever.
void lock_table::requeue(std::uint32_t e, int delta, lock_mode mode) {
  entry_rec& ent = entries_[e];
  reserved_ -= reserved_of(ent);
  auto add = [delta](std::uint32_t& n) {
    n = static_cast<std::uint32_t>(static_cast<std::int64_t>(n) + delta);
  };
  if (ent.in_queues) {
    auto node = queues_.extract(ent.queue_it);
    add(ent.waiting);
    ent.queue_it = queues_.insert(std::move(node)).position;
  } else {
    add(ent.waiting);
    ent.queue_it = queues_.insert(e).first;
    ent.in_queues = true;
  }
  if (mode == lock_mode::shared) add(ent.waiting_shared);
  reserved_ += reserved_of(ent);
}

std::uint32_t lock_table::new_waiter(std::uint32_t e, std::uint32_t owner,
                                     const acquire_args& args, std::uint64_t seq, tick now) {
  std::uint32_t w = waiters_.alloc();
  waiter_rec& rec = waiters_[w];
  rec.seq = seq;
  rec.arrived = now;
  rec.request_id = args.request_id.value_or(0);
  rec.has_request_id = args.request_id.has_value();
  rec.entry = e;
  rec.owner = owner;
  rec.ttl_ms = args.ttl_ms;
  rec.mode = args.mode;
  return w;
}

// Appends waiter record `w` to its key's queue; the first record of a request also joins its
// owner's list of queued requests.
void lock_table::link_waiter(std::uint32_t w, bool first_of_request) {
  waiter_rec& rec = waiters_[w];
  entry_rec& ent = entries_[rec.entry];
  owner_rec& own = owners_[rec.owner];
  rec.key_prev = ent.last_waiter;
  (ent.last_waiter != nil ? waiters_[ent.last_waiter].key_next : ent.first_waiter) = w;
  ent.last_waiter = w;
  if (first_of_request) {
    rec.owner_prev = own.last_waiter;
    (own.last_waiter != nil ? waiters_[own.last_waiter].owner_next : own.first_waiter) = w;
    own.last_waiter = w;
    ++own.waiters;
    ++queued_;
  }
  ++own.waiter_keys;
  requeue(rec.entry, +1, rec.mode);
}

// Unlinks and frees one waiter record (and the deadline node of a single-key request).
void lock_table::unlink_waiter(std::uint32_t w, bool first_of_request) {
  waiter_rec& rec = waiters_[w];
  entry_rec& ent = entries_[rec.entry];
  owner_rec& own = owners_[rec.owner];
  (rec.key_prev != nil ? waiters_[rec.key_prev].key_next : ent.first_waiter) = rec.key_next;
  (rec.key_next != nil ? waiters_[rec.key_next].key_prev : ent.last_waiter) = rec.key_prev;
  if (first_of_request) {
    (rec.owner_prev != nil ? waiters_[rec.owner_prev].owner_next : own.first_waiter) =
        rec.owner_next;
    (rec.owner_next != nil ? waiters_[rec.owner_next].owner_prev : own.last_waiter) =
        rec.owner_prev;
    --own.waiters;
    --queued_;
  }
  --own.waiter_keys;
  requeue(rec.entry, -1, rec.mode);
  if (rec.heap_pos != nil && !is_member(rec.heap_pos)) heap_remove(rec.heap_pos);
  waiters_.release(w);
}

// Takes the request that waiter record `w` belongs to out of every queue. Its keys go on the
// worklist: the waiters behind it may be grantable now.
void lock_table::remove_request(std::uint32_t w) {
  const std::uint32_t f = first_waiter_of(w);
  const std::uint32_t pos = waiters_[f].heap_pos;
  if (!is_member(pos)) {
    work_.push_back(waiters_[f].entry);
    unlink_waiter(f, true);
    return;
  }
  const std::uint32_t g = pos & ~in_set;
  if (groups_[g].heap_pos != nil) heap_remove(groups_[g].heap_pos);
  bool first_record = true;
  for (std::uint32_t m = groups_[g].first; m != nil;) {
    const std::uint32_t next = waiters_[m].set_next;
    work_.push_back(waiters_[m].entry);
    unlink_waiter(m, first_record);
    first_record = false;
    m = next;
  }
  groups_.release(g);
}

// A lease of `e` ended without a release (expiry, disconnect): start or lengthen its delay.
void lock_table::start_delay(std::uint32_t e, tick now) {
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

// The `expired` event of the lease `l` belongs to (a set: its first key, and every key).
void lock_table::expired_event(std::uint32_t l, std::vector<table_event>& events) const {
  const std::uint32_t f = first_lease_of(l);
  const lease_rec& rec = leases_[f];
  table_event ev;
  ev.kind = event_kind::expired;
  ev.owner = rec.owner;
  ev.token = rec.token;
  ev.key = entries_[rec.entry].key;
  if (is_member(rec.heap_pos)) {
    ev.keys.reserve(groups_[rec.heap_pos & ~in_set].size);
    for (std::uint32_t m = f; m != nil; m = leases_[m].set_next) {
      ev.keys.push_back(entries_[leases_[m].entry].key);
    }
  }
  events.push_back(std::move(ev));
}

// The event answering the queued request of waiter record `w` (every record of a set carries
// the request's owner and id).
void lock_table::request_event(std::uint32_t w, event_kind kind,
                               std::vector<table_event>& events) const {
  const waiter_rec& rec = waiters_[w];
  table_event ev;
  // A try-lock that waited on a closed key for the daemon to find out: the key is busy.
  ev.kind = kind == event_kind::wait_timeout && rec.is_try ? event_kind::busy : kind;
  ev.owner = rec.owner;
  if (rec.has_request_id) ev.request_id = rec.request_id;
  events.push_back(std::move(ev));
}

void lock_table::expire_lease(std::uint32_t l, tick now, std::vector<table_event>& events) {
  expired_event(l, events);
  ++counters_.expirations;
  end_lease(l, now, true);
}

// Expires the holders of `e` whose deadline has passed (their timers have not run yet); a set
// is expired whole. The caller settles.
void lock_table::end_due_holders(std::uint32_t e, tick now, std::vector<table_event>& events) {
  for (std::uint32_t l = entries_[e].first_lease; l != nil;) {
    // A set has one lease on this key, so ending it never unlinks `next`.
    std::uint32_t next = leases_[l].key_next;
    if (lease_deadline(l) <= now) expire_lease(l, now, events);
    l = next;
  }
}

// Processes the earliest deadline (it must be due), then settles.
void lock_table::expire_front(tick now, std::vector<table_event>& events) {
  std::uint32_t ref = deadlines_.front().ref;
  std::uint32_t slot = ref & max_slot;
  switch (static_cast<ref_kind>(ref >> 30)) {
    case ref_kind::lease:
      expire_lease(slot, now, events);
      break;
    case ref_kind::waiter:
      request_event(slot, event_kind::wait_timeout, events);
      ++counters_.timeouts;
      remove_request(slot);
      break;
    case ref_kind::delay:
      work_.push_back(slot);  // promote() ends the delay, then grants
      break;
    case ref_kind::group:
      if (groups_[slot].held) {
        expire_lease(groups_[slot].first, now, events);
      } else {
        request_event(groups_[slot].first, event_kind::wait_timeout, events);
        ++counters_.timeouts;
        remove_request(groups_[slot].first);
      }
      break;
  }
  settle(now, events);
}

// For the head `w` of a key that has room for it: whether its request is held back at another
// of its keys (not at the head there, no room, or a running lock delay). A delay found over is
// ended on the way.
bool lock_table::blocked_elsewhere(std::uint32_t w, tick now) {
  const std::uint32_t pos = waiters_[w].heap_pos;
  if (!is_member(pos)) return false;
  const lock_mode mode = waiters_[w].mode;
  for (std::uint32_t m = groups_[pos & ~in_set].first; m != nil; m = waiters_[m].set_next) {
    if (m == w) continue;
    const std::uint32_t e = waiters_[m].entry;
    const entry_rec& ent = entries_[e];
    if (ent.first_waiter != m || !has_room(ent, mode) || ent.closed) return true;
    if (in_delay(e)) {
      if (deadline_of(ent.delay_pos) > now) return true;
      end_delay(e);
      work_.push_back(e);
    }
  }
  return false;
}

// Grants the head of `e`'s queue while the grant rule allows, in FIFO order: a run of shared
// waiters goes in together, a set goes in only when it heads every one of its queues. A head
// whose own wait deadline has passed (the timer has not run yet) is answered `wait_timeout`
// instead: it must not get a lease it no longer waits for. While tokens are not ready() the key
// is stalled instead, and resume_grants() comes back to it. Keys whose head changes go on the
// worklist.
void lock_table::promote(std::uint32_t e, tick now, std::vector<table_event>& events) {
  entry_rec& ent = entries_[e];
  if (in_delay(e)) {
    if (deadline_of(ent.delay_pos) > now) return;
    end_delay(e);
  }
  if (ent.closed) return;  // the gate's owner opens it (open_key) when the right is here
  for (;;) {
    const std::uint32_t w = ent.first_waiter;
    if (w == nil || !has_room(ent, waiters_[w].mode) || blocked_elsewhere(w, now)) break;
    const std::uint32_t node = request_node(w);
    if (node != nil && deadline_of(node) <= now) {
      request_event(w, event_kind::wait_timeout, events);
      ++counters_.timeouts;
      remove_request(w);
      continue;
    }
    if (!tokens_.ready()) {
      stall(e);
      return;
    }
    const std::uint32_t f = first_waiter_of(w);
    table_event ev;
    ev.kind = event_kind::granted;
    ev.owner = waiters_[f].owner;
    if (waiters_[f].has_request_id) ev.request_id = waiters_[f].request_id;
    ev.token = grant_request(f, now);
    ev.ttl_ms = leases_[last_granted_].ttl_ms;  // as granted (a cluster cap may lower it)
    events.push_back(std::move(ev));
  }
  if (ent.stall_pos != nil) unstall(e);
}

// Works through the worklist until no key on it can grant more (a grant or a request leaving
// puts the request's other keys on it), then erases the keys that became idle.
void lock_table::settle(tick now, std::vector<table_event>& events) {
  for (std::size_t i = 0; i < work_.size(); ++i) promote(work_[i], now, events);
  erase_idle_work();
}

// Erases the idle keys among those on the worklist and empties it. Only here are keys erased
// while a call runs, so every key on the worklist is live until now.
void lock_table::erase_idle_work() {
  if (work_.size() > 1) {
    std::sort(work_.begin(), work_.end());
    work_.erase(std::unique(work_.begin(), work_.end()), work_.end());
  }
  for (std::uint32_t e : work_) erase_if_idle(e);
  work_.clear();
}

void lock_table::resume_grants(tick now, std::vector<table_event>& events) {
  if (!tokens_.ready()) return;
  // promote() stalls a key again if tokens run out midway.
  while (!stalled_.empty()) {
    std::uint32_t e = stalled_.back();
    unstall(e);
    work_.push_back(e);
  }
  settle(now, events);
}

acquire_result lock_table::acquire(owner_id owner, const acquire_args& args, tick now,
                                   std::vector<table_event>& events) {
  ++counters_.acquires;
  if (!tokens_.ready()) return {acquire_status::unavailable, 0};
  if (args.keys.size() > 1) return acquire_set(owner, args, now, events);
  return acquire_one(owner, args, args.keys.empty() ? args.key : args.keys.front(), now, events);
}

acquire_result lock_table::acquire_one(owner_id owner, const acquire_args& args,
                                       std::string_view key, tick now,
                                       std::vector<table_event>& events) {
  // At the lease bound, deadlines that are due but whose timer has not run yet are processed
  // now: a lease that is over must not count against the bound.
  while (over_lease_bound(1) && any_due(now)) expire_front(now, events);
  const std::uint32_t hash = hash_of(key);
  std::uint32_t e = find_entry(key, hash);
  if (e != nil) {
    // Holders whose deadline passed, and a lock delay that ran out, end now: their timers are
    // late, and a try-lock must not be refused because of a lease that is over.
    if (any_due(now)) end_due_holders(e, now, events);
    if (in_delay(e) && deadline_of(entries_[e].delay_pos) <= now) work_.push_back(e);
    if (!work_.empty()) {
      settle(now, events);
      e = find_entry(key, hash);  // it may have become idle and left
    }
  }
  if (e != nil && entries_[e].limit != args.limit) return {acquire_status::conflict, 0};
  const owner_rec& own = owners_[owner];
  if (own.leases + own.waiter_keys >= limits_.max_leases_per_owner) {
    return {acquire_status::too_many_owner_leases, 0};
  }
  if (e == nil) {
    if (index_count_ >= limits_.max_keys || entries_.high_water() >= max_slot) {
      return {acquire_status::too_many_keys, 0};
    }
    if (over_lease_bound(1)) return {acquire_status::too_many_leases, 0};
    if (gate_ == nullptr || gate_->holds(key)) {
      e = new_entry(hash, key, args.limit);
      if (histograms_.wait) histograms_.wait->observe(tick{0});
      return {acquire_status::granted, grant(e, owner, args.ttl_ms, args.mode, now)};
    }
    // Cluster mode, the key's right is elsewhere: the fresh (closed) key gets a waiter.
    if (own.waiters >= limits_.max_pending_per_owner) {
      return {acquire_status::too_many_pending, 0};
    }
    if (waiters_.high_water() >= max_slot) return {acquire_status::too_many_waiters, 0};
    e = new_entry(hash, key, args.limit);
    return queue_one(e, owner, args, now);
  }
  const entry_rec& ent = entries_[e];
  if (has_room(ent, args.mode) && ent.first_waiter == nil && !blocked(e)) {
    if (over_lease_bound(1)) return {acquire_status::too_many_leases, 0};
    if (histograms_.wait) histograms_.wait->observe(tick{0});
    return {acquire_status::granted, grant(e, owner, args.ttl_ms, args.mode, now)};
  }
  if (args.wait_ms && *args.wait_ms == 0 && !ent.closed) {
    ++counters_.timeouts;
    return {acquire_status::busy, 0};
  }
  if (ent.waiting >= limits_.max_waiters_per_key) return {acquire_status::too_many_waiters, 0};
  if (own.waiters >= limits_.max_pending_per_owner) {
    return {acquire_status::too_many_pending, 0};
  }
  if (waiters_.high_water() >= max_slot) return {acquire_status::too_many_waiters, 0};
  // A waiter that may be granted without another lease of the key ending (at a free slot in a
  // lock delay or a stall, or shared) reserves its slot (see reserved_).
  if (over_lease_bound(reserve_delta(ent, args.mode))) {
    return {acquire_status::too_many_leases, 0};
  }
  return queue_one(e, owner, args, now);
}

// Queues the (accepted) request for the one key `e`. A try-lock gets here only on a closed key:
// it waits at most try_wait_ms_ for the key to open.
acquire_result lock_table::queue_one(std::uint32_t e, owner_id owner, const acquire_args& args,
                                     tick now) {
  const bool is_try = args.wait_ms && *args.wait_ms == 0;
  std::uint32_t w = new_waiter(e, owner, args, next_seq_++, now);
  waiters_[w].is_try = is_try;
  link_waiter(w, true);
  if (args.wait_ms) heap_push(now + ms(is_try ? try_wait_ms_ : *args.wait_ms), ref_kind::waiter, w);
  if (entries_[e].closed) gate_->wanted(entries_[e].key);
  return {acquire_status::queued, 0};
}

acquire_result lock_table::acquire_set(owner_id owner, const acquire_args& args, tick now,
                                       std::vector<table_event>& events) {
  const std::span<const std::string_view> keys = args.keys;
  const std::size_t n = keys.size();
  if (n > max_keys_per_request) return {acquire_status::too_many_keys, 0};  // caller validates
  while (over_lease_bound(n) && any_due(now)) expire_front(now, events);
  std::array<std::uint32_t, max_keys_per_request> hashes;
  std::array<std::uint32_t, max_keys_per_request> ents;
  for (std::size_t i = 0; i < n; ++i) {
    hashes[i] = hash_of(keys[i]);
    ents[i] = find_entry(keys[i], hashes[i]);
  }
  if (any_due(now)) {
    // As for one key: leases and delays that are over end first, on every key named. Keys are
    // erased only in settle(), so ents stays valid until then.
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t e = ents[i];
      if (e == nil) continue;
      end_due_holders(e, now, events);
      if (in_delay(e) && deadline_of(entries_[e].delay_pos) <= now) work_.push_back(e);
    }
    if (!work_.empty()) {
      settle(now, events);
      for (std::size_t i = 0; i < n; ++i) ents[i] = find_entry(keys[i], hashes[i]);
    }
  }
  std::size_t fresh = 0;
  bool free_now = true;
  bool any_closed = false;  // cluster mode: a key whose right is elsewhere
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t e = ents[i];
    if (e == nil) {
      ++fresh;
      continue;
    }
    const entry_rec& ent = entries_[e];
    if (ent.limit != args.limit) return {acquire_status::conflict, 0};
    free_now = free_now && has_room(ent, args.mode) && ent.first_waiter == nil && !blocked(e);
    any_closed = any_closed || ent.closed;
  }
  if (gate_ != nullptr) {
    for (std::size_t i = 0; i < n; ++i) {
      if (ents[i] == nil && !gate_->holds(keys[i])) {
        free_now = false;
        any_closed = true;
      }
    }
  }
  const owner_rec& own = owners_[owner];
  if (own.leases + own.waiter_keys + n > limits_.max_leases_per_owner) {
    return {acquire_status::too_many_owner_leases, 0};
  }
  if (fresh > 0 && (index_count_ + fresh > limits_.max_keys ||
                    entries_.high_water() + fresh > max_slot)) {
    return {acquire_status::too_many_keys, 0};
  }
  const bool is_try = args.wait_ms && *args.wait_ms == 0;
  if (!free_now) {
    if (is_try && !any_closed) {
      ++counters_.timeouts;
      return {acquire_status::busy, 0};
    }
    std::size_t reserve = fresh;  // a fresh key's waiter sits at a free slot
    for (std::size_t i = 0; i < n; ++i) {
      if (ents[i] == nil) continue;
      const entry_rec& ent = entries_[ents[i]];
      if (ent.waiting >= limits_.max_waiters_per_key) {
        return {acquire_status::too_many_waiters, 0};
      }
      reserve += reserve_delta(ent, args.mode);
    }
    if (own.waiters >= limits_.max_pending_per_owner) {
      return {acquire_status::too_many_pending, 0};
    }
    if (waiters_.high_water() + n > max_slot || groups_.high_water() >= max_slot) {
      return {acquire_status::too_many_waiters, 0};
    }
    if (over_lease_bound(reserve)) return {acquire_status::too_many_leases, 0};
  } else if (over_lease_bound(n)) {
    return {acquire_status::too_many_leases, 0};
  }

  // Accepted: from here on nothing is refused.
  for (std::size_t i = 0; i < n; ++i) {
    if (ents[i] == nil) ents[i] = new_entry(hashes[i], keys[i], args.limit);
  }
  const std::uint32_t g = groups_.alloc();
  groups_[g].size = static_cast<std::uint32_t>(n);
  std::uint32_t prev = nil;
  if (free_now) {
    std::uint64_t token = tokens_.next();
    last_token_ = token;
    for (std::size_t i = 0; i < n; ++i) {
      std::uint32_t l = add_lease(ents[i], owner, args.ttl_ms, args.mode, token, now);
      leases_[l].heap_pos = in_set | g;
      (prev == nil ? groups_[g].first : leases_[prev].set_next) = l;
      prev = l;
    }
    groups_[g].held = true;
    heap_push(now + ms(args.ttl_ms), ref_kind::group, g);
    ++counters_.grants;
    counters_.grants_shared += args.mode == lock_mode::shared;
    if (histograms_.wait) histograms_.wait->observe(tick{0});
    return {acquire_status::granted, token};
  }
  // One arrival for every queue: the same seq, placed at the tail of each at this instant.
  const std::uint64_t seq = next_seq_++;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t w = new_waiter(ents[i], owner, args, seq, now);
    waiters_[w].heap_pos = in_set | g;
    waiters_[w].is_try = is_try;
    (prev == nil ? groups_[g].first : waiters_[prev].set_next) = w;
    prev = w;
    link_waiter(w, i == 0);
  }
  if (args.wait_ms) heap_push(now + ms(is_try ? try_wait_ms_ : *args.wait_ms), ref_kind::group, g);
  for (std::size_t i = 0; i < n; ++i) {
    if (entries_[ents[i]].closed) gate_->wanted(keys[i]);
  }
  return {acquire_status::queued, 0};
}

// Whether the keys of the lease `l` belongs to are exactly `keys` (distinct, any order).
bool lock_table::member_set_is(std::uint32_t l, std::span<const std::string_view> keys) const {
  const std::uint32_t f = first_lease_of(l);
  const std::uint32_t pos = leases_[f].heap_pos;
  if (!is_member(pos)) return keys.size() == 1;
  if (groups_[pos & ~in_set].size != keys.size()) return false;
  // Each of the set's (distinct) keys is among as many `keys`: the two are the same set.
  for (std::uint32_t m = f; m != nil; m = leases_[m].set_next) {
    const std::string& key = entries_[leases_[m].entry].key;
    if (std::find(keys.begin(), keys.end(), std::string_view(key)) == keys.end()) return false;
  }
  return true;
}

std::uint32_t lock_table::find_set_lease(std::span<const std::string_view> keys,
                                         std::uint64_t token) const {
  if (keys.empty()) return nil;
  std::uint32_t e = find_entry(keys.front());
  if (e == nil) return nil;
  std::uint32_t l = find_lease(e, token);
  if (l == nil || !member_set_is(l, keys)) return nil;
  return l;
}

lease_status lock_table::release_lease(std::uint32_t l, tick now,
                                       std::vector<table_event>& events) {
  if (lease_deadline(l) <= now) {
    expire_lease(l, now, events);
    settle(now, events);
    return lease_status::not_held;
  }
  end_lease(l, now, false);
  ++counters_.releases;
  settle(now, events);
  return lease_status::ok;
}

lease_status lock_table::release(std::string_view key, std::uint64_t token, tick now,
                                 std::vector<table_event>& events) {
  std::uint32_t e = find_entry(key);
  if (e == nil) return lease_status::not_held;
  std::uint32_t l = find_lease(e, token);
  if (l == nil) return lease_status::not_held;
  return release_lease(l, now, events);
}

lease_status lock_table::release(std::span<const std::string_view> keys, std::uint64_t token,
                                 tick now, std::vector<table_event>& events) {
  std::uint32_t l = find_set_lease(keys, token);
  if (l == nil) return lease_status::not_held;
  return release_lease(l, now, events);
}

lease_status lock_table::extend_lease(std::uint32_t l, std::optional<std::uint32_t> ttl_ms,
                                      tick now, std::vector<table_event>& events,
                                      std::uint32_t* ttl_out) {
  if (lease_deadline(l) <= now) {
    expire_lease(l, now, events);
    settle(now, events);
    return lease_status::not_held;
  }
  const std::uint32_t f = first_lease_of(l);
  const std::uint32_t ttl = ttl_ms ? *ttl_ms : leases_[f].ttl_ms;
  if (is_member(leases_[f].heap_pos)) {
    for (std::uint32_t m = f; m != nil; m = leases_[m].set_next) leases_[m].ttl_ms = ttl;
  } else {
    leases_[f].ttl_ms = ttl;
  }
  ++counters_.extends;
  // Cluster mode: the lease must end before the daemon's proof of holding its keys does; the
  // ttl asked for is kept for the next extend.
  const std::uint32_t applied =
      gate_ != nullptr ? std::max(1u, std::min(ttl, gate_->ttl_cap(now))) : ttl;
  if (ttl_out) *ttl_out = applied;
  heap_update(lease_node(f), now + ms(applied));
  return lease_status::ok;
}

lease_status lock_table::extend(std::string_view key, std::uint64_t token,
                                std::optional<std::uint32_t> ttl_ms, tick now,
                                std::vector<table_event>& events, std::uint32_t* ttl_out) {
  std::uint32_t e = find_entry(key);
  if (e == nil) return lease_status::not_held;
  std::uint32_t l = find_lease(e, token);
  if (l == nil) return lease_status::not_held;
  return extend_lease(l, ttl_ms, now, events, ttl_out);
}

lease_status lock_table::extend(std::span<const std::string_view> keys, std::uint64_t token,
                                std::optional<std::uint32_t> ttl_ms, tick now,
                                std::vector<table_event>& events, std::uint32_t* ttl_out) {
  std::uint32_t l = find_set_lease(keys, token);
  if (l == nil) return lease_status::not_held;
  return extend_lease(l, ttl_ms, now, events, ttl_out);
}

bool lock_table::cancel(owner_id owner, std::uint64_t request_id, tick now,
                        std::vector<table_event>& events) {
  for (std::uint32_t w = owners_[owner].first_waiter; w != nil; w = waiters_[w].owner_next) {
    const waiter_rec& rec = waiters_[w];
    if (!rec.has_request_id || rec.request_id != request_id) continue;
    request_event(w, event_kind::cancelled, events);
    remove_request(w);
    ++counters_.cancels;
    settle(now, events);
    return true;
  }
  return false;
}

void lock_table::cancel_waiters(owner_id owner, tick now, std::vector<table_event>& events) {
  while (owners_[owner].first_waiter != nil) {
    std::uint32_t w = owners_[owner].first_waiter;
    request_event(w, event_kind::cancelled, events);
    remove_request(w);
    ++counters_.cancels;
  }
  // Only now: the grants this unblocks come after every `cancelled` event, and none goes to
  // this owner.
  settle(now, events);
}

void lock_table::disconnect(owner_id owner, tick now, std::vector<table_event>& events) {
  // Waiters first, so that what is freed below is not granted back to this owner.
  while (owners_[owner].first_waiter != nil) remove_request(owners_[owner].first_waiter);
  while (owners_[owner].first_lease != nil) {
    ++counters_.disconnect_releases;
    end_lease(owners_[owner].first_lease, now, true);
  }
  settle(now, events);
  owners_.release(owner);
}

void lock_table::abort_waiters(std::vector<table_event>& events) {
  for (std::uint32_t w = 0; w < waiters_.high_water(); ++w) {
    if (waiters_[w].seq == 0) continue;  // free, or a set removed with its first record
    request_event(w, event_kind::aborted, events);
    remove_request(w);
    if (waiters_.high_water() == 0) break;  // the slab gave its memory back
  }
  // Every queue is empty: nobody can be granted, only idle keys leave.
  erase_idle_work();
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

// --- cluster mode ---------------------------------------------------------------------------

void lock_table::open_key(std::string_view key, tick now, std::vector<table_event>& events) {
  const std::uint32_t e = find_entry(key);
  if (e == nil || !entries_[e].closed) return;
  entries_[e].closed = false;
  work_.push_back(e);
  settle(now, events);
}

void lock_table::close_key(std::string_view key) {
  const std::uint32_t e = find_entry(key);
  if (e != nil) entries_[e].closed = true;
}

void lock_table::drop_tries(std::string_view key, tick now, std::vector<table_event>& events) {
  const std::uint32_t e = find_entry(key);
  if (e == nil) return;
  // Collected first: removing a request unlinks records of this queue.
  std::vector<std::uint32_t> tries;
  for (std::uint32_t w = entries_[e].first_waiter; w != nil; w = waiters_[w].key_next) {
    if (waiters_[w].is_try) tries.push_back(first_waiter_of(w));
  }
  for (std::uint32_t f : tries) {
    request_event(f, event_kind::busy, events);
    ++counters_.timeouts;
    remove_request(f);
  }
  settle(now, events);
}

void lock_table::lose_all(tick now, std::vector<table_event>& events) {
  // Close first, so that what the ending leases free is not granted.
  for (std::uint32_t e : index_) {
    if (e != nil) entries_[e].closed = true;
  }
  while (first_granted_ != nil) expire_lease(first_granted_, now, events);
  settle(now, events);
}

key_activity lock_table::activity(std::string_view key) const {
  key_activity out;
  const std::uint32_t e = find_entry(key);
  if (e == nil) return out;
  const entry_rec& ent = entries_[e];
  out.held = ent.held;
  out.waiting = ent.waiting;
  out.in_delay = in_delay(e);
  out.open = !ent.closed;
  return out;
}

bool lock_table::set_needs_in_order(
    std::string_view key, const std::function<bool(std::string_view)>& has_right) const {
  const std::uint32_t e = find_entry(key);
  if (e == nil) return false;
  const std::uint32_t w = entries_[e].first_waiter;
  if (w == nil || !is_member(waiters_[w].heap_pos)) return false;
  for (std::uint32_t m = groups_[waiters_[w].heap_pos & ~in_set].first; m != nil;
       m = waiters_[m].set_next) {
    const entry_rec& ent = entries_[waiters_[m].entry];
    // The set must head the queue of every one of its keys (a set queued behind another
    // request waits for whatever that one waits for, maybe a smaller key), and hold the right
    // of every key before this one: then all it waits for are rights of later keys.
    if (ent.first_waiter != m || (std::string_view(ent.key) < key && !has_right(ent.key))) {
      return false;
    }
  }
  return true;
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
    tick deadline = lease_deadline(l);
    if (deadline <= now) continue;  // over: its timer has not run yet
    lease_view view{rec.token, ms_left(deadline, now), rec.owner, rec.mode, {}};
    if (is_member(rec.heap_pos)) {
      const group_rec& grp = groups_[rec.heap_pos & ~in_set];
      view.keys.reserve(grp.size);
      for (std::uint32_t m = grp.first; m != nil; m = leases_[m].set_next) {
        view.keys.emplace_back(entries_[leases_[m].entry].key);
      }
    }
    out.holders.push_back(std::move(view));
  }
  return out;
}

top_result lock_table::top(std::size_t n, tick now) const { return top(n, now, nullptr); }

std::optional<owner_id> lock_table::lease_owner(std::string_view key, std::uint64_t token,
                                                tick now) const {
  std::uint32_t e = find_entry(key);
  if (e == nil) return std::nullopt;
  for (std::uint32_t l = entries_[e].first_lease; l != nil; l = leases_[l].key_next) {
    if (leases_[l].token == token && lease_deadline(l) > now) return leases_[l].owner;
  }
  return std::nullopt;
}

top_result lock_table::top(std::size_t n, tick now,
                           const std::function<bool(std::string_view key)>& visible) const {
  top_result out;
  if (n == 0) return out;
  // queues_ is in the documented order; keys without waiters sit at its tail.
  for (std::uint32_t e : queues_) {
    const entry_rec& ent = entries_[e];
    if (ent.waiting == 0 || out.queues.size() == n) break;
    if (visible && !visible(ent.key)) continue;
    out.queues.push_back({ent.key, ent.waiting, live_holders(ent, now), ent.limit});
  }
  // Grant order is token order and, as `now` never goes back, longest-held-first order.
  for (std::uint32_t l = first_granted_; l != nil && out.oldest.size() < n;
       l = leases_[l].all_next) {
    const lease_rec& rec = leases_[l];
    tick deadline = lease_deadline(l);
    if (deadline <= now) continue;  // over: its timer has not run yet
    if (visible && !visible(entries_[rec.entry].key)) continue;
    out.oldest.push_back({entries_[rec.entry].key, rec.token, now - as_tick(rec.granted),
                          ms_left(deadline, now), rec.owner, rec.mode});
  }
  return out;
}

// Whether the request of waiter record `w` is grantable by the rule (see the header): at the
// head of every one of its queues, room for its mode on each key, no key in its lock delay or
// stalled.
bool lock_table::grantable(std::uint32_t w) const {
  const lock_mode mode = waiters_[w].mode;
  for (std::uint32_t m = first_waiter_of(w); m != nil;
       m = is_member(waiters_[w].heap_pos) ? waiters_[m].set_next : nil) {
    const std::uint32_t e = waiters_[m].entry;
    const entry_rec& ent = entries_[e];
    if (ent.first_waiter != m || !has_room(ent, mode) || blocked(e) || ent.stall_pos != nil) {
      return false;
    }
  }
  return true;
}

std::string lock_table::check_invariants() const {
  std::size_t live_entries = 0;
  std::size_t leases_seen = 0;
  std::size_t waiters_seen = 0;
  std::size_t delays_seen = 0;
  std::size_t stalled_seen = 0;
  std::size_t queued_keys = 0;
  std::size_t reserved = 0;
  auto node_is = [&](std::uint32_t pos, ref_kind kind, std::uint32_t slot) {
    return pos < deadlines_.size() &&
           deadlines_[pos].ref == ((static_cast<std::uint32_t>(kind) << 30) | slot);
  };
  for (std::uint32_t e = 0; e < entries_.high_water(); ++e) {
    const entry_rec& ent = entries_[e];
    if (ent.limit == 0) continue;
    ++live_entries;
    if (find_entry(ent.key) != e) return "entry '" + ent.key + "' not found through the index";
    if (ent.hash != hash_of(ent.key)) return "entry '" + ent.key + "' has a stale hash";
    std::uint32_t held = 0;
    std::uint32_t held_shared = 0;
    std::uint32_t last = nil;
    std::uint64_t prev_token = 0;
    for (std::uint32_t l = ent.first_lease; l != nil; l = leases_[l].key_next) {
      const lease_rec& rec = leases_[l];
      if (rec.entry != e) return "lease linked into the wrong key";
      if (rec.token <= prev_token) return "holders not in token order";
      if (rec.token > last_token_) return "lease token above the last token issued";
      if (is_member(rec.heap_pos)) {
        const std::uint32_t g = rec.heap_pos & ~in_set;
        if (g >= groups_.high_water() || groups_[g].size == 0 || !groups_[g].held) {
          return "set lease without its held group on '" + ent.key + "'";
        }
      } else if (!node_is(rec.heap_pos, ref_kind::lease, l)) {
        return "lease without its deadline node";
      }
      prev_token = rec.token;
      last = l;
      ++held;
      held_shared += rec.mode == lock_mode::shared;
    }
    if (last != ent.last_lease) return "holder list tail is wrong on '" + ent.key + "'";
    if (held != ent.held || held_shared != ent.held_shared()) {
      return "holder count mismatch on '" + ent.key + "'";
    }
    if (held - held_shared > ent.limit) return "more holders than the limit on '" + ent.key + "'";
    if (held_shared > 0 && (held != held_shared || ent.limit != 1)) {
      return "shared holders beside an exclusive holder or a limit on '" + ent.key + "'";
    }
    std::uint32_t waiting = 0;
    std::uint32_t waiting_shared = 0;
    std::uint64_t prev_seq = 0;
    for (std::uint32_t w = ent.first_waiter; w != nil; w = waiters_[w].key_next) {
      const waiter_rec& rec = waiters_[w];
      if (rec.entry != e) return "waiter linked into the wrong key";
      if (rec.seq <= prev_seq) return "waiters out of arrival order";
      if (rec.key_next != nil && waiters_[rec.key_next].key_prev != w) {
        return "waiter queue back link is wrong on '" + ent.key + "'";
      }
      if (is_member(rec.heap_pos)) {
        const std::uint32_t g = rec.heap_pos & ~in_set;
        if (g >= groups_.high_water() || groups_[g].size == 0 || groups_[g].held) {
          return "set waiter without its waiting group on '" + ent.key + "'";
        }
      } else if (rec.heap_pos != nil && !node_is(rec.heap_pos, ref_kind::waiter, w)) {
        return "waiter with a wrong deadline node";
      }
      if (rec.mode == lock_mode::shared && ent.limit != 1) {
        return "shared waiter on a key with a limit on '" + ent.key + "'";
      }
      prev_seq = rec.seq;
      ++waiting;
      waiting_shared += rec.mode == lock_mode::shared;
    }
    if (waiting != ent.waiting || waiting_shared != ent.waiting_shared) {
      return "waiter count mismatch on '" + ent.key + "'";
    }
    const bool stalled = ent.stall_pos != nil;
    if (ent.first_waiter != nil && grantable(ent.first_waiter)) {
      return "a queued request is grantable at the head of '" + ent.key + "'";
    }
    if (held == 0 && waiting == 0 && !in_delay(e)) {
      return "idle key '" + ent.key + "' left in the table";
    }
    if (in_delay(e)) {
      ++delays_seen;
      if (!node_is(ent.delay_pos, ref_kind::delay, e)) {
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

  // Sets: every member on a distinct key, chained from the group; a held set's leases share
  // token, owner, ttl and mode; a queued set's records share arrival, owner, request and mode
  // and sit in every one of its queues (each record was found in its key's queue above).
  std::size_t group_nodes = 0;
  std::size_t set_records = 0;
  for (std::uint32_t g = 0; g < groups_.high_water(); ++g) {
    const group_rec& grp = groups_[g];
    if (grp.size == 0) continue;
    if (grp.size < 2) return "a group of fewer than two keys";
    if (grp.heap_pos != nil) {
      if (!node_is(grp.heap_pos, ref_kind::group, g)) return "group with a wrong deadline node";
      ++group_nodes;
    } else if (grp.held) {
      return "held set without its deadline node";
    }
    std::uint32_t n = 0;
    std::vector<std::uint32_t> keys_of_set;
    if (grp.held) {
      const lease_rec& f = leases_[grp.first];
      for (std::uint32_t m = grp.first; m != nil; m = leases_[m].set_next) {
        const lease_rec& rec = leases_[m];
        if (rec.token == 0 || rec.heap_pos != (in_set | g)) return "set lease not of its group";
        if (rec.token != f.token || rec.owner != f.owner || rec.ttl_ms != f.ttl_ms ||
            rec.mode != f.mode || rec.granted != f.granted) {
          return "leases of one set differ in token, owner, ttl, mode or grant time";
        }
        keys_of_set.push_back(rec.entry);
        if (++n > grp.size) return "set chain longer than its size";
      }
    } else {
      const waiter_rec& f = waiters_[grp.first];
      for (std::uint32_t m = grp.first; m != nil; m = waiters_[m].set_next) {
        const waiter_rec& rec = waiters_[m];
        if (rec.seq == 0 || rec.heap_pos != (in_set | g)) return "set waiter not of its group";
        if (rec.seq != f.seq || rec.owner != f.owner || rec.ttl_ms != f.ttl_ms ||
            rec.mode != f.mode || rec.request_id != f.request_id ||
            rec.has_request_id != f.has_request_id) {
          return "waiters of one set differ in arrival, owner, ttl, mode or request";
        }
        keys_of_set.push_back(rec.entry);
        if (++n > grp.size) return "set chain longer than its size";
      }
    }
    if (n != grp.size) return "set chain shorter than its size";
    std::sort(keys_of_set.begin(), keys_of_set.end());
    if (std::adjacent_find(keys_of_set.begin(), keys_of_set.end()) != keys_of_set.end()) {
      return "a set names one key twice";
    }
    set_records += n;
  }
  std::size_t member_records = 0;
  for (std::uint32_t l = 0; l < leases_.high_water(); ++l) {
    member_records += leases_[l].token != 0 && is_member(leases_[l].heap_pos);
  }
  for (std::uint32_t w = 0; w < waiters_.high_water(); ++w) {
    member_records += waiters_[w].seq != 0 && is_member(waiters_[w].heap_pos);
  }
  if (member_records != set_records) return "set records outside their group's chain";

  // The queue index: exactly the keys that ever had a waiter, in (waiting desc, key) order.
  if (queued_keys != queues_.size()) return "queue index holds keys that left the table";
  const queue_order order{this};
  std::uint32_t prev_e = nil;
  for (std::uint32_t e : queues_) {
    if (entries_[e].limit == 0 || !entries_[e].in_queues) return "queue index names a free key";
    if (prev_e != nil && !order(prev_e, e)) return "queue index out of order";
    prev_e = e;
  }

  // The grant-order list: every lease once, tokens (and grant times) increasing; the leases of
  // one set share a token and follow each other.
  std::size_t in_list = 0;
  std::uint32_t prev_l = nil;
  for (std::uint32_t l = first_granted_; l != nil; l = leases_[l].all_next) {
    const lease_rec& rec = leases_[l];
    if (rec.token == 0) return "grant-order list names a free lease";
    if (rec.all_prev != prev_l) return "grant-order list back link is wrong";
    if (prev_l != nil) {
      const lease_rec& prev = leases_[prev_l];
      const bool same_set = is_member(rec.heap_pos) && prev.heap_pos == rec.heap_pos;
      if (prev.token > rec.token || (prev.token == rec.token && !same_set) ||
          prev.granted > rec.granted) {
        return "grant-order list out of order";
      }
    }
    prev_l = l;
    if (++in_list > leases_.live()) return "grant-order list has a cycle";
  }
  if (prev_l != last_granted_) return "grant-order list tail is wrong";
  if (in_list != leases_.live()) return "grant-order list misses leases";

  for (std::size_t i = 1; i < deadlines_.size(); ++i) {
    if (deadlines_[(i - 1) / 2].when > deadlines_[i].when) return "deadline heap out of order";
  }
  std::size_t single_nodes = 0;
  for (std::uint32_t l = 0; l < leases_.high_water(); ++l) {
    single_nodes += leases_[l].token != 0 && !is_member(leases_[l].heap_pos);
  }
  for (std::uint32_t w = 0; w < waiters_.high_water(); ++w) {
    single_nodes += waiters_[w].seq != 0 && waiters_[w].heap_pos != nil &&
                    !is_member(waiters_[w].heap_pos);
  }
  if (deadlines_.size() != single_nodes + group_nodes + delays_) {
    return "deadline heap holds stale nodes";
  }
  std::size_t owner_leases_seen = 0;
  std::size_t owner_waiters_seen = 0;
  std::size_t requests_seen = 0;
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
    std::uint32_t keys = 0;
    for (std::uint32_t w = own.first_waiter; w != nil; w = waiters_[w].owner_next) {
      const waiter_rec& rec = waiters_[w];
      if (rec.owner != o) return "waiter linked to the wrong owner";
      if (first_waiter_of(w) != w) return "owner list holds a set record but its first";
      keys += is_member(rec.heap_pos) ? groups_[rec.heap_pos & ~in_set].size : 1;
      ++n;
    }
    if (n != own.waiters || keys != own.waiter_keys) return "owner waiter count mismatch";
    owner_waiters_seen += keys;
    requests_seen += n;
    if (own.leases + own.waiter_keys > limits_.max_leases_per_owner) {
      return "owner above max_leases_per_owner";
    }
  }
  if (owner_leases_seen != leases_.live()) return "leases not owned by a live owner";
  if (owner_waiters_seen != waiters_.live()) return "waiters not owned by a live owner";
  if (requests_seen != queued_) return "queued request count is stale";
  return {};
}

}  // namespace keylock
