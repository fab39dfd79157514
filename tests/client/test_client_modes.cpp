// The client library's issue-12 calls against the real keylockd: shared mode, acquire_all over
// several keys, and opt-in reentrancy.
//
// Catch2 v2 assertions are not thread-safe: worker threads only record; the test's own thread
// asserts.
#include "harness.hpp"
#include "keylock/client.hpp"
#include "support.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using keylock_daemon = keylock::test::daemon;
using keylock::test::lost_log;
using keylock::test::options_for;
using keylock::test::wait_until;

namespace {

keylock::AcquireOptions try_once(keylock::lock_mode mode = keylock::lock_mode::exclusive) {
  keylock::AcquireOptions options;
  options.wait = 0ms;
  options.mode = mode;
  return options;
}

// Waits a bounded time: a daemon that never answers fails the test instead of hanging it.
keylock::AcquireOptions bounded(keylock::lock_mode mode = keylock::lock_mode::exclusive,
                                bool reentrant = false) {
  keylock::AcquireOptions options;
  options.wait = keylock::test::event_bound;
  options.mode = mode;
  options.reentrant = reentrant;
  return options;
}

std::vector<std::string> sorted(std::vector<std::string> keys) {
  std::sort(keys.begin(), keys.end());
  return keys;
}

}  // namespace

// ---- shared mode ------------------------------------------------------------------------------

TEST_CASE("shared holders of a key hold it at once while an exclusive acquire is refused",
          "[client][modes]") {
  keylock_daemon d;
  keylock::Client a(options_for(d.port(), "reader-a"));
  keylock::Client b(options_for(d.port(), "reader-b"));
  keylock::Client writer(options_for(d.port(), "writer"));

  std::optional<keylock::Lease> first =
      a.try_acquire("prices", try_once(keylock::lock_mode::shared));
  std::optional<keylock::Lease> second =
      b.try_acquire("prices", try_once(keylock::lock_mode::shared));
  REQUIRE(first);
  REQUIRE(second);
  CHECK(first->mode() == keylock::lock_mode::shared);
  CHECK(first->token() != second->token());
  CHECK_FALSE(writer.try_acquire("prices", try_once()));

  const keylock::key_info info = writer.inspect("prices");
  REQUIRE(info.holders.size() == 2);
  for (const auto& holder : info.holders) {
    CHECK(holder.mode == keylock::lock_mode::shared);
    CHECK(holder.keys.empty());
  }

  // Once both readers are gone, the writer gets it.
  first->release();
  second->release();
  CHECK(writer.try_acquire("prices", try_once()));
}

TEST_CASE("an exclusive holder excludes shared acquires, and a waiting writer queues readers",
          "[client][modes]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::Client other(options_for(d.port(), "other"));

  SECTION("exclusive held: a shared try is refused") {
    keylock::Lease lease = client.acquire("prices");
    CHECK_FALSE(other.try_acquire("prices", try_once(keylock::lock_mode::shared)));
  }

  SECTION("shared held, a writer waiting: a new reader queues behind the writer") {
    keylock::Lease reader = client.acquire("prices", bounded(keylock::lock_mode::shared));
    std::atomic<bool> writer_granted{false};
    std::jthread writer([&] {
      try {
        keylock::Lease lease = other.acquire("prices", bounded());
        writer_granted = true;
      } catch (const keylock::Error&) {
      }
    });
    REQUIRE(wait_until([&] { return client.inspect("prices").waiters == 1; }));
    CHECK_FALSE(other.try_acquire("prices", try_once(keylock::lock_mode::shared)));
    reader.release();
    CHECK(wait_until([&] { return writer_granted.load(); }));
  }
}

