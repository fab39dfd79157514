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

}  // namespace

template <class T>
std::uint32_t lock_table::slab<T>::alloc() {
  if (!free.empty()) {
    std::uint32_t i = free.back();
    free.pop_back();
    return i;
  }
  items.emplace_back();
  return static_cast<std::uint32_t>(items.size() - 1);
}

template <class T>
void lock_table::slab<T>::release(std::uint32_t i) {
  items[i] = T{};
  free.push_back(i);
}

std::size_t lock_table::digest_hash::operator()(const digest& d) const noexcept {
  // MD5 output is uniform: any 8 bytes of it are as good a hash as any.
  std::size_t h;
  std::memcpy(&h, d.data(), sizeof h);
  return h;
}

lock_table::lock_table(table_limits limits, token_source& tokens)
    : limits_(limits), tokens_(tokens) {}

lock_table::digest lock_table::md5_of(std::string_view key) {
  digest d;
  MD5(reinterpret_cast<const unsigned char*>(key.data()), key.size(), d.data());
  return d;
}

owner_id lock_table::connect() {
  std::uint32_t o = owners_.alloc();
  owners_.items[o].live = true;
  return o;
}

std::size_t lock_table::held() const { return leases_.live(); }
std::size_t lock_table::waiting() const { return waiters_.live(); }
std::size_t lock_table::owner_leases(owner_id owner) const { return owners_.items[owner].leases; }
std::size_t lock_table::owner_waiters(owner_id owner) const { return owners_.items[owner].waiters; }

std::uint32_t lock_table::find_entry(std::string_view key) const {
  auto it = index_.find(md5_of(key));
  return it == index_.end() ? nil : it->second;
}

std::uint32_t lock_table::new_entry(const digest& hash, std::string_view key, std::uint32_t limit) {
  std::uint32_t e = entries_.alloc();
  entry_rec& rec = entries_.items[e];
  rec.hash = hash;
  rec.key.assign(key);
  rec.incarnation = next_incarnation_++;
  rec.limit = limit;
  rec.live = true;
  index_.emplace(hash, e);
  return e;
}

void lock_table::erase_if_idle(std::uint32_t e) {
  entry_rec& rec = entries_.items[e];
  if (rec.held != 0 || rec.waiting != 0 || rec.delay_until != tick{0}) return;
  index_.erase(rec.hash);
  entries_.release(e);
}

std::uint32_t lock_table::find_lease(std::uint32_t e, std::uint64_t token) const {
  for (std::uint32_t l = entries_.items[e].first_lease; l != nil; l = leases_.items[l].key_next) {
    if (leases_.items[l].token == token) return l;
  }
  return nil;
}

std::uint64_t lock_table::grant(std::uint32_t e, std::uint32_t owner, std::uint32_t ttl_ms,
                                tick now) {
  std::uint32_t l = leases_.alloc();
  std::uint64_t token = tokens_.next();
  last_token_ = token;
  lease_rec& rec = leases_.items[l];
  entry_rec& ent = entries_.items[e];
  owner_rec& own = owners_.items[owner];
  rec.token = token;
  rec.deadline = now + ms(ttl_ms);
  rec.entry = e;
  rec.owner = owner;
  rec.ttl_ms = ttl_ms;
  // Append to the key's holder list and the owner's lease list.
  rec.key_prev = ent.last_lease;
  if (ent.last_lease != nil) {
    leases_.items[ent.last_lease].key_next = l;
  } else {
    ent.first_lease = l;
  }
  ent.last_lease = l;
  rec.owner_prev = own.last_lease;
  if (own.last_lease != nil) {
    leases_.items[own.last_lease].owner_next = l;
  } else {
    own.first_lease = l;
  }
  own.last_lease = l;
  ++ent.held;
  ++own.leases;
  ++counters_.grants;
  push_deadline({rec.deadline, token, l, deadline_kind::lease});
  return token;
}

void lock_table::unlink_lease(std::uint32_t l) {
  lease_rec& rec = leases_.items[l];
  entry_rec& ent = entries_.items[rec.entry];
  owner_rec& own = owners_.items[rec.owner];
  (rec.key_prev != nil ? leases_.items[rec.key_prev].key_next : ent.first_lease) = rec.key_next;
  (rec.key_next != nil ? leases_.items[rec.key_next].key_prev : ent.last_lease) = rec.key_prev;
  (rec.owner_prev != nil ? leases_.items[rec.owner_prev].owner_next : own.first_lease) =
      rec.owner_next;
  (rec.owner_next != nil ? leases_.items[rec.owner_next].owner_prev : own.last_lease) =
      rec.owner_prev;
  --ent.held;
  --own.leases;
  leases_.release(l);
}

