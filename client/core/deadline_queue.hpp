// The client's one ordered index of timed work: lease renewals, local lease expiry, request
// timeouts, connect timeouts, reconnect backoff, the outage rule and the heartbeat.
//
// Pure: no Asio, no clock of its own. The caller passes "now" to pop_due() and keeps one timer
// set for earliest(). Each owner keeps the handle of its entry so that it can cancel it; an
// entry taken by pop_due() is gone, and its owner must forget the handle before acting on it.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <utility>

namespace keylock::detail {

template <class Entry, class Clock = std::chrono::steady_clock>
class deadline_queue {
 public:
  using time_point = typename Clock::time_point;
  using iterator = typename std::multimap<time_point, Entry>::iterator;
  using handle = std::optional<iterator>;  // empty: nothing scheduled

  // Entries due at the same time come out in the order they were added.
  iterator add(time_point when, Entry entry) { return entries_.emplace(when, std::move(entry)); }

  // Removes the handle's entry, if any, and empties the handle. Safe to call twice.
  void cancel(handle& h) {
    if (h) {
      entries_.erase(*h);
      h.reset();
    }
  }

  std::optional<time_point> earliest() const {
    if (entries_.empty()) return std::nullopt;
    return entries_.begin()->first;
  }

  // Takes out the earliest entry due at or before `now`, or returns nothing.
  std::optional<Entry> pop_due(time_point now) {
    if (entries_.empty() || entries_.begin()->first > now) return std::nullopt;
    Entry due = std::move(entries_.begin()->second);
    entries_.erase(entries_.begin());
    return due;
  }

  bool empty() const { return entries_.empty(); }
  std::size_t size() const { return entries_.size(); }
  void clear() { entries_.clear(); }

 private:
  std::multimap<time_point, Entry> entries_;
};

}  // namespace keylock::detail