TEST_CASE("with_shared_lock and a shared lock_decorator run fn under a shared lease",
          "[client][modes]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::Client observer(options_for(d.port(), "observer"));
  auto observed_mode = [&](const keylock::Lease& lease) {
    const auto info = observer.inspect("prices");
    CHECK(lease.mode() == keylock::lock_mode::shared);
    return info.holders.size() == 1 ? info.holders[0].mode : keylock::lock_mode::exclusive;
  };
  CHECK(client.with_shared_lock("prices", observed_mode) == keylock::lock_mode::shared);
  // with_shared_lock overrides the mode of the options it is given.
  CHECK(client.with_shared_lock("prices", observed_mode, bounded()) == keylock::lock_mode::shared);

  keylock::AcquireOptions shared = bounded(keylock::lock_mode::shared);
  auto read_prices = keylock::lock_decorator(
      client,
      [&] {
        const auto info = observer.inspect("prices");
        return info.holders.size() == 1 ? info.holders[0].mode : keylock::lock_mode::exclusive;
      },
      [] { return std::string("prices"); }, shared);
  CHECK(read_prices() == keylock::lock_mode::shared);
}

TEST_CASE("shared with a limit above 1 is refused as a protocol error", "[client][modes]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::AcquireOptions options = try_once(keylock::lock_mode::shared);
  options.limit = 3;
  CHECK_THROWS_AS(client.acquire("sem", options), keylock::ProtocolError);
}

// ---- several keys ------------------------------------------------------------------------------

TEST_CASE("acquire_all grants every key at once or none", "[client][sets]") {
  keylock_daemon d;
  keylock::Client holder(options_for(d.port(), "holder"));
  keylock::Client client(options_for(d.port()));
  keylock::Client observer(options_for(d.port(), "observer"));

  keylock::Lease busy = holder.acquire("acct:42");
  std::optional<keylock::Lease> granted;
  std::jthread waiter([&] {
    try {
      granted = client.acquire_all({"acct:17", "acct:42"}, bounded());
    } catch (const keylock::Error&) {
    }
  });
  REQUIRE(wait_until([&] { return observer.inspect("acct:42").waiters == 1; }));
  // While one key is busy the free one is not taken either: it waits in both queues.
  const keylock::key_info free_key = observer.inspect("acct:17");
  CHECK_FALSE(free_key.held);
  CHECK(free_key.waiters == 1);

  busy.release();
  waiter.join();
  REQUIRE(granted);
  CHECK(granted->valid());
  CHECK(granted->keys() == std::vector<std::string>{"acct:17", "acct:42"});
  CHECK(granted->key() == "acct:17");
  for (const char* key : {"acct:17", "acct:42"}) {
    const keylock::key_info info = observer.inspect(key);
    REQUIRE(info.holders.size() == 1);
    CHECK(info.holders[0].token == granted->token());  // one lease, one token
    CHECK(sorted(info.holders[0].keys) == std::vector<std::string>{"acct:17", "acct:42"});
  }
}

TEST_CASE("try_acquire_all returns nullopt and takes no key when one is busy", "[client][sets]") {
  keylock_daemon d;
  keylock::Client holder(options_for(d.port(), "holder"));
  keylock::Client client(options_for(d.port()));
  keylock::Lease busy = holder.acquire("b");
  CHECK_FALSE(client.try_acquire_all({"a", "b", "c"}));
  CHECK_FALSE(client.inspect("a").held);
  CHECK_FALSE(client.inspect("c").held);
  busy.release();
  std::optional<keylock::Lease> lease = client.try_acquire_all({"a", "b", "c"});
  REQUIRE(lease);
  CHECK(lease->keys().size() == 3);
}

TEST_CASE("release and extend of a set act on the whole set", "[client][sets]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::Client observer(options_for(d.port(), "observer"));
  keylock::AcquireOptions options = bounded();
  options.auto_extend = false;
  options.ttl = 2s;
  keylock::Lease lease = client.acquire_all({"x", "y"}, options);
  lease.extend(60s);
  for (const char* key : {"x", "y"}) {
    const keylock::key_info info = observer.inspect(key);
    REQUIRE(info.holders.size() == 1);
    CHECK(info.holders[0].ttl_ms_left > 2000);  // the extend reached every key of the set
  }
  lease.release();
  CHECK_FALSE(observer.inspect("x").held);
  CHECK_FALSE(observer.inspect("y").held);
}

