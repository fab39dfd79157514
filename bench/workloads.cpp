#include "workloads.hpp"

#include "etcd_driver.hpp"

#include "drivers.hpp"
#include "procinfo.hpp"
#include "stats.hpp"

#include <hiredis/hiredis.h>

#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <latch>
#include <memory>
#include <thread>
#include <vector>

namespace keylock::bench {

namespace {

constexpr std::int64_t ns_per_ms = 1'000'000;
constexpr std::int64_t ns_per_s = 1'000'000'000;
constexpr double bytes_per_mib = 1024.0 * 1024.0;
// hold-many without --pipeline: requests in flight per connection while filling.
constexpr std::uint32_t default_fill_depth = 64;
// Keys per DEL when hold-many cleans up after itself on Redis.
constexpr std::size_t del_batch = 512;
// Time given to a server to settle before its RSS is read.
constexpr std::chrono::milliseconds settle_time{300};

// ---------------------------------------------------------------------------------------------
// Per-client measurements, merged after the run.

struct client_stats {
  latency_histogram latency;  // the workload's main latency (see run_result::latency_label)
  latency_histogram handoff;  // contended: release sent -> a waiting client's grant received
  latency_histogram handoff_local;  // of those, releaser and waiter on the same server
  latency_histogram handoff_cross;  // of those, on different servers (cluster mode)
  latency_histogram direct;   // overhead: the trivial function called directly
  std::uint64_t ops = 0;
  std::uint64_t requests = 0;
  std::uint64_t errors = 0;
  std::uint64_t busy = 0;           // try-once acquires that found the lock held
  std::uint64_t polls = 0;          // redis: SET NX tries that found the key held
  std::uint64_t repeat_grants = 0;  // contended: grants to the client that released last
  // rw: acquire wait and grants in the window, per mode (index: 0 exclusive, 1 shared).
  std::array<latency_histogram, 2> wait_by_mode;
  std::array<std::uint64_t, 2> ops_by_mode{};
  std::uint64_t shared_beside = 0;  // rw: sum over shared grants of the shared holders then
  std::uint32_t peak_shared = 0;    // rw: most shared holders seen at once
  // multi: requests that waited for their reply, and cycles completed (window or not), so that
  // round trips per cycle count every cycle whose round trips were counted.
  std::uint64_t round_trips = 0;
  std::uint64_t cycles = 0;
  std::string first_error;

  void fail(std::string what) {
    ++errors;
    if (first_error.empty()) first_error = std::move(what);
  }
};

struct alignas(64) padded_counter {
  std::atomic<std::uint64_t> value{0};
};

// The start line of a run: clients connect, then wait until every client is ready, so that
// connecting is not measured. The deadline is fixed before the start; ops that complete after
// it are not counted.
class run_gate {
 public:
  explicit run_gate(std::uint32_t clients)
      : clients_(clients), ready_(clients), progress_(clients) {}

  // A client is connected (or failed to): waits for the start and returns the deadline.
  std::int64_t arrive_and_wait() {
    ready_.count_down();
    go_.wait(false, std::memory_order_acquire);
    return deadline_ns_;
  }
  void wait_ready() { ready_.wait(); }
  void start(std::int64_t start_ns, std::int64_t deadline_ns) {
    start_ns_ = start_ns;
    deadline_ns_ = deadline_ns;
    go_.store(true, std::memory_order_release);
    go_.notify_all();
  }
  void count(std::uint32_t client) noexcept {
    progress_[client].value.fetch_add(1, std::memory_order_relaxed);
  }
  std::uint64_t total() const noexcept {
    std::uint64_t n = 0;
    for (std::uint32_t i = 0; i < clients_; ++i) {
      n += progress_[i].value.load(std::memory_order_relaxed);
    }
    return n;
  }
  void finished() noexcept { finished_.fetch_add(1, std::memory_order_acq_rel); }
  bool all_finished() const noexcept {
    return finished_.load(std::memory_order_acquire) == clients_;
  }
  std::int64_t start_ns() const noexcept { return start_ns_; }
  std::int64_t deadline_ns() const noexcept { return deadline_ns_; }

