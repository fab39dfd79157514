// libFuzzer target: the lock table driven by a byte-coded sequence of operations.
//
// Input layout: byte 0 picks the table limits (lock delay, small key/waiter/pending caps so that
// every limit is reached); every following group of bytes is one operation over 3 owners and
// 5 keys: acquire (wait forever / try once / bounded wait; limit 1..3; short ttls), release,
// extend, cancel, disconnect + reconnect, clock advance + expire_due, inspect.
//
// A model of what each owner was told (leases held, acquires waiting) is kept beside the table.
// After every step: check_invariants() is empty, and
//  - no key ever has more holders than its limit (model and inspect());
//  - every token handed out (at once or by a `granted` event) is greater than every earlier one;
//  - FIFO: a `granted` event answers the oldest waiter still queued on its key;
//  - every event answers something the model has (no double grant, no phantom expiry);
//  - after expire_due(now), no bounded waiter is still queued past arrival + wait_ms;
//  - release/extend answer ok only for a lease the owner was told it holds, and not_held only
//    once that lease is gone from the model (an `expired` event came first).
// At the end the clock runs far ahead until every waiter is answered; then every owner
// disconnects and, after the lock delay, the table must be empty.
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
  std::uint64_t next() override { return ++last; }
};

struct model_lease {
  std::string key;
  std::uint64_t token;
  int owner;
};

struct model_waiter {
  std::uint64_t seq;  // arrival order
  std::string key;
  int owner;
  std::uint64_t request_id;
  std::optional<tick> deadline;
  std::uint32_t limit;
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
    lock_delay_ = tick(std::chrono::milliseconds(lim.lock_delay_ms));
    table_.emplace(lim, tokens_);
    for (auto& o : owners_) o = table_->connect();
  }

  void run() {
    while (left_ > 0 && step_ < 4096) {
      const std::uint8_t b = take();
      switch (b % 8) {
        case 0: case 1: do_acquire(); break;
        case 2: do_release(); break;
        case 3: do_extend(); break;
        case 4: do_cancel(); break;
        case 5: do_disconnect(static_cast<int>(take() % owners_n)); break;
        case 6: do_advance(); break;
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
    // Events first: they describe what happened before this acquire was looked at.
    apply_events();
    switch (r.status) {
      case keylock::acquire_status::granted:
        see_token(r.token);
        leases_.push_back({key, r.token, owner});
        limit_of_[key] = args.limit;
        break;
      case keylock::acquire_status::queued: {
        if (args.wait_ms && *args.wait_ms == 0) fail("try-once acquire was queued", step_);
        std::optional<tick> deadline;
        if (args.wait_ms) deadline = now_ + std::chrono::milliseconds(*args.wait_ms);
        waiters_.push_back({++seq_, key, owner, rid, deadline, args.limit});
        limit_of_[key] = args.limit;
        break;
      }
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
    const bool still = find_lease(key, token) != leases_.end();
    if (st == keylock::lease_status::ok) {
      if (!still) fail("extend ok for a lease that is gone", step_);
      if (ttl && applied != *ttl) fail("extend applied another ttl", step_);
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

  void do_advance() {
    const std::uint8_t b = take();
    std::int64_t ms = 0;
    switch (b & 3u) {
      case 0: ms = 0; break;
      case 1: ms = b >> 2; break;
      case 2: ms = 10 * (b >> 2); break;
      default: ms = 100 * (b >> 2); break;
    }
    now_ += std::chrono::milliseconds(ms);
    expire();
  }

  void expire() {
    events_.clear();
    table_->expire_due(now_, events_);
    apply_events();
    for (const auto& w : waiters_) {
      if (w.deadline && *w.deadline <= now_) {
        fail("a waiter is still queued after its wait_ms ran out", step_);
      }
    }
    if (auto d = table_->next_deadline(); d && *d <= now_) {
      fail("expire_due left a deadline at or before now", step_);
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
        leases_.push_back({w->key, e.token, owner});
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
  }

  void finish() {
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
