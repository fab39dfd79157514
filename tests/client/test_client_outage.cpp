// Outages and dead connections (issue 14): a client never leaves a caller waiting on a daemon
// that is gone. A daemon that stays unreachable for connect_timeout fails every waiting and
// every new acquire with ConnectionError (never Timeout: that means the key was busy), and a
// connection that falls silent (half-open) is found dead by the heartbeat.
#include "harness.hpp"
#include "keylock/client.hpp"
#include "support.hpp"
#include "tcp_relay.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <csignal>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>

using namespace std::chrono_literals;
using keylock_daemon = keylock::test::daemon;
using keylock::test::lost_log;
using keylock::test::options_for;

namespace {

// What a blocking acquire on another thread came to.
struct outcome {
  std::atomic<bool> done{false};
  std::optional<keylock::Lease> lease;
  bool connection_error = false;
  bool timeout = false;
  std::string message;
};

std::jthread acquire_in_background(keylock::Client& client, const std::string& key,
                                   keylock::AcquireOptions options, outcome& out) {
  return std::jthread([&client, key, options, &out] {
    try {
      out.lease = client.acquire(key, options);
    } catch (const keylock::ConnectionError& e) {
      out.connection_error = true;
      out.message = e.what();
    } catch (const keylock::Timeout& e) {
      out.timeout = true;
      out.message = e.what();
    } catch (const std::exception& e) {
      out.message = e.what();
    }
    out.done = true;
  });
}

}  // namespace

TEST_CASE("a daemon gone for connect_timeout fails waiting and new acquires with ConnectionError",
          "[client]") {
  const std::uint16_t port = keylock::test::free_port();
  keylock_daemon d({"--listen", "127.0.0.1:" + std::to_string(port)});
  keylock::Client holder(options_for(port, "holder"));
  keylock::Lease held = holder.acquire("job");
  keylock::client_options options = options_for(port, "waiter");
  options.connect_timeout = 500ms;
  keylock::Client waiter(options);

  outcome forever;  // wait unset: until granted, the default
  auto thread = acquire_in_background(waiter, "job", {}, forever);
  REQUIRE(keylock::test::wait_until([&] { return holder.inspect("job").waiters == 1; }));
  d.stop(SIGKILL);
  REQUIRE(keylock::test::wait_until([&] { return forever.done.load(); }));
  CHECK(forever.connection_error);
  CHECK_FALSE(forever.lease);
  INFO(forever.message);
  CHECK(forever.message.find("no keylockd reachable") != std::string::npos);

  // While it stays unreachable a new acquire fails at once, whatever its wait.
  keylock::AcquireOptions long_wait;
  long_wait.wait = 60s;
  CHECK_THROWS_AS(waiter.acquire("job", long_wait), keylock::ConnectionError);
  CHECK_THROWS_AS(waiter.try_acquire("job"), keylock::ConnectionError);

  // Back: acquires work again.
  d.restart();
  REQUIRE(keylock::test::wait_until([&] {
    try {
      return waiter.try_acquire("job").has_value();
    } catch (const keylock::ConnectionError&) {
      return false;
    }
  }));
}

TEST_CASE("an acquire whose wait ends while the daemon is unreachable is a ConnectionError",
          "[client]") {
  const std::uint16_t port = keylock::test::free_port();
  keylock_daemon d({"--listen", "127.0.0.1:" + std::to_string(port)});
  keylock::Client holder(options_for(port, "holder"));
  keylock::Lease held = holder.acquire("job");
  keylock::client_options options = options_for(port, "waiter");
  options.connect_timeout = 60s;  // the wait ends long before the outage rule applies
  keylock::Client waiter(options);

  keylock::AcquireOptions short_wait;
  short_wait.wait = 5s;  // long enough to be queued at the daemon before it dies, on any build
  outcome brief;
  auto thread = acquire_in_background(waiter, "job", short_wait, brief);
  REQUIRE(keylock::test::wait_until([&] { return holder.inspect("job").waiters == 1; }));
  d.stop(SIGKILL);
  REQUIRE(keylock::test::wait_until([&] { return brief.done.load(); }));
  INFO(brief.message);
  CHECK(brief.connection_error);  // the key was not judged busy: not a Timeout
  CHECK_FALSE(brief.timeout);
}

