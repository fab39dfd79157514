// async_acquire with Asio completion tokens (issue 14): callbacks on the caller's executor,
// use_future, use_awaitable, and cancelling a pending operation through its stop_token.
#include <utility>  // before Asio (Boost 1.74's awaitable.hpp)

#include "harness.hpp"
#include "keylock/async.hpp"
#include "keylock/client.hpp"
#include "support.hpp"

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <future>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>

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
  keylock::Client client(options_for(d.port()));
  asio::io_context io;
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
  keylock::Client client(options_for(d.port()));
  asio::io_context io;
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