 private:
  std::uint32_t clients_;
  std::latch ready_;
  std::atomic<bool> go_{false};
  std::atomic<std::uint32_t> finished_{0};
  std::int64_t start_ns_ = 0;
  std::int64_t deadline_ns_ = 0;
  std::vector<padded_counter> progress_;
};

// Who released the shared key last, and when (contended). Written by the holder just before
// it sends its release, read by the next holder after its grant: the lock itself orders the two.
struct handoff_board {
  std::atomic<std::int64_t> released_ns{0};
  std::atomic<std::int64_t> releaser{-1};
};

double self_cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  auto secs = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  return secs(ru.ru_utime) + secs(ru.ru_stime);
}

void set_precise_sleeps() {
  // Sleeps of hold/think/poll times should end when asked, not up to 50 µs later.
  ::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
}

void sleep_ns(std::int64_t ns) {
  if (ns <= 0) return;
  timespec ts{static_cast<time_t>(ns / ns_per_s), static_cast<long>(ns % ns_per_s)};
  while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

// Holds or thinks for `us`: spins below 20 µs (a sleep cannot be that short), sleeps above.
void pause_us(std::uint32_t us) {
  if (us == 0) return;
  const std::int64_t ns = static_cast<std::int64_t>(us) * 1000;
  if (us < 20) {
    const std::int64_t until = mono_ns() + ns;
    while (mono_ns() < until) {
    }
    return;
  }
  sleep_ns(ns);
}

// The function whose cost under a lock the overhead workload measures: a few multiplies,
// kept out of line so that the direct call is a real call.
[[gnu::noinline]] std::uint64_t trivial_function(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return x;
}

std::string number_text(std::uint64_t v) { return std::to_string(v); }

// ---------------------------------------------------------------------------------------------
// Redis scripts: loaded once per run with SCRIPT LOAD, then run by sha with EVALSHA.

struct redis_scripts {
  std::string release_sha;
  std::string semaphore_sha;
};

std::string load_redis_scripts(const target& t, const bench_options& o, redis_scripts& out) {
  redis_conn conn;
  if (std::string err = conn.connect(t, o.io_timeout, o.tls); !err.empty()) return err;
  auto load = [&conn](std::string_view script, std::string& sha) -> std::string {
    std::string cmd;
    append_resp_command(cmd, {"SCRIPT", "LOAD", script});
    redis_reply_ptr r = conn.call(cmd);
    if (!r) return "SCRIPT LOAD: " + conn.error();
    long long ignored = 0;
    if (redis_conn::outcome_of(*r, ignored, sha) != redis_outcome::ok || sha.size() != 40) {
      return "SCRIPT LOAD failed: " + sha;
    }
    return {};
  };
  if (std::string err = load(redis_release_script, out.release_sha); !err.empty()) return err;
  return load(redis_semaphore_script, out.semaphore_sha);
}

// A Redis INFO field ("used_memory_rss"), when the server's process cannot be read.
std::optional<double> redis_info_number(const target& t, const bench_options& o,
                                        std::string_view field) {
  redis_conn conn;
  if (!conn.connect(t, o.io_timeout, o.tls).empty()) return std::nullopt;
  std::string cmd;
  append_resp_command(cmd, {"INFO", "memory"});
  redis_reply_ptr r = conn.call(cmd);
  if (!r || r->type != REDIS_REPLY_STRING) return std::nullopt;
  std::string_view text(r->str, r->len);
  const std::string needle = std::string(field) + ":";
  std::size_t p = text.find(needle);
  if (p == std::string_view::npos) return std::nullopt;
  return std::strtod(std::string(text.substr(p + needle.size(), 24)).c_str(), nullptr);
}

std::optional<double> server_rss_mib(const target& t, const bench_options& o, int pid) {
  if (auto b = read_rss_bytes(pid)) return static_cast<double>(*b) / bytes_per_mib;
  if (t.kind == target_kind::redis) {
    if (auto v = redis_info_number(t, o, "used_memory_rss")) return *v / bytes_per_mib;
  }
  return std::nullopt;
}

// The memory extras of hold-many and connections: RSS before and during, and what each of the
// r.ops held things cost. Without both samples, the row says why instead.
void add_rss_extras(run_result& r, std::optional<double> before, std::optional<double> after,
                    const char* during_label, const char* per_name, const char* per_label) {
  if (!before || !after) {
    if (r.first_error.empty()) {
      r.first_error = "server RSS unknown: process not found (give --server-pid)";
    }
    return;
  }
  r.extras.push_back({"rss_before_mib", "server RSS before, MiB", *before, false});
  r.extras.push_back({"rss_mib", during_label, *after});
  r.extras.push_back({"rss_added_mib", "RSS added, MiB", *after - *before});
  if (r.ops > 0) {
    r.extras.push_back(
        {per_name, per_label, (*after - *before) * bytes_per_mib / static_cast<double>(r.ops)});
  }
}

// ---------------------------------------------------------------------------------------------
// Blocking lock clients for the contended, zipf and overhead workloads.

struct grant_info {
  bool granted = false;
  bool busy = false;            // try-once found the lock held
  std::uint64_t token = 0;      // keylock fencing token
  token_text redis_token{};     // redis: the value SET under the key
  std::uint32_t slot = 0;       // redis semaphore: the slot key taken (1-based); 0 for mutex
  std::int64_t granted_ns = 0;  // when the grant was received
};

class locker {
 public:
  virtual ~locker() = default;
  virtual std::string connect(const target& t, std::chrono::milliseconds io_timeout,
                              const tls_client* tls) = 0;
  // Acquires `key` with `limit`: waits until granted (redis: polls, giving up once the next
  // try would start after `give_up_ns`), or tries once with try_once. Server error replies are
  // counted in `s` and return true with g.granted false; false means the connection failed.
  virtual bool acquire(std::string_view key, std::uint32_t limit, std::int64_t give_up_ns,
                       grant_info& g, client_stats& s) = 0;
  // Releases the grant. Stamps `board` (when given) just before the request is sent.
  virtual bool release(std::string_view key, const grant_info& g, handoff_board* board,
                       std::int64_t me, client_stats& s) = 0;
};

void stamp_release(handoff_board* board, std::int64_t me) {
  if (board == nullptr) return;
  board->releaser.store(me, std::memory_order_relaxed);
  board->released_ns.store(mono_ns(), std::memory_order_release);
}

class keylock_locker final : public locker {
 public:
  explicit keylock_locker(const bench_options& o) : options_(o) {}

  std::string connect(const target& t, std::chrono::milliseconds io_timeout,
                      const tls_client* tls) override {
    return conn_.connect(t, io_timeout, tls);
  }

  bool acquire(std::string_view key, std::uint32_t limit, std::int64_t, grant_info& g,
               client_stats& s) override {
    return acquire_in(key, limit, keylock::lock_mode::exclusive, g, s);
  }

  // acquire() in `mode` (rw).
  bool acquire_in(std::string_view key, std::uint32_t limit, keylock::lock_mode mode,
                  grant_info& g, client_stats& s) {
    const std::uint64_t id = next_id_++;
    out_.clear();
    append_acquire(out_, id, key, options_.ttl_ms, wait(), limit, mode);
    return exchange_acquire(id, g, s);
  }

  // One acquire of every key of `keys` at once, one lease (multi).
  bool acquire_set(std::span<const std::string> keys, grant_info& g, client_stats& s) {
    const std::uint64_t id = next_id_++;
    out_.clear();
    append_acquire_set(out_, id, keys, options_.ttl_ms, wait(), 1);
    return exchange_acquire(id, g, s);
  }

  bool release(std::string_view key, const grant_info& g, handoff_board* board, std::int64_t me,
               client_stats& s) override {
    const std::uint64_t id = next_id_++;
    out_.clear();
    append_release(out_, id, key, g.token, options_.keylock_noreply);
    ++s.requests;
    stamp_release(board, me);
    if (!conn_.send(out_)) {
      s.fail(conn_.error());
      return false;
    }
    // With noreply nothing comes back (a reply to an invalid release would arrive in place of
    // the next acquire's, and fail its id check).
    if (options_.keylock_noreply) return true;
    ++s.round_trips;
    reply_view r;
    if (!conn_.next_reply(r)) {
      s.fail(conn_.error());
      return false;
    }
    if (!r.ok) s.fail("release: " + std::string(r.error));
    return true;
  }

 private:
  std::optional<std::uint32_t> wait() const {
    return options_.try_once ? std::optional<std::uint32_t>(0) : std::nullopt;
  }

  // Sends the acquire in out_ and reads its answer into g.
  bool exchange_acquire(std::uint64_t id, grant_info& g, client_stats& s) {
    ++s.requests;
    ++s.round_trips;
    reply_view r;
    if (!conn_.send(out_) || !conn_.next_reply(r)) {
      s.fail(conn_.error());
      return false;
    }
    if (!r.has_id || r.id != id) {
      s.fail("acquire: reply id does not match");
      return false;
    }
    g = grant_info{};
    g.granted_ns = conn_.last_receive_ns();
    if (r.ok && r.has_token) {
      g.granted = true;
      g.token = r.token;
    } else if (options_.try_once && r.error == "timeout") {
      g.busy = true;
    } else {
      s.fail("acquire: " + std::string(r.error.empty() ? "no token in reply" : r.error));
    }
    return true;
  }

  const bench_options& options_;
  keylock_conn conn_;
  std::string out_;
  std::uint64_t next_id_ = 1;
};

// redis-py's Lock: acquire = SET key token NX PX ttl, retried after a sleep of poll_ms while
// the key is held; release = EVALSHA of the compare-and-delete script. A limit N > 1 uses the
// bench's semaphore script over N slot keys (one round trip per try as well).
class redis_locker final : public locker {
 public:
  redis_locker(const bench_options& o, const redis_scripts& scripts, std::uint64_t seed)
      : options_(o), scripts_(scripts), rng_(seed), ttl_text_(number_text(o.ttl_ms)) {}

  std::string connect(const target& t, std::chrono::milliseconds io_timeout,
                      const tls_client* tls) override {
    return conn_.connect(t, io_timeout, tls);
  }

  bool acquire(std::string_view key, std::uint32_t limit, std::int64_t give_up_ns, grant_info& g,
               client_stats& s) override {
    g = grant_info{};
    format_token(rng_.next(), rng_.next(), g.redis_token);
    const std::string_view token(g.redis_token.data(), g.redis_token.size());
    const std::string limit_text = number_text(limit);
    for (;;) {
      cmd_.clear();
      if (limit == 1) {
        append_resp_command(cmd_, {"SET", key, token, "NX", "PX", ttl_text_});
      } else {
        append_resp_command(
            cmd_, {"EVALSHA", scripts_.semaphore_sha, "1", key, token, ttl_text_, limit_text});
      }
      ++s.requests;
      ++s.round_trips;
      redis_reply_ptr r = conn_.call(cmd_);
      const std::int64_t now = mono_ns();
      if (!r) {
        s.fail(conn_.error());
        return false;
      }
      long long n = 0;
      text_.clear();
      const redis_outcome out = redis_conn::outcome_of(*r, n, text_);
      if (out == redis_outcome::error) {
        s.fail("acquire: " + text_);
        return true;
      }
      const bool taken =
          limit == 1 ? out == redis_outcome::ok : (out == redis_outcome::integer && n > 0);
      if (taken) {
        g.granted = true;
        g.granted_ns = now;
        g.slot = limit == 1 ? 0 : static_cast<std::uint32_t>(n);
        return true;
      }
      if (options_.try_once) {
        g.busy = true;
        return true;
      }
      ++s.polls;
      const std::int64_t poll_ns = static_cast<std::int64_t>(options_.poll_ms) * ns_per_ms;
      if (now + poll_ns > give_up_ns) return true;  // the run is over: stop waiting
      sleep_ns(poll_ns);
    }
  }

  bool release(std::string_view key, const grant_info& g, handoff_board* board, std::int64_t me,
               client_stats& s) override {
    const std::string_view token(g.redis_token.data(), g.redis_token.size());
    slot_key_.clear();
    if (g.slot == 0) {
      slot_key_.assign(key);
    } else {
      slot_key_ = semaphore_slot_key(key, g.slot);
    }
    cmd_.clear();
    append_resp_command(cmd_, {"EVALSHA", scripts_.release_sha, "1", slot_key_, token});
    ++s.requests;
    ++s.round_trips;
    stamp_release(board, me);
    redis_reply_ptr r = conn_.call(cmd_);
    if (!r) {
      s.fail(conn_.error());
      return false;
    }
    long long n = 0;
    text_.clear();
    const redis_outcome out = redis_conn::outcome_of(*r, n, text_);
    if (out != redis_outcome::integer || n != 1) {
      s.fail(out == redis_outcome::error ? "release: " + text_
                                         : std::string("release: the lock was not held"));
    }
    return true;
  }

 private:
  const bench_options& options_;
  const redis_scripts& scripts_;
  fast_rng rng_;
  std::string ttl_text_;
  redis_conn conn_;
  std::string cmd_;
  std::string text_;
  std::string slot_key_;
};

// etcd's own lock (etcd_driver.hpp): Lock blocks until held, so there is no try-once and no
// poll; the grant's token is the revision etcd answered with. No ttl per acquire: the lock key
// lives as long as the client's lease.
class etcd_locker final : public locker {
 public:
  std::string connect(const target& t, std::chrono::milliseconds io_timeout,
                      const tls_client*) override {
    return conn_.connect(endpoint_list(t), io_timeout);
  }

  bool acquire(std::string_view key, std::uint32_t, std::int64_t, grant_info& g,
               client_stats& s) override {
    g = grant_info{};
    ++s.requests;
    ++s.round_trips;
    std::int64_t revision = 0;
    if (std::string err = conn_.lock(key, &lock_key_, &revision); !err.empty()) {
      s.fail(err);
      return false;
    }
    g.granted = true;
    g.granted_ns = mono_ns();
    g.token = static_cast<std::uint64_t>(revision);
    return true;
  }

  bool release(std::string_view, const grant_info&, handoff_board* board, std::int64_t me,
               client_stats& s) override {
    ++s.requests;
    ++s.round_trips;
    stamp_release(board, me);
    if (std::string err = conn_.unlock(lock_key_); !err.empty()) {
      s.fail(err);
      return false;
    }
    return true;
  }

 private:
  etcd_lock_conn conn_;
  std::string lock_key_;
};

std::unique_ptr<locker> make_locker(const target& t, const bench_options& o,
                                    const redis_scripts& scripts, std::uint64_t seed) {
  if (t.kind == target_kind::keylock) return std::make_unique<keylock_locker>(o);
  if (t.kind == target_kind::etcd) return std::make_unique<etcd_locker>();
  return std::make_unique<redis_locker>(o, scripts, seed);
}

// ---------------------------------------------------------------------------------------------
// Pipelined clients: rtt and uncontended. Each of `depth` slots has one request in flight; a
// reply makes its slot send the next request at once. Replies come in order (nothing here
// waits in a queue), and ids say which slot a reply belongs to.

struct pipe_slot {
  std::uint64_t id = 0;  // keylock: id of the request in flight (slot + k * depth)
  std::int64_t sent_ns = 0;
  std::int64_t cycle_ns = 0;  // when the acquire of the current cycle was sent
  bool releasing = false;
  std::uint64_t token = 0;
  token_text redis_token{};
  std::string key;
  std::size_t check = 0;  // exclusion_checker index
};

std::vector<pipe_slot> make_slots(std::uint32_t client, std::uint32_t depth) {
  std::vector<pipe_slot> slots(depth);
  for (std::uint32_t d = 0; d < depth; ++d) {
    slots[d].id = d;
    slots[d].key = "uc:" + number_text(client) + ":" + number_text(d);
    slots[d].check = static_cast<std::size_t>(client) * depth + d;
  }
  return slots;
}

void keylock_pipeline_client(const bench_options& o, const target& t, bool cycle,
                             std::uint32_t client, run_gate& gate, client_stats& s,
                             exclusion_checker& checker) {
  const std::uint32_t depth = std::max<std::uint32_t>(1, o.pipeline);
  keylock_conn conn;
  const std::string err = conn.connect(client_target(t, client), o.io_timeout, o.tls);
  const std::int64_t deadline = gate.arrive_and_wait();
  if (!err.empty()) return s.fail(err);

  std::vector<pipe_slot> slots = make_slots(client, depth);
  std::string out;
  std::vector<std::uint32_t> unstamped;
  auto issue = [&](std::uint32_t d) {
    pipe_slot& sl = slots[d];
    if (!cycle) {
      append_ping(out, sl.id);
    } else if (!sl.releasing) {
      append_acquire(out, sl.id, sl.key, o.ttl_ms, std::nullopt, 1);
    } else {
      append_release(out, sl.id, sl.key, sl.token);
    }
    unstamped.push_back(d);
  };
  // One clock read and one send per batch of requests.
  auto flush = [&]() {
    if (out.empty()) return true;
    const std::int64_t now = mono_ns();
    for (std::uint32_t d : unstamped) {
      slots[d].sent_ns = now;
      if (!slots[d].releasing) slots[d].cycle_ns = now;
    }
    unstamped.clear();
    const bool ok = conn.send(out);
    out.clear();
    return ok;
  };

  for (std::uint32_t d = 0; d < depth; ++d) issue(d);
  std::uint32_t inflight = depth;
  if (!flush()) return s.fail(conn.error());
  reply_view r;
  while (inflight > 0) {
    if (!conn.next_reply(r)) return s.fail(conn.error());
    const std::int64_t now = conn.last_receive_ns();
    if (!r.has_id) return s.fail("reply without id: " + std::string(r.error));
    pipe_slot& sl = slots[r.id % depth];
    if (r.id != sl.id) return s.fail("reply id does not match the request in flight");
    const auto d = static_cast<std::uint32_t>(r.id % depth);
    sl.id += depth;
    const bool in_window = now <= deadline;
    if (in_window) ++s.requests;
    bool again = now < deadline;
    if (!cycle) {
      if (!r.ok) s.fail("ping: " + std::string(r.error));
      if (in_window && r.ok) {
        s.latency.record(static_cast<std::uint64_t>(now - sl.sent_ns));
        ++s.ops;
        gate.count(client);
      }
    } else if (!sl.releasing) {
      if (r.ok && r.has_token) {
        checker.enter(sl.check, 1);
        checker.leave(sl.check);
        sl.token = r.token;
        if (o.keylock_noreply) {
          // Nothing answers the release: the cycle ends when it is written, with this slot's
          // next acquire right behind it in the same send.
          append_release(out, sl.id, sl.key, sl.token, true);
          sl.id += depth;
          if (in_window) {
            ++s.requests;
            s.latency.record(static_cast<std::uint64_t>(now - sl.cycle_ns));
            ++s.ops;
            gate.count(client);
          }
        } else {
          sl.releasing = true;
          again = true;  // always release what is held
        }
      } else {
        s.fail("acquire: " + std::string(r.error));
      }
    } else {
      sl.releasing = false;
      if (!r.ok) {
        s.fail("release: " + std::string(r.error));
      } else if (in_window) {
        s.latency.record(static_cast<std::uint64_t>(now - sl.cycle_ns));
        ++s.ops;
        gate.count(client);
      }
    }
    if (again) {
      issue(d);
    } else {
      --inflight;
    }
    if (!conn.has_buffered_frame() && !flush()) return s.fail(conn.error());
  }
  if (!flush()) s.fail(conn.error());  // the last noreply releases
}

void redis_pipeline_client(const bench_options& o, const target& t, bool cycle,
                           std::uint32_t client, run_gate& gate, client_stats& s,
                           exclusion_checker& checker, const redis_scripts& scripts) {
  const std::uint32_t depth = std::max<std::uint32_t>(1, o.pipeline);
  redis_conn conn;
  const std::string err = conn.connect(t, o.io_timeout, o.tls);
  const std::int64_t deadline = gate.arrive_and_wait();
  if (!err.empty()) return s.fail(err);

  fast_rng rng(o.seed * 7919 + client);
  const std::string ttl_text = number_text(o.ttl_ms);
  std::vector<pipe_slot> slots = make_slots(client, depth);
  // Replies come back in request order: a ring of the slots in flight.
  std::vector<std::uint32_t> ring(depth);
  std::size_t ring_head = 0, ring_size = 0;
  std::string cmd;
  std::string text;
  auto issue = [&](std::uint32_t d) {
    pipe_slot& sl = slots[d];
    cmd.clear();
    const std::string_view token(sl.redis_token.data(), sl.redis_token.size());
    if (!cycle) {
      append_resp_command(cmd, {"PING"});
    } else if (!sl.releasing) {
      format_token(rng.next(), rng.next(), sl.redis_token);
      append_resp_command(cmd, {"SET", sl.key, token, "NX", "PX", ttl_text});
    } else {
      append_resp_command(cmd, {"EVALSHA", scripts.release_sha, "1", sl.key, token});
    }
    sl.sent_ns = mono_ns();
    if (!sl.releasing) sl.cycle_ns = sl.sent_ns;
    ring[(ring_head + ring_size) % depth] = d;
    ++ring_size;
    return conn.append(cmd);
  };

  for (std::uint32_t d = 0; d < depth; ++d) {
    if (!issue(d)) return s.fail(conn.error());
  }
  while (ring_size > 0) {
    redis_reply_ptr reply = conn.next_reply();
    if (!reply) return s.fail(conn.error());
    const std::int64_t now = mono_ns();
    const std::uint32_t d = ring[ring_head];
    ring_head = (ring_head + 1) % depth;
    --ring_size;
    pipe_slot& sl = slots[d];
    const bool in_window = now <= deadline;
    if (in_window) ++s.requests;
    bool again = now < deadline;
    long long n = 0;
    text.clear();
    const redis_outcome out = redis_conn::outcome_of(*reply, n, text);
    if (!cycle) {
      if (out != redis_outcome::ok) {
        s.fail("PING: " + text);
      } else if (in_window) {
        s.latency.record(static_cast<std::uint64_t>(now - sl.sent_ns));
        ++s.ops;
        gate.count(client);
      }
    } else if (!sl.releasing) {
      if (out == redis_outcome::ok) {
        checker.enter(sl.check, 1);
        checker.leave(sl.check);
        sl.releasing = true;
        again = true;
      } else {
        s.fail(out == redis_outcome::nil ? std::string("SET NX: own key held") : "SET NX: " + text);
      }
    } else {
      sl.releasing = false;
      if (out != redis_outcome::integer || n != 1) {
        s.fail("release: " + (text.empty() ? std::string("the lock was not held") : text));
      } else if (in_window) {
        s.latency.record(static_cast<std::uint64_t>(now - sl.cycle_ns));
        ++s.ops;
        gate.count(client);
      }
    }
    if (again && !issue(d)) return s.fail(conn.error());
  }
}

// ---------------------------------------------------------------------------------------------
// Blocking workloads.

void contended_client(const bench_options& o, const target& t, std::uint32_t me, run_gate& gate,
                      client_stats& s, exclusion_checker& checker, handoff_board& board,
                      locker& lk) {
  static const std::string key = "ct:shared";
  const std::string err = lk.connect(client_target(t, me), o.io_timeout, o.tls);
  const std::int64_t deadline = gate.arrive_and_wait();
  if (!err.empty()) return s.fail(err);
  for (;;) {
    const std::int64_t t0 = mono_ns();
    if (t0 >= deadline) break;
    grant_info g;
    if (!lk.acquire(key, 1, deadline, g, s)) return;
    if (!g.granted) {
      if (g.busy) {
        ++s.busy;
        pause_us(o.think_us);
      }
      continue;
    }
    checker.enter(0, 1);
    const std::int64_t released = board.released_ns.exchange(0, std::memory_order_acq_rel);
    const std::int64_t releaser = board.releaser.load(std::memory_order_relaxed);
    if (g.granted_ns <= deadline) {
      ++s.ops;
      gate.count(me);
      s.latency.record(static_cast<std::uint64_t>(g.granted_ns - t0));
      // A handoff: this client was already waiting when the lock was released. Local when the
      // releaser talks to the same server (daemon) as this client, cross-host otherwise.
      if (released != 0 && t0 <= released) {
        const auto d = static_cast<std::uint64_t>(g.granted_ns - released);
        s.handoff.record(d);
        const bool local =
            releaser >= 0 && server_of(t, static_cast<std::uint32_t>(releaser)) == server_of(t, me);
        (local ? s.handoff_local : s.handoff_cross).record(d);
      }
      if (released != 0 && releaser == static_cast<std::int64_t>(me)) ++s.repeat_grants;
    }
    pause_us(o.hold_us);
    checker.leave(0);
    if (!lk.release(key, g, &board, me, s)) return;
    pause_us(o.think_us);
  }
}

void zipf_client(const bench_options& o, const target& t, std::uint32_t me, run_gate& gate,
                 client_stats& s, exclusion_checker& checker, const zipf_sampler& zipf,
                 locker& lk) {
  fast_rng rng(o.seed * 104729 + me);
  std::string key;
  const std::string err = lk.connect(client_target(t, me), o.io_timeout, o.tls);
  const std::int64_t deadline = gate.arrive_and_wait();
  if (!err.empty()) return s.fail(err);
  for (;;) {
    const std::int64_t t0 = mono_ns();
    if (t0 >= deadline) break;
    const std::uint64_t rank = zipf(rng);
    const std::uint32_t limit = is_semaphore_rank(rank, o.semaphore_pct) ? o.limit : 1;
    key = "z:" + number_text(rank);
    grant_info g;
    if (!lk.acquire(key, limit, deadline, g, s)) return;
    if (!g.granted) {
      if (g.busy) {
        ++s.busy;
        pause_us(o.think_us);
      }
      continue;
    }
    checker.enter(rank, limit);
    if (g.granted_ns <= deadline) {
      ++s.ops;
      gate.count(me);
      s.latency.record(static_cast<std::uint64_t>(g.granted_ns - t0));
    }
    pause_us(o.hold_us);
    checker.leave(rank);
    if (!lk.release(key, g, nullptr, me, s)) return;
    pause_us(o.think_us);
  }
}

void overhead_client(const bench_options& o, const target& t, std::uint32_t me, run_gate& gate,
                     client_stats& s, exclusion_checker& checker, locker& lk) {
  const std::string key = "ov:" + number_text(me);
  volatile std::uint64_t sink = 0;
  std::uint64_t x = me + 1;
  const std::string err = lk.connect(client_target(t, me), o.io_timeout, o.tls);
  const std::int64_t deadline = gate.arrive_and_wait();
  if (!err.empty()) return s.fail(err);
  for (;;) {
    // Interleave the two measurements so that drift affects both alike.
    const std::int64_t a = mono_ns();
    if (a >= deadline) break;
    x = trivial_function(x);
    const std::int64_t b = mono_ns();
    sink = x;
    s.direct.record(static_cast<std::uint64_t>(b - a));

    const std::int64_t c = mono_ns();
    grant_info g;
    if (!lk.acquire(key, 1, deadline, g, s)) return;
    if (!g.granted) continue;
    checker.enter(me, 1);
    x = trivial_function(x);
    checker.leave(me);
    if (!lk.release(key, g, nullptr, me, s)) return;
    const std::int64_t d = mono_ns();
    sink = x;
    if (d <= deadline) {
      s.latency.record(static_cast<std::uint64_t>(d - c));
      ++s.ops;
      gate.count(me);
    }
  }
  (void)sink;
}


// rw: every client takes the one key shared (with probability shared_pct %) or exclusive,
// holds it, releases it, thinks. Keylock only.
void rw_client(const bench_options& o, const target& t, std::uint32_t me, unsigned shared_pct,
               run_gate& gate, client_stats& s, exclusion_checker& checker) {
  static const std::string key = "rw:shared";
  fast_rng rng(o.seed * 6151 + me);
  keylock_locker lk(o);
  const std::string err = lk.connect(client_target(t, me), o.io_timeout, o.tls);
  const std::int64_t deadline = gate.arrive_and_wait();
  if (!err.empty()) return s.fail(err);
  for (;;) {
    const std::int64_t t0 = mono_ns();
    if (t0 >= deadline) break;
    const bool shared = draw_shared(rng, shared_pct);
    const auto mode = shared ? keylock::lock_mode::shared : keylock::lock_mode::exclusive;
    grant_info g;
    if (!lk.acquire_in(key, 1, mode, g, s)) return;
    if (!g.granted) {
      if (g.busy) {
        ++s.busy;
        pause_us(o.think_us);
      }
      continue;
    }
    std::uint32_t beside = 0;
    if (shared) {
      checker.enter_shared(0);
      beside = checker.shared_holders(0);  // this holder included
    } else {
      checker.enter(0, 1);
    }
    if (g.granted_ns <= deadline) {
      ++s.ops;
      gate.count(me);
      const auto wait = static_cast<std::uint64_t>(g.granted_ns - t0);
      s.latency.record(wait);
      s.wait_by_mode[shared ? 1 : 0].record(wait);
      ++s.ops_by_mode[shared ? 1 : 0];
      if (shared) {
        s.shared_beside += beside;
        s.peak_shared = std::max(s.peak_shared, beside);
      }
    }
    pause_us(o.hold_us);
    if (shared) {
      checker.leave_shared(0);
    } else {
      checker.leave(0);
    }
    if (!lk.release(key, g, nullptr, me, s)) return;
    pause_us(o.think_us);
  }
}

std::string multi_key(std::uint64_t index) { return "mk:" + number_text(index); }

// multi: every cycle draws `set_size` distinct keys of `keys` (sorted), locks them all, holds,
// releases them. With `one_lease` (keylock's "keys") the set is one acquire and one lease;
// otherwise one acquire per key in sorted order (keylock or Redis), each key held from its grant,
// released in the same order once all are held and the hold is over.
void multi_client(const bench_options& o, const target& t, std::uint32_t me, bool one_lease,
                  run_gate& gate, client_stats& s, exclusion_checker& checker, locker& lk) {
  fast_rng rng(o.seed * 3571 + me);
  std::vector<std::uint64_t> set;
  std::vector<std::string> names;
  std::vector<grant_info> grants;
  const std::string err = lk.connect(client_target(t, me), o.io_timeout, o.tls);
  const std::int64_t deadline = gate.arrive_and_wait();
  if (!err.empty()) return s.fail(err);
  for (;;) {
    const std::int64_t t0 = mono_ns();
    if (t0 >= deadline) break;
    draw_key_set(rng, o.keys, o.set_size, set);
    names.clear();
    for (std::uint64_t k : set) names.push_back(multi_key(k));
    grants.assign(one_lease ? 1 : set.size(), grant_info{});
    std::size_t held = 0;  // grants held, in order
    bool connected = true;
    if (one_lease) {
      // Only a keylock target runs this variant.
      connected = static_cast<keylock_locker&>(lk).acquire_set(names, grants[0], s);
      if (connected && grants[0].granted) {
        held = 1;
        checker.enter_all(set, keylock::lock_mode::exclusive, 1);
      }
    } else {
      for (; held < set.size(); ++held) {
        connected = lk.acquire(names[held], 1, deadline, grants[held], s);
        if (!connected || !grants[held].granted) break;
        checker.enter(set[held], 1);
      }
    }
    const bool complete = held == grants.size();
    if (complete) pause_us(o.hold_us);
    if (one_lease) {
      if (held == 1) checker.leave_all(set, keylock::lock_mode::exclusive);
    } else {
      for (std::size_t i = 0; i < held; ++i) checker.leave(set[i]);
    }
    if (!connected) return;
    // Let go of what is held (all of it after a full cycle; the first keys of a cycle that
    // ran out of time waiting for the next one).
    for (std::size_t i = 0; i < held; ++i) {
      if (!lk.release(names[i], grants[i], nullptr, me, s)) return;
    }
    if (!complete) continue;
    ++s.cycles;
    const std::int64_t done = mono_ns();
    if (done <= deadline) {
      ++s.ops;
      gate.count(me);
      s.latency.record(static_cast<std::uint64_t>(done - t0));
    }
    pause_us(o.think_us);
  }
}

// ---------------------------------------------------------------------------------------------
// Running clients and collecting their numbers.

struct window {
  double seconds = 0;
  double elapsed = 0;  // start to the deadline, or to the last client's end when all ended early
  std::optional<double> server_cpu_pct;
  double generator_cpu_pct = 0;
  std::optional<double> other_cpu_pct;  // everything else on the machine: interference
};

void print_progress(std::string_view label, double elapsed, std::uint64_t ops, double rate) {
  std::fprintf(stderr, "[%.*s] %5.1f s  %s ops/s  (%s ops)\n", static_cast<int>(label.size()),
               label.data(), elapsed, format_count(rate).c_str(),
               format_count(static_cast<double>(ops)).c_str());
}

// Starts `n` client threads running body(i, gate, stats[i]), opens the gate once all are
// connected, prints progress each second until the deadline, and joins them.
template <class Body>
window run_timed(const bench_options& o, std::uint32_t n, std::string_view label, int server_pid,
                 std::vector<client_stats>& stats, Body body) {
  stats.clear();
  stats.resize(n);
  run_gate gate(n);
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (std::uint32_t i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      set_precise_sleeps();
      body(i, gate, stats[i]);
      gate.finished();
    });
  }
  gate.wait_ready();
  const auto server_cpu0 = read_cpu_seconds(server_pid);
  const double self_cpu0 = self_cpu_seconds();
  const auto machine0 = read_machine_cpu();
  const std::int64_t start = mono_ns();
  const auto length = static_cast<std::int64_t>(o.seconds * static_cast<double>(ns_per_s));
  const std::int64_t deadline = start + length;
  gate.start(start, deadline);
  std::int64_t next = start + ns_per_s;
  // Wake every 10 ms to notice clients that all gave up early (connection refused...).
  constexpr std::int64_t tick_ns = 10 * ns_per_ms;
  for (;;) {
    const std::int64_t now = mono_ns();
    if (now >= deadline || gate.all_finished()) break;
    sleep_ns(std::min({next, deadline, now + tick_ns}) - now);
    if (mono_ns() >= next && next < deadline) {
      if (o.progress) {
        const double elapsed = static_cast<double>(next - start) / ns_per_s;
        const std::uint64_t ops = gate.total();
        print_progress(label, elapsed, ops, static_cast<double>(ops) / elapsed);
      }
      next += ns_per_s;
    }
  }
  window w;
  const auto server_cpu1 = read_cpu_seconds(server_pid);
  const double self_cpu1 = self_cpu_seconds();
  const auto machine1 = read_machine_cpu();
  const double elapsed = static_cast<double>(mono_ns() - start) / ns_per_s;
  w.seconds = static_cast<double>(length) / ns_per_s;
  w.elapsed = elapsed;
  if (server_cpu0 && server_cpu1)
    w.server_cpu_pct = 100.0 * (*server_cpu1 - *server_cpu0) / elapsed;
  w.generator_cpu_pct = 100.0 * (self_cpu1 - self_cpu0) / elapsed;
  if (machine0 && machine1 && w.server_cpu_pct) {
    const double busy_pct =
        100.0 * static_cast<double>(machine1->busy - machine0->busy) * seconds_per_tick() / elapsed;
    w.other_cpu_pct = std::max(0.0, busy_pct - *w.server_cpu_pct - w.generator_cpu_pct);
  }
  for (auto& th : threads) th.join();
  return w;
}

