// libFuzzer target: the lock table driven by a byte-coded sequence of operations.
//
// Input layout: bytes 0 and 1 pick the table limits (lock delay, small key/waiter/pending caps
// and lease bounds so that every limit is reached); every following group of bytes is one
// operation over 3 owners and 5 keys: acquire (one key or a set of 2..3 keys in varying
// orders; exclusive or shared; wait forever / try once / bounded wait; limit 1..3; short
// ttls), release and extend (by one member key, by the exact key set, or by a wrong set),
// cancel, cancel_waiters (half-close), disconnect + reconnect, clock advance + expire_due with a
// budget of deadlines, clock advance without expire_due (late timers), switching the token
// source off or on (+ resume_grants), inspect.
//
// A reference model is kept beside the table: the leases each owner was told of (keys in the
// order requested, mode, token, grant time, deadline), the requests queued (keys, mode, arrival
// order, deadline), each key's lock delay, and the grant rule written plainly: a request may be
// granted when, at each of its keys, no older request waits, the key has room for its mode
// (exclusive: fewer than `limit` exclusive holders and no shared holder; shared: no exclusive
// holder) and no lock delay runs. After every step: check_invariants() is empty, and
//  - no key ever has more exclusive holders than its limit, or shared beside exclusive;
//  - an acquire is granted at once exactly when the model finds every key free for it (no
//    waiter, room, no running delay): no newcomer jumps a queue, writers never starve;
//  - each `granted` event is legal in the model at the moment it is applied (the request heads
//    every queue it is in, has room, no delay, its wait has not run out), and with the events
//    applied in order the model reaches the same fixpoint: when no deadline is left due and no
//    key can be stalled, no queued request in the model is grantable;
//  - inspect() of every key equals the model: live holders in grant order with token, mode and
//    the keys of a set, waiters and limit;
//  - every token handed out (at once or by a `granted` event) is greater than every earlier one,
//    and no token is taken from the source while it is not ready();
//  - acquire answers unavailable exactly while tokens are off, with no side effect;
//  - an owner's leases + waiters (each key counted) never exceed max_leases_per_owner, all
//    leases never exceed max_leases, and the too_many_* answers come only at those bounds;
//  - every event answers something the model has (no double grant, no phantom expiry); an
//    `expired` event names every key of a set in order, and comes only at the lease's deadline;
//  - cancel and cancel_waiters answer exactly the owner's requests, in arrival order, first;
//  - after expire_due(now) reports nothing left, no bounded waiter is still queued past
//    arrival + wait_ms;
//  - release/extend answer ok only for a lease the owner was told it holds (by one of its keys
//    or its exact set), and not_held only once that lease is gone from the model (an `expired`
//    event came first) or the keys named are not its set;
//  - held(now) and top(n) equal what the model computes (live leases only, documented orders).
// At the end the tokens come back (resume_grants), the clock runs far ahead until every waiter
// is answered; then every owner disconnects and, after the lock delay, the table must be empty.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "lock_table.hpp"