void lock_table::unlink_waiter(std::uint32_t w) {
  waiter_rec& rec = waiters_.items[w];
  entry_rec& ent = entries_.items[rec.entry];
  owner_rec& own = owners_.items[rec.owner];
  (rec.key_prev != nil ? waiters_.items[rec.key_prev].key_next : ent.first_waiter) = rec.key_next;
  (rec.key_next != nil ? waiters_.items[rec.key_next].key_prev : ent.last_waiter) = rec.key_prev;
  (rec.owner_prev != nil ? waiters_.items[rec.owner_prev].owner_next : own.first_waiter) =
      rec.owner_next;
  (rec.owner_next != nil ? waiters_.items[rec.owner_next].owner_prev : own.last_waiter) =
      rec.owner_prev;
  --ent.waiting;
  --own.waiters;
  waiters_.release(w);
}

// A lease that ends without a release (expiry, disconnect): start the key's lock delay.
void lock_table::lose_lease(std::uint32_t l, tick now) {
  std::uint32_t e = leases_.items[l].entry;
  unlink_lease(l);
  if (limits_.lock_delay_ms == 0) return;
  entry_rec& ent = entries_.items[e];
  tick until = now + ms(limits_.lock_delay_ms);
  if (until > ent.delay_until) {
    ent.delay_until = until;
    push_deadline({until, ent.incarnation, e, deadline_kind::delay});
  }
}