std::string placement_text(const bench_options& o, int pid) {
  std::string gen = o.cpu >= 0 ? "load generator pinned to CPU " + std::to_string(o.cpu)
                               : "load generator not pinned (CPUs " + self_cpus_allowed() + ")";
  if (pid <= 0) return gen + "; server process not found on this machine";
  std::string cpus = read_cpus_allowed(pid);
  return gen + "; server " + read_process_name(pid) + " pid " + std::to_string(pid) + " on CPUs " +
         (cpus.empty() ? "?" : cpus);
}

run_result base_result(workload w, const bench_options& o, const target& t, int pid) {
  run_result r;
  r.workload = std::string(to_string(w));
  r.params = describe_params(w, o);
  r.kind = t.kind;
  r.target_url = t.url;
  r.clients = o.clients;
  r.pipeline = 1;
  r.placement = placement_text(o, pid);
  r.tls = t.tls;
  if (t.tls && o.tls != nullptr) r.tls_session = o.tls->negotiated();
  return r;
}

void merge_into(run_result& r, const std::vector<client_stats>& stats, latency_histogram& all) {
  for (const auto& s : stats) {
    all.merge(s.latency);
    r.ops += s.ops;
    r.requests += s.requests;
    r.errors += s.errors;
    if (r.first_error.empty() && !s.first_error.empty()) r.first_error = s.first_error;
  }
  r.latency = summarize(all);
}