namespace {

using keylock::lock_mode;
using keylock::tick;
using namespace std::chrono_literals;

struct counter_tokens final : keylock::token_source {
  std::uint64_t last = 0;
  bool on = true;
  bool issued_while_off = false;
  bool ready() const override { return on; }
  std::uint64_t next() override {
    if (!on) issued_while_off = true;
    return ++last;
  }
};

struct model_lease {
  std::vector<std::string> keys;  // in the order requested
  std::uint64_t token;
  int owner;
  tick granted;
  tick deadline;
  lock_mode mode;
  bool has(const std::string& key) const {
    return std::find(keys.begin(), keys.end(), key) != keys.end();
  }
};

struct model_waiter {
  std::uint64_t seq;  // arrival order
  std::vector<std::string> keys;
  int owner;
  std::uint64_t request_id;
  std::optional<tick> deadline;
  std::uint32_t limit;
  std::uint32_t ttl_ms;
  lock_mode mode;
  bool has(const std::string& key) const {
    return std::find(keys.begin(), keys.end(), key) != keys.end();
  }
};

constexpr int owners_n = 3;
const char* const keys[] = {"a", "b", "c", "d", "e"};
constexpr std::size_t keys_n = sizeof(keys) / sizeof(keys[0]);

[[noreturn]] void fail(const std::string& what, std::size_t step) {
  std::fprintf(stderr, "fuzz_lock_table: step %zu: %s\n", step, what.c_str());
  std::abort();
}

class driver {
 public:
  driver(const std::uint8_t* data, std::size_t size) : in_(data), left_(size) {
    const std::uint8_t cfg = take();
    keylock::table_limits lim;
    lim.lock_delay_ms = (cfg & 3u) == 0 ? 0u : (cfg & 3u) * 7u;
    lim.max_keys = 1u + ((cfg >> 2) & 3u) * 2u;          // 1, 3, 5, 7
    lim.max_waiters_per_key = 1u + ((cfg >> 4) & 3u) * 3u;  // 1, 4, 7, 10
    lim.max_pending_per_owner = 2u + ((cfg >> 6) & 3u) * 4u;
    const std::uint8_t cfg2 = take();
    if ((cfg2 & 0x80u) == 0) {
      lim.max_leases_per_owner = 1u + (cfg2 & 7u);       // 1..8
      lim.max_leases = 1u + ((cfg2 >> 3) & 7u);          // 1..8
    }
    limits_ = lim;
    lock_delay_ = tick(std::chrono::milliseconds(lim.lock_delay_ms));
    table_.emplace(lim, tokens_);
    for (auto& o : owners_) o = table_->connect();
  }

  void run() {
    while (left_ > 0 && step_ < 4096) {
      const std::uint8_t b = take();
      switch (b % 12) {
        case 0: case 1: case 2: do_acquire(); break;
        case 3: do_release(); break;
        case 4: do_extend(); break;
        case 5: do_cancel(); break;
        case 6: do_disconnect(static_cast<int>(take() % owners_n)); break;
        case 7: do_advance(); break;
        case 8: do_late_clock(); break;
        case 9: do_tokens(); break;
        case 10: do_cancel_waiters(static_cast<int>(take() % owners_n)); break;
        default: do_inspect(); break;
      }
      check();
      ++step_;
    }
    finish();
  }

 private:
  std::uint8_t take() {
    if (left_ == 0) return 0;
    --left_;
    return *in_++;
  }

  // --- the reference model: the grant rule, written plainly --------------------------------

  // The oldest queued request that names `key`, or nullptr.
  const model_waiter* head_of(const std::string& key) const {
    const model_waiter* head = nullptr;
    for (const auto& w : waiters_) {
      if (w.has(key) && (head == nullptr || w.seq < head->seq)) head = &w;
    }
    return head;
  }

  bool room(const std::string& key, lock_mode mode) const {
    std::uint32_t exclusive = 0, shared = 0;
    for (const auto& l : leases_) {
      if (!l.has(key)) continue;
      (l.mode == lock_mode::shared ? shared : exclusive) += 1;
    }
    if (mode == lock_mode::shared) return exclusive == 0;
    return shared == 0 && (exclusive == 0 || exclusive < limit_of(key));
  }

  // The limit the key was last acquired with (it holds while the key is live), or 0.
  std::uint32_t limit_of(const std::string& key) const {
    auto it = limit_of_.find(key);
    return it == limit_of_.end() ? 0 : it->second;
  }

  bool delayed(const std::string& key) const {
    auto it = delay_until_.find(key);
    return it != delay_until_.end() && it->second > now_;
  }

  // The grant rule for a queued request.
  bool grantable(const model_waiter& w) const {
    for (const auto& key : w.keys) {
      if (head_of(key) != &w || !room(key, w.mode) || delayed(key)) return false;
    }
    return true;
  }

  // A new request is granted at once exactly when every key is free for it.
  bool free_for(const std::vector<std::string>& ks, lock_mode mode) const {
    for (const auto& key : ks) {
      if (head_of(key) != nullptr || !room(key, mode) || delayed(key)) return false;
    }
    return true;
  }

  void lose(const model_lease& l) {
    if (lock_delay_.count() == 0) return;
    for (const auto& key : l.keys) {
      tick& until = delay_until_[key];
      until = std::max(until, now_ + lock_delay_);
    }
  }

