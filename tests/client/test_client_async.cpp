// async_acquire with Asio completion tokens (issue 14): callbacks on the caller's executor,
// use_future, use_awaitable, and cancelling a pending operation through its stop_token.
#include "harness.hpp"
#include "keylock/async.hpp"
#include "keylock/client.hpp"
#include "support.hpp"

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <catch2/catch.hpp>

#include <atomic>
#include <ctime>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>  // before Asio (Boost 1.74's awaitable.hpp)

using namespace std::chrono_literals;
using keylock::test::options_for;
namespace asio = boost::asio;

namespace {

// Runs `io` on this thread until `done` holds, bounded by event_bound.
template <class Pred>
bool run_until(asio::io_context& io, Pred done) {
  const auto deadline = std::chrono::steady_clock::now() + keylock::test::event_bound;
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    io.run_for(10ms);
    io.restart();
  }
  return done();
}

}  // namespace

TEST_CASE("async_acquire completes a callback on the caller's executor", "[client][async]") {
  keylock::test::daemon d;
  asio::io_context io;  // outlives the Client, whose I/O thread posts to it (async.hpp)
  keylock::Client client(options_for(d.port()));
  const auto io_thread = std::this_thread::get_id();
  std::optional<keylock::Lease> got;
  bool on_io_thread = false;
  keylock::async_acquire(client, "k", {},
                         asio::bind_executor(io, [&](std::exception_ptr error,
                                                     keylock::Lease lease) {
                           REQUIRE_FALSE(error);
                           on_io_thread = std::this_thread::get_id() == io_thread;
                           got = std::move(lease);
                         }));
  REQUIRE(run_until(io, [&] { return got.has_value(); }));
  CHECK(on_io_thread);
  CHECK(got->valid());
  CHECK(client.inspect("k").holders.at(0).token == got->token());
  got->release();
  CHECK_FALSE(client.locked("k"));
}

TEST_CASE("async_acquire with use_future rethrows the typed exception", "[client][async]") {
  keylock::test::daemon d;
  keylock::Client client(options_for(d.port()));
  std::future<keylock::Lease> first = keylock::async_acquire(client, "k", {}, asio::use_future);
  keylock::Lease lease = first.get();
  CHECK(lease.valid());
  keylock::AcquireOptions try_once;
  try_once.wait = 0ms;
  std::future<keylock::Lease> busy = keylock::async_acquire(client, "k", try_once, asio::use_future);
  CHECK_THROWS_AS(busy.get(), keylock::Timeout);
  std::future<keylock::Lease> both =
      keylock::async_acquire_all(client, {"a", "b"}, {}, asio::use_future);
  keylock::Lease set = both.get();
  CHECK(set.keys().size() == 2);
}

TEST_CASE("async_acquire with use_awaitable in a coroutine", "[client][async]") {
  keylock::test::daemon d;
  asio::io_context io;  // outlives the Client, whose I/O thread posts to it (async.hpp)
  keylock::Client client(options_for(d.port()));
  std::uint64_t token = 0;
  bool timed_out = false;
  bool finished = false;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        keylock::Lease lease = co_await keylock::async_acquire(client, "k", {}, asio::use_awaitable);
        token = lease.token();
        keylock::AcquireOptions try_once;
        try_once.wait = 0ms;
        try {
          co_await keylock::async_acquire(client, "k", try_once, asio::use_awaitable);
        } catch (const keylock::Timeout&) {
          timed_out = true;
        }
        lease.release();
        finished = true;
      },
      asio::detached);
  REQUIRE(run_until(io, [&] { return finished; }));
  CHECK(token != 0);
  CHECK(timed_out);
  CHECK_FALSE(client.locked("k"));
}