// `op`: what one op is, for the server's CPU time per op. That figure compares servers even
// when the load generator's core, not the server's, sets the rate.
void finish_rates(run_result& r, const window& w, std::string_view op = "op") {
  r.seconds = w.seconds;
  if (w.seconds > 0) {
    r.ops_per_s = static_cast<double>(r.ops) / w.seconds;
    r.requests_per_s = static_cast<double>(r.requests) / w.seconds;
  }
  if (w.server_cpu_pct)
    r.extras.push_back({"server_cpu_pct", "server CPU %", *w.server_cpu_pct, false});
  if (w.server_cpu_pct && r.ops > 0) {
    const double cpu_seconds = *w.server_cpu_pct / 100.0 * w.elapsed;
    r.extras.push_back({"server_cpu_us_per_" + std::string(op),
                        "server CPU µs per " + std::string(op),
                        cpu_seconds / static_cast<double>(r.ops) * 1e6});
  }
  r.extras.push_back({"generator_cpu_pct", "load generator CPU %", w.generator_cpu_pct, false});
  if (w.other_cpu_pct) {
    r.extras.push_back(
        {"other_cpu_pct", "other processes CPU % (interference)", *w.other_cpu_pct, false});
  }
}

std::string run_label(workload w, const target& t) {
  return std::string(to_string(t.kind)) + " " + std::string(to_string(w));
}

