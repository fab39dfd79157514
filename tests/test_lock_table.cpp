// The lock table's semantics, with a fake clock and no sleeps.
#include <catch2/catch.hpp>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "lock_table.hpp"

using namespace keylock;
using namespace std::chrono_literals;

namespace {

// prefix + n, built without `"literal" + std::string`, which trips GCC 12's false -Wrestrict
// (PR 105651) at -O2.
std::string numbered(std::string prefix, std::uint64_t n) {
  prefix += std::to_string(n);
  return prefix;
}

struct counter_tokens final : token_source {
  std::uint64_t n = 100;
  std::uint64_t next() override { return ++n; }
};

// A table, a clock and an event sink, with helpers that keep tests short.
struct fixture {
  counter_tokens tokens;
  table_limits limits;
  lock_table table;
  tick now{1'000'000'000};
  std::vector<table_event> events;

  explicit fixture(table_limits l = {}) : limits(l), table(l, tokens) {}

  acquire_result acquire(owner_id o, std::string_view key, std::optional<std::uint32_t> wait_ms,
                         std::uint64_t id = 0, std::uint32_t ttl_ms = 1000,
                         std::uint32_t limit = 1) {
    acquire_args a;
    a.key = key;
    a.ttl_ms = ttl_ms;
    a.wait_ms = wait_ms;
    a.limit = limit;
    a.request_id = id;
    auto r = table.acquire(o, a, now, events);
    check();
    return r;
  }
  lease_status release(std::string_view key, std::uint64_t token) {
    auto r = table.release(key, token, now, events);
    check();
    return r;
  }
  void advance(std::chrono::milliseconds d) {
    now += d;
    table.expire_due(now, events);
    check();
  }
  void check() const {
    std::string broken = table.check_invariants();
    INFO(broken);
    REQUIRE(broken.empty());
  }
  std::vector<table_event> take() { return std::exchange(events, {}); }
};

}  // namespace

TEST_CASE("a free key is granted at once with an increasing token", "[table]") {
  fixture f;
  owner_id a = f.table.connect();
  auto r1 = f.acquire(a, "k1", 0);
  auto r2 = f.acquire(a, "k2", 0);
  REQUIRE(r1.status == acquire_status::granted);
  REQUIRE(r2.status == acquire_status::granted);
  REQUIRE(r2.token > r1.token);
  REQUIRE(f.table.keys() == 2);
  REQUIRE(f.table.held() == 2);
  REQUIRE(f.events.empty());
}

TEST_CASE("a held key answers busy to a zero wait and queues otherwise", "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  REQUIRE(f.acquire(a, "k", 0).status == acquire_status::granted);
  REQUIRE(f.acquire(b, "k", 0).status == acquire_status::busy);
  REQUIRE(f.acquire(b, "k", std::nullopt, 7).status == acquire_status::queued);
  REQUIRE(f.table.waiting() == 1);
  REQUIRE(f.table.counters().timeouts == 1);
}

TEST_CASE("waiters are granted in FIFO order", "[table]") {
  fixture f;
  owner_id holder = f.table.connect();
  std::vector<owner_id> w;
  for (int i = 0; i < 5; ++i) w.push_back(f.table.connect());
  auto first = f.acquire(holder, "k", 0);
  for (int i = 0; i < 5; ++i) {
    REQUIRE(f.acquire(w[i], "k", std::nullopt, 10 + i).status == acquire_status::queued);
  }
  std::uint64_t token = first.token;
  for (int i = 0; i < 5; ++i) {
    REQUIRE(f.release("k", token) == lease_status::ok);
    auto ev = f.take();
    REQUIRE(ev.size() == 1);
    REQUIRE(ev[0].kind == event_kind::granted);
    REQUIRE(ev[0].owner == w[i]);
    REQUIRE(ev[0].request_id == std::optional<std::uint64_t>(10 + i));
    REQUIRE(ev[0].token > token);
    token = ev[0].token;
  }
  REQUIRE(f.release("k", token) == lease_status::ok);
  REQUIRE(f.table.keys() == 0);
}

TEST_CASE("a newcomer does not jump the queue when a slot frees", "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect(), c = f.table.connect();
  auto held = f.acquire(a, "k", 0);
  f.acquire(b, "k", std::nullopt, 1);
  REQUIRE(f.release("k", held.token) == lease_status::ok);
  REQUIRE(f.take().at(0).owner == b);
  REQUIRE(f.acquire(c, "k", 0).status == acquire_status::busy);
}

TEST_CASE("a limit of N admits N holders and queues the next", "[table]") {
  fixture f;
  std::vector<owner_id> o;
  for (int i = 0; i < 4; ++i) o.push_back(f.table.connect());
  std::vector<std::uint64_t> tokens;
  for (int i = 0; i < 3; ++i) {
    auto r = f.acquire(o[i], "sem", 0, 0, 1000, 3);
    REQUIRE(r.status == acquire_status::granted);
    tokens.push_back(r.token);
  }
  REQUIRE(f.acquire(o[3], "sem", std::nullopt, 9, 1000, 3).status == acquire_status::queued);
  REQUIRE(f.table.inspect("sem", f.now).holders.size() == 3);
  REQUIRE(f.release("sem", tokens[1]) == lease_status::ok);
  auto ev = f.take();
  REQUIRE(ev.size() == 1);
  REQUIRE(ev[0].owner == o[3]);
}

TEST_CASE("a live key with another limit answers conflict; an idle key forgets its limit",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect();
  auto r = f.acquire(a, "k", 0, 0, 1000, 2);
  REQUIRE(f.acquire(a, "k", 0, 0, 1000, 1).status == acquire_status::conflict);
  REQUIRE(f.release("k", r.token) == lease_status::ok);
  REQUIRE(f.acquire(a, "k", 0, 0, 1000, 1).status == acquire_status::granted);
}

TEST_CASE("the same owner acquiring a key it holds queues like anyone else", "[table]") {
  fixture f;
  owner_id a = f.table.connect();
  auto r = f.acquire(a, "k", 0);
  REQUIRE(f.acquire(a, "k", std::nullopt, 2).status == acquire_status::queued);
  REQUIRE(f.release("k", r.token) == lease_status::ok);
  auto ev = f.take();
  REQUIRE(ev.at(0).owner == a);
  REQUIRE(ev.at(0).request_id == std::optional<std::uint64_t>(2));
}

TEST_CASE("release and extend need the right key and a live token", "[table]") {
  fixture f;
  owner_id a = f.table.connect();
  auto r = f.acquire(a, "k", 0);
  f.acquire(a, "other", 0);
  REQUIRE(f.release("other", r.token) == lease_status::not_held);
  REQUIRE(f.release("nokey", r.token) == lease_status::not_held);
  REQUIRE(f.release("k", r.token + 1000) == lease_status::not_held);
  std::uint32_t ttl = 0;
  REQUIRE(f.table.extend("other", r.token, 500u, f.now, f.events, &ttl) == lease_status::not_held);
  REQUIRE(f.release("k", r.token) == lease_status::ok);
  REQUIRE(f.release("k", r.token) == lease_status::not_held);
}

TEST_CASE("a lease expires at its deadline: the holder is told and the next waiter granted",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  auto r = f.acquire(a, "k", 0, 0, 100);
  f.acquire(b, "k", std::nullopt, 5, 1000);
  REQUIRE(f.table.next_deadline() == f.now + 100ms);
  f.advance(99ms);
  REQUIRE(f.events.empty());
  f.advance(1ms);
  auto ev = f.take();
  REQUIRE(ev.size() == 2);
  REQUIRE(ev[0].kind == event_kind::expired);
  REQUIRE(ev[0].owner == a);
  REQUIRE(ev[0].token == r.token);
  REQUIRE(ev[0].key == "k");
  REQUIRE(ev[1].kind == event_kind::granted);
  REQUIRE(ev[1].owner == b);
  REQUIRE(f.table.counters().expirations == 1);
  REQUIRE(f.release("k", r.token) == lease_status::not_held);
}

TEST_CASE("extend replaces the remaining time rather than adding to it", "[table]") {
  fixture f;
  owner_id a = f.table.connect();
  auto r = f.acquire(a, "k", 0, 0, 1000);
  f.advance(900ms);
  std::uint32_t ttl = 0;
  REQUIRE(f.table.extend("k", r.token, 300u, f.now, f.events, &ttl) == lease_status::ok);
  REQUIRE(ttl == 300);
  REQUIRE(f.table.inspect("k", f.now).holders.at(0).ttl_ms_left == 300);
  f.advance(299ms);
  REQUIRE(f.events.empty());
  f.advance(1ms);
  REQUIRE(f.take().at(0).kind == event_kind::expired);
}

TEST_CASE("extend without a ttl reuses the lease's last ttl", "[table]") {
  fixture f;
  owner_id a = f.table.connect();
  auto r = f.acquire(a, "k", 0, 0, 400);
  f.advance(300ms);
  std::uint32_t ttl = 0;
  REQUIRE(f.table.extend("k", r.token, std::nullopt, f.now, f.events, &ttl) == lease_status::ok);
  REQUIRE(ttl == 400);
  f.advance(399ms);
  REQUIRE(f.events.empty());
  REQUIRE(f.table.held() == 1);
}

TEST_CASE("a lease past its deadline cannot be released or extended before the timer runs",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  auto r = f.acquire(a, "k", 0, 0, 100);
  f.acquire(b, "k", std::nullopt, 1);
  f.now += 150ms;  // the timer is late: expire_due has not run
  SECTION("release") { REQUIRE(f.release("k", r.token) == lease_status::not_held); }
  SECTION("extend") {
    std::uint32_t ttl = 0;
    REQUIRE(f.table.extend("k", r.token, 1000u, f.now, f.events, &ttl) == lease_status::not_held);
  }
  auto ev = f.take();
  REQUIRE(ev.size() == 2);
  REQUIRE(ev[0].kind == event_kind::expired);
  REQUIRE(ev[1].kind == event_kind::granted);
  REQUIRE(ev[1].owner == b);
}

TEST_CASE("a waiter's wait_ms runs out with a timeout and leaves the queue", "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect(), c = f.table.connect();
  auto r = f.acquire(a, "k", 0, 0, 10'000);
  f.acquire(b, "k", 50u, 1);
  f.acquire(c, "k", std::nullopt, 2);
  f.advance(50ms);
  auto ev = f.take();
  REQUIRE(ev.size() == 1);
  REQUIRE(ev[0].kind == event_kind::wait_timeout);
  REQUIRE(ev[0].owner == b);
  REQUIRE(f.table.waiting() == 1);
  REQUIRE(f.release("k", r.token) == lease_status::ok);
  REQUIRE(f.take().at(0).owner == c);
}

TEST_CASE("a waiter whose wait ran out is not granted by a release that beats the timer",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect(), c = f.table.connect();
  auto r = f.acquire(a, "k", 0);
  f.acquire(b, "k", 20u, 1);
  f.acquire(c, "k", std::nullopt, 2);
  f.now += 30ms;
  REQUIRE(f.release("k", r.token) == lease_status::ok);
  auto ev = f.take();
  REQUIRE(ev.size() == 2);
  REQUIRE(ev[0].kind == event_kind::wait_timeout);
  REQUIRE(ev[0].owner == b);
  REQUIRE(ev[1].kind == event_kind::granted);
  REQUIRE(ev[1].owner == c);
}

TEST_CASE("cancel answers the oldest matching waiter of that owner only", "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  auto r = f.acquire(a, "k", 0);
  f.acquire(b, "k", std::nullopt, 7);
  f.acquire(b, "k", std::nullopt, 8);
  REQUIRE_FALSE(f.table.cancel(a, 7, f.events));  // not a's waiter
  REQUIRE_FALSE(f.table.cancel(b, 99, f.events));
  REQUIRE(f.table.cancel(b, 7, f.events));
  f.check();
  auto ev = f.take();
  REQUIRE(ev.size() == 1);
  REQUIRE(ev[0].kind == event_kind::cancelled);
  REQUIRE(ev[0].request_id == std::optional<std::uint64_t>(7));
  REQUIRE(f.release("k", r.token) == lease_status::ok);
  ev = f.take();
  REQUIRE(ev.at(0).request_id == std::optional<std::uint64_t>(8));
}

TEST_CASE("disconnect releases the owner's leases, drops its waiters and grants others",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  f.acquire(a, "k1", 0);
  f.acquire(a, "k2", 0);
  f.acquire(b, "k1", std::nullopt, 1);
  owner_id c = f.table.connect();
  f.acquire(c, "k3", 0);
  f.acquire(a, "k3", std::nullopt, 3);
  f.table.disconnect(a, f.now, f.events);
  f.check();
  auto ev = f.take();
  REQUIRE(ev.size() == 1);
  REQUIRE(ev[0].kind == event_kind::granted);
  REQUIRE(ev[0].owner == b);
  REQUIRE(f.table.keys() == 2);  // k2 left; k1 (b) and k3 (c) live
  REQUIRE(f.table.inspect("k3", f.now).waiters == 0);
  REQUIRE(f.table.counters().disconnect_releases == 2);
}

TEST_CASE("lock delay holds a lost key for its delay but not a released one", "[table]") {
  table_limits limits;
  limits.lock_delay_ms = 200;
  fixture f(limits);
  owner_id a = f.table.connect(), b = f.table.connect();
  SECTION("expiry starts the delay") {
    f.acquire(a, "k", 0, 0, 100);
    f.acquire(b, "k", std::nullopt, 1);
    f.advance(100ms);
    auto ev = f.take();
    REQUIRE(ev.size() == 1);
    REQUIRE(ev[0].kind == event_kind::expired);
    REQUIRE(f.acquire(a, "k", 0).status == acquire_status::busy);
    f.advance(199ms);
    REQUIRE(f.events.empty());
    f.advance(1ms);
    ev = f.take();
    REQUIRE(ev.size() == 1);
    REQUIRE(ev[0].owner == b);
  }
  SECTION("disconnect starts the delay, and the key stays until it ends") {
    f.acquire(a, "k", 0);
    f.table.disconnect(a, f.now, f.events);
    f.check();
    REQUIRE(f.table.keys() == 1);
    REQUIRE(f.acquire(b, "k", 0).status == acquire_status::busy);
    f.advance(200ms);
    REQUIRE(f.table.keys() == 0);
    REQUIRE(f.acquire(b, "k", 0).status == acquire_status::granted);
  }
  SECTION("release does not") {
    auto r = f.acquire(a, "k", 0);
    f.acquire(b, "k", std::nullopt, 1);
    REQUIRE(f.release("k", r.token) == lease_status::ok);
    REQUIRE(f.take().at(0).owner == b);
  }
}

TEST_CASE("limits on keys, waiters per key and pending per owner answer without side effects",
          "[table]") {
  table_limits limits;
  limits.max_keys = 2;
  limits.max_waiters_per_key = 2;
  limits.max_pending_per_owner = 3;
  fixture f(limits);
  owner_id a = f.table.connect(), b = f.table.connect(), c = f.table.connect();
  f.acquire(a, "k1", 0);
  f.acquire(a, "k2", 0);
  REQUIRE(f.acquire(a, "k3", 0).status == acquire_status::too_many_keys);
  REQUIRE(f.table.keys() == 2);
  REQUIRE(f.acquire(b, "k1", std::nullopt).status == acquire_status::queued);
  REQUIRE(f.acquire(b, "k1", std::nullopt).status == acquire_status::queued);
  REQUIRE(f.acquire(c, "k1", std::nullopt).status == acquire_status::too_many_waiters);
  REQUIRE(f.acquire(b, "k2", std::nullopt).status == acquire_status::queued);
  REQUIRE(f.acquire(b, "k2", std::nullopt).status == acquire_status::too_many_pending);
  REQUIRE(f.table.waiting() == 3);
}

TEST_CASE("abort_waiters answers every queued acquire", "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  f.acquire(a, "k", 0);
  f.acquire(b, "k", std::nullopt, 1);
  f.acquire(b, "k", 100u, 2);
  f.table.abort_waiters(f.events);
  f.check();
  auto ev = f.take();
  REQUIRE(ev.size() == 2);
  REQUIRE(ev[0].kind == event_kind::aborted);
  REQUIRE(ev[1].kind == event_kind::aborted);
  REQUIRE(f.table.waiting() == 0);
}

TEST_CASE("inspect reports holders in grant order with time left, waiters and limit",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  auto r1 = f.acquire(a, "k", 0, 0, 1000, 2);
  f.now += 250ms;
  auto r2 = f.acquire(b, "k", 0, 0, 500, 2);
  f.acquire(b, "k", std::nullopt, 3, 500, 2);
  auto info = f.table.inspect("k", f.now);
  REQUIRE(info.limit == 2);
  REQUIRE(info.waiters == 1);
  REQUIRE(info.holders.size() == 2);
  REQUIRE(info.holders[0].token == r1.token);
  REQUIRE(info.holders[0].ttl_ms_left == 750);
  REQUIRE(info.holders[0].owner == a);
  REQUIRE(info.holders[1].token == r2.token);
  auto none = f.table.inspect("absent", f.now);
  REQUIRE(none.limit == 0);
  REQUIRE(none.holders.empty());
}

TEST_CASE("the deadline index stays bounded under repeated extends", "[table]") {
  fixture f;
  owner_id a = f.table.connect();
  auto r = f.acquire(a, "k", 0, 0, 1000);
  std::uint32_t ttl = 0;
  for (int i = 0; i < 100'000; ++i) {
    REQUIRE(f.table.extend("k", r.token, 1000u, f.now, f.events, &ttl) == lease_status::ok);
    f.now += 1ms;
  }
  REQUIRE(f.table.next_deadline() == f.now - 1ms + 1000ms);
  f.advance(1000ms);
  REQUIRE(f.take().size() == 1);
  REQUIRE_FALSE(f.table.next_deadline().has_value());
}

TEST_CASE("idle keys leave the table and slots are reused", "[table]") {
  fixture f;
  owner_id a = f.table.connect();
  for (int i = 0; i < 1000; ++i) {
    std::string key = numbered("key", i % 10);
    auto r = f.acquire(a, key, 0);
    REQUIRE(f.release(key, r.token) == lease_status::ok);
  }
  REQUIRE(f.table.keys() == 0);
  REQUIRE(f.table.held() == 0);
}

TEST_CASE("random operations keep every invariant and never grant beyond the limit",
          "[table]") {
  table_limits limits;
  limits.max_waiters_per_key = 8;
  limits.max_pending_per_owner = 6;
  limits.max_keys = 40;
  SECTION("without lock delay") {}
  SECTION("with lock delay") { limits.lock_delay_ms = 30; }
  fixture f(limits);
  std::mt19937_64 rng(42);
  std::vector<owner_id> owners;
  for (int i = 0; i < 6; ++i) owners.push_back(f.table.connect());
  struct held_lease {
    std::string key;
    std::uint64_t token;
  };
  std::vector<held_lease> held;
  std::uint64_t last_token = 0;
  std::uint64_t next_id = 1;
  auto key_of = [&](std::uint64_t r) { return numbered("k", r % 50); };
  auto limit_of = [](const std::string& key) { return key.size() % 2 == 0 ? 1u : 3u; };
  auto absorb = [&] {
    for (const auto& ev : f.take()) {
      if (ev.kind == event_kind::granted) {
        REQUIRE(ev.token > last_token);
        last_token = ev.token;
      }
    }
  };
  for (int step = 0; step < 20000; ++step) {
    std::uint64_t r = rng();
    owner_id o = owners[r % owners.size()];
    std::string key = key_of(r >> 8);
    switch ((r >> 16) % 8) {
      case 0:
      case 1: {
        std::optional<std::uint32_t> wait;
        if ((r >> 24) % 3 == 0) wait = 0;
        if ((r >> 24) % 3 == 1) wait = static_cast<std::uint32_t>((r >> 32) % 50);
        auto res = f.acquire(o, key, wait, next_id++, 1 + (r >> 40) % 80, limit_of(key));
        if (res.status == acquire_status::granted) {
          REQUIRE(res.token > last_token);
          last_token = res.token;
          held.push_back({key, res.token});
        }
        break;
      }
      case 2:
        if (!held.empty()) {
          auto i = (r >> 24) % held.size();
          f.release(held[i].key, held[i].token);
          held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
        }
        break;
      case 3:
        if (!held.empty()) {
          auto i = (r >> 24) % held.size();
          std::uint32_t ttl = 0;
          f.table.extend(held[i].key, held[i].token, 1 + (r >> 32) % 80, f.now, f.events, &ttl);
          f.check();
        }
        break;
      case 4:
        f.table.cancel(o, (r >> 24) % next_id, f.events);
        f.check();
        break;
      case 5:
        if ((r >> 24) % 20 == 0) {
          f.table.disconnect(o, f.now, f.events);
          f.check();
          *std::find(owners.begin(), owners.end(), o) = f.table.connect();
        }
        break;
      default:
        f.advance(std::chrono::milliseconds((r >> 24) % 20));
        break;
    }
    absorb();
    for (const auto& k : {key, key_of(r >> 20)}) {
      REQUIRE(f.table.inspect(k, f.now).holders.size() <= limit_of(k));
    }
  }
  // Everyone leaves: the table empties completely.
  for (owner_id o : owners) f.table.disconnect(o, f.now, f.events);
  f.advance(std::chrono::milliseconds(1000));
  REQUIRE(f.table.keys() == 0);
  REQUIRE(f.table.held() == 0);
  REQUIRE(f.table.waiting() == 0);
  REQUIRE_FALSE(f.table.next_deadline().has_value());
}

TEST_CASE("top lists the longest queues and the oldest leases, best first", "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  auto first = f.acquire(a, "old", 0);
  f.now += 100ms;
  f.acquire(a, "busy", 0);
  for (int i = 0; i < 3; ++i) f.acquire(b, "busy", std::nullopt, 10 + i);
  f.acquire(a, "less", 0);
  f.acquire(b, "less", std::nullopt, 20);
  f.now += 50ms;
  auto top = f.table.top(2, f.now);
  REQUIRE(top.queues.size() == 2);
  REQUIRE(top.queues[0].key == "busy");
  REQUIRE(top.queues[0].waiters == 3);
  REQUIRE(top.queues[0].held == 1);
  REQUIRE(top.queues[1].key == "less");
  REQUIRE(top.oldest.size() == 2);
  REQUIRE(top.oldest[0].key == "old");
  REQUIRE(top.oldest[0].token == first.token);
  REQUIRE(top.oldest[0].held_for == 150ms);
  REQUIRE(top.oldest[1].held_for == 50ms);
  REQUIRE(f.table.top(0, f.now).oldest.empty());
}

TEST_CASE("wait and hold times are recorded in the histograms", "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  auto r = f.acquire(a, "k", 0);  // granted at once: waits 0
  f.acquire(b, "k", std::nullopt, 1);
  f.now += 30ms;
  REQUIRE(f.release("k", r.token) == lease_status::ok);  // held 30 ms; b waited 30 ms
  const auto& c = f.table.counters();
  REQUIRE(c.wait.count == 2);
  REQUIRE(c.wait.sum_ns == 30'000'000);
  REQUIRE(c.wait.buckets[0] == 1);  // the immediate grant
  REQUIRE(c.hold.count == 1);
  REQUIRE(c.hold.sum_ns == 30'000'000);
}