  std::size_t lease_keys() const {
    std::size_t n = 0;
    for (const auto& l : leases_) n += l.keys.size();
    return n;
  }
  std::size_t waiter_keys() const {
    std::size_t n = 0;
    for (const auto& w : waiters_) n += w.keys.size();
    return n;
  }

  // -------------------------------------------------------------------------------------------

  void do_acquire() {
    const std::uint8_t a = take();
    const std::uint8_t b = take();
    const std::uint8_t c = take();
    const int owner = a % owners_n;
    // 1..3 distinct keys, in an order that varies with c: a set and its reverse both occur.
    const std::size_t n = 1 + (c >> 1) % 3;
    const std::size_t first = (a / owners_n) % keys_n;
    const std::size_t stride = 1 + (c >> 3) % 4;  // coprime with 5: distinct keys
    std::vector<std::string> ks;
    for (std::size_t i = 0; i < n; ++i) ks.emplace_back(keys[(first + i * stride) % keys_n]);
    std::vector<std::string_view> views(ks.begin(), ks.end());
    keylock::acquire_args args;
    if (n == 1 && (c & 0x20u)) {
      args.key = ks[0];
    } else {
      args.keys = views;
    }
    args.mode = (c & 1u) ? lock_mode::shared : lock_mode::exclusive;
    args.limit = args.mode == lock_mode::shared ? 1u : 1u + (b & 3u) % 3u;
    static const std::uint32_t ttls[] = {1, 5, 50, 1000};
    args.ttl_ms = ttls[(b >> 2) & 3u];
    switch ((b >> 4) & 3u) {
      case 0: args.wait_ms = std::nullopt; break;
      case 1: args.wait_ms = 0; break;
      case 2: args.wait_ms = 1u + (b >> 6); break;
      default: args.wait_ms = 100u * (1u + (b >> 6)); break;
    }
    const std::uint64_t rid = ++next_rid_;
    args.request_id = rid;
    events_.clear();
    const auto r = table_->acquire(owners_[owner], args, now_, events_);
    if ((r.status == keylock::acquire_status::unavailable) != !tokens_.on) {
      fail(tokens_.on ? "unavailable while tokens are ready" : "acquire served without tokens",
           step_);
    }
    if (r.status == keylock::acquire_status::unavailable && !events_.empty()) {
      fail("an unavailable acquire had side effects", step_);
    }
    // Events first: they describe what happened before this acquire was looked at.
    apply_events(0);
    // A key in the table (held, waited on, or in its lock delay) keeps its limit.
    bool other_limit = false;
    for (const auto& key : ks) {
      other_limit = other_limit || ((live(key) || delayed(key)) && limit_of(key) != args.limit);
    }
    if (other_limit && r.status != keylock::acquire_status::conflict &&
        r.status != keylock::acquire_status::unavailable) {
      fail("a live key with another limit did not answer conflict", step_);
    }
    const std::size_t owner_total = owner_count(owner);
    const bool served = r.status == keylock::acquire_status::granted ||
                        r.status == keylock::acquire_status::queued;
    if (served && owner_total + n > limits_.max_leases_per_owner) {
      fail("acquire served beyond max_leases_per_owner", step_);
    }
    if (served || r.status == keylock::acquire_status::busy) {
      const bool free = free_for(ks, args.mode);
      if (r.status == keylock::acquire_status::granted && !free) {
        fail("granted at once although a key has a waiter, no room or a lock delay", step_);
      }
      if (r.status != keylock::acquire_status::granted && free) {
        fail("not granted at once although every key is free for it", step_);
      }
    }
    switch (r.status) {
      case keylock::acquire_status::granted:
        see_token(r.token);
        for (const auto& key : ks) limit_of_[key] = args.limit;
        leases_.push_back({ks, r.token, owner, now_, now_ + std::chrono::milliseconds(args.ttl_ms),
                           args.mode});
        break;
      case keylock::acquire_status::queued: {
        if (args.wait_ms && *args.wait_ms == 0) fail("try-once acquire was queued", step_);
        std::optional<tick> deadline;
        if (args.wait_ms) deadline = now_ + std::chrono::milliseconds(*args.wait_ms);
        waiters_.push_back({++seq_, ks, owner, rid, deadline, args.limit, args.ttl_ms, args.mode});
        for (const auto& key : ks) limit_of_[key] = args.limit;
        break;
      }
      case keylock::acquire_status::too_many_owner_leases:
        if (owner_total + n <= limits_.max_leases_per_owner) {
          fail("too_many_owner_leases below the owner's bound", step_);
        }
        break;
      case keylock::acquire_status::too_many_leases:
        if (lease_keys() + waiter_keys() + n <= limits_.max_leases) {
          fail("too_many_leases with room for every lease, waiter and key asked", step_);
        }
        break;
      case keylock::acquire_status::busy:
        if (!args.wait_ms || *args.wait_ms != 0) fail("busy for an acquire that may wait", step_);
        break;
      case keylock::acquire_status::conflict:
        if (!other_limit) fail("conflict although no live key has another limit", step_);
        break;
      default:
        break;  // too_many_*: the small limits of byte 0
    }
  }

