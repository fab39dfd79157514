#include "cluster/etcd_session.hpp"

#include <algorithm>
#include <utility>

namespace keylock {

namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

// After a failed keep-alive, how long until the next try (bounded by what the proof has left).
constexpr milliseconds retry_pause{100};

}  // namespace

steady_time proven_until(steady_time sent, milliseconds granted, milliseconds margin,
                         std::uint32_t drift_ppm) {
  // The part of `granted` that our clock may run through while etcd's runs through all of it.
  const auto slack = milliseconds(granted.count() * static_cast<std::int64_t>(drift_ppm) /
                                  1'000'000);
  return sent + granted - slack - margin;
}

etcd_session::etcd_session(etcd_client& client, etcd_session_options options)
    : client_(client), options_(options) {}

etcd_session::~etcd_session() { stop(); }

steady_time etcd_session::proven_until() const {
  return steady_time(steady_time::duration(proven_until_.load()));
}

etcd_status etcd_session::start(std::function<void()> on_lost) {
  on_lost_ = std::move(on_lost);
  const steady_time sent = steady_clock::now();
  std::int64_t id = 0;
  std::int64_t granted = 0;
  etcd_status st = client_.lease_grant(options_.lease_ttl, &id, &granted);
  if (!st.ok()) return st;
  lease_id_ = id;
  proven_until_ = keylock::proven_until(sent, std::chrono::seconds(granted), options_.margin,
                                        options_.drift_ppm)
                      .time_since_epoch()
                      .count();
  thread_ = std::thread([this] { run(); });
  return st;
}

void etcd_session::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (lease_id_ != 0) client_.lease_revoke(lease_id_);  // best effort: else it expires by ttl
  lease_id_ = 0;
  proven_until_ = 0;
}

void etcd_session::run() {
  // Renew at a third of the granted ttl, as etcd's own client does, so that two keep-alives can
  // fail before the proof runs out.
  milliseconds period =
      std::max(milliseconds(100), std::chrono::duration_cast<milliseconds>(options_.lease_ttl) / 3);
  steady_time next = steady_clock::now() + period;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      // Wake for the next renewal, or for the end of the proof, whichever comes first.
      if (wake_.wait_until(lock, std::min(next, proven_until()), [this] { return stopping_; })) {
        return;
      }
    }
    const steady_time now = steady_clock::now();
    const steady_time until = proven_until();
    if (now >= until) break;  // no renewal in time: lost, before etcd could have dropped it
    if (now < next) continue;
    const steady_time sent = now;
    std::int64_t ttl_left = 0;
    const auto budget = std::chrono::duration_cast<milliseconds>(until - now);
    etcd_status st = client_.lease_keep_alive(lease_id_, &ttl_left, std::max(budget, milliseconds(1)));
    if (st.ok() && ttl_left <= 0) break;  // etcd says the lease is gone
    if (st.ok()) {
      const milliseconds granted = std::chrono::seconds(ttl_left);
      period = std::max(milliseconds(100), granted / 3);
      proven_until_ = keylock::proven_until(sent, granted, options_.margin, options_.drift_ppm)
                          .time_since_epoch()
                          .count();
      next = sent + period;
    } else {
      next = steady_clock::now() + retry_pause;
    }
  }
  proven_until_ = 0;
  if (on_lost_) on_lost_();
}

}  // namespace keylock
