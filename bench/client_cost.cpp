// Per-call cost of the C++ client's acquire paths against one keylockd (issue 14): the
// blocking call, async_acquire with use_future, and async_acquire with a callback on an
// io_context, both with a Client of its own thread; then async_acquire with a callback and
// with co_await, with a Client on the caller's io_context (no thread of its own).
// Uncontended: one key, one call at a time, each followed by a noreply release.
//
//   client_cost HOST:PORT [CALLS] [ROUNDS] [PATH]     PATH: a prefix of one path's name
//
// Prints µs per acquire+release per path: the mean of the median round, and the p50 and p99 of
// every call of every round. Numbers only. Pin it and the daemon apart yourself
// (bench/client_cost.sh does: daemon on CPU 1, this on CPU 0, next to Redis's with_lock).
#include "keylock/async.hpp"
#include "keylock/client.hpp"

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>  // before Asio (Boost 1.74's awaitable.hpp)
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

// When each call of a round started, and when the round ended.
using marks = std::vector<clock_type::time_point>;

double us(clock_type::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

// Runs one round; returns its mean µs per call and appends each call's µs to `each`.
double round_us(const std::function<void(int, marks&)>& run, int calls, std::vector<double>& each) {
  marks m;
  m.reserve(static_cast<std::size_t>(calls) + 1);
  run(calls, m);
  m.push_back(clock_type::now());
  for (std::size_t i = 1; i < m.size(); ++i) each.push_back(us(m[i] - m[i - 1]));
  return us(m.back() - m.front()) / calls;
}

double percentile(std::vector<double>& v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: client_cost HOST:PORT [CALLS] [ROUNDS] [PATH]\n");
    return 64;
  }
  const int calls = argc > 2 ? std::atoi(argv[2]) : 20000;
  const int rounds = argc > 3 ? std::atoi(argv[3]) : 5;
  const std::string only = argc > 4 ? argv[4] : "";  // a prefix of one path's name
  keylock::client_options options;
  options.server = argv[1];
  options.auth = "";
  // CLIENT_SPIN_US: client_options::spin, to compare (default: the library's).
  if (const char* spin = std::getenv("CLIENT_SPIN_US")) {
    options.spin = std::chrono::microseconds(std::atoi(spin));
  }
  // The io_context of the callback path, declared first: it must outlive the Client whose I/O
  // thread posts completions to it.
  boost::asio::io_context callback_io;
  keylock::Client client(options);
  keylock::AcquireOptions acquire;

  auto blocking = [&](int n, marks& m) {
    for (int i = 0; i < n; ++i) {
      m.push_back(clock_type::now());
      keylock::Lease lease = client.acquire("cost:path:1", acquire);
      lease.release(keylock::release_mode::no_reply);
    }
  };
  auto future = [&](int n, marks& m) {
    for (int i = 0; i < n; ++i) {
      m.push_back(clock_type::now());
      keylock::Lease lease =
          keylock::async_acquire(client, "cost:path:2", acquire, boost::asio::use_future).get();
      lease.release(keylock::release_mode::no_reply);
    }
  };
  auto callback = [&](int n, marks& m) {
    boost::asio::io_context& io = callback_io;
    io.restart();
    int left = n;
    std::function<void()> next = [&] {
      m.push_back(clock_type::now());
      keylock::async_acquire(
          client, "cost:path:3", acquire,
          boost::asio::bind_executor(io, [&](std::exception_ptr error, keylock::Lease lease) {
            if (error) std::rethrow_exception(error);
            lease.release(keylock::release_mode::no_reply);
            if (--left > 0) next();
          }));
    };
    next();
    io.run();
  };

  // A Client with no thread: its I/O runs on `io`, with the caller's handlers. Each round runs
  // `io` until its chain of calls stops it.
  boost::asio::io_context io;
  keylock::Client on_io(io, options);
  auto same_callback = [&](int n, marks& m) {
    int left = n;
    std::function<void()> next = [&] {
      m.push_back(clock_type::now());
      keylock::async_acquire(
          on_io, "cost:path:4", acquire,
          boost::asio::bind_executor(io, [&](std::exception_ptr error, keylock::Lease lease) {
            if (error) std::rethrow_exception(error);
            lease.release(keylock::release_mode::no_reply);
            if (--left > 0) {
              next();
            } else {
              io.stop();
            }
          }));
    };
    io.restart();
    boost::asio::post(io, next);
    io.run();
  };
  auto same_await = [&](int n, marks& m) {
    io.restart();
    boost::asio::co_spawn(
        io,
        [&]() -> boost::asio::awaitable<void> {
          for (int i = 0; i < n; ++i) {
            m.push_back(clock_type::now());
            keylock::Lease lease = co_await keylock::async_acquire(on_io, "cost:path:5", acquire,
                                                                   boost::asio::use_awaitable);
            lease.release(keylock::release_mode::no_reply);
          }
          io.stop();
        },
        [](std::exception_ptr error) {
          if (error) std::rethrow_exception(error);
        });
    io.run();
  };

  struct path {
    const char* name;
    std::function<void(int, marks&)> run;
    std::vector<double> rounds;  // mean µs per call of each round
    std::vector<double> each;    // µs of every call
  };
  std::vector<path> paths{{"blocking acquire", blocking, {}, {}},
                          {"async_acquire, use_future", future, {}, {}},
                          {"async_acquire, callback on an io_context", callback, {}, {}},
                          {"async_acquire, callback, Client on its io", same_callback, {}, {}},
                          {"async_acquire, co_await, Client on its io", same_await, {}, {}}};
  if (!only.empty()) {
    std::erase_if(paths, [&](const path& p) { return std::string(p.name).rfind(only, 0) != 0; });
  }
  if (paths.empty()) {
    std::fprintf(stderr, "client_cost: no path named %s...\n", only.c_str());
    return 64;
  }
  for (auto& p : paths) {  // warm-up
    std::vector<double> ignored;
    round_us(p.run, 1000, ignored);
  }
  for (int r = 0; r < rounds; ++r) {
    for (auto& p : paths) p.rounds.push_back(round_us(p.run, calls, p.each));  // interleaved
  }
  std::printf("client_cost: %d rounds x %d uncontended acquire + noreply release\n", rounds, calls);
  std::printf("%-42s %9s %7s %7s %7s %7s\n", "path", "mean µs", "min", "max", "p50 µs", "p99 µs");
  for (auto& p : paths) {
    std::sort(p.rounds.begin(), p.rounds.end());
    std::printf("%-42s %9.1f %7.1f %7.1f %7.1f %7.1f\n", p.name, p.rounds[p.rounds.size() / 2],
                p.rounds.front(), p.rounds.back(), percentile(p.each, 0.50),
                percentile(p.each, 0.99));
  }
  return 0;
}