  std::size_t pick(std::size_t n) { return n == 0 ? 0 : take() % n; }

  // How release/extend name a lease: by one member key, by its exact set (rotated), or by a
  // set that is not its own (expected not_held).
  struct naming {
    std::vector<std::string> ks;
    bool by_set = false;
    bool exact = true;
  };
  naming name_lease(const model_lease& l, std::uint8_t sel) const {
    naming nm;
    switch ((sel >> 5) & 3u) {
      case 0:
      case 1:
        nm.ks = {l.keys[(sel >> 2) % l.keys.size()]};
        break;
      case 2:
        nm.by_set = true;
        nm.ks = l.keys;
        std::rotate(nm.ks.begin(), nm.ks.begin() + (sel >> 2) % nm.ks.size(), nm.ks.end());
        break;
      default:
        nm.by_set = true;
        nm.ks = l.keys;
        if (nm.ks.size() > 1 && (sel & 0x80u)) {
          nm.ks.pop_back();  // a proper subset
        } else {
          for (const char* k : keys) {  // a superset
            if (!l.has(k)) {
              nm.ks.emplace_back(k);
              break;
            }
          }
        }
        nm.exact = false;
        break;
    }
    return nm;
  }

  void do_release() {
    const std::uint8_t sel = take();
    naming nm;
    std::uint64_t token;
    if (!leases_.empty() && (sel & 1u)) {
      const auto& l = leases_[(sel >> 1) % leases_.size()];
      nm = name_lease(l, take());
      token = l.token;
    } else {
      nm.ks = {keys[(sel >> 1) % keys_n]};
      token = (sel >> 4);  // usually a token no one holds
    }
    std::vector<std::string_view> views(nm.ks.begin(), nm.ks.end());
    events_.clear();
    const auto st = nm.by_set ? table_->release(views, token, now_, events_)
                              : table_->release(nm.ks[0], token, now_, events_);
    if (st == keylock::lease_status::ok) {
      const auto it = find_lease(nm.ks[0], token);
      if (it == leases_.end()) fail("release ok for a lease nobody was told of", step_);
      if (!nm.exact) fail("release ok for keys that are not the lease's set", step_);
      leases_.erase(it);
      // Then what it freed may have been granted: those events came with this call.
      apply_events(0);
    } else {
      apply_events(0);  // a lease past its deadline is expired by the release that finds it
      if (find_lease(nm.ks[0], token) != leases_.end() && nm.exact) {
        fail("release answered not_held for a lease still held (no expired event)", step_);
      }
    }
  }

  void do_extend() {
    const std::uint8_t sel = take();
    const std::uint8_t how = take();
    if (leases_.empty()) return;
    const auto& l = leases_[(sel >> 2) % leases_.size()];
    const naming nm = name_lease(l, how);
    const std::uint64_t token = l.token;
    std::optional<std::uint32_t> ttl;
    if (sel & 1u) ttl = (sel & 2u) ? 1u : 200u;
    std::vector<std::string_view> views(nm.ks.begin(), nm.ks.end());
    events_.clear();
    std::uint32_t applied = 0;
    const auto st = nm.by_set ? table_->extend(views, token, ttl, now_, events_, &applied)
                              : table_->extend(nm.ks[0], token, ttl, now_, events_, &applied);
    apply_events(0);
    const auto it = find_lease(nm.ks[0], token);
    const bool still = it != leases_.end();
    if (st == keylock::lease_status::ok) {
      if (!still) fail("extend ok for a lease that is gone", step_);
      if (!nm.exact) fail("extend ok for keys that are not the lease's set", step_);
      if (ttl && applied != *ttl) fail("extend applied another ttl", step_);
      it->deadline = now_ + std::chrono::milliseconds(applied);
    } else if (still && nm.exact) {
      fail("extend answered not_held for a lease still held (no expired event)", step_);
    }
  }

