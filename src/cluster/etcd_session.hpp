// One etcd lease per daemon, kept alive on its own thread, with a proof of liveness: the
// daemon may act as the holder of keys bound to the lease only while `proven_until` has not
// passed, and proven_until always falls before etcd could have expired the lease.
//
// Why it is safe: etcd counts a lease's ttl from when it *receives* a keep-alive, which is after
// we *sent* it. So if a keep-alive sent at time S was answered with ttl T, the lease lives at
// least until S + T on etcd's clock. With the clocks' rates differing by at most drift_ppm and a
// fixed safety margin, S + T * (1 - drift) - margin is a point on our clock before which etcd
// cannot have dropped the lease, whatever the network or a paused process did after S.
// (etcd's clientv3/concurrency Session is the model: one lease per process, kept alive.)
//
// Thread model: the session's thread runs the keep-alives and calls on_lost (once, from that
// thread) when the proof runs out without a renewal, before the lease could have expired. The
// daemon will post that into its io_context; the lock table never sees this thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>

#include "cluster/etcd_client.hpp"

namespace keylock {

using steady_time = std::chrono::steady_clock::time_point;

// The latest time at which a lease whose keep-alive was sent at `sent` and answered with
// `granted` is certainly still alive in etcd, by our clock.
steady_time proven_until(steady_time sent, std::chrono::milliseconds granted,
                         std::chrono::milliseconds margin, std::uint32_t drift_ppm);

struct etcd_session_options {
  std::chrono::seconds lease_ttl{10};             // asked of etcd (it may round up)
  std::chrono::milliseconds margin{250};          // subtracted from every proof
  std::uint32_t drift_ppm = 10'000;               // 1 %: clock rate difference allowed
};

class etcd_session {
 public:
  // Does not start anything; start() does.
  etcd_session(etcd_client& client, etcd_session_options options);
  ~etcd_session();  // stop()
  etcd_session(const etcd_session&) = delete;
  etcd_session& operator=(const etcd_session&) = delete;

  // Grants the lease (blocking, bounded by the client's rpc timeout) and starts the keep-alive
  // thread. `on_lost` is called once, from that thread, when the proof ends without a renewal
  // (etcd unreachable, quorum lost, this process paused) or etcd says the lease is gone.
  etcd_status start(std::function<void()> on_lost);

  // Stops the thread and revokes the lease (its keys go at once). Idempotent.
  void stop();

  std::int64_t lease_id() const { return lease_id_.load(); }
  // Until when the lease is proven alive (the epoch when lost or not started).
  steady_time proven_until() const;
  bool alive(steady_time now) const { return now < proven_until(); }

 private:
  void run();

  etcd_client& client_;
  etcd_session_options options_;
  std::function<void()> on_lost_;
  std::atomic<std::int64_t> lease_id_{0};
  std::atomic<steady_time::rep> proven_until_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace keylock
