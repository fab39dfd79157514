#include "cluster/cluster_runtime.hpp"

#include <utility>

namespace keylock {

namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

constexpr milliseconds retry_pause{500};  // after etcd could not be reached

}  // namespace

cluster_runtime::cluster_runtime(cluster_runtime_options options, poster post,
                                 cluster_events events)
    : options_(std::move(options)),
      post_(std::move(post)),
      events_(std::move(events)),
      client_(options_.etcd) {}

cluster_runtime::~cluster_runtime() { stop(); }

void cluster_runtime::start() {
  lease_thread_ = std::thread([this] { lease_loop(); });
  watch_thread_ = std::thread([this] { watch_loop(); });
  op_thread_ = std::thread([this] { op_loop(); });
}

void cluster_runtime::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_.notify_all();
  client_.cancel_watch();
  if (op_thread_.joinable()) op_thread_.join();
  if (watch_thread_.joinable()) watch_thread_.join();
  if (lease_thread_.joinable()) lease_thread_.join();
  current_ = nullptr;
  for (auto& s : sessions_) s->stop();  // revokes the live one: our keys go at once
}

steady_time cluster_runtime::proven_until() const {
  const etcd_session* s = current_.load(std::memory_order_acquire);
  return s != nullptr ? s->proven_until() : steady_time{};
}

bool cluster_runtime::pause(milliseconds d) {
  std::unique_lock lock(mutex_);
  return !wake_.wait_for(lock, d, [this] { return stopping_; });
}

void cluster_runtime::lease_loop() {
  for (;;) {
    {
      std::lock_guard lock(mutex_);
      if (stopping_) return;
      lost_ = false;
    }
    auto session = std::make_unique<etcd_session>(client_, options_.session);
    etcd_status st = session->start([this] {
      {
        std::lock_guard lock(mutex_);
        lost_ = true;
      }
      wake_.notify_all();
    });
    if (!st.ok()) {
      post_([this, msg = st.message] { events_.health(etcd_path::lease, false, msg); });
      if (!pause(retry_pause)) return;
      continue;
    }
    etcd_session* s = session.get();
    const std::int64_t lease = s->lease_id();
    {
      std::lock_guard lock(mutex_);
      sessions_.push_back(std::move(session));
    }
    current_.store(s, std::memory_order_release);
    post_([this, lease] {
      events_.health(etcd_path::lease, true, "");
      events_.session_up(lease);
    });
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || lost_; });
      if (stopping_) return;
    }
    // Lost: the loop ends every lease and forgets every right; this lease is revoked (best
    // effort: if etcd is unreachable it runs out by itself) and a new one is taken.
    current_.store(nullptr, std::memory_order_release);
    post_([this] {
      events_.health(etcd_path::lease, false, "etcd lease could not be kept alive");
      events_.session_lost();
    });
    s->stop();
  }
}

void cluster_runtime::watch_loop() {
  const std::string range = options_.prefix + "k/";
  std::vector<etcd_kv> kvs;
  for (;;) {
    {
      std::lock_guard lock(mutex_);
      if (stopping_) return;
    }
    std::int64_t revision = 0;
    etcd_status st = client_.list_prefix(range, &kvs, &revision);
    if (!st.ok()) {
      post_([this, msg = st.message] { events_.health(etcd_path::watch, false, msg); });
      if (!pause(retry_pause)) return;
      continue;
    }
    post_([this, revision, kvs] {
      events_.health(etcd_path::watch, true, "");
      events_.snapshot(revision, kvs);
    });
    st = client_.watch_prefix(range, revision + 1, [this](const etcd_watch_batch& batch) {
      post_([this, batch] { events_.watch(batch); });
      std::lock_guard lock(mutex_);
      return !stopping_;
    });
    {
      std::lock_guard lock(mutex_);
      if (stopping_) return;
    }
    // The stream broke (a member went away, compaction): list again after a pause.
    if (!pause(milliseconds(100))) return;
  }
}

void cluster_runtime::enqueue(std::function<void()> job) {
  {
    std::lock_guard lock(mutex_);
    jobs_.push_back(std::move(job));
  }
  wake_.notify_all();
}

void cluster_runtime::op_loop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

void cluster_runtime::create(const std::string& key, const std::string& etcd_key,
                             std::int64_t lease, const std::string& leaving) {
  enqueue([this, key, etcd_key, lease, leaving] {
    bool created = false;
    std::int64_t rev = 0;
    std::string value;
    const auto t0 = steady_clock::now();
    etcd_status st =
        client_.create(etcd_key, options_.node, lease, &created, &rev, &value, leaving);
    const auto rtt = steady_clock::now() - t0;
    // Not created: the key existed. Ours (an earlier try that timed out) counts; another
    // lease's cannot happen (the lease id is in the key).
    const bool ok = st.ok();
    post_([this, key, etcd_key, ok, rev, rtt] {
      if (ok) events_.round_trip(rtt);
      events_.created(key, etcd_key, ok, rev);
    });
    if (!ok) pause(milliseconds(100));
  });
}

void cluster_runtime::remove(const std::string& key, const std::string& etcd_key) {
  enqueue([this, key, etcd_key] {
    const auto t0 = steady_clock::now();
    etcd_status st = client_.remove(etcd_key, nullptr);
    const auto rtt = steady_clock::now() - t0;
    const bool ok = st.ok();
    post_([this, key, etcd_key, ok, rtt] {
      if (ok) events_.round_trip(rtt);
      events_.removed(key, etcd_key, ok);
    });
    if (!ok) pause(milliseconds(100));
  });
}

void cluster_runtime::bump_revision() {
  enqueue([this] {
    std::int64_t rev = 0;
    etcd_status st = client_.put(options_.prefix + "rev", options_.node, 0, &rev);
    if (st.ok()) {
      post_([this, rev] { events_.revision(rev); });
    } else {
      // Tell the loop nothing: tokens stay ready until s runs out; the next grant asks again.
      post_([this] { events_.revision(0); });
    }
  });
}

}  // namespace keylock
