// The client's request multiplexer book: request ids, the calls by id, the order in which
// queued calls go out once a connection may carry them, and what becomes of each call when the
// connection that carried it ends.
//
// Pure: no Asio, no clock of its own, no I/O. The client (client.cpp) encodes and writes the
// calls; this decides which, in what order, and after a drop, which go out again. Templated on
// the client's call type, which provides:
//   call_state state;                              queued (for a connection) or sent
//   std::optional<time_point> wait_until;          an acquire's end of wait, if it has one
//   bool user() const;                             a caller waits for its answer
//   bool is_acquire() const;  bool is_release() const;  bool is_extend() const;
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

namespace keylock::detail {

enum class call_state : std::uint8_t { queued, sent };

// What becomes of a call when its connection ends (call_table::after_drop).
enum class drop_outcome : std::uint8_t {
  resend,      // not sent yet, or an acquire the daemon dropped with the connection: goes out
               // again on the next connection (an acquire with what is left of its wait)
  wait_over,   // an acquire whose wait ran out meanwhile: an outage, not contention
  released,    // a release: the daemon dropped the lease with the connection
  lease_lost,  // an extend: its lease went with the connection (NotHeld, as for a lost lease)
  failed,      // any other call a caller waits for: its answer will never come
  forgotten,   // sent by the client for itself (hello, renewals, cancels), or abandoned
};

template <class Call, class Clock = std::chrono::steady_clock>
class call_table {
 public:
  using time_point = typename Clock::time_point;

  // A new call under the next id; the caller fills it, then sends or queues it.
  std::pair<std::uint64_t, Call&> add() {
    const std::uint64_t id = next_id_++;
    return {id, calls_[id]};
  }

  // The next id, for a request that keeps no call (a release with noreply).
  std::uint64_t take_id() { return next_id_++; }

  // The call with this id; null if there is none (answered, timed out, never made).
  Call* find(std::uint64_t id) {
    const auto it = calls_.find(id);
    return it == calls_.end() ? nullptr : &it->second;
  }
  Call& at(std::uint64_t id) { return calls_.at(id); }

  // Takes call `id` out and returns it: done before acting on it, since what that runs (a user
  // callback) may add calls.
  std::optional<Call> take(std::uint64_t id) {
    const auto it = calls_.find(id);
    if (it == calls_.end()) return std::nullopt;
    std::optional<Call> out(std::move(it->second));
    calls_.erase(it);
    return out;
  }

  // Puts a call back under its old id (an answer that says "later": the daemon is draining).
  Call& put_back(std::uint64_t id, Call call) { return calls_[id] = std::move(call); }

  // Call `id` waits for a connection that may carry it, after those queued before it.
  void queue(std::uint64_t id) {
    calls_.at(id).state = call_state::queued;
    queue_.push_back(id);
  }

  // Sends, in submission order, every queued call that may_send(call) allows, by
  // send(id, call); the others stay queued, in order. Ids no longer queued are dropped.
  template <class MaySend, class Send>
  void pump(MaySend may_send, Send send) {
    std::deque<std::uint64_t> keep;
    std::deque<std::uint64_t> pending;
    pending.swap(queue_);
    for (const std::uint64_t id : pending) {
      const auto it = calls_.find(id);
      if (it == calls_.end() || it->second.state != call_state::queued) continue;
      if (may_send(it->second)) {
        send(id, it->second);
      } else {
        keep.push_back(id);
      }
    }
    // send() may have queued calls of its own meanwhile: they go after the ones kept.
    keep.insert(keep.end(), queue_.begin(), queue_.end());
    queue_.swap(keep);
  }

  // The ids of the calls for which pred(call) holds, ascending (submission order).
  template <class Pred>
  std::vector<std::uint64_t> ids_where(Pred pred) const {
    std::vector<std::uint64_t> ids;
    for (const auto& [id, call] : calls_) {
      if (pred(call)) ids.push_back(id);
    }
    std::sort(ids.begin(), ids.end());
    return ids;
  }

  template <class Pred>
  bool any_of(Pred pred) const {
    return std::any_of(calls_.begin(), calls_.end(),
                       [&](const auto& entry) { return pred(entry.second); });
  }

  // The connection that carried the sent calls ended. Each call gets its outcome, in id order.
  // Calls to resend are queued again, in id order, and stay: settle(id, call, resend) sees
  // them in place. The others are taken out first, then handed to settle(id, call, outcome)
  // in id order, once the table is consistent.
  template <class Settle>
  void after_drop(time_point now, Settle settle) {
    std::vector<std::uint64_t> ids = ids_where([](const Call&) { return true; });
    std::deque<std::uint64_t> queue;
    std::vector<std::pair<std::uint64_t, drop_outcome>> outcomes;
    std::vector<std::pair<std::uint64_t, Call>> settled;
    for (const std::uint64_t id : ids) {
      Call& call = calls_.at(id);
      const drop_outcome outcome = outcome_of(call, now);
      outcomes.emplace_back(id, outcome);
      if (outcome == drop_outcome::resend) {
        call.state = call_state::queued;
        queue.push_back(id);
      } else {
        settled.emplace_back(id, std::move(call));
        calls_.erase(id);
      }
    }
    queue_.swap(queue);
    auto next = settled.begin();
    for (const auto& [id, outcome] : outcomes) {
      if (outcome == drop_outcome::resend) {
        if (Call* call = find(id)) settle(id, *call, outcome);
      } else {
        settle(id, next->second, outcome);
        ++next;
      }
    }
  }

  // Takes every call out, handing each to each(id, call) in id order (the client closes).
  template <class Each>
  void clear(Each each) {
    std::vector<std::uint64_t> ids = ids_where([](const Call&) { return true; });
    std::unordered_map<std::uint64_t, Call> calls;
    calls.swap(calls_);
    queue_.clear();
    for (const std::uint64_t id : ids) each(id, calls.at(id));
  }

  bool empty() const { return calls_.empty(); }
  std::size_t size() const { return calls_.size(); }
  std::size_t queued() const { return queue_.size(); }

 private:
  static drop_outcome outcome_of(const Call& call, time_point now) {
    const bool waiting_acquire = call.is_acquire() && call.user();
    if (call.state == call_state::queued || waiting_acquire) {
      if (waiting_acquire && call.wait_until && *call.wait_until <= now) {
        return drop_outcome::wait_over;
      }
      return drop_outcome::resend;
    }
    if (!call.user()) return drop_outcome::forgotten;
    if (call.is_release()) return drop_outcome::released;
    return call.is_extend() ? drop_outcome::lease_lost : drop_outcome::failed;
  }

  std::uint64_t next_id_ = 1;
  std::unordered_map<std::uint64_t, Call> calls_;
  std::deque<std::uint64_t> queue_;  // ids waiting for a connection that may carry them
};

}  // namespace keylock::detail