TEST_CASE("a pending async_acquire is cancelled through its stop_token", "[client][async]") {
  keylock::test::daemon d;
  keylock::Client holder(options_for(d.port(), "holder"));
  keylock::Client client(options_for(d.port(), "async"));
  keylock::Lease held = holder.acquire("k");
  std::stop_source stop;
  keylock::AcquireOptions options;
  options.stop = stop.get_token();
  std::future<keylock::Lease> pending = keylock::async_acquire(client, "k", options, asio::use_future);
  REQUIRE(keylock::test::wait_until([&] { return holder.inspect("k").waiters == 1; }));
  stop.request_stop();
  CHECK_THROWS_AS(pending.get(), keylock::Cancelled);
  CHECK(keylock::test::wait_until([&] { return holder.inspect("k").waiters == 0; }));
  held.release();
  CHECK_FALSE(holder.locked("k"));
}

TEST_CASE("async_extend and async_release complete as extend and release would",
          "[client][async]") {
  keylock::test::daemon d({"--max-ttl-ms", "60000"});
  asio::io_context io;  // outlives the Client, whose I/O thread posts to it (async.hpp)
  keylock::Client client(options_for(d.port()));
  keylock::AcquireOptions options;
  options.ttl = 5s;
  options.auto_extend = false;
  keylock::Lease lease = client.acquire("k", options);

  // Extended: the daemon's remaining time is now past the old ttl.
  keylock::async_extend(lease, 40s, asio::use_future).get();
  CHECK(client.inspect("k").holders.at(0).ttl_ms_left > 5000);

  // Refused (above max_ttl_ms): the typed error, and the lease kept, as extend() does.
  std::future<void> refused = keylock::async_extend(lease, 120s, asio::use_future);
  CHECK_THROWS_AS(refused.get(), keylock::ProtocolError);
  CHECK(lease.valid());
  CHECK(client.locked("k"));

  // A callback on the caller's executor; the Lease is empty from the call on.
  std::optional<std::exception_ptr> released;
  keylock::async_release(
      lease, keylock::release_mode::confirmed,
      asio::bind_executor(io, [&](std::exception_ptr error) { released = error; }));
  CHECK_FALSE(lease.valid());
  REQUIRE(run_until(io, [&] { return released.has_value(); }));
  CHECK_FALSE(*released);
  CHECK_FALSE(client.locked("k"));

  // Released already: nothing to do, as release() of an empty Lease.
  keylock::async_release(lease, keylock::release_mode::confirmed, asio::use_future).get();
  // An empty Lease cannot be extended.
  CHECK_THROWS_AS(keylock::async_extend(lease, 1s, asio::use_future).get(), std::logic_error);
}

TEST_CASE("async_release of a lost lease reports NotHeld", "[client][async]") {
  keylock::test::daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::Client other(options_for(d.port(), "operator"));
  keylock::AcquireOptions options;
  options.ttl = 60s;
  keylock::Lease lease = client.acquire("k", options);
  other.release("k", lease.token());  // the operator's force release
  // The holder learns it at its next extend, which the daemon answers not_held.
  CHECK_THROWS_AS(keylock::async_extend(lease, 60s, asio::use_future).get(), keylock::NotHeld);
  CHECK_FALSE(lease.valid());
  CHECK_THROWS_AS(
      keylock::async_release(lease, keylock::release_mode::no_reply, asio::use_future).get(),
      keylock::NotHeld);
}

namespace {

// The threads of this process now (entries of /proc/self/task).
std::size_t thread_count() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry :
       std::filesystem::directory_iterator("/proc/self/task")) {
    ++n;
  }
  return n;
}

}  // namespace