TEST_CASE("the expired event of a set marks its Lease lost with every key", "[client][sets]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  lost_log lost;
  keylock::AcquireOptions options = bounded();
  options.auto_extend = false;
  options.ttl = 200ms;
  options.on_lost = lost.callback();
  keylock::Lease lease = client.acquire_all({"p", "q"}, options);
  REQUIRE(wait_until([&] { return lost.count() > 0; }));
  CHECK_FALSE(lease.valid());
  CHECK(lost.first().reason == keylock::lost_reason::expired);
  CHECK(lost.first().keys == std::vector<std::string>{"p", "q"});
  CHECK(lost.first().token == lease.token());
  CHECK_THROWS_AS(lease.release(), keylock::NotHeld);
}

TEST_CASE("an empty set or a key given twice is a protocol error", "[client][sets]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  CHECK_THROWS_AS(client.acquire_all({}, try_once()), keylock::ProtocolError);
  CHECK_THROWS_AS(client.acquire_all({"a", "a"}, try_once()), keylock::ProtocolError);
}

TEST_CASE("with_lock_all and a key_maker returning several keys run fn under the whole set",
          "[client][sets]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::Client observer(options_for(d.port(), "observer"));
  auto both_held = [&] { return observer.inspect("s1").held && observer.inspect("s2").held; };

  CHECK(client.with_lock_all({"s1", "s2"}, both_held));

  auto transfer = keylock::lock_decorator(
      client, [&](const std::string&, const std::string&) { return both_held(); },
      [](const std::string& from, const std::string& to) {
        return std::vector<std::string>{from, to};
      });
  CHECK(transfer("s1", "s2"));
  CHECK(wait_until([&] { return !observer.inspect("s1").held && !observer.inspect("s2").held; }));
}

// ---- reentrancy --------------------------------------------------------------------------------

TEST_CASE("a decorated function calling another decorated on the same key enters at once",
          "[client][reentrant]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::Client observer(options_for(d.port(), "observer"));
  const keylock::stats_info before = observer.stats();

  // With reentrant off the inner call would queue behind the outer one (kept alive by
  // auto-extend) until its wait ran out; with it on, it runs under the outer lease.
  keylock::AcquireOptions options = bounded(keylock::lock_mode::exclusive, true);
  options.ttl = 1s;
  auto key_maker = [](int) { return std::string("report:K"); };
  std::vector<std::uint64_t> tokens;
  std::vector<int> depths;
  auto inner = keylock::lock_decorator(
      client,
      [&](int n) {
        const auto info = observer.inspect("report:K");
        tokens.push_back(info.holders.empty() ? 0 : info.holders[0].token);
        return n + 1;
      },
      key_maker, options);
  auto outer = keylock::lock_decorator(
      client,
      [&](int n) {
        const auto info = observer.inspect("report:K");
        tokens.push_back(info.holders.empty() ? 0 : info.holders[0].token);
        return inner(n) * 10;
      },
      key_maker, options);

  CHECK(outer(1) == 20);
  REQUIRE(tokens.size() == 2);
  CHECK(tokens[0] != 0);
  CHECK(tokens[0] == tokens[1]);  // the inner call ran under the outer lease
  const keylock::stats_info after = observer.stats();
  CHECK(after.acquires - before.acquires == 1);  // the nested call never reached the daemon
  CHECK(wait_until([&] { return !observer.inspect("report:K").held; }));
}