run_result run_pipelined(workload w, const bench_options& o, const target& t, int pid,
                         const redis_scripts& scripts) {
  const bool cycle = w == workload::uncontended;
  const std::uint32_t depth = std::max<std::uint32_t>(1, o.pipeline);
  exclusion_checker checker(static_cast<std::size_t>(o.clients) * depth);
  std::vector<client_stats> stats;
  window win = run_timed(o, o.clients, run_label(w, t), pid, stats,
                         [&](std::uint32_t i, run_gate& gate, client_stats& s) {
                           if (t.kind == target_kind::keylock) {
                             keylock_pipeline_client(o, t, cycle, i, gate, s, checker);
                           } else {
                             redis_pipeline_client(o, t, cycle, i, gate, s, checker, scripts);
                           }
                         });
  run_result r = base_result(w, o, t, pid);
  r.pipeline = depth;
  r.op_label = cycle ? "acquire+release cycle" : "ping";
  r.latency_label = !cycle ? "round trip"
                    : t.kind == target_kind::keylock && o.keylock_noreply
                        ? "cycle (acquire sent → noreply release sent)"
                        : "cycle (acquire sent → release answered)";
  latency_histogram all;
  merge_into(r, stats, all);
  r.violations = checker.violations();
  finish_rates(r, win);
  return r;
}

run_result run_blocking(workload w, const bench_options& o, const target& t, int pid,
                        const redis_scripts& scripts) {
  const std::size_t keys = w == workload::zipf ? o.keys : w == workload::overhead ? o.clients : 1;
  exclusion_checker checker(keys);
  handoff_board board;
  std::optional<zipf_sampler> zipf;
  if (w == workload::zipf) zipf.emplace(o.keys, o.zipf_s);
  std::vector<std::unique_ptr<locker>> lockers;
  for (std::uint32_t i = 0; i < o.clients; ++i) {
    lockers.push_back(make_locker(t, o, scripts, o.seed * 31 + i));
  }
  std::vector<client_stats> stats;
  window win = run_timed(o, o.clients, run_label(w, t), pid, stats,
                         [&](std::uint32_t i, run_gate& gate, client_stats& s) {
                           locker& lk = *lockers[i];
                           switch (w) {
                             case workload::contended:
                               contended_client(o, t, i, gate, s, checker, board, lk);
                               break;
                             case workload::zipf:
                               zipf_client(o, t, i, gate, s, checker, *zipf, lk);
                               break;
                             default:
                               overhead_client(o, t, i, gate, s, checker, lk);
                               break;
                           }
                         });
  lockers.clear();
  run_result r = base_result(w, o, t, pid);
  latency_histogram all;
  merge_into(r, stats, all);
  r.violations = checker.violations();
  std::uint64_t busy = 0, polls = 0;
  for (const auto& s : stats) {
    busy += s.busy;
    polls += s.polls;
  }
  if (w == workload::overhead) {
    r.op_label = "with_lock call (acquire, call, release)";
    r.latency_label = "call under the lock";
    latency_histogram direct;
    for (const auto& s : stats) direct.merge(s.direct);
    const latency_summary d = summarize(direct);
    r.extras.push_back({"direct_p50_us", "direct call p50 µs", d.p50_us});
    r.extras.push_back({"direct_p99_us", "direct call p99 µs", d.p99_us});
    r.extras.push_back({"added_p50_us", "added by the lock p50 µs", r.latency.p50_us - d.p50_us});
    r.extras.push_back({"added_p99_us", "added by the lock p99 µs", r.latency.p99_us - d.p99_us});
  } else {
    r.op_label = "grant (acquire, hold, release, think)";
    r.latency_label = "acquire wait (acquire sent → grant received)";
  }
  if (w == workload::contended) {
    latency_histogram handoff, local, cross;
    std::uint64_t repeats = 0, lo = ~std::uint64_t{0}, hi = 0;
    std::vector<std::uint64_t> per_client, per_server(std::max<std::size_t>(1, t.endpoints.size()));
    for (std::uint32_t i = 0; i < stats.size(); ++i) {
      const client_stats& s = stats[i];
      handoff.merge(s.handoff);
      local.merge(s.handoff_local);
      cross.merge(s.handoff_cross);
      repeats += s.repeat_grants;
      lo = std::min(lo, s.ops);
      hi = std::max(hi, s.ops);
      per_client.push_back(s.ops);
      per_server[server_of(t, i)] += s.ops;
    }
    const latency_summary h = summarize(handoff);
    r.extras.push_back(
        {"handoff_p50_us", "handoff p50 µs (release sent → waiter's grant)", h.p50_us});
    r.extras.push_back({"handoff_p99_us", "handoff p99 µs", h.p99_us});
    r.extras.push_back({"handoffs", "handoffs measured", static_cast<double>(h.count), false});
    r.extras.push_back({"grants_min", "grants per client, min", static_cast<double>(lo)});
    r.extras.push_back({"grants_max", "grants per client, max", static_cast<double>(hi)});
    r.extras.push_back({"fairness_min_over_max", "fairness (min/max grants)",
                        hi == 0 ? 0.0 : static_cast<double>(lo) / static_cast<double>(hi)});
    r.extras.push_back(
        {"repeat_grant_pct", "% grants to the last releaser",
         r.ops == 0 ? 0.0 : 100.0 * static_cast<double>(repeats) / static_cast<double>(r.ops)});
    r.extras.push_back({"fairness_clients_jain", "fairness across clients (Jain)",
                        jain_index(per_client)});
    if (per_server.size() > 1) {
      const latency_summary l = summarize(local), x = summarize(cross);
      r.extras.push_back({"fairness_servers_jain", "fairness across daemons (Jain)",
                          jain_index(per_server)});
      r.extras.push_back({"handoff_local_p50_us", "local handoff p50 µs", l.p50_us});
      r.extras.push_back({"handoff_local_p99_us", "local handoff p99 µs", l.p99_us});
      r.extras.push_back({"handoff_cross_p50_us", "cross-host handoff p50 µs", x.p50_us});
      r.extras.push_back({"handoff_cross_p99_us", "cross-host handoff p99 µs", x.p99_us});
      r.extras.push_back(
          {"handoffs_cross", "cross-host handoffs measured", static_cast<double>(x.count), false});
    }
  }
  if (t.kind == target_kind::redis) {
    r.extras.push_back(
        {"polls_per_grant", "redis: SET NX retries per grant",
         r.ops == 0 ? 0.0 : static_cast<double>(polls) / static_cast<double>(r.ops)});
  }
  if (o.try_once) r.extras.push_back({"busy", "try-once found held", static_cast<double>(busy)});
  finish_rates(r, win);
  return r;
}