TEST_CASE("a Client on the caller's io_context runs no thread of its own",
          "[client][async][on_io]") {
  keylock::test::daemon d;
  asio::io_context io;
  const std::size_t before = thread_count();
  keylock::Client client(io, options_for(d.port()));
  CHECK(thread_count() == before);

  SECTION("coroutines and callbacks complete on the thread that runs the io_context") {
    const auto runner = std::this_thread::get_id();
    int granted = 0;
    bool elsewhere = false;
    bool finished = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          for (int i = 0; i < 20; ++i) {
            keylock::Lease lease =
                co_await keylock::async_acquire(client, "k", {}, asio::use_awaitable);
            elsewhere = elsewhere || std::this_thread::get_id() != runner;
            ++granted;
            lease.release(keylock::release_mode::no_reply);  // on the io thread: does not wait
          }
          finished = true;
        },
        asio::detached);
    std::optional<keylock::Lease> by_callback;
    keylock::async_acquire(
        client, "other", {},
        asio::bind_executor(io, [&](std::exception_ptr error, keylock::Lease lease) {
          REQUIRE_FALSE(error);
          elsewhere = elsewhere || std::this_thread::get_id() != runner;
          by_callback = std::move(lease);
        }));
    REQUIRE(run_until(io, [&] { return finished && by_callback.has_value(); }));
    CHECK(granted == 20);
    CHECK_FALSE(elsewhere);
    CHECK(by_callback->valid());
  }

  SECTION("a blocking call from another thread completes while the io_context runs") {
    std::atomic<bool> done{false};
    std::optional<keylock::key_info> seen;
    std::thread caller([&] {
      keylock::Lease lease = client.acquire("k");
      seen = client.inspect("k");
      lease.release();
      done = true;
    });
    const bool finished = run_until(io, [&] { return done.load(); });
    caller.join();
    REQUIRE(finished);
    CHECK(seen->held == true);
  }

  SECTION("a blocking call from the io_context's thread is refused, not a deadlock") {
    bool refused = false;
    bool ran = false;
    asio::post(io, [&] {
      try {
        client.ping();
      } catch (const std::logic_error&) {
        refused = true;
      }
      ran = true;
    });
    REQUIRE(run_until(io, [&] { return ran; }));
    CHECK(refused);
  }

  SECTION("an outcome known at initiation is never delivered inside the initiating call") {
    // From a handler on the io_context, where a completion may otherwise run at once.
    bool returned = false;
    bool returned_first = false;
    bool completed = false;
    asio::post(io, [&] {
      keylock::AcquireOptions reentrant;
      reentrant.reentrant = true;  // refused at once
      keylock::async_acquire(client, "k", reentrant,
                             asio::bind_executor(io, [&](std::exception_ptr error, keylock::Lease) {
                               returned_first = returned;
                               completed = error != nullptr;
                             }));
      returned = true;
    });
    REQUIRE(run_until(io, [&] { return completed; }));
    CHECK(returned_first);
  }
}

namespace {

// This thread's CPU time so far.
std::chrono::nanoseconds thread_cpu() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

}  // namespace

TEST_CASE("a Client on the caller's io_context spins for an answer without holding up the "
          "caller's handlers",
          "[client][async][on_io]") {
  keylock::test::daemon d;
  keylock::Client holder(options_for(d.port(), "holder"));
  keylock::Lease held = holder.acquire("k");
  asio::io_context io;
  auto options = options_for(d.port(), "on-io");
  options.spin = 60s;  // longer than the test: the whole wait below is spent spinning
  keylock::Client client(io, options);
  std::optional<keylock::Lease> warm;  // a first answer: connected, and answers come fast
  keylock::async_acquire(client, "warm", {},
                         asio::bind_executor(io, [&](std::exception_ptr error, keylock::Lease l) {
                           REQUIRE_FALSE(error);
                           warm = std::move(l);
                         }));
  REQUIRE(run_until(io, [&] { return warm.has_value(); }));

  std::optional<keylock::Lease> granted;
  keylock::async_acquire(client, "k", {},
                         asio::bind_executor(io, [&](std::exception_ptr error, keylock::Lease l) {
                           REQUIRE_FALSE(error);
                           granted = std::move(l);
                         }));
  // While the acquire waits in the daemon's queue, the caller's timer still fires: the spin
  // yields the io_context between its turns. And the thread did not sleep meanwhile: it spent
  // CPU time, where a wait in epoll_wait spends next to none.
  bool fired = false;
  asio::steady_timer timer(io, 100ms);
  timer.async_wait([&](boost::system::error_code) { fired = true; });
  const auto cpu_before = thread_cpu();
  REQUIRE(run_until(io, [&] { return fired; }));
  const auto spent = thread_cpu() - cpu_before;
  CHECK_FALSE(granted.has_value());
  CHECK(spent >= 20ms);  // of the >= 100 ms the timer took; unspun, well under 1 ms

  held.release();
  REQUIRE(run_until(io, [&] { return granted.has_value(); }));
  CHECK(granted->valid());
}