TEST_CASE("a reentrant lease counts its holds, is renewed, and is released by the last holder",
          "[client][reentrant]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::Client observer(options_for(d.port(), "observer"));
  keylock::AcquireOptions options = bounded(keylock::lock_mode::exclusive, true);
  options.ttl = 300ms;  // renewed every 100 ms

  keylock::Lease outer = client.acquire("nest", options);
  CHECK(outer.depth() == 1);
  {
    keylock::Lease inner = client.acquire("nest", options);
    CHECK(inner.token() == outer.token());
    CHECK(outer.depth() == 2);
    CHECK(inner.depth() == 2);
    inner.release();
  }
  CHECK(outer.depth() == 1);
  CHECK(outer.valid());
  // Auto-extend keeps running after the inner release: the lease outlives several ttls.
  const auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(wait_until([&] { return !outer.valid(); }, 1200ms));
  CHECK(std::chrono::steady_clock::now() - start >= 1200ms);
  const keylock::key_info info = observer.inspect("nest");
  REQUIRE(info.holders.size() == 1);
  CHECK(info.holders[0].token == outer.token());

  outer.release();
  CHECK_FALSE(observer.inspect("nest").held);
  // Released whole: a new reentrant acquire is a new lease.
  keylock::Lease again = client.acquire("nest", options);
  CHECK(again.token() > outer.token());
  CHECK(again.depth() == 1);
}

TEST_CASE("nesting the other mode on a held key throws ReentrancyError", "[client][reentrant]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  const auto shared = keylock::lock_mode::shared;
  const auto exclusive = keylock::lock_mode::exclusive;

  SECTION("shared inside exclusive") {
    keylock::Lease outer = client.acquire("rw", bounded(exclusive, true));
    CHECK_THROWS_AS(client.acquire("rw", bounded(shared, true)), keylock::ReentrancyError);
    CHECK(outer.depth() == 1);
    CHECK(outer.valid());
  }
  SECTION("exclusive inside shared") {
    keylock::Lease outer = client.acquire("rw", bounded(shared, true));
    CHECK_THROWS_AS(client.acquire("rw", bounded(exclusive, true)), keylock::ReentrancyError);
    CHECK(outer.depth() == 1);
  }
  SECTION("the same mode nests") {
    keylock::Lease outer = client.acquire("rw", bounded(shared, true));
    keylock::Lease inner = client.acquire("rw", bounded(shared, true));
    CHECK(inner.token() == outer.token());
  }
}

TEST_CASE("nested sets of keys must be equal, in any order", "[client][reentrant]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  const auto options = bounded(keylock::lock_mode::exclusive, true);
  keylock::Lease outer = client.acquire_all({"m", "n"}, options);

  keylock::Lease same = client.acquire_all({"n", "m"}, options);
  CHECK(same.token() == outer.token());
  CHECK(outer.depth() == 2);
  same.release();

  CHECK_THROWS_AS(client.acquire("m", options), keylock::ReentrancyError);
  CHECK_THROWS_AS(client.acquire_all({"m", "n", "o"}, options), keylock::ReentrancyError);
  // A disjoint key is simply another lock.
  keylock::Lease other = client.acquire("o", options);
  CHECK(other.token() != outer.token());
  CHECK(outer.depth() == 1);
}

TEST_CASE("reentrancy is per thread: another thread queues as usual", "[client][reentrant]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::AcquireOptions options = bounded(keylock::lock_mode::exclusive, true);
  keylock::Lease outer = client.acquire("per-thread", options);

  std::atomic<bool> refused{false};
  std::jthread other([&] {
    keylock::AcquireOptions once = options;
    once.wait = 0ms;
    refused = !client.try_acquire("per-thread", once).has_value();
  });
  other.join();
  CHECK(refused);
  CHECK(outer.depth() == 1);
}

TEST_CASE("an inner release of a lost reentrant lease throws NotHeld", "[client][reentrant]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::AcquireOptions options = bounded(keylock::lock_mode::exclusive, true);
  options.auto_extend = false;
  options.ttl = 200ms;
  keylock::Lease outer = client.acquire("fleeting", options);
  keylock::Lease inner = client.acquire("fleeting", options);
  REQUIRE(wait_until([&] { return !outer.valid(); }));
  CHECK_THROWS_AS(inner.release(), keylock::NotHeld);
  // Lost while held: a nested acquire now says so instead of handing out a dead lease.
  CHECK_THROWS_AS(client.acquire("fleeting", options), keylock::NotHeld);
  CHECK_THROWS_AS(outer.release(), keylock::NotHeld);
}