TEST_CASE("a silent (half-open) connection is found dead by the heartbeat", "[client]") {
  keylock_daemon d;
  keylock::test::tcp_relay relay(d.port());
  keylock::client_options options = options_for(relay.port(), "behind-relay");
  options.health_check_interval = 200ms;
  options.connect_timeout = 1s;
  options.request_timeout = 60s;  // only the heartbeat can notice here
  keylock::Client client(options);
  keylock::Client other(options_for(d.port(), "other"));

  SECTION("a held lease is lost") {
    lost_log lost;
    keylock::AcquireOptions hold;
    hold.ttl = 60s;  // no renewal within the test: only the heartbeat can notice
    hold.on_lost = lost.callback();
    keylock::Lease lease = client.acquire("silent", hold);
    relay.hold(true);
    REQUIRE(keylock::test::wait_until([&] { return lost.count() > 0; }));
    CHECK(lost.first().reason == keylock::lost_reason::connection_lost);
    CHECK_FALSE(lease.valid());
    relay.hold(false);
  }

  SECTION("a waiting acquire fails instead of hanging") {
    keylock::Lease held = other.acquire("silent");
    outcome waiting;
    auto thread = acquire_in_background(client, "silent", {}, waiting);
    REQUIRE(keylock::test::wait_until([&] { return other.inspect("silent").waiters == 1; }));
    relay.hold(true);
    REQUIRE(keylock::test::wait_until([&] { return waiting.done.load(); }));
    INFO(waiting.message);
    CHECK(waiting.connection_error);
    relay.hold(false);
  }
}

TEST_CASE("a waiting acquire cancelled through its stop_token leaves nothing held", "[client]") {
  keylock_daemon d;
  keylock::Client holder(options_for(d.port(), "holder"));
  keylock::Client waiter(options_for(d.port(), "waiter"));
  keylock::Lease held = holder.acquire("job");

  SECTION("cancelled while it waits at the daemon") {
    std::stop_source stop;
    keylock::AcquireOptions options;
    options.stop = stop.get_token();
    std::atomic<bool> cancelled{false};
    std::jthread thread([&] {
      try {
        waiter.acquire("job", options);
      } catch (const keylock::Cancelled&) {
        cancelled = true;
      }
    });
    REQUIRE(keylock::test::wait_until([&] { return holder.inspect("job").waiters == 1; }));
    stop.request_stop();
    thread.join();
    CHECK(cancelled);
    // Withdrawn on the daemon: the next holder is not a ghost of the cancelled waiter.
    CHECK(keylock::test::wait_until([&] { return holder.inspect("job").waiters == 0; }));
    held.release();
    CHECK_FALSE(holder.locked("job"));
  }

  SECTION("requested before the call: Cancelled at once, nothing sent") {
    std::stop_source stop;
    stop.request_stop();
    keylock::AcquireOptions options;
    options.stop = stop.get_token();
    CHECK_THROWS_AS(waiter.acquire("job", options), keylock::Cancelled);
    CHECK(holder.inspect("job").waiters == 0);
  }

  SECTION("a grant crossing the cancel is released at once") {
    // Cancel and release race: whichever the daemon sees first, no lease stays held.
    for (int round = 0; round < 20; ++round) {
      std::stop_source stop;
      keylock::AcquireOptions options;
      options.stop = stop.get_token();
      std::optional<keylock::Lease> got;
      std::jthread thread([&] {
        try {
          got = waiter.acquire("job", options);
        } catch (const keylock::Cancelled&) {
        }
      });
      REQUIRE(keylock::test::wait_until([&] { return holder.inspect("job").waiters == 1; }));
      held.release(keylock::release_mode::no_reply);
      stop.request_stop();
      thread.join();
      if (got) got->release();
      // Nobody holds it once the answers are in: a crossed grant went straight back.
      REQUIRE(keylock::test::wait_until([&] { return !holder.locked("job"); }));
      held = holder.acquire("job");
    }
  }
}

TEST_CASE("error_code overloads report what the throwing calls throw", "[client]") {
  keylock::test::daemon d({"--max-ttl-ms", "10000", "--default-ttl-ms", "5000"});
  keylock::Client holder(options_for(d.port(), "holder"));
  keylock::Client client(options_for(d.port(), "ec"));
  std::error_code ec;

  keylock::AcquireOptions options;
  options.ttl = 5s;
  std::optional<keylock::Lease> lease = client.acquire("k", options, ec);
  REQUIRE_FALSE(ec);
  REQUIRE(lease);

  keylock::AcquireOptions try_once = options;
  try_once.wait = 0ms;
  CHECK_FALSE(holder.acquire("k", try_once, ec));
  CHECK(ec == keylock::client_errc::timeout);
  CHECK(ec.category().name() == std::string("keylock"));
  CHECK_FALSE(ec.message().empty());

  lease->extend(60s, ec);  // above max_ttl_ms: refused, the lease kept
  CHECK(ec == keylock::client_errc::protocol);
  CHECK(lease->valid());
  lease->extend(8s, ec);
  CHECK_FALSE(ec);

  CHECK_FALSE(client.acquire_all({"a", "a"}, options, ec));  // a key twice
  CHECK(ec == keylock::client_errc::protocol);

  holder.release("k", lease->token());  // ended elsewhere: our next extend is not_held
  lease->extend(5s, ec);
  CHECK(ec == keylock::client_errc::not_held);
  lease->release(keylock::release_mode::confirmed, ec);
  CHECK(ec == keylock::client_errc::not_held);
}