TEST_CASE("destroying a Client on the caller's io_context ends its waiting acquires and work",
          "[client][async][on_io]") {
  keylock::test::daemon d;
  keylock::Client holder(options_for(d.port(), "holder"));
  keylock::Lease held = holder.acquire("k");
  asio::io_context io;
  auto client = std::make_unique<keylock::Client>(io, options_for(d.port(), "on-io"));
  std::exception_ptr outcome;
  bool completed = false;
  keylock::async_acquire(*client, "k", {},
                         asio::bind_executor(io, [&](std::exception_ptr error, keylock::Lease) {
                           outcome = error;
                           completed = true;
                         }));
  REQUIRE(run_until(io, [&] { return holder.inspect("k").waiters == 1; }));
  client.reset();  // returns at once: the connection closes on io
  io.restart();
  io.run_for(keylock::test::event_bound);
  CHECK(io.stopped());  // run() ran out of work: nothing of the client's is left on io
  REQUIRE(completed);
  CHECK_THROWS_AS(std::rethrow_exception(outcome), keylock::ConnectionError);
  CHECK(keylock::test::wait_until([&] { return holder.inspect("k").waiters == 0; }));
}

TEST_CASE("a Client on the caller's io_context with no daemon fails acquires as an outage",
          "[client][async][on_io]") {
  asio::io_context io;
  auto options = options_for(keylock::test::free_port());  // nothing listens there
  options.connect_timeout = 300ms;
  keylock::Client client(io, options);  // does not wait for a connection
  std::exception_ptr outcome;
  bool completed = false;
  keylock::async_acquire(client, "k", {},
                         asio::bind_executor(io, [&](std::exception_ptr error, keylock::Lease) {
                           outcome = error;
                           completed = true;
                         }));
  REQUIRE(run_until(io, [&] { return completed; }));
  CHECK_THROWS_AS(std::rethrow_exception(outcome), keylock::ConnectionError);
}

TEST_CASE("a Client on an io_context that several threads run keeps its promises",
          "[client][async][on_io]") {
  keylock::test::daemon d;
  asio::io_context io;
  keylock::Client client(io, options_for(d.port()));
  constexpr int tasks = 4;
  constexpr int rounds = 40;
  std::atomic<int> holding{0};
  std::atomic<int> most{0};
  std::atomic<int> granted{0};
  std::atomic<int> finished{0};
  for (int t = 0; t < tasks; ++t) {
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          for (int i = 0; i < rounds; ++i) {
            keylock::Lease lease =
                co_await keylock::async_acquire(client, "shared", {}, asio::use_awaitable);
            const int now = ++holding;
            int seen = most.load();
            while (now > seen && !most.compare_exchange_weak(seen, now)) {
            }
            // Held across a round trip of its own, while the other tasks wait on other threads.
            co_await keylock::async_extend(lease, 10s, asio::use_awaitable);
            ++granted;
            --holding;
            co_await keylock::async_release(lease, keylock::release_mode::confirmed,
                                            asio::use_awaitable);
          }
          ++finished;
        },
        asio::detached);
  }
  auto work = asio::make_work_guard(io);
  std::thread first([&] { io.run(); });
  std::thread second([&] { io.run(); });
  const bool all = keylock::test::wait_until([&] { return finished.load() == tasks; });
  work.reset();
  io.stop();
  first.join();
  second.join();
  REQUIRE(all);
  CHECK(granted.load() == tasks * rounds);
  CHECK(most.load() == 1);
}