// rw: the mixed run (shared_pct % shared) and, for comparison, the same clients all exclusive
// (skipped when the mixed run is all exclusive already). The row's main figures are the mixed
// run's; the all-exclusive figures and the gain are extras beside them.
run_result run_rw(const bench_options& o, const target& t, int pid) {
  auto phase = [&](unsigned shared_pct, std::vector<client_stats>& stats,
                   exclusion_checker& checker) {
    return run_timed(o, o.clients, run_label(workload::rw, t), pid, stats,
                     [&](std::uint32_t i, run_gate& gate, client_stats& s) {
                       rw_client(o, t, i, shared_pct, gate, s, checker);
                     });
  };
  exclusion_checker checker(1);
  std::vector<client_stats> stats;
  const window win = phase(o.shared_pct, stats, checker);
  run_result r = base_result(workload::rw, o, t, pid);
  r.op_label = "grant (acquire shared or exclusive, hold, release, think)";
  r.latency_label = "acquire wait (acquire sent → grant received), both modes";
  latency_histogram all;
  merge_into(r, stats, all);
  std::array<latency_histogram, 2> by_mode;
  std::array<std::uint64_t, 2> ops{};
  std::uint64_t beside = 0;
  std::uint32_t peak = 0;
  for (const auto& s : stats) {
    for (int m = 0; m < 2; ++m) {
      by_mode[m].merge(s.wait_by_mode[m]);
      ops[m] += s.ops_by_mode[m];
    }
    beside += s.shared_beside;
    peak = std::max(peak, s.peak_shared);
  }
  const double secs = win.seconds > 0 ? win.seconds : 1;
  const latency_summary sh = summarize(by_mode[1]);
  const latency_summary ex = summarize(by_mode[0]);
  r.extras.push_back(
      {"shared_grants_per_s", "shared grants/s", static_cast<double>(ops[1]) / secs});
  r.extras.push_back(
      {"exclusive_grants_per_s", "exclusive grants/s", static_cast<double>(ops[0]) / secs});
  r.extras.push_back({"shared_wait_p50_us", "shared: acquire wait p50 µs", sh.p50_us});
  r.extras.push_back({"shared_wait_p99_us", "shared: acquire wait p99 µs", sh.p99_us});
  r.extras.push_back({"exclusive_wait_p50_us", "exclusive: acquire wait p50 µs", ex.p50_us});
  r.extras.push_back({"exclusive_wait_p99_us", "exclusive: acquire wait p99 µs", ex.p99_us});
  r.extras.push_back({"shared_holders_mean", "shared holders at once (mean, at a shared grant)",
                      ops[1] == 0 ? 0.0 : static_cast<double>(beside) / static_cast<double>(ops[1]),
                      false});
  r.extras.push_back(
      {"shared_holders_max", "shared holders at once (max)", static_cast<double>(peak), false});
  std::uint64_t violations = checker.violations();
  if (o.shared_pct > 0) {
    exclusion_checker base_checker(1);
    std::vector<client_stats> base;
    const window bw = phase(0, base, base_checker);
    run_result b = base_result(workload::rw, o, t, pid);
    latency_histogram base_all;
    merge_into(b, base, base_all);
    const double bsecs = bw.seconds > 0 ? bw.seconds : 1;
    const double base_rate = static_cast<double>(b.ops) / bsecs;
    r.extras.push_back({"all_exclusive_grants_per_s",
                        "same clients all exclusive: grants/s", base_rate});
    r.extras.push_back({"all_exclusive_wait_p50_us", "all exclusive: acquire wait p50 µs",
                        b.latency.p50_us});
    r.extras.push_back({"all_exclusive_wait_p99_us", "all exclusive: acquire wait p99 µs",
                        b.latency.p99_us});
    r.extras.push_back({"gain_over_all_exclusive", "grants/s gain over all exclusive (×)",
                        base_rate == 0 ? 0.0 : r.ops / secs / base_rate, false});
    r.errors += b.errors;
    if (r.first_error.empty()) r.first_error = b.first_error;
    violations += base_checker.violations();
  }
  r.violations = violations;
  finish_rates(r, win);
  return r;
}

run_result run_multi(const bench_options& o, const target& t, int pid,
                     const redis_scripts& scripts) {
  const bool one_lease = t.kind == target_kind::keylock && o.multi == multi_variant::keys;
  exclusion_checker checker(o.keys);
  std::vector<std::unique_ptr<locker>> lockers;
  for (std::uint32_t i = 0; i < o.clients; ++i) {
    lockers.push_back(make_locker(t, o, scripts, o.seed * 37 + i));
  }
  std::vector<client_stats> stats;
  window win = run_timed(o, o.clients, run_label(workload::multi, t), pid, stats,
                         [&](std::uint32_t i, run_gate& gate, client_stats& s) {
                           multi_client(o, t, i, one_lease, gate, s, checker, *lockers[i]);
                         });
  lockers.clear();
  run_result r = base_result(workload::multi, o, t, pid);
  r.variant = std::string(to_string(one_lease ? multi_variant::keys : multi_variant::one_at_a_time));
  r.op_label = "cycle: lock " + std::to_string(std::min<std::uint64_t>(o.set_size, o.keys)) +
               " keys, hold, release";
  r.latency_label = t.kind == target_kind::keylock && o.keylock_noreply
                        ? "cycle (first acquire sent → last noreply release sent)"
                        : "cycle (first acquire sent → last release answered)";
  latency_histogram all;
  merge_into(r, stats, all);
  r.violations = checker.violations();
  std::uint64_t round_trips = 0, cycles = 0, polls = 0;
  for (const auto& s : stats) {
    round_trips += s.round_trips;
    cycles += s.cycles;
    polls += s.polls;
  }
  r.extras.push_back({"round_trips_per_cycle", "round trips per cycle",
                      cycles == 0 ? 0.0
                                  : static_cast<double>(round_trips) / static_cast<double>(cycles)});
  r.extras.push_back({"requests_per_cycle", "requests per cycle",
                      r.ops == 0 ? 0.0
                                 : static_cast<double>(r.requests) / static_cast<double>(r.ops)});
  if (t.kind == target_kind::redis) {
    r.extras.push_back(
        {"polls_per_cycle", "redis: SET NX retries per cycle",
         cycles == 0 ? 0.0 : static_cast<double>(polls) / static_cast<double>(cycles)});
  }
  finish_rates(r, win);
  return r;
}

// ---------------------------------------------------------------------------------------------
// hold-many: fill, measure, let go.

struct fill_state {
  explicit fill_state(std::uint32_t clients) : filled(clients) {}
  std::latch filled;            // counted down by each client when its leases are held
  std::atomic<bool> go{false};  // set once the RSS before has been read
  std::atomic<bool> release{false};
  std::atomic<std::uint64_t> held{0};
};

std::string hold_key(std::uint64_t index) { return "hm:" + number_text(index); }

void keylock_fill_client(const bench_options& o, const target& t, std::uint32_t client,
                         std::uint32_t clients, std::int64_t cap_ns, fill_state& fs,
                         client_stats& s, std::latch& connected) {
  const std::uint32_t depth = o.pipeline > 1 ? o.pipeline : default_fill_depth;
  keylock_conn conn;
  std::string err = conn.connect(t, o.io_timeout, o.tls);
  connected.count_down();
  fs.go.wait(false);
  if (err.empty()) {
    // Indices client, client + clients, ... below o.leases; ids are the indices.
    std::uint64_t next = client;
    std::vector<std::pair<std::uint64_t, std::int64_t>> ring(depth);  // (id, sent) in order
    std::size_t head = 0, size = 0;
    std::string out;
    std::size_t unstamped = 0;
    auto issue = [&] {
      append_acquire(out, next, hold_key(next), o.hold_many_ttl_ms, 0, 1);
      ring[(head + size) % depth] = {next, 0};
      ++size;
      ++unstamped;
      next += clients;
      ++s.requests;
    };
    auto flush = [&] {
      if (out.empty()) return true;
      const std::int64_t now = mono_ns();
      for (std::size_t k = size - unstamped; k < size; ++k) ring[(head + k) % depth].second = now;
      unstamped = 0;
      const bool ok = conn.send(out);
      out.clear();
      return ok;
    };
    while (next < o.leases && size < depth) issue();
    bool ok = flush();
    reply_view r;
    while (ok && size > 0) {
      if (!conn.next_reply(r)) {
        ok = false;
        break;
      }
      const auto [id, sent] = ring[head];
      head = (head + 1) % depth;
      --size;
      if (!r.has_id || r.id != id) {
        s.fail("hold-many: reply out of order");
        break;
      }
      if (r.ok) {
        ++s.ops;
        fs.held.fetch_add(1, std::memory_order_relaxed);
        s.latency.record(static_cast<std::uint64_t>(conn.last_receive_ns() - sent));
      } else {
        s.fail("acquire " + hold_key(id) + ": " + std::string(r.error));
      }
      if (next < o.leases && mono_ns() < cap_ns) issue();
      if (!conn.has_buffered_frame() && !flush()) ok = false;
    }
    if (!ok) s.fail(conn.error());
  } else {
    s.fail(err);
  }
  fs.filled.count_down();
  fs.release.wait(false);
  // Closing the connection drops its leases in the daemon.
}