  void do_cancel() {
    const std::uint8_t sel = take();
    const int owner = sel % owners_n;
    std::uint64_t rid = next_rid_ + 1000;  // names no pending acquire
    std::vector<const model_waiter*> mine;
    for (const auto& w : waiters_) {
      if (w.owner == owner) mine.push_back(&w);
    }
    if (!mine.empty() && (sel & 0x80u)) rid = mine[(sel >> 2) % mine.size()]->request_id;
    const bool had = !mine.empty() && (sel & 0x80u);
    events_.clear();
    const bool ok = table_->cancel(owners_[owner], rid, now_, events_);
    if (ok != had) {
      fail(ok ? "cancel found a phantom acquire" : "cancel missed a queued acquire", step_);
    }
    if (ok && (events_.empty() || events_[0].kind != keylock::event_kind::cancelled ||
               events_[0].request_id != rid)) {
      fail("cancel did not answer with its cancelled event first", step_);
    }
    if (!ok && !events_.empty()) fail("a cancel that found nothing had events", step_);
    // Then the grants its leaving unblocked (a run of readers, or a set behind it).
    apply_events(0);
  }

  void do_disconnect(int owner) {
    events_.clear();
    table_->disconnect(owners_[owner], now_, events_);
    // Its own leases and waiters vanish without events; grants to others may follow.
    std::vector<model_lease> kept;
    for (auto& l : leases_) {
      if (l.owner != owner) {
        kept.push_back(l);
      } else {
        lose(l);
      }
    }
    leases_.swap(kept);
    std::vector<model_waiter> kw;
    for (auto& w : waiters_) {
      if (w.owner != owner) kw.push_back(w);
    }
    waiters_.swap(kw);
    for (const auto& e : events_) {
      if (e.owner == owners_[owner]) fail("disconnect sent an event to the departed owner", step_);
    }
    apply_events(0);
    owners_[owner] = table_->connect();
  }

  std::int64_t take_ms() {
    const std::uint8_t b = take();
    switch (b & 3u) {
      case 0: return 0;
      case 1: return b >> 2;
      case 2: return 10 * (b >> 2);
      default: return 100 * (b >> 2);
    }
  }

  void do_advance() {
    now_ += std::chrono::milliseconds(take_ms());
    // A budget of 1..4 deadlines per call now and then, as the server does per turn.
    const std::uint8_t b = take();
    expire((b & 0x80u) ? std::size_t{1u + (b & 3u)} : SIZE_MAX);
  }

  // The timer is late: time passes without expire_due, so due leases linger (lazy expiry).
  void do_late_clock() {
    const std::int64_t d = take_ms() % 64;
    now_ += std::chrono::milliseconds(d);
    if (d != 0) settled_ = false;
  }

  void do_tokens() {
    const std::uint8_t b = take();
    tokens_.on = (b & 1u) != 0;
    if (!tokens_.on) stalls_possible_ = true;
    if (b & 2u) {
      events_.clear();
      table_->resume_grants(now_, events_);
      if (!tokens_.on && !events_.empty()) fail("resume_grants granted without tokens", step_);
      apply_events(0);
      if (tokens_.on) stalls_possible_ = false;
    }
  }

  void do_cancel_waiters(int owner) {
    std::vector<model_waiter> mine;
    for (const auto& w : waiters_) {
      if (w.owner == owner) mine.push_back(w);
    }
    std::sort(mine.begin(), mine.end(),
              [](const model_waiter& a, const model_waiter& b) { return a.seq < b.seq; });
    events_.clear();
    table_->cancel_waiters(owners_[owner], now_, events_);
    if (events_.size() < mine.size()) fail("cancel_waiters answered fewer requests", step_);
    for (std::size_t i = 0; i < mine.size(); ++i) {
      const auto& e = events_[i];
      if (e.kind != keylock::event_kind::cancelled || e.owner != owners_[owner] ||
          e.request_id != mine[i].request_id) {
        fail("cancel_waiters did not answer the owner's waiters in arrival order", step_);
      }
    }
    // The cancelled events, then the grants to others that the leaving unblocked.
    apply_events(0);
    for (const auto& w : waiters_) {
      if (w.owner == owner) fail("cancel_waiters left a request of the owner", step_);
    }
  }