void lock_table::expire_lease(std::uint32_t l, tick now, std::vector<table_event>& events) {
  const lease_rec& rec = leases_.items[l];
  std::uint32_t e = rec.entry;
  table_event ev;
  ev.kind = event_kind::expired;
  ev.owner = rec.owner;
  ev.token = rec.token;
  ev.key = entries_.items[e].key;
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
  for (;;) {
    entry_rec& ent = entries_.items[e];
    if (ent.first_waiter == nil || ent.held >= ent.limit) return;
    if (ent.delay_until != tick{0}) {
      if (ent.delay_until > now) return;
      ent.delay_until = tick{0};
    }
    std::uint32_t w = ent.first_waiter;
    const waiter_rec& wr = waiters_.items[w];
    table_event ev;
    ev.owner = wr.owner;
    if (wr.has_request_id) ev.request_id = wr.request_id;
    if (wr.deadline <= now) {
      ev.kind = event_kind::wait_timeout;
      ++counters_.timeouts;
      unlink_waiter(w);
    } else {
      ev.kind = event_kind::granted;
      ev.ttl_ms = wr.ttl_ms;
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
  digest hash = md5_of(args.key);
  std::uint32_t e;
  auto it = index_.find(hash);
  if (it == index_.end()) {
    if (index_.size() >= limits_.max_keys) return {acquire_status::too_many_keys, 0};
    e = new_entry(hash, args.key, args.limit);
  } else {
    e = it->second;
    if (entries_.items[e].limit != args.limit) return {acquire_status::conflict, 0};
    // A lock delay that has run out but whose deadline has not been processed yet ends now.
    if (entries_.items[e].delay_until != tick{0} && entries_.items[e].delay_until <= now) {
      entries_.items[e].delay_until = tick{0};
      promote(e, now, events);
    }
  }
  entry_rec& ent = entries_.items[e];
  if (ent.held < ent.limit && ent.first_waiter == nil && ent.delay_until == tick{0}) {
    return {acquire_status::granted, grant(e, owner, args.ttl_ms, now)};
  }
  if (args.wait_ms && *args.wait_ms == 0) {
    ++counters_.timeouts;
    return {acquire_status::busy, 0};
  }
  if (ent.waiting >= limits_.max_waiters_per_key) return {acquire_status::too_many_waiters, 0};
  owner_rec& own = owners_.items[owner];
  if (own.waiters >= limits_.max_pending_per_owner) return {acquire_status::too_many_pending, 0};

  std::uint32_t w = waiters_.alloc();  // moves waiter records only; `ent` and `own` stay valid
  waiter_rec& rec = waiters_.items[w];
  rec.ticket = next_ticket_++;
  rec.request_id = args.request_id.value_or(0);
  rec.has_request_id = args.request_id.has_value();
  rec.deadline = args.wait_ms ? now + ms(*args.wait_ms) : tick::max();
  rec.entry = e;
  rec.owner = owner;
  rec.ttl_ms = args.ttl_ms;
  rec.mode = args.mode;
  rec.key_prev = ent.last_waiter;
  if (ent.last_waiter != nil) {
    waiters_.items[ent.last_waiter].key_next = w;
  } else {
    ent.first_waiter = w;
  }
  ent.last_waiter = w;
  rec.owner_prev = own.last_waiter;
  if (own.last_waiter != nil) {
    waiters_.items[own.last_waiter].owner_next = w;
  } else {
    own.first_waiter = w;
  }
  own.last_waiter = w;
  ++ent.waiting;
  ++own.waiters;
  if (args.wait_ms) push_deadline({rec.deadline, rec.ticket, w, deadline_kind::waiter});
  return {acquire_status::queued, 0};
}

lease_status lock_table::release(std::string_view key, std::uint64_t token, tick now,
                                 std::vector<table_event>& events) {
  std::uint32_t e = find_entry(key);
  if (e == nil) return lease_status::not_held;
  std::uint32_t l = find_lease(e, token);
  if (l == nil) return lease_status::not_held;
  if (leases_.items[l].deadline <= now) {
    expire_lease(l, now, events);
    return lease_status::not_held;
  }
  unlink_lease(l);
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
  lease_rec& rec = leases_.items[l];
  if (rec.deadline <= now) {
    expire_lease(l, now, events);
    return lease_status::not_held;
  }
  if (ttl_ms) rec.ttl_ms = *ttl_ms;
  rec.deadline = now + ms(rec.ttl_ms);
  ++counters_.extends;
  if (ttl_out) *ttl_out = rec.ttl_ms;
  push_deadline({rec.deadline, rec.token, l, deadline_kind::lease});
  return lease_status::ok;
}

bool lock_table::cancel(owner_id owner, std::uint64_t request_id,
                        std::vector<table_event>& events) {
  for (std::uint32_t w = owners_.items[owner].first_waiter; w != nil;
       w = waiters_.items[w].owner_next) {
    const waiter_rec& rec = waiters_.items[w];
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
  while (owners_.items[owner].first_waiter != nil) {
    std::uint32_t w = owners_.items[owner].first_waiter;
    std::uint32_t e = waiters_.items[w].entry;
    unlink_waiter(w);
    erase_if_idle(e);
  }
  while (owners_.items[owner].first_lease != nil) {
    std::uint32_t l = owners_.items[owner].first_lease;
    std::uint32_t e = leases_.items[l].entry;
    ++counters_.disconnect_releases;
    lose_lease(l, now);
    promote(e, now, events);
    erase_if_idle(e);
  }
  owners_.release(owner);
}

void lock_table::abort_waiters(std::vector<table_event>& events) {
  for (std::uint32_t w = 0; w < waiters_.items.size(); ++w) {
    const waiter_rec& rec = waiters_.items[w];
    if (rec.ticket == 0) continue;
    table_event ev;
    ev.kind = event_kind::aborted;
    ev.owner = rec.owner;
    if (rec.has_request_id) ev.request_id = rec.request_id;
    events.push_back(std::move(ev));
    std::uint32_t e = rec.entry;
    unlink_waiter(w);
    erase_if_idle(e);
  }
}

namespace {
struct later {
  template <class T>
  bool operator()(const T& a, const T& b) const {
    return a.when > b.when;
  }
};
}  // namespace

void lock_table::push_deadline(const deadline_item& item) {
  deadlines_.push_back(item);
  std::push_heap(deadlines_.begin(), deadlines_.end(), later{});
  // Lazy deletion leaves stale items behind (every extend adds one); rebuild before they
  // dominate, so the index stays proportional to the live leases and waiters.
  if (deadlines_.size() > 1024 &&
      deadlines_.size() > 2 * (leases_.live() + waiters_.live() + index_.size())) {
    compact_deadlines();
  }
}

bool lock_table::is_current(const deadline_item& item) const {
  switch (item.kind) {
    case deadline_kind::lease: {
      const lease_rec& rec = leases_.items[item.slot];
      return rec.token == item.ident && rec.deadline == item.when;
    }
    case deadline_kind::waiter: {
      const waiter_rec& rec = waiters_.items[item.slot];
      return rec.ticket == item.ident && rec.deadline == item.when;
    }
    case deadline_kind::delay: {
      const entry_rec& rec = entries_.items[item.slot];
      return rec.live && rec.incarnation == item.ident && rec.delay_until == item.when;
    }
  }
  return false;
}

void lock_table::compact_deadlines() {
  std::erase_if(deadlines_, [this](const deadline_item& item) { return !is_current(item); });
  std::make_heap(deadlines_.begin(), deadlines_.end(), later{});
}

std::optional<tick> lock_table::next_deadline() {
  while (!deadlines_.empty() && !is_current(deadlines_.front())) {
    std::pop_heap(deadlines_.begin(), deadlines_.end(), later{});
    deadlines_.pop_back();
  }
  if (deadlines_.empty()) return std::nullopt;
  return deadlines_.front().when;
}

void lock_table::expire_due(tick now, std::vector<table_event>& events) {
  while (!deadlines_.empty() && deadlines_.front().when <= now) {
    deadline_item item = deadlines_.front();
    std::pop_heap(deadlines_.begin(), deadlines_.end(), later{});
    deadlines_.pop_back();
    if (!is_current(item)) continue;
    switch (item.kind) {
      case deadline_kind::lease:
        expire_lease(item.slot, now, events);
        break;
      case deadline_kind::waiter: {
        const waiter_rec& rec = waiters_.items[item.slot];
        table_event ev;
        ev.kind = event_kind::wait_timeout;
        ev.owner = rec.owner;
        if (rec.has_request_id) ev.request_id = rec.request_id;
        events.push_back(std::move(ev));
        ++counters_.timeouts;
        std::uint32_t e = rec.entry;
        unlink_waiter(item.slot);
        erase_if_idle(e);
        break;
      }
      case deadline_kind::delay:
        entries_.items[item.slot].delay_until = tick{0};
        promote(item.slot, now, events);
        erase_if_idle(item.slot);
        break;
    }
  }
}

inspect_result lock_table::inspect(std::string_view key, tick now) const {
  inspect_result out;
  std::uint32_t e = find_entry(key);
  if (e == nil) return out;
  const entry_rec& ent = entries_.items[e];
  out.limit = ent.limit;
  out.waiters = ent.waiting;
  out.holders.reserve(ent.held);
  for (std::uint32_t l = ent.first_lease; l != nil; l = leases_.items[l].key_next) {
    const lease_rec& rec = leases_.items[l];
    out.holders.push_back({rec.token, ms_left(rec.deadline, now), rec.owner});
  }
  return out;
}

std::string lock_table::check_invariants() const {
  std::size_t live_entries = 0;
  std::size_t leases_seen = 0;
  std::size_t waiters_seen = 0;
  for (std::uint32_t e = 0; e < entries_.items.size(); ++e) {
    const entry_rec& ent = entries_.items[e];
    if (!ent.live) continue;
    ++live_entries;
    auto it = index_.find(ent.hash);
    if (it == index_.end() || it->second != e) return "entry '" + ent.key + "' missing from index";
    std::uint32_t held = 0;
    std::uint64_t prev_token = 0;
    for (std::uint32_t l = ent.first_lease; l != nil; l = leases_.items[l].key_next) {
      const lease_rec& rec = leases_.items[l];
      if (rec.entry != e) return "lease linked into the wrong key";
      if (rec.token <= prev_token) return "holders not in token order";
      if (rec.token > last_token_) return "lease token above the last token issued";
      prev_token = rec.token;
      ++held;
    }
    if (held != ent.held) return "holder count mismatch on '" + ent.key + "'";
    if (held > ent.limit) return "more holders than the limit on '" + ent.key + "'";
    std::uint32_t waiting = 0;
    std::uint64_t prev_ticket = 0;
    for (std::uint32_t w = ent.first_waiter; w != nil; w = waiters_.items[w].key_next) {
      const waiter_rec& rec = waiters_.items[w];
      if (rec.entry != e) return "waiter linked into the wrong key";
      if (rec.ticket <= prev_ticket) return "waiters out of arrival order";
      prev_ticket = rec.ticket;
      ++waiting;
    }
    if (waiting != ent.waiting) return "waiter count mismatch on '" + ent.key + "'";
    if (waiting > 0 && held < ent.limit && ent.delay_until == tick{0}) {
      return "waiters queued behind a free slot on '" + ent.key + "'";
    }
    if (held == 0 && waiting == 0 && ent.delay_until == tick{0}) {
      return "idle key '" + ent.key + "' left in the table";
    }
    leases_seen += held;
    waiters_seen += waiting;
  }
  if (live_entries != index_.size()) return "index size differs from live entries";
  if (leases_seen != leases_.live()) return "lease slab count differs from linked leases";
  if (waiters_seen != waiters_.live()) return "waiter slab count differs from linked waiters";
  std::size_t owner_leases_seen = 0;
  std::size_t owner_waiters_seen = 0;
  for (std::uint32_t o = 0; o < owners_.items.size(); ++o) {
    const owner_rec& own = owners_.items[o];
    if (!own.live) continue;
    std::uint32_t n = 0;
    for (std::uint32_t l = own.first_lease; l != nil; l = leases_.items[l].owner_next) {
      if (leases_.items[l].owner != o) return "lease linked to the wrong owner";
      ++n;
    }
    if (n != own.leases) return "owner lease count mismatch";
    owner_leases_seen += n;
    n = 0;
    for (std::uint32_t w = own.first_waiter; w != nil; w = waiters_.items[w].owner_next) {
      if (waiters_.items[w].owner != o) return "waiter linked to the wrong owner";
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
