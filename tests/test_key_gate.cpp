// Cluster mode's hooks in the lock table (key_gate, open_key, close_key, drop_tries, lose_all),
// with a fake gate and clock: a key whose right is elsewhere never grants.
#include "lock_table.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

using namespace keylock;
using namespace std::chrono_literals;

namespace {

struct plain_tokens final : token_source {
  std::uint64_t n = 0;
  bool ready() const override { return true; }
  std::uint64_t next() override { return ++n; }
};

// Holds the keys in `rights`; records what the table tells it.
struct fake_gate final : key_gate {
  std::set<std::string, std::less<>> rights;
  std::vector<std::string> wanted_keys, granted_keys, quiet_keys;
  bool holds(std::string_view key) const override { return rights.count(key) != 0; }
  void wanted(std::string_view key) override { wanted_keys.emplace_back(key); }
  void granted(std::string_view key) override { granted_keys.emplace_back(key); }
  void quiet(std::string_view key) override { quiet_keys.emplace_back(key); }
  std::uint32_t cap = 1'000'000;
  std::uint32_t ttl_cap(tick) const override { return cap; }
};

struct gated {
  plain_tokens tokens;
  fake_gate gate;
  lock_table table{table_limits{}, tokens, table_histograms{}, hash_seed{}, &gate};
  tick now{1'000'000'000};
  std::vector<table_event> events;

  acquire_result acquire(owner_id o, std::vector<std::string_view> keys,
                         std::optional<std::uint32_t> wait_ms, std::uint64_t id) {
    acquire_args a;
    a.keys = keys;
    a.wait_ms = wait_ms;
    a.request_id = id;
    a.ttl_ms = 1000;
    auto r = table.acquire(o, a, now, events);
    REQUIRE(table.check_invariants().empty());
    return r;
  }
  std::vector<std::uint64_t> ids_of(event_kind kind) const {
    std::vector<std::uint64_t> out;
    for (const auto& ev : events) {
      if (ev.kind == kind) out.push_back(ev.request_id.value_or(0));
    }
    return out;
  }
  void open(std::string_view key) {
    gate.rights.emplace(key);
    table.open_key(key, now, events);
    REQUIRE(table.check_invariants().empty());
  }
};

}  // namespace

TEST_CASE("gate: a key whose right is elsewhere queues, and opens in FIFO order") {
  gated g;
  owner_id a = g.table.connect(), b = g.table.connect();
  REQUIRE(g.acquire(a, {"k"}, std::nullopt, 1).status == acquire_status::queued);
  REQUIRE(g.acquire(b, {"k"}, std::nullopt, 2).status == acquire_status::queued);
  CHECK(std::count(g.gate.wanted_keys.begin(), g.gate.wanted_keys.end(), "k") == 2);
  CHECK(g.events.empty());
  CHECK_FALSE(g.table.activity("k").open);
  CHECK(g.table.activity("k").waiting == 2);

  g.open("k");
  REQUIRE(g.ids_of(event_kind::granted) == std::vector<std::uint64_t>{1});
  CHECK(g.gate.granted_keys == std::vector<std::string>{"k"});
  const std::uint64_t first = g.events[0].token;
  g.events.clear();
  REQUIRE(g.table.release("k", first, g.now, g.events) == lease_status::ok);
  CHECK(g.ids_of(event_kind::granted) == std::vector<std::uint64_t>{2});
}

TEST_CASE("gate: a queued request granted later gets at most the gate's ttl cap") {
  gated g;
  owner_id a = g.table.connect();
  REQUIRE(g.acquire(a, {"k"}, std::nullopt, 1).status == acquire_status::queued);
  g.gate.cap = 400;  // the request asked for 1000
  g.open("k");
  REQUIRE(g.events.size() == 1);
  CHECK(g.events[0].ttl_ms == 400);
  g.events.clear();
  g.now += 401ms;
  g.table.expire_due(g.now, g.events);
  REQUIRE(g.events.size() == 1);
  CHECK(g.events[0].kind == event_kind::expired);
}

TEST_CASE("gate: a held right grants at once, and close_key stops grants but keeps holders") {
  gated g;
  g.gate.rights.insert("k");
  owner_id a = g.table.connect(), b = g.table.connect();
  auto r = g.acquire(a, {"k"}, std::nullopt, 1);
  REQUIRE(r.status == acquire_status::granted);
  g.table.close_key("k");
  REQUIRE(g.acquire(b, {"k"}, std::nullopt, 2).status == acquire_status::queued);
  CHECK(g.table.activity("k").held == 1);
  REQUIRE(g.table.release("k", r.token, g.now, g.events) == lease_status::ok);
  CHECK(g.ids_of(event_kind::granted).empty());  // closed: what the release freed waits
  CHECK(std::count(g.gate.quiet_keys.begin(), g.gate.quiet_keys.end(), "k") >= 1);
  g.table.open_key("k", g.now, g.events);
  CHECK(g.ids_of(event_kind::granted) == std::vector<std::uint64_t>{2});
}

TEST_CASE("gate: a try-lock on a closed key waits for the verdict") {
  gated g;
  owner_id a = g.table.connect();
  g.table.set_try_wait(50);
  SECTION("granted when the key opens") {
    REQUIRE(g.acquire(a, {"k"}, 0, 7).status == acquire_status::queued);
    g.open("k");
    CHECK(g.ids_of(event_kind::granted) == std::vector<std::uint64_t>{7});
  }
  SECTION("busy when another daemon has the key") {
    REQUIRE(g.acquire(a, {"k"}, 0, 7).status == acquire_status::queued);
    REQUIRE(g.acquire(a, {"k"}, std::nullopt, 8).status == acquire_status::queued);
    g.table.drop_tries("k", g.now, g.events);
    CHECK(g.ids_of(event_kind::busy) == std::vector<std::uint64_t>{7});
    CHECK(g.table.activity("k").waiting == 1);  // the real waiter stays
    REQUIRE(g.table.check_invariants().empty());
  }
  SECTION("busy when the daemon cannot find out in time") {
    REQUIRE(g.acquire(a, {"k"}, 0, 7).status == acquire_status::queued);
    g.now += 51ms;
    g.table.expire_due(g.now, g.events);
    CHECK(g.ids_of(event_kind::busy) == std::vector<std::uint64_t>{7});
    CHECK(g.ids_of(event_kind::wait_timeout).empty());
  }
  SECTION("an open, busy key answers busy at once as in standalone mode") {
    g.gate.rights.insert("k");
    REQUIRE(g.acquire(a, {"k"}, std::nullopt, 1).status == acquire_status::granted);
    CHECK(g.acquire(a, {"k"}, 0, 2).status == acquire_status::busy);
  }
}

TEST_CASE("gate: a set waits until every one of its keys is open") {
  gated g;
  g.gate.rights.insert("a");
  owner_id o = g.table.connect();
  REQUIRE(g.acquire(o, {"a", "b"}, std::nullopt, 1).status == acquire_status::queued);
  CHECK(g.gate.wanted_keys == std::vector<std::string>{"b"});
  CHECK(g.table.activity("a").open);
  g.open("b");
  REQUIRE(g.ids_of(event_kind::granted) == std::vector<std::uint64_t>{1});
  CHECK(g.table.activity("a").held == 1);
  CHECK(g.table.activity("b").held == 1);
}

TEST_CASE("gate: lose_all ends every lease as lost and closes every key") {
  gated g;
  g.gate.rights = {"a", "b", "c"};
  owner_id o = g.table.connect(), p = g.table.connect();
  REQUIRE(g.acquire(o, {"a"}, std::nullopt, 1).status == acquire_status::granted);
  REQUIRE(g.acquire(o, {"b", "c"}, std::nullopt, 2).status == acquire_status::granted);
  REQUIRE(g.acquire(p, {"a"}, std::nullopt, 3).status == acquire_status::queued);
  g.table.lose_all(g.now, g.events);
  REQUIRE(g.table.check_invariants().empty());
  std::size_t expired = 0;
  for (const auto& ev : g.events) {
    if (ev.kind == event_kind::expired) {
      ++expired;
      if (ev.key == "b") CHECK(ev.keys == std::vector<std::string>{"b", "c"});
    }
  }
  CHECK(expired == 2);
  CHECK(g.ids_of(event_kind::granted).empty());  // the waiter on `a` is not granted
  CHECK(g.table.activity("a").waiting == 1);
  CHECK_FALSE(g.table.activity("a").open);
  CHECK(g.table.held() == 0);
}