  void expire(std::size_t budget = SIZE_MAX) {
    events_.clear();
    const bool more = table_->expire_due(now_, events_, budget);
    apply_events(0);
    const auto d = table_->next_deadline();
    if (more != (d && *d <= now_)) fail("expire_due's answer disagrees with next_deadline", step_);
    settled_ = !more;
    if (more) return;
    for (const auto& w : waiters_) {
      if (w.deadline && *w.deadline <= now_) {
        fail("a waiter is still queued after its wait_ms ran out", step_);
      }
    }
  }

  void do_inspect() {
    const std::string key = keys[take() % keys_n];
    const auto r = table_->inspect(key, now_);
    if (r.limit == 0 && (!r.holders.empty() || r.waiters != 0)) {
      fail("inspect: holders or waiters on a key that is not live", step_);
    }
  }

  bool live(const std::string& key) const {
    for (const auto& l : leases_) {
      if (l.has(key)) return true;
    }
    for (const auto& w : waiters_) {
      if (w.has(key)) return true;
    }
    return false;
  }

  std::vector<model_lease>::iterator find_lease(const std::string& key, std::uint64_t token) {
    for (auto it = leases_.begin(); it != leases_.end(); ++it) {
      if (it->has(key) && it->token == token) return it;
    }
    return leases_.end();
  }

  std::size_t owner_count(int owner) const {
    std::size_t n = 0;
    for (const auto& l : leases_) n += l.owner == owner ? l.keys.size() : 0;
    for (const auto& w : waiters_) n += w.owner == owner ? w.keys.size() : 0;
    return n;
  }

  int owner_index(keylock::owner_id id) const {
    for (int i = 0; i < owners_n; ++i) {
      if (owners_[i] == id) return i;
    }
    return -1;
  }

  void see_token(std::uint64_t token) {
    if (token <= last_token_) {
      fail("token " + std::to_string(token) + " not above " + std::to_string(last_token_), step_);
    }
    last_token_ = token;
  }

  // Applies events_[from..] to the model in order, checking each against it.
  void apply_events(std::size_t from) {
    for (std::size_t i = from; i < events_.size(); ++i) {
      const auto& e = events_[i];
      const int owner = owner_index(e.owner);
      if (owner < 0) fail("event for an owner that is not connected", step_);
      if (e.kind == keylock::event_kind::expired) {
        auto it = leases_.begin();
        while (it != leases_.end() && it->token != e.token) ++it;
        if (it == leases_.end() || it->owner != owner) {
          fail("expired event for no known lease", step_);
        }
        if (it->deadline > now_) fail("a lease expired before its deadline", step_);
        const bool set = it->keys.size() > 1;
        if (e.key != it->keys[0] || (set ? e.keys != it->keys : !e.keys.empty())) {
          fail("expired event does not name the lease's keys in order", step_);
        }
        lose(*it);
        leases_.erase(it);
        continue;
      }
      if (!e.request_id) fail("waiter event without request id", step_);
      auto w = waiters_.begin();
      for (; w != waiters_.end(); ++w) {
        if (w->owner == owner && w->request_id == *e.request_id) break;
      }
      if (w == waiters_.end()) fail("event answers no queued acquire", step_);
      if (e.kind == keylock::event_kind::granted) {
        for (const auto& key : w->keys) {
          if (head_of(key) != &*w) {
            fail("FIFO broken: request " + std::to_string(w->request_id) +
                     " granted while an older request waits on " + key,
                 step_);
          }
          if (!room(key, w->mode)) fail("granted on " + key + " without room for its mode", step_);
          if (delayed(key)) fail("granted on " + key + " during its lock delay", step_);
        }
        if (w->deadline && *w->deadline <= now_) fail("granted after its wait ran out", step_);
        see_token(e.token);
        if (e.ttl_ms != w->ttl_ms) fail("granted with another ttl than asked", step_);
        leases_.push_back({w->keys, e.token, owner, now_,
                           now_ + std::chrono::milliseconds(e.ttl_ms), w->mode});
      } else if (e.kind == keylock::event_kind::wait_timeout) {
        if (!w->deadline || *w->deadline > now_) {
          fail("wait_timeout before the acquire's wait_ms ran out", step_);
        }
      }
      waiters_.erase(w);
    }
  }

