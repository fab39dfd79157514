// Cluster mode's threads: everything that talks to etcd, off the daemon's event loop.
//
//  - the lease thread keeps one etcd lease (etcd_session) and starts a new one when it is lost;
//  - the watch thread lists <prefix>k/ and watches it from there, starting over (a fresh list)
//    whenever the stream breaks, so the coordinator's mirror is never silently stale;
//  - the op thread carries out the coordinator's requests (etcd_port) one at a time, in the
//    order asked, so a remove never overtakes the create of the same key.
// Every result is handed to `post`, which runs it on the loop thread: the coordinator and the
// lock table stay single-threaded. No gRPC or Asio type appears here.
#pragma once

#include "cluster/coordinator.hpp"
#include "cluster/etcd_client.hpp"
#include "cluster/etcd_session.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace keylock {

struct cluster_runtime_options {
  etcd_options etcd;
  etcd_session_options session;
  std::string prefix = "/keylock/";
  std::string node;
};

// The runtime's paths to etcd, each failing and recovering on its own.
enum class etcd_path { lease, watch };

// What the runtime reports, each called on the loop thread (through `post`).
struct cluster_events {
  std::function<void(std::int64_t lease)> session_up;
  std::function<void()> session_lost;
  std::function<void(const std::string& key, const std::string& etcd_key, bool ok,
                     std::int64_t create_revision)>
      created;
  std::function<void(const std::string& key, const std::string& etcd_key, bool ok)> removed;
  std::function<void(std::int64_t revision)> revision;
  std::function<void(std::int64_t revision, const std::vector<etcd_kv>& kvs)> snapshot;
  std::function<void(const etcd_watch_batch& batch)> watch;
  // etcd could (not) be reached on one path; the reason is for /readyz and the log. Each path
  // reports its own recovery: the lease loop when a lease is granted, the watch loop when a
  // list succeeds.
  std::function<void(etcd_path path, bool reachable, const std::string& reason)> health;
  // One etcd request's round trip (ops, lists, lease grants, keep-alives are not included).
  std::function<void(std::chrono::nanoseconds)> round_trip;
};

class cluster_runtime final : public etcd_port {
 public:
  using poster = std::function<void(std::function<void()>)>;
  cluster_runtime(cluster_runtime_options options, poster post, cluster_events events);
  ~cluster_runtime() override;  // stop()
  cluster_runtime(const cluster_runtime&) = delete;
  cluster_runtime& operator=(const cluster_runtime&) = delete;

  void start();
  // Stops every thread and revokes the current lease (its keys, our rights, go at once).
  void stop();

  // Until when the current etcd lease is proven alive (steady_clock); the epoch when there is
  // none. Thread-safe and lock-free: the loop reads it on every grant.
  steady_time proven_until() const;

  // etcd_port
  void create(const std::string& key, const std::string& etcd_key, std::int64_t lease,
              const std::string& leaving) override;
  void remove(const std::string& key, const std::string& etcd_key) override;
  void bump_revision() override;

 private:
  void lease_loop();
  void watch_loop();
  void op_loop();
  void enqueue(std::function<void()> job);
  bool pause(std::chrono::milliseconds d);  // false when stopping

  cluster_runtime_options options_;
  poster post_;
  cluster_events events_;
  etcd_client client_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  bool lost_ = false;  // the current session reported lost (under mutex_)
  std::deque<std::function<void()>> jobs_;
  // Sessions are kept until stop() so that proven_until() never reads a freed one.
  std::vector<std::unique_ptr<etcd_session>> sessions_;
  std::atomic<etcd_session*> current_{nullptr};
  std::thread lease_thread_, watch_thread_, op_thread_;
};

}  // namespace keylock