void redis_fill_client(const bench_options& o, const target& t, std::uint32_t client,
                       std::uint32_t clients, std::int64_t cap_ns, fill_state& fs, client_stats& s,
                       std::latch& connected) {
  const std::uint32_t depth = o.pipeline > 1 ? o.pipeline : default_fill_depth;
  redis_conn conn;
  std::string err = conn.connect(t, o.io_timeout, o.tls);
  connected.count_down();
  fs.go.wait(false);
  std::vector<std::uint64_t> taken;
  if (err.empty()) {
    fast_rng rng(o.seed * 15485863 + client);
    const std::string ttl_text = number_text(o.hold_many_ttl_ms);
    std::uint64_t next = client;
    std::vector<std::pair<std::uint64_t, std::int64_t>> ring(depth);
    std::size_t head = 0, size = 0;
    std::string cmd, text;
    token_text token{};
    auto issue = [&] {
      cmd.clear();
      format_token(rng.next(), rng.next(), token);
      append_resp_command(cmd, {"SET", hold_key(next), std::string_view(token.data(), token.size()),
                                "NX", "PX", ttl_text});
      ring[(head + size) % depth] = {next, mono_ns()};
      ++size;
      next += clients;
      ++s.requests;
      return conn.append(cmd);
    };
    bool ok = true;
    while (ok && next < o.leases && size < depth) ok = issue();
    while (ok && size > 0) {
      redis_reply_ptr reply = conn.next_reply();
      if (!reply) {
        ok = false;
        break;
      }
      const auto [id, sent] = ring[head];
      head = (head + 1) % depth;
      --size;
      long long n = 0;
      text.clear();
      if (redis_conn::outcome_of(*reply, n, text) == redis_outcome::ok) {
        ++s.ops;
        taken.push_back(id);
        fs.held.fetch_add(1, std::memory_order_relaxed);
        s.latency.record(static_cast<std::uint64_t>(mono_ns() - sent));
      } else {
        s.fail("SET NX " + hold_key(id) + ": " + (text.empty() ? std::string("key held") : text));
      }
      if (next < o.leases && mono_ns() < cap_ns) ok = issue();
    }
    if (!ok) s.fail(conn.error());
  } else {
    s.fail(err);
  }
  fs.filled.count_down();
  fs.release.wait(false);
  // Redis keeps keys after the connection closes: delete ours, many per DEL, pipelined.
  std::size_t pending = 0;
  std::vector<std::string> names;
  std::vector<std::string_view> args;
  for (std::size_t i = 0; i < taken.size(); i += del_batch) {
    names.clear();
    args.assign(1, "DEL");
    for (std::size_t j = i; j < std::min(taken.size(), i + del_batch); ++j) {
      names.push_back(hold_key(taken[j]));
    }
    for (const auto& nm : names) args.push_back(nm);
    std::string cmd;
    append_resp_command(cmd, std::span<const std::string_view>(args));
    if (!conn.append(cmd)) break;
    ++pending;
  }
  for (; pending > 0; --pending) {
    if (!conn.next_reply()) break;
  }
}

run_result run_hold_many(const bench_options& o, const target& t, int pid) {
  const std::uint32_t clients = std::max<std::uint32_t>(1, o.clients);
  std::vector<client_stats> stats(clients);
  fill_state fs(clients);
  std::latch connected(clients);
  const std::int64_t cap_ns =
      mono_ns() + std::chrono::duration_cast<std::chrono::nanoseconds>(o.fill_cap).count();
  std::vector<std::thread> threads;
  for (std::uint32_t i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      if (t.kind == target_kind::keylock) {
        keylock_fill_client(o, t, i, clients, cap_ns, fs, stats[i], connected);
      } else {
        redis_fill_client(o, t, i, clients, cap_ns, fs, stats[i], connected);
      }
    });
  }
  connected.wait();
  std::this_thread::sleep_for(settle_time);
  const auto rss_before = server_rss_mib(t, o, pid);
  const std::int64_t start = mono_ns();
  fs.go.store(true);
  fs.go.notify_all();
  const std::string label = run_label(workload::hold_many, t);
  std::int64_t next = start + ns_per_s;
  while (!fs.filled.try_wait()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (o.progress && mono_ns() >= next) {
      const double elapsed = static_cast<double>(mono_ns() - start) / ns_per_s;
      const std::uint64_t held = fs.held.load();
      print_progress(label, elapsed, held, static_cast<double>(held) / elapsed);
      next += ns_per_s;
    }
  }
  const std::int64_t filled_at = mono_ns();
  std::this_thread::sleep_for(settle_time);
  const auto rss_after = server_rss_mib(t, o, pid);
  fs.release.store(true);
  fs.release.notify_all();
  for (auto& th : threads) th.join();

  run_result r = base_result(workload::hold_many, o, t, pid);
  r.clients = clients;
  r.pipeline = o.pipeline > 1 ? o.pipeline : default_fill_depth;
  r.op_label = "lease acquired and kept";
  r.latency_label = "acquire round trip while filling";
  latency_histogram all;
  merge_into(r, stats, all);
  window w;
  w.seconds = static_cast<double>(filled_at - start) / ns_per_s;
  r.seconds = w.seconds;
  if (w.seconds > 0) {
    r.ops_per_s = static_cast<double>(r.ops) / w.seconds;
    r.requests_per_s = static_cast<double>(r.requests) / w.seconds;
  }
  r.extras.push_back({"leases_held", "leases held at once", static_cast<double>(r.ops), false});
  add_rss_extras(r, rss_before, rss_after, "server RSS holding them, MiB", "bytes_per_lease",
                 "bytes per lease");
  return r;
}

// ---------------------------------------------------------------------------------------------
// handshakes: each client opens a connection (TCP, then the TLS handshake on a TLS target),
// makes one round trip (ping / PING) and closes it, again and again, until the window ends or
// the shared budget of --handshakes connections is spent.

void handshake_client(const bench_options& o, const target& t, std::uint32_t me, run_gate& gate,
                      client_stats& s, std::atomic<std::uint64_t>& budget) {
  const target mine = client_target(t, me);
  const std::int64_t deadline = gate.arrive_and_wait();
  keylock_conn kconn;
  redis_conn rconn;
  std::string ping_frame;
  if (t.kind == target_kind::keylock) {
    append_ping(ping_frame, 1);
  } else {
    append_resp_command(ping_frame, {"PING"});
  }
  std::string text;
  for (;;) {
    const std::int64_t t0 = mono_ns();
    if (t0 >= deadline) break;
    // fetch_sub below zero wraps: a client that finds the budget spent stops.
    if (budget.fetch_sub(1, std::memory_order_relaxed) - 1 >= o.handshakes) break;
    if (t.kind == target_kind::keylock) {
      if (std::string err = kconn.connect(mine, o.io_timeout, o.tls); !err.empty()) {
        return s.fail(err);
      }
      reply_view r;
      if (!kconn.send(ping_frame) || !kconn.next_reply(r)) return s.fail(kconn.error());
      if (!r.ok) return s.fail("ping: " + std::string(r.error));
      kconn.close();
    } else {
      if (std::string err = rconn.connect(mine, o.io_timeout, o.tls); !err.empty()) {
        return s.fail(err);
      }
      redis_reply_ptr reply = rconn.call(ping_frame);
      if (!reply) return s.fail(rconn.error());
      long long ignored = 0;
      text.clear();
      if (redis_conn::outcome_of(*reply, ignored, text) != redis_outcome::ok || text != "PONG") {
        return s.fail("PING: " + text);
      }
      rconn.close();
    }
    const std::int64_t now = mono_ns();
    if (now <= deadline) {
      s.latency.record(static_cast<std::uint64_t>(now - t0));
      ++s.ops;
      ++s.requests;
      gate.count(me);
    }
  }
}

run_result run_handshakes(const bench_options& o, const target& t, int pid) {
  // Counts down from the cap; the window also ends the run.
  std::atomic<std::uint64_t> budget{o.handshakes};
  std::vector<client_stats> stats;
  window win = run_timed(o, o.clients, run_label(workload::handshakes, t), pid, stats,
                         [&](std::uint32_t i, run_gate& gate, client_stats& s) {
                           handshake_client(o, t, i, gate, s, budget);
                         });
  // Spent the budget early: the rate is over the time it took, not the whole window.
  win.seconds = std::min(win.seconds, win.elapsed);
  run_result r = base_result(workload::handshakes, o, t, pid);
  r.op_label = t.tls ? "connection: TCP connect, TLS handshake, ping, close"
                     : "connection: TCP connect, ping, close";
  r.latency_label = t.tls ? "connect → handshake → ping answered" : "connect → ping answered";
  latency_histogram all;
  merge_into(r, stats, all);
  // A handshake costs the client about what it costs the server, so the generator's core may
  // set the rate: the server's CPU time per connection compares servers either way.
  finish_rates(r, win, "connection");
  return r;
}

