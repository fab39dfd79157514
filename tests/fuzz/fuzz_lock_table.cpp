// libFuzzer target: the lock table driven by a byte-coded sequence of operations.
//
// Input layout: bytes 0 and 1 pick the table limits (lock delay, small key/waiter/pending caps
// and lease bounds so that every limit is reached); every following group of bytes is one
// operation over 3 owners and 5 keys: acquire (wait forever / try once / bounded wait; limit
// 1..3; short ttls), release, extend, cancel, cancel_waiters (half-close), disconnect +
// reconnect, clock advance + expire_due with a budget of deadlines, clock advance without
// expire_due (late timers), switching the token source off or on (+ resume_grants), inspect.
//
// A model of what each owner was told (leases held with their grant time and deadline,
// acquires waiting) is kept beside the table. After every step: check_invariants() is empty,
// and
//  - no key ever has more holders than its limit (model and inspect());
//  - every token handed out (at once or by a `granted` event) is greater than every earlier one,
//    and no token is taken from the source while it is not ready();
//  - acquire answers unavailable exactly while tokens are off, with no side effect;
//  - an owner's leases + waiters never exceed max_leases_per_owner, all leases never exceed
//    max_leases, and too_many_owner_leases comes only at the owner's bound;
//  - FIFO: a `granted` event answers the oldest waiter still queued on its key;
//  - every event answers something the model has (no double grant, no phantom expiry);
//  - cancel_waiters answers exactly the owner's waiters, in arrival order;
//  - after expire_due(now) reports nothing left, no bounded waiter is still queued past
//    arrival + wait_ms;
//  - release/extend answer ok only for a lease the owner was told it holds, and not_held only
//    once that lease is gone from the model (an `expired` event came first);
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
  std::string key;
  std::uint64_t token;
  int owner;
  tick granted;
  tick deadline;
};

struct model_waiter {
  std::uint64_t seq;  // arrival order
  std::string key;
  int owner;
  std::uint64_t request_id;
  std::optional<tick> deadline;
  std::uint32_t limit;
  std::uint32_t ttl_ms;
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

  void do_acquire() {
    const std::uint8_t a = take();
    const std::uint8_t b = take();
    const int owner = a % owners_n;
    const std::string key = keys[(a / owners_n) % keys_n];
    keylock::acquire_args args;
    args.key = key;
    args.limit = 1u + (b & 3u) % 3u;
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
    apply_events();
    const std::size_t owner_total = owner_count(owner);
    if ((r.status == keylock::acquire_status::granted ||
         r.status == keylock::acquire_status::queued) &&
        owner_total >= limits_.max_leases_per_owner) {
      fail("acquire served beyond max_leases_per_owner", step_);
    }
    switch (r.status) {
      case keylock::acquire_status::granted:
        see_token(r.token);
        leases_.push_back({key, r.token, owner, now_, now_ + std::chrono::milliseconds(args.ttl_ms)});
        limit_of_[key] = args.limit;
        break;
      case keylock::acquire_status::queued: {
        if (args.wait_ms && *args.wait_ms == 0) fail("try-once acquire was queued", step_);
        std::optional<tick> deadline;
        if (args.wait_ms) deadline = now_ + std::chrono::milliseconds(*args.wait_ms);
        waiters_.push_back({++seq_, key, owner, rid, deadline, args.limit, args.ttl_ms});
        limit_of_[key] = args.limit;
        break;
      }
      case keylock::acquire_status::too_many_owner_leases:
        if (owner_total < limits_.max_leases_per_owner) {
          fail("too_many_owner_leases below the owner's bound", step_);
        }
        break;
      case keylock::acquire_status::too_many_leases:
        if (leases_.size() + waiters_.size() < limits_.max_leases) {
          fail("too_many_leases with room for every lease and waiter", step_);
        }
        break;
      case keylock::acquire_status::busy:
        if (!args.wait_ms || *args.wait_ms != 0) fail("busy for an acquire that may wait", step_);
        break;
      case keylock::acquire_status::conflict: {
        auto it = limit_of_.find(key);
        if (it != limit_of_.end() && live(key) && it->second == args.limit) {
          fail("conflict although the live key has the same limit", step_);
        }
        break;
      }
      default:
        break;  // too_many_*: the small limits of byte 0
    }
  }

  std::size_t pick(std::size_t n) { return n == 0 ? 0 : take() % n; }