  void check() {
    const std::string broken = table_->check_invariants();
    if (!broken.empty()) fail("check_invariants: " + broken, step_);
    for (const char* k : keys) {
      std::uint32_t exclusive = 0, shared = 0;
      for (const auto& l : leases_) {
        if (l.has(k)) (l.mode == lock_mode::shared ? shared : exclusive) += 1;
      }
      if (exclusive > limit_of(k)) fail(std::string("more holders than limit on ") + k, step_);
      if (shared > 0 && exclusive > 0) fail(std::string("shared beside exclusive on ") + k, step_);
    }
    if (table_->held() != lease_keys()) {
      fail("table holds " + std::to_string(table_->held()) + " leases, model " +
               std::to_string(lease_keys()),
           step_);
    }
    if (table_->waiting() != waiters_.size()) {
      fail("table has " + std::to_string(table_->waiting()) + " waiters, model " +
               std::to_string(waiters_.size()),
           step_);
    }
    if (tokens_.issued_while_off) fail("a token was issued while the source was not ready", step_);
    if (lease_keys() > limits_.max_leases) fail("more leases than max_leases", step_);
    for (int o = 0; o < owners_n; ++o) {
      if (owner_count(o) > limits_.max_leases_per_owner) fail("owner beyond its bound", step_);
    }
    // The fixpoint: with nothing left due (so every lock delay that is over has ended) and no
    // key possibly stalled, the grant rule finds nothing more to grant.
    if (settled_ && !stalls_possible_ && tokens_.on) {
      for (const auto& w : waiters_) {
        if (grantable(w)) {
          fail("request " + std::to_string(w.request_id) + " is left queued although grantable",
               step_);
        }
      }
    }
    check_inspect();
    check_top();
  }

  // inspect() of every key against the model: live holders in grant order with token, mode and
  // a set's keys; the number of requests queued on the key; its limit.
  void check_inspect() {
    for (const char* k : keys) {
      const auto r = table_->inspect(k, now_);
      std::vector<const model_lease*> holders;
      for (const auto& l : leases_) {
        if (l.has(k) && l.deadline > now_) holders.push_back(&l);
      }
      std::sort(holders.begin(), holders.end(),
                [](const model_lease* a, const model_lease* b) { return a->token < b->token; });
      if (r.holders.size() != holders.size()) fail(std::string("inspect: holders of ") + k, step_);
      for (std::size_t i = 0; i < holders.size(); ++i) {
        const auto& h = r.holders[i];
        const model_lease& m = *holders[i];
        if (h.token != m.token || h.mode != m.mode || h.owner != owners_[m.owner]) {
          fail(std::string("inspect: holder differs on ") + k, step_);
        }
        if (m.keys.size() == 1 ? !h.keys.empty()
                               : !std::equal(h.keys.begin(), h.keys.end(), m.keys.begin(),
                                             m.keys.end())) {
          fail(std::string("inspect: a holder's keys differ on ") + k, step_);
        }
      }
      std::uint64_t waiting = 0;
      for (const auto& w : waiters_) waiting += w.has(k);
      if (r.waiters != waiting) fail(std::string("inspect: waiters of ") + k, step_);
      if (live(k) && r.limit != limit_of(k)) fail(std::string("inspect: limit of ") + k, step_);
      if (r.limit == 0 && live(k)) fail(std::string("inspect: live key missing: ") + k, step_);
    }
  }

