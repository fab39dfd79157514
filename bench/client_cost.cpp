// Per-call cost of the C++ client's acquire paths against one keylockd (issue 14): the
// blocking call, async_acquire with use_future, and async_acquire with a callback on an
// io_context. Uncontended: one key, one call at a time, each followed by a noreply release.
//
//   client_cost HOST:PORT [CALLS] [ROUNDS]
//
// Prints µs per acquire+release (median round, min, max) per path. Numbers only. Pin it and
// the daemon apart yourself (bench/client_cost.sh does: daemon on CPU 1, this on CPU 0).
#include <utility>  // before Asio (Boost 1.74's awaitable.hpp)

#include "keylock/async.hpp"
#include "keylock/client.hpp"

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

double per_call_us(const std::function<void(int)>& run, int calls) {
  const auto t0 = clock_type::now();
  run(calls);
  return std::chrono::duration<double, std::micro>(clock_type::now() - t0).count() / calls;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: client_cost HOST:PORT [CALLS] [ROUNDS]\n");
    return 64;
  }
  const int calls = argc > 2 ? std::atoi(argv[2]) : 20000;
  const int rounds = argc > 3 ? std::atoi(argv[3]) : 5;
  keylock::client_options options;
  options.server = argv[1];
  options.auth = "";
  keylock::Client client(options);
  keylock::AcquireOptions acquire;

  auto blocking = [&](int n) {
    for (int i = 0; i < n; ++i) {
      keylock::Lease lease = client.acquire("cost:blocking", acquire);
      lease.release(keylock::release_mode::no_reply);
    }
  };
  auto future = [&](int n) {
    for (int i = 0; i < n; ++i) {
      keylock::Lease lease =
          keylock::async_acquire(client, "cost:future", acquire, boost::asio::use_future).get();
      lease.release(keylock::release_mode::no_reply);
    }
  };
  auto callback = [&](int n) {
    boost::asio::io_context io;
    int left = n;
    std::function<void()> next = [&] {
      keylock::async_acquire(
          client, "cost:callback", acquire,
          boost::asio::bind_executor(io, [&](std::exception_ptr error, keylock::Lease lease) {
            if (error) std::rethrow_exception(error);
            lease.release(keylock::release_mode::no_reply);
            if (--left > 0) next();
          }));
    };
    next();
    io.run();
  };

  struct path {
    const char* name;
    std::function<void(int)> run;
    std::vector<double> us;
  };
  std::vector<path> paths{{"blocking acquire", blocking, {}},
                          {"async_acquire, use_future", future, {}},
                          {"async_acquire, callback on an io_context", callback, {}}};
  for (auto& p : paths) p.run(1000);  // warm-up
  for (int r = 0; r < rounds; ++r) {
    for (auto& p : paths) p.us.push_back(per_call_us(p.run, calls));  // interleaved rounds
  }
  std::printf("client_cost: %d rounds x %d uncontended acquire + noreply release\n", rounds, calls);
  std::printf("%-42s %12s %8s %8s\n", "path", "µs/call", "min", "max");
  for (auto& p : paths) {
    std::sort(p.us.begin(), p.us.end());
    std::printf("%-42s %12.1f %8.1f %8.1f\n", p.name, p.us[p.us.size() / 2], p.us.front(),
                p.us.back());
  }
  return 0;
}