  void do_release() {
    const std::uint8_t sel = take();
    std::string key;
    std::uint64_t token;
    if (!leases_.empty() && (sel & 1u)) {
      const auto& l = leases_[(sel >> 1) % leases_.size()];
      key = l.key;
      token = l.token;
    } else {
      key = keys[(sel >> 1) % keys_n];
      token = (sel >> 4);  // usually a token no one holds
    }
    events_.clear();
    const auto st = table_->release(key, token, now_, events_);
    apply_events();
    const auto it = find_lease(key, token);
    if (st == keylock::lease_status::ok) {
      if (it == leases_.end()) fail("release ok for a lease nobody was told of", step_);
      leases_.erase(it);
      // The freed slot may have been granted: those events came with this call.
    } else if (it != leases_.end()) {
      fail("release answered not_held for a lease still held (no expired event)", step_);
    }
  }

  void do_extend() {
    const std::uint8_t sel = take();
    if (leases_.empty()) return;
    const auto& l = leases_[(sel >> 2) % leases_.size()];
    const std::string key = l.key;
    const std::uint64_t token = l.token;
    std::optional<std::uint32_t> ttl;
    if (sel & 1u) ttl = (sel & 2u) ? 1u : 200u;
    events_.clear();
    std::uint32_t applied = 0;
    const auto st = table_->extend(key, token, ttl, now_, events_, &applied);
    apply_events();
    const auto it = find_lease(key, token);
    const bool still = it != leases_.end();
    if (st == keylock::lease_status::ok) {
      if (!still) fail("extend ok for a lease that is gone", step_);
      if (ttl && applied != *ttl) fail("extend applied another ttl", step_);
      it->deadline = now_ + std::chrono::milliseconds(applied);
    } else if (still) {
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
    const bool ok = table_->cancel(owners_[owner], rid, events_);
    if (ok != had) {
      fail(ok ? "cancel found a phantom acquire" : "cancel missed a queued acquire", step_);
    }
    if (ok && (events_.size() != 1 || events_[0].kind != keylock::event_kind::cancelled)) {
      fail("cancel did not answer with exactly one cancelled event", step_);
    }
    apply_events();
  }

  void do_disconnect(int owner) {
    events_.clear();
    table_->disconnect(owners_[owner], now_, events_);
    // Its own leases and waiters vanish without events; grants to others may follow.
    std::vector<model_lease> kept;
    for (auto& l : leases_) {
      if (l.owner != owner) kept.push_back(l);
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
    apply_events();
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
  void do_late_clock() { now_ += std::chrono::milliseconds(take_ms() % 64); }

  void do_tokens() {
    const std::uint8_t b = take();
    tokens_.on = (b & 1u) != 0;
    if (b & 2u) {
      events_.clear();
      table_->resume_grants(now_, events_);
      if (!tokens_.on && !events_.empty()) fail("resume_grants granted without tokens", step_);
      apply_events();
    }
  }

  void do_cancel_waiters(int owner) {
    std::vector<model_waiter> mine;
    std::vector<model_waiter> kept;
    for (const auto& w : waiters_) (w.owner == owner ? mine : kept).push_back(w);
    std::sort(mine.begin(), mine.end(),
              [](const model_waiter& a, const model_waiter& b) { return a.seq < b.seq; });
    events_.clear();
    table_->cancel_waiters(owners_[owner], events_);
    if (events_.size() != mine.size()) fail("cancel_waiters answered another number", step_);
    for (std::size_t i = 0; i < mine.size(); ++i) {
      const auto& e = events_[i];
      if (e.kind != keylock::event_kind::cancelled || e.owner != owners_[owner] ||
          e.request_id != mine[i].request_id) {
        fail("cancel_waiters did not answer the owner's waiters in arrival order", step_);
      }
    }
    waiters_.swap(kept);
  }

  void expire(std::size_t budget = SIZE_MAX) {
    events_.clear();
    const bool more = table_->expire_due(now_, events_, budget);
    apply_events();
    const auto d = table_->next_deadline();
    if (more != (d && *d <= now_)) fail("expire_due's answer disagrees with next_deadline", step_);
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
    if (r.limit != 0 && r.holders.size() > r.limit) fail("inspect: more holders than limit", step_);
    if (r.limit == 0 && (!r.holders.empty() || r.waiters != 0)) {
      fail("inspect: holders or waiters on a key that is not live", step_);
    }
  }

  bool live(const std::string& key) const {
    for (const auto& l : leases_) {
      if (l.key == key) return true;
    }
    for (const auto& w : waiters_) {
      if (w.key == key) return true;
    }
    return false;
  }

  std::vector<model_lease>::iterator find_lease(const std::string& key, std::uint64_t token) {
    for (auto it = leases_.begin(); it != leases_.end(); ++it) {
      if (it->key == key && it->token == token) return it;
    }
    return leases_.end();
  }

  std::size_t owner_count(int owner) const {
    std::size_t n = 0;
    for (const auto& l : leases_) n += l.owner == owner;
    for (const auto& w : waiters_) n += w.owner == owner;
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

  void apply_events() {
    for (const auto& e : events_) {
      const int owner = owner_index(e.owner);
      if (owner < 0) fail("event for an owner that is not connected", step_);
      if (e.kind == keylock::event_kind::expired) {
        auto it = find_lease(e.key, e.token);
        if (it == leases_.end() || it->owner != owner) {
          fail("expired event for no known lease", step_);
        }
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
        for (const auto& other : waiters_) {
          if (other.key == w->key && other.seq < w->seq) {
            fail("FIFO broken: granted request " + std::to_string(w->request_id) +
                     " while older request " + std::to_string(other.request_id) + " still waits",
                 step_);
          }
        }
        see_token(e.token);
        if (e.ttl_ms != w->ttl_ms) fail("granted with another ttl than asked", step_);
        leases_.push_back({w->key, e.token, owner, now_, now_ + std::chrono::milliseconds(e.ttl_ms)});
      } else if (e.kind == keylock::event_kind::wait_timeout) {
        if (!w->deadline) fail("wait_timeout for an acquire that waits forever", step_);
      }
      waiters_.erase(w);
    }
  }

  void check() {
    const std::string broken = table_->check_invariants();
    if (!broken.empty()) fail("check_invariants: " + broken, step_);
    std::map<std::string, std::uint32_t> held;
    for (const auto& l : leases_) ++held[l.key];
    for (const auto& [key, n] : held) {
      if (n > limit_of_[key]) fail("more holders than limit on " + key, step_);
    }
    if (table_->held() != leases_.size()) {
      fail("table holds " + std::to_string(table_->held()) + " leases, model " +
               std::to_string(leases_.size()),
           step_);
    }
    if (table_->waiting() != waiters_.size()) {
      fail("table has " + std::to_string(table_->waiting()) + " waiters, model " +
               std::to_string(waiters_.size()),
           step_);
    }
    if (tokens_.issued_while_off) fail("a token was issued while the source was not ready", step_);
    if (leases_.size() > limits_.max_leases) fail("more leases than max_leases", step_);
    for (int o = 0; o < owners_n; ++o) {
      if (owner_count(o) > limits_.max_leases_per_owner) fail("owner beyond its bound", step_);
    }
    check_top();
  }

  // held(now) and top(n) against the model: live leases only, in the documented orders.
  void check_top() {
    std::vector<const model_lease*> live;
    std::map<std::string, std::uint32_t> live_on;
    for (const auto& l : leases_) {
      if (l.deadline > now_) {
        live.push_back(&l);
        ++live_on[l.key];
      }
    }
    if (table_->held(now_) != live.size()) {
      fail("held(now) is " + std::to_string(table_->held(now_)) + ", model " +
               std::to_string(live.size()),
           step_);
    }
    std::sort(live.begin(), live.end(), [&](const model_lease* a, const model_lease* b) {
      return a->granted != b->granted ? a->granted < b->granted : a->token < b->token;
    });
    std::map<std::string, std::uint32_t> waiting_on;
    for (const auto& w : waiters_) ++waiting_on[w.key];
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
          q.held != live_on[queues[i].second] || q.limit != limit_of_[queues[i].second]) {
        fail("top: queue " + std::to_string(i) + " differs from the model", step_);
      }
    }
    if (top.oldest.size() != std::min(n, live.size())) fail("top: wrong number of leases", step_);
    for (std::size_t i = 0; i < top.oldest.size(); ++i) {
      const auto& l = top.oldest[i];
      if (l.key != live[i]->key || l.token != live[i]->token ||
          l.held_for != now_ - live[i]->granted || l.owner != owners_[live[i]->owner]) {
        fail("top: lease " + std::to_string(i) + " differs from the model", step_);
      }
    }
  }

  void finish() {
    // Tokens come back: stalled keys grant their waiters.
    tokens_.on = true;
    events_.clear();
    table_->resume_grants(now_, events_);
    apply_events();
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
