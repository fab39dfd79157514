// Failover of the client library over a list of daemons (cluster mode, issue 13): connecting
// past dead addresses, moving to the next daemon when the one in use dies, and rejecting
// malformed lists. Standalone daemons on ephemeral loopback ports stand for a cluster's.
#include "harness.hpp"
#include "keylock/client.hpp"
#include "support.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <csignal>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using keylock_daemon = keylock::test::daemon;
using keylock::test::event_bound;
using keylock::test::free_port;
using keylock::test::lost_log;
using keylock::test::options_for;
using keylock::test::wait_until;

namespace {

std::string loopback(std::uint16_t port) { return "127.0.0.1:" + std::to_string(port); }

keylock::client_options options_for_list(const std::vector<std::string>& servers) {
  keylock::client_options options = options_for(0, "failover-test");
  options.server.clear();
  for (const auto& server : servers) {
    if (!options.server.empty()) options.server += ',';
    options.server += server;
  }
  return options;
}

// Whether the daemon on `port` sees `key` held (asked through a client of its own).
bool held_on(std::uint16_t port, const std::string& key) {
  keylock::Client observer(options_for(port, "observer"));
  return observer.inspect(key).held;
}

}  // namespace

TEST_CASE("a server list whose first address is dead connects to the next one and acquires",
          "[client][failover]") {
  const std::string dead = loopback(free_port());
  keylock_daemon d;
  const std::string live = loopback(d.port());
  keylock::Client client(options_for_list({dead, live}));

  CHECK(client.server() == live);
  CHECK(client.servers() == std::vector<std::string>{dead, live});
  keylock::Lease lease = client.acquire("failover:first-dead");
  CHECK(lease.valid());
  CHECK(held_on(d.port(), "failover:first-dead"));
}

TEST_CASE("when the daemon in use dies its lease is lost and the next acquire goes to another",
          "[client][failover]") {
  lost_log lost;
  keylock::AcquireOptions hold;
  hold.ttl = 30s;  // nothing but the drop can end it
  hold.on_lost = lost.callback();
  keylock::AcquireOptions again;
  again.wait = event_bound;  // bounds the acquire should no daemon ever answer

  SECTION("the first daemon dies: the client moves on to the second") {
    keylock_daemon first;
    keylock_daemon second;
    keylock::Client client(options_for_list({loopback(first.port()), loopback(second.port())}));
    REQUIRE(client.server() == loopback(first.port()));
    keylock::Lease lease = client.acquire("failover:key", hold);
    REQUIRE(lease.valid());

    first.stop(SIGKILL);
    REQUIRE(wait_until([&] { return lost.count() > 0; }));
    CHECK_FALSE(lease.valid());
    CHECK(lost.first().reason == keylock::lost_reason::connection_lost);
    CHECK(lost.first().token == lease.token());
    CHECK_THROWS_AS(lease.release(), keylock::NotHeld);

    keylock::Lease next = client.acquire("failover:key", again);
    CHECK(next.valid());
    CHECK(client.server() == loopback(second.port()));
    CHECK(held_on(second.port(), "failover:key"));
    CHECK(lost.count() == 1);
  }

  SECTION("the last daemon of the list dies: the client wraps round to the first") {
    const std::uint16_t first_port = free_port();
    keylock_daemon second;
    keylock::Client client(options_for_list({loopback(first_port), loopback(second.port())}));
    REQUIRE(client.server() == loopback(second.port()));  // the first was not up yet
    keylock::Lease lease = client.acquire("failover:wrap", hold);
    REQUIRE(lease.valid());

    keylock_daemon first({"--listen", loopback(first_port)});
    second.stop(SIGKILL);
    REQUIRE(wait_until([&] { return lost.count() > 0; }));
    CHECK(lost.first().reason == keylock::lost_reason::connection_lost);

    keylock::Lease next = client.acquire("failover:wrap", again);
    CHECK(next.valid());
    CHECK(client.server() == loopback(first_port));
    CHECK(held_on(first_port, "failover:wrap"));
  }
}

TEST_CASE("an acquire waiting when the daemon in use dies is granted by the next daemon",
          "[client][failover]") {
  keylock_daemon first;
  keylock_daemon second;
  keylock::Client holder(options_for(first.port(), "holder"));
  keylock::Lease held = holder.acquire("failover:waited");
  keylock::Client client(options_for_list({loopback(first.port()), loopback(second.port())}));

  keylock::AcquireOptions options;
  options.wait = event_bound;
  std::atomic<bool> done{false};
  std::optional<keylock::Lease> granted;
  std::string error;
  std::jthread acquirer([&] {
    try {
      granted = client.acquire("failover:waited", options);
    } catch (const std::exception& e) {
      error = e.what();
    }
    done = true;
  });
  REQUIRE(wait_until([&] { return holder.inspect("failover:waited").waiters == 1; }));
  first.stop(SIGKILL);
  REQUIRE(wait_until([&] { return done.load(); }));
  acquirer.join();
  CHECK(error.empty());
  REQUIRE(granted);
  CHECK(granted->valid());
  CHECK(held_on(second.port(), "failover:waited"));
}

TEST_CASE("when no server of the list answers the constructor throws, naming every one",
          "[client][failover]") {
  const std::string a = loopback(free_port());
  const std::string b = loopback(free_port());
  try {
    keylock::Client client(options_for_list({a, b}));
    FAIL("a Client connected to dead addresses");
  } catch (const keylock::ConnectionError& e) {
    const std::string what = e.what();
    CHECK(what.find("cannot connect to keylockd at " + a) != std::string::npos);
    CHECK(what.find("cannot connect to keylockd at " + b) != std::string::npos);
  }
}

TEST_CASE("a malformed server list is refused at construction", "[client][failover]") {
  keylock::client_options options = options_for(0);
  const std::string good = "127.0.0.1:" + std::to_string(free_port());
  for (const std::string& list : {good + ",," + good, good + ",", "," + good, std::string(" , "),
                                  good + ",127.0.0.1:notaport", good + ",127.0.0.1:0",
                                  good + ",127.0.0.1:65536", good + ",[::1"}) {
    INFO("server list: " << list);
    options.server = list;
    CHECK_THROWS_AS(keylock::Client(options), std::invalid_argument);
  }
}

TEST_CASE("a server list with blanks and default ports parses into its addresses",
          "[client][failover]") {
  keylock_daemon d;
  keylock::client_options options = options_for(0);
  const std::string dead = loopback(free_port());
  options.server = " " + dead + " ,\t" + loopback(d.port()) + " ";
  keylock::Client client(options);
  CHECK(client.servers() == std::vector<std::string>{dead, loopback(d.port())});
  CHECK(client.server() == loopback(d.port()));
}