  // held(now) and top(n) against the model: live leases only, in the documented orders; each
  // key of a set is one lease (in the order requested).
  void check_top() {
    struct one {
      const model_lease* lease;
      std::string key;
    };
    std::vector<one> live;
    std::map<std::string, std::uint32_t> live_on;
    for (const auto& l : leases_) {
      if (l.deadline > now_) {
        for (const auto& key : l.keys) {
          live.push_back({&l, key});
          ++live_on[key];
        }
      }
    }
    if (table_->held(now_) != live.size()) {
      fail("held(now) is " + std::to_string(table_->held(now_)) + ", model " +
               std::to_string(live.size()),
           step_);
    }
    std::stable_sort(live.begin(), live.end(), [&](const one& a, const one& b) {
      return a.lease->granted != b.lease->granted ? a.lease->granted < b.lease->granted
                                                  : a.lease->token < b.lease->token;
    });
    std::map<std::string, std::uint32_t> waiting_on;
    for (const auto& w : waiters_) {
      for (const auto& key : w.keys) ++waiting_on[key];
    }
    std::vector<std::pair<std::uint32_t, std::string>> queues;
    for (const auto& [key, n] : waiting_on) queues.emplace_back(n, key);
    std::sort(queues.begin(), queues.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    const std::size_t n = 1 + step_ % 4;
    const auto top = table_->top(n, now_);
    if (top.queues.size() != std::min(n, queues.size())) fail("top: wrong number of queues", step_);
    for (std::size_t i = 0; i < top.queues.size(); ++i) {
      const auto& q = top.queues[i];
      if (q.key != queues[i].second || q.waiters != queues[i].first ||
          q.held != live_on[queues[i].second] || q.limit != limit_of(queues[i].second)) {
        fail("top: queue " + std::to_string(i) + " differs from the model", step_);
      }
    }
    if (top.oldest.size() != std::min(n, live.size())) fail("top: wrong number of leases", step_);
    for (std::size_t i = 0; i < top.oldest.size(); ++i) {
      const auto& l = top.oldest[i];
      const model_lease& m = *live[i].lease;
      if (l.key != live[i].key || l.token != m.token || l.held_for != now_ - m.granted ||
          l.owner != owners_[m.owner] || l.mode != m.mode) {
        fail("top: lease " + std::to_string(i) + " differs from the model", step_);
      }
    }
  }

  void finish() {
    // Tokens come back: stalled keys grant their waiters.
    tokens_.on = true;
    events_.clear();
    table_->resume_grants(now_, events_);
    apply_events(0);
    stalls_possible_ = false;
    check();
    // Every waiter is answered eventually: leases run out (ttl <= 1 s), so running the clock
    // far ahead grants or times out every queued acquire.
    for (int round = 0; round < 10000 && !waiters_.empty(); ++round) {
      now_ += 1h;
      expire();
      check();
    }
    if (!waiters_.empty()) fail("a waiter was never answered", step_);
    for (int o = 0; o < owners_n; ++o) {
      do_disconnect(o);
      check();
    }
    now_ += 1h + lock_delay_;
    expire();
    check();
    if (table_->keys() != 0) fail("idle keys left in the table", step_);
    if (table_->held() != 0 || table_->waiting() != 0) fail("table not empty at the end", step_);
    if (table_->next_deadline()) fail("deadline left in an empty table", step_);
  }

  const std::uint8_t* in_;
  std::size_t left_;
  std::size_t step_ = 0;
  counter_tokens tokens_;
  keylock::table_limits limits_;
  std::optional<keylock::lock_table> table_;
  keylock::owner_id owners_[owners_n] = {};
  tick now_{std::chrono::seconds(1000)};
  tick lock_delay_{0};
  std::vector<keylock::table_event> events_;
  std::vector<model_lease> leases_;
  std::vector<model_waiter> waiters_;
  std::map<std::string, std::uint32_t> limit_of_;
  std::map<std::string, tick> delay_until_;
  // No deadline is due but unprocessed (expire_due last reported none left, and the clock has
  // not moved since): every lock delay that is over has ended in the table too.
  bool settled_ = true;
  // Tokens were off since the last resume_grants with tokens on: keys may be stalled.
  bool stalls_possible_ = false;
  std::uint64_t next_rid_ = 0;
  std::uint64_t seq_ = 0;
  std::uint64_t last_token_ = 0;
};

}  // namespace

// The libFuzzer entry point (also called by corpus_main.cpp for replay).
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  driver d(data, size);
  d.run();
  return 0;
}