// ---------------------------------------------------------------------------------------------
// connections: open N, each answering one ping, measure, close.

run_result run_connections(const bench_options& o, const target& t, int pid) {
  client_stats s;
  const auto rss_before = server_rss_mib(t, o, pid);
  const std::string ping = t.kind == target_kind::keylock
                               ? std::string("{\"op\":\"ping\",\"id\":1}\n")
                               : std::string("*1\r\n$4\r\nPING\r\n");
  std::vector<int> fds;
  fds.reserve(o.connections);
  const std::int64_t start = mono_ns();
  const std::int64_t cap_ns =
      start + std::chrono::duration_cast<std::chrono::nanoseconds>(o.fill_cap).count();
  std::int64_t next = start + ns_per_s;
  const std::string label = run_label(workload::connections, t);
  std::array<char, 512> buf{};
  for (std::uint64_t i = 0; i < o.connections && mono_ns() < cap_ns; ++i) {
    const std::int64_t t0 = mono_ns();
    int fd = -1;
    if (std::string err = tcp_connect(t.host, t.port, o.io_timeout, fd); !err.empty()) {
      s.fail(err + " (after " + std::to_string(fds.size()) + " connections)");
      break;
    }
    fds.push_back(fd);
    ++s.requests;
    if (!send_all(fd, ping)) {
      s.fail("send: " + std::string(std::strerror(errno)));
      break;
    }
    // One short reply: read until its newline.
    std::size_t got = 0;
    bool done = false;
    while (!done && got < buf.size()) {
      ssize_t n = ::recv(fd, buf.data() + got, buf.size() - got, 0);
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
      done = std::memchr(buf.data(), '\n', got) != nullptr;
    }
    std::string_view reply(buf.data(), got);
    const bool ok = done && (t.kind == target_kind::keylock
                                 ? reply.find("\"ok\":true") != std::string_view::npos
                                 : reply.starts_with("+PONG"));
    if (!ok) {
      s.fail("connection " + std::to_string(fds.size()) + ": unexpected reply '" +
             std::string(reply.substr(0, 120)) + "'");
      break;
    }
    s.latency.record(static_cast<std::uint64_t>(mono_ns() - t0));
    ++s.ops;
    if (o.progress && mono_ns() >= next) {
      const double elapsed = static_cast<double>(mono_ns() - start) / ns_per_s;
      print_progress(label, elapsed, s.ops, static_cast<double>(s.ops) / elapsed);
      next += ns_per_s;
    }
  }
  const std::int64_t end = mono_ns();
  std::this_thread::sleep_for(settle_time);
  const auto rss_after = server_rss_mib(t, o, pid);
  for (int fd : fds) ::close(fd);

  run_result r = base_result(workload::connections, o, t, pid);
  r.clients = 1;
  r.op_label = "connection opened and pinged once";
  r.latency_label = "connect + first ping";
  r.ops = s.ops;
  r.requests = s.requests;
  r.errors = s.errors;
  r.first_error = s.first_error;
  r.latency = summarize(s.latency);
  r.seconds = static_cast<double>(end - start) / ns_per_s;
  if (r.seconds > 0) {
    r.ops_per_s = static_cast<double>(r.ops) / r.seconds;
    r.requests_per_s = static_cast<double>(r.requests) / r.seconds;
  }
  r.extras.push_back(
      {"connections_open", "connections open at once", static_cast<double>(r.ops), false});
  add_rss_extras(r, rss_before, rss_after, "server RSS with them open, MiB", "bytes_per_connection",
                 "bytes per connection");
  return r;
}

}  // namespace

std::string_view to_string(workload w) noexcept {
  switch (w) {
    case workload::rtt:
      return "rtt";
    case workload::uncontended:
      return "uncontended";
    case workload::contended:
      return "contended";
    case workload::zipf:
      return "zipf";
    case workload::overhead:
      return "overhead";
    case workload::hold_many:
      return "hold-many";
    case workload::connections:
      return "connections";
    case workload::rw:
      return "rw";
    case workload::multi:
      return "multi";
    case workload::handshakes:
      return "handshakes";
  }
  return "?";
}

std::string_view to_string(multi_variant v) noexcept {
  return v == multi_variant::keys ? "keys" : "one-at-a-time";
}

bool supports(workload w, target_kind kind) noexcept {
  if (kind == target_kind::etcd) return w == workload::contended || w == workload::overhead;
  return w != workload::rw || kind == target_kind::keylock;
}

std::optional<workload> workload_from_string(std::string_view name) noexcept {
  for (workload w : {workload::rtt, workload::uncontended, workload::contended, workload::zipf,
                     workload::overhead, workload::hold_many, workload::connections, workload::rw,
                     workload::multi, workload::handshakes}) {
    if (name == to_string(w)) return w;
  }
  return std::nullopt;
}

std::string describe_params(workload w, const bench_options& o) {
  const std::string clients = std::to_string(o.clients) + (o.clients == 1 ? " client" : " clients");
  const std::string poll = "redis poll " + std::to_string(o.poll_ms) + " ms";
  const std::string hold_think =
      "hold " + std::to_string(o.hold_us) + " µs, think " + std::to_string(o.think_us) + " µs";
  const std::string mode =
      std::string(o.try_once ? ", try-once" : "") +
      (o.keylock_noreply ? ", keylock release noreply" : ", keylock release waits for its reply");
  switch (w) {
    case workload::rtt:
      return clients + " × pipeline " + std::to_string(std::max<std::uint32_t>(1, o.pipeline));
    case workload::uncontended:
      return clients + " × pipeline " + std::to_string(std::max<std::uint32_t>(1, o.pipeline)) +
             ", a key per slot" + mode;
    case workload::contended:
      return clients + ", one key, " + hold_think + ", " + poll + mode;
    case workload::zipf: {
      std::array<char, 32> s{};
      std::snprintf(s.data(), s.size(), "%.2f", o.zipf_s);
      return clients + ", " + std::to_string(o.keys) + " keys, Zipf s=" + s.data() + ", " +
             std::to_string(o.semaphore_pct) + " % limit " + std::to_string(o.limit) +
             " (rest limit 1), " + hold_think + ", " + poll + mode;
    }
    case workload::overhead:
      return clients + ", own key each, " + poll + mode;
    case workload::hold_many:
      return std::to_string(o.leases) + " leases on distinct keys, " +
             std::to_string(std::max<std::uint32_t>(1, o.clients)) + " connections × pipeline " +
             std::to_string(o.pipeline > 1 ? o.pipeline : default_fill_depth) + ", ttl " +
             std::to_string(o.hold_many_ttl_ms) + " ms";
    case workload::connections:
      return std::to_string(o.connections) + " idle connections";
    case workload::rw:
      return clients + ", one key, " + std::to_string(o.shared_pct) + " % shared, " + hold_think +
             mode + (o.shared_pct > 0 ? "; then the same clients all exclusive" : "");
    case workload::multi:
      return clients + ", " + std::to_string(o.set_size) + " distinct keys of " +
             std::to_string(o.keys) + " per cycle (uniform), " + hold_think + ", " + poll + mode;
    case workload::handshakes:
      return clients + ", a new connection per ping, at most " + std::to_string(o.handshakes) +
             " connections";
  }
  return {};
}

run_result run_workload(workload w, const bench_options& options, const target& t,
                        int server_pid) {
  bench_options o = options;
  if ((w == workload::rw || w == workload::multi) && !o.clients_given) {
    o.clients = default_set_clients;
  }
  if (!supports(w, t.kind)) {
    run_result r = base_result(w, o, t, server_pid);
    r.errors = 1;
    r.first_error = t.kind == target_kind::etcd
                        ? "etcd's Lock runs contended and overhead only (overhead gives each "
                          "client its own key; Lock blocks, so nothing pipelines or tries once)"
                        : "rw runs against keylock only: redis-py's Lock has no shared mode";
    return r;
  }
  if (t.kind == target_kind::etcd && !etcd_supported()) {
    run_result r = base_result(w, o, t, server_pid);
    r.errors = 1;
    r.first_error = "keylock-bench was built without cluster mode: no etcd target";
    return r;
  }
  if (t.tls && w == workload::connections) {
    run_result r = base_result(w, o, t, server_pid);
    r.errors = 1;
    r.first_error = "connections opens plain sockets: use handshakes on a TLS target";
    return r;
  }
  redis_scripts scripts;
  if (t.kind == target_kind::redis && w != workload::connections && w != workload::handshakes) {
    if (std::string err = load_redis_scripts(t, o, scripts); !err.empty()) {
      run_result r = base_result(w, o, t, server_pid);
      r.errors = 1;
      r.first_error = err;
      return r;
    }
  }
  switch (w) {
    case workload::rtt:
    case workload::uncontended:
      return run_pipelined(w, o, t, server_pid, scripts);
    case workload::contended:
    case workload::zipf:
    case workload::overhead:
      return run_blocking(w, o, t, server_pid, scripts);
    case workload::hold_many:
      return run_hold_many(o, t, server_pid);
    case workload::connections:
      return run_connections(o, t, server_pid);
    case workload::rw:
      return run_rw(o, t, server_pid);
    case workload::multi:
      return run_multi(o, t, server_pid, scripts);
    case workload::handshakes:
      return run_handshakes(o, t, server_pid);
  }
  return base_result(w, o, t, server_pid);
}

}  // namespace keylock::bench
