// The client's lease and renewal manager book: the held leases by token, when a lease runs
// out here and is renewed next, and what an answer to an extend means for its lease.
//
// Pure: no Asio, no clock of its own. The client (client.cpp) keeps each lease's deadlines in
// its deadline queue at the times plan() gives, and acts on judge_extend()'s verdict; the
// rules are unit-tested without sockets in tests/client/test_client_core.cpp. Templated on the
// client's lease type, which provides `std::uint64_t token`.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

namespace keylock::detail {

// What the answer to an extend (a caller's extend, or an auto renewal) means for its lease.
// The rule the client keeps: it releases the lease, or reports the error and keeps it, but
// never forgets a lease the daemon still holds.
enum class extend_verdict : std::uint8_t {
  confirmed,         // extended: the lease's expiry and next renewal move (plan)
  refused_kept,      // a caller's extend refused for another reason than not_held (a ttl above
                     // max_ttl_ms): the error is reported; the lease stays held, renewed with
                     // the ttl that worked
  release_and_lose,  // a renewal refused for another reason: this process stops renewing the
                     // lease, so it is released on the daemon, then lost here (expired)
  lose,              // not_held: the daemon no longer holds the lease
};

inline extend_verdict judge_extend(bool ok, bool not_held, bool by_caller) {
  if (ok) return extend_verdict::confirmed;
  if (not_held) return extend_verdict::lose;
  return by_caller ? extend_verdict::refused_kept : extend_verdict::release_and_lose;
}

template <class Clock = std::chrono::steady_clock>
struct lease_plan {
  typename Clock::time_point expires_at;               // the local expiry: lost here then
  std::optional<typename Clock::time_point> renew_at;  // the next auto renewal, if any
};

// The daemon holds a lease until at least `from + ttl` (`from`: when the grant arrived, or
// when the confirmed extend was sent): it runs out here then, and an auto_extend lease is
// renewed at a third of its ttl (at least 1 ms) unless a renewal is in flight.
template <class Clock = std::chrono::steady_clock>
lease_plan<Clock> plan(typename Clock::time_point from, std::chrono::milliseconds ttl,
                       bool auto_extend, bool renewing) {
  lease_plan<Clock> p{from + ttl, std::nullopt};
  if (auto_extend && !renewing) {
    p.renew_at = from + std::max(ttl / 3, std::chrono::milliseconds(1));
  }
  return p;
}

template <class Lease>
class lease_book {
 public:
  using lease_ptr = std::shared_ptr<Lease>;

  void add(lease_ptr lease) {
    const std::uint64_t token = lease->token;
    held_.emplace(token, std::move(lease));
  }
  // The held lease with this token; null if none (released, lost, never ours).
  lease_ptr find(std::uint64_t token) const {
    const auto it = held_.find(token);
    return it == held_.end() ? nullptr : it->second;
  }
  void erase(std::uint64_t token) { held_.erase(token); }
  // Every held lease, in token order: a copy, since losing one runs a callback that may
  // change the book.
  std::vector<lease_ptr> snapshot() const {
    std::vector<lease_ptr> out;
    out.reserve(held_.size());
    for (const auto& entry : held_) out.push_back(entry.second);
    std::sort(out.begin(), out.end(),
              [](const lease_ptr& a, const lease_ptr& b) { return a->token < b->token; });
    return out;
  }
  bool empty() const { return held_.empty(); }
  std::size_t size() const { return held_.size(); }

 private:
  std::unordered_map<std::uint64_t, lease_ptr> held_;
};

}  // namespace keylock::detail
