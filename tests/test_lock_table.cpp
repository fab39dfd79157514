// The lock table's semantics, with a fake clock and no sleeps.
#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "lock_table.hpp"
#include "metrics.hpp"
#include "siphash.hpp"

using namespace keylock;
using namespace std::chrono_literals;

namespace {

// prefix + n, built without `"literal" + std::string`, which trips GCC 12's false -Wrestrict
// (PR 105651) at -O2.
std::string numbered(std::string prefix, std::uint64_t n) {
  prefix += std::to_string(n);
  return prefix;
}

// Tokens that can be switched off, as when the fencing reservation cannot be written.
struct counter_tokens final : token_source {
  std::uint64_t n = 100;
  bool on = true;
  bool issued_while_off = false;
  bool ready() const override { return on; }
  std::uint64_t next() override {
    if (!on) issued_while_off = true;
    return ++n;
  }
};

// A table, a clock and an event sink, with helpers that keep tests short.
struct fixture {
  counter_tokens tokens;
  table_limits limits;
  duration_histogram wait_hist;
  duration_histogram hold_hist;
  lock_table table;
  tick now{1'000'000'000};
  std::vector<table_event> events;

  explicit fixture(table_limits l = {})
      : limits(l), table(l, tokens, table_histograms{&wait_hist, &hold_hist}) {}

  acquire_result acquire(owner_id o, std::string_view key, std::optional<std::uint32_t> wait_ms,
                         std::uint64_t id = 0, std::uint32_t ttl_ms = 1000,
                         std::uint32_t limit = 1) {
    acquire_args a;
    a.key = key;
    return run(o, a, wait_ms, id, lock_mode::exclusive, ttl_ms, limit);
  }
  // An acquire in `mode` over `keys` (one key goes through `keys` too).
  acquire_result acquire_set(owner_id o, std::vector<std::string_view> keys,
                             std::optional<std::uint32_t> wait_ms, std::uint64_t id = 0,
                             lock_mode mode = lock_mode::exclusive, std::uint32_t ttl_ms = 1000,
                             std::uint32_t limit = 1) {
    acquire_args a;
    a.keys = keys;
    return run(o, a, wait_ms, id, mode, ttl_ms, limit);
  }
  // The rest of an acquire's arguments, the call, and the invariant check after it.
  acquire_result run(owner_id o, acquire_args& a, std::optional<std::uint32_t> wait_ms,
                     std::uint64_t id, lock_mode mode, std::uint32_t ttl_ms,
                     std::uint32_t limit) {
    a.ttl_ms = ttl_ms;
    a.wait_ms = wait_ms;
    a.limit = limit;
    a.mode = mode;
    a.request_id = id;
    auto r = table.acquire(o, a, now, events);
    check();
    return r;
  }
  acquire_result shared(owner_id o, std::string_view key, std::optional<std::uint32_t> wait_ms,
                        std::uint64_t id = 0, std::uint32_t ttl_ms = 1000) {
    acquire_args a;
    a.key = key;
    a.ttl_ms = ttl_ms;
    a.wait_ms = wait_ms;
    a.mode = lock_mode::shared;
    a.request_id = id;
    auto r = table.acquire(o, a, now, events);
    check();
    return r;
  }
  lease_status release_set(std::vector<std::string_view> keys, std::uint64_t token) {
    auto r = table.release(keys, token, now, events);
    check();
    return r;
  }
  // The request ids of the `granted` events taken from `events`, in order.
  std::vector<std::uint64_t> granted_ids() {
    std::vector<std::uint64_t> ids;
    for (const table_event& ev : take()) {
      if (ev.kind == event_kind::granted) ids.push_back(ev.request_id.value_or(0));
    }
    return ids;
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
    REQUIRE_FALSE(tokens.issued_while_off);
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
  REQUIRE_FALSE(f.table.cancel(a, 7, f.now, f.events));  // not a's waiter
  REQUIRE_FALSE(f.table.cancel(b, 99, f.now, f.events));
  REQUIRE(f.table.cancel(b, 7, f.now, f.events));
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
        f.table.cancel(o, (r >> 24) % next_id, f.now, f.events);
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
  REQUIRE(f.wait_hist.count == 2);
  REQUIRE(f.wait_hist.sum_ns == 30'000'000);
  REQUIRE(f.wait_hist.buckets[0] == 1);  // the immediate grant
  REQUIRE(f.hold_hist.count == 1);
  REQUIRE(f.hold_hist.sum_ns == 30'000'000);
}

TEST_CASE("a table without histograms records nothing and still works", "[table]") {
  counter_tokens tokens;
  lock_table table(table_limits{}, tokens);
  std::vector<table_event> events;
  owner_id a = table.connect();
  acquire_args args;
  args.key = "k";
  auto r = table.acquire(a, args, tick{0}, events);
  REQUIRE(r.status == acquire_status::granted);
  REQUIRE(table.release("k", r.token, tick{1}, events) == lease_status::ok);
  REQUIRE(table.check_invariants().empty());
}

// --- the seeded key hash ---------------------------------------------------------------------

TEST_CASE("siphash24 matches the reference vectors of SipHash-2-4", "[table]") {
  // Key 00 01 .. 0f, message 00 01 .. (len-1): vectors.h of the reference implementation.
  const std::uint64_t k0 = 0x0706050403020100ull, k1 = 0x0f0e0d0c0b0a0908ull;
  unsigned char msg[64];
  for (int i = 0; i < 64; ++i) msg[i] = static_cast<unsigned char>(i);
  REQUIRE(siphash24(k0, k1, msg, 0) == 0x726fdb47dd0e0e31ull);
  REQUIRE(siphash24(k0, k1, msg, 1) == 0x74f839c593dc67fdull);
  REQUIRE(siphash24(k0, k1, msg, 8) == 0x93f5f5799a932462ull);
  REQUIRE(siphash24(k0, k1, msg, 15) == 0xa129ca6149be45e5ull);  // the paper's example
  REQUIRE(siphash24(k0, k1, msg, 63) == 0x958a324ceb064572ull);
}

TEST_CASE("the key hash is deterministic for one seed and differs between seeds", "[table]") {
  counter_tokens tokens;
  lock_table a(table_limits{}, tokens, {}, hash_seed{1, 2});
  lock_table a_again(table_limits{}, tokens, {}, hash_seed{1, 2});
  lock_table b(table_limits{}, tokens, {}, hash_seed{3, 4});
  int differ = 0;
  for (int i = 0; i < 100; ++i) {
    std::string key = numbered("key", i);
    REQUIRE(a.hash_of(key) == a_again.hash_of(key));
    REQUIRE(a.hash_of(key) == static_cast<std::uint32_t>(siphash24(1, 2, key.data(), key.size())));
    differ += a.hash_of(key) != b.hash_of(key);
  }
  REQUIRE(differ >= 99);
}

TEST_CASE("keys that collide on the low hash bits under one seed spread under another",
          "[table]") {
  counter_tokens tokens;
  lock_table a(table_limits{}, tokens, {}, hash_seed{11, 22});
  lock_table b(table_limits{}, tokens, {}, hash_seed{33, 44});
  // What a flooder who knew seed A would send: 40 keys on one home slot of a 1024-slot index.
  std::vector<std::string> crafted;
  for (int i = 0; crafted.size() < 40; ++i) {
    std::string key = numbered("flood", i);
    if ((a.hash_of(key) & 1023u) == 7u) crafted.push_back(key);
  }
  std::set<std::uint32_t> homes_b;
  for (const auto& key : crafted) homes_b.insert(b.hash_of(key) & 1023u);
  REQUIRE(homes_b.size() >= 35);  // 40 keys in 1024 slots: a handful of collisions at most
  // And the table under seed B still holds and finds all of them.
  std::vector<table_event> events;
  owner_id o = b.connect();
  for (const auto& key : crafted) {
    acquire_args args;
    args.key = key;
    REQUIRE(b.acquire(o, args, tick{0}, events).status == acquire_status::granted);
  }
  REQUIRE(b.keys() == 40);
  REQUIRE(b.check_invariants().empty());
}

// --- lease bounds ------------------------------------------------------------------------------

TEST_CASE("an owner's leases and queued acquires together are bounded by max_leases_per_owner",
          "[table]") {
  table_limits limits;
  limits.max_leases_per_owner = 3;
  fixture f(limits);
  owner_id a = f.table.connect(), b = f.table.connect();
  f.acquire(b, "held-by-b", 0);
  REQUIRE(f.acquire(a, "k1", 0).status == acquire_status::granted);
  REQUIRE(f.acquire(a, "k2", 0).status == acquire_status::granted);
  REQUIRE(f.acquire(a, "held-by-b", std::nullopt, 1).status == acquire_status::queued);
  SECTION("a grant is refused") {
    REQUIRE(f.acquire(a, "k3", 0).status == acquire_status::too_many_owner_leases);
    REQUIRE(f.table.keys() == 3);  // nothing allocated for k3
  }
  SECTION("a queued acquire is refused") {
    REQUIRE(f.acquire(a, "held-by-b", std::nullopt, 2).status ==
            acquire_status::too_many_owner_leases);
    REQUIRE(f.table.owner_waiters(a) == 1);
  }
  SECTION("another owner is not limited by it") {
    REQUIRE(f.acquire(b, "k3", 0).status == acquire_status::granted);
  }
  SECTION("a grant to its waiter keeps the count and a release makes room") {
    auto r = f.table.inspect("held-by-b", f.now).holders.at(0);
    REQUIRE(f.release("held-by-b", r.token) == lease_status::ok);
    REQUIRE(f.take().at(0).owner == a);
    REQUIRE(f.table.owner_leases(a) == 3);
    REQUIRE(f.acquire(a, "k3", 0).status == acquire_status::too_many_owner_leases);
    auto mine = f.table.inspect("k1", f.now).holders.at(0);
    REQUIRE(f.release("k1", mine.token) == lease_status::ok);
    REQUIRE(f.acquire(a, "k3", 0).status == acquire_status::granted);
  }
}

TEST_CASE("the leases of all owners are bounded by max_leases", "[table]") {
  table_limits limits;
  limits.max_leases = 3;
  fixture f(limits);
  owner_id a = f.table.connect(), b = f.table.connect();
  std::vector<std::uint64_t> tokens;
  for (int i = 0; i < 3; ++i) tokens.push_back(f.acquire(a, numbered("k", i), 0).token);
  REQUIRE(f.acquire(b, "k9", 0).status == acquire_status::too_many_leases);
  REQUIRE(f.acquire(b, "k9", std::nullopt).status == acquire_status::too_many_leases);
  REQUIRE(f.table.keys() == 3);  // nothing allocated for k9
  // A held key still queues: its waiter is granted only into the slot a release frees.
  REQUIRE(f.acquire(b, "k0", std::nullopt, 5).status == acquire_status::queued);
  REQUIRE(f.release("k0", tokens[0]) == lease_status::ok);
  REQUIRE(f.take().at(0).owner == b);
  REQUIRE(f.table.held() == 3);
  REQUIRE(f.acquire(b, "k9", 0).status == acquire_status::too_many_leases);
  REQUIRE(f.release("k1", tokens[1]) == lease_status::ok);
  REQUIRE(f.acquire(b, "k9", 0).status == acquire_status::granted);
}

TEST_CASE("a lease past its deadline does not count against max_leases", "[table]") {
  table_limits limits;
  limits.max_leases = 2;
  fixture f(limits);
  owner_id a = f.table.connect(), b = f.table.connect();
  auto old = f.acquire(a, "k1", 0, 0, 100);
  f.acquire(a, "k2", 0, 0, 1000);
  f.now += 150ms;  // k1's lease is over; its timer has not run
  REQUIRE(f.acquire(b, "k3", 0).status == acquire_status::granted);
  auto ev = f.take();
  REQUIRE(ev.size() == 1);
  REQUIRE(ev[0].kind == event_kind::expired);
  REQUIRE(ev[0].token == old.token);
}

TEST_CASE("a slot freed during a lock delay stays with its key's waiter under max_leases",
          "[table]") {
  table_limits limits;
  limits.max_leases = 2;
  limits.lock_delay_ms = 100;
  fixture f(limits);
  owner_id a = f.table.connect(), b = f.table.connect(), c = f.table.connect();
  f.acquire(a, "k", 0);
  f.acquire(c, "other", 0);
  f.acquire(b, "k", std::nullopt, 1);
  f.table.disconnect(a, f.now, f.events);  // k is lost: its slot waits out the delay for b
  f.check();
  REQUIRE(f.take().empty());
  REQUIRE(f.table.held() == 1);
  // One lease held, but b's waiter sits at k's free slot: the bound is reached.
  REQUIRE(f.acquire(c, "fresh", 0).status == acquire_status::too_many_leases);
  f.advance(100ms);
  auto ev = f.take();
  REQUIRE(ev.size() == 1);
  REQUIRE(ev[0].owner == b);
  REQUIRE(f.table.held() == 2);
}

TEST_CASE("a waiter that would sit at a free slot of a delayed key needs room under max_leases",
          "[table]") {
  table_limits limits;
  limits.max_leases = 1;
  limits.lock_delay_ms = 100;
  fixture f(limits);
  owner_id a = f.table.connect(), b = f.table.connect(), c = f.table.connect();
  f.acquire(a, "k", 0);
  f.table.disconnect(a, f.now, f.events);  // k in its delay, no lease held
  f.check();
  REQUIRE(f.acquire(c, "other", 0).status == acquire_status::granted);
  REQUIRE(f.acquire(b, "k", std::nullopt, 1).status == acquire_status::too_many_leases);
  f.advance(100ms);
  REQUIRE(f.table.held() == 1);
}

// --- tokens unavailable ------------------------------------------------------------------------

TEST_CASE("while tokens are unavailable every acquire answers unavailable", "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  f.acquire(a, "held", 0);
  f.tokens.on = false;
  REQUIRE(f.acquire(b, "free", 0).status == acquire_status::unavailable);
  REQUIRE(f.acquire(b, "free", std::nullopt, 1).status == acquire_status::unavailable);
  REQUIRE(f.acquire(b, "held", std::nullopt, 2).status == acquire_status::unavailable);
  REQUIRE(f.acquire(b, "held", 0).status == acquire_status::unavailable);
  REQUIRE(f.table.keys() == 1);
  REQUIRE(f.table.waiting() == 0);
  REQUIRE(f.table.counters().acquires == 5);
  f.tokens.on = true;
  REQUIRE(f.acquire(b, "free", 0).status == acquire_status::granted);
}

TEST_CASE("a release while tokens are unavailable grants nobody until resume_grants",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect(), c = f.table.connect();
  auto r = f.acquire(a, "k", 0, 0, 1000, 2);
  auto r2 = f.acquire(a, "k", 0, 0, 1000, 2);
  f.acquire(b, "k", std::nullopt, 1, 1000, 2);
  f.acquire(c, "k", std::nullopt, 2, 1000, 2);
  f.acquire(b, "k", std::nullopt, 3, 1000, 2);
  const std::uint64_t issued = f.tokens.n;
  f.tokens.on = false;
  REQUIRE(f.release("k", r.token) == lease_status::ok);
  REQUIRE(f.release("k", r2.token) == lease_status::ok);
  REQUIRE(f.events.empty());
  REQUIRE(f.table.waiting() == 3);
  SECTION("resume while still unavailable keeps the key stalled") {
    f.table.resume_grants(f.now, f.events);
    f.check();
    REQUIRE(f.events.empty());
    REQUIRE(f.table.waiting() == 3);
  }
  f.tokens.on = true;
  // A newcomer does not jump the stalled queue.
  REQUIRE(f.acquire(c, "k", 0, 0, 1000, 2).status == acquire_status::busy);
  f.table.resume_grants(f.now, f.events);
  f.check();
  auto ev = f.take();
  REQUIRE(ev.size() == 2);
  REQUIRE(ev[0].kind == event_kind::granted);
  REQUIRE(ev[0].owner == b);
  REQUIRE(ev[0].request_id == std::optional<std::uint64_t>(1));
  REQUIRE(ev[0].token == issued + 1);
  REQUIRE(ev[1].owner == c);
  REQUIRE(ev[1].token == issued + 2);
  REQUIRE(f.table.waiting() == 1);
  f.table.resume_grants(f.now, f.events);  // nothing stalled: a no-op
  f.check();
  REQUIRE(f.events.empty());
}

TEST_CASE("an expiry while tokens are unavailable stalls the key, and resume grants it",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  auto r = f.acquire(a, "k", 0, 0, 100);
  f.acquire(b, "k", std::nullopt, 1);
  f.tokens.on = false;
  f.advance(100ms);
  auto ev = f.take();
  REQUIRE(ev.size() == 1);
  REQUIRE(ev[0].kind == event_kind::expired);
  REQUIRE(ev[0].token == r.token);
  REQUIRE(f.table.keys() == 1);  // kept for its waiter
  f.tokens.on = true;
  f.table.resume_grants(f.now, f.events);
  f.check();
  ev = f.take();
  REQUIRE(ev.size() == 1);
  REQUIRE(ev[0].owner == b);
}

TEST_CASE("waiters of a stalled key still time out, cancel and leave with their owner",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect(), c = f.table.connect();
  auto r = f.acquire(a, "k", 0);
  f.acquire(b, "k", 50u, 1);
  f.acquire(c, "k", std::nullopt, 2);
  f.acquire(b, "k", std::nullopt, 3);
  f.tokens.on = false;
  REQUIRE(f.release("k", r.token) == lease_status::ok);
  REQUIRE(f.events.empty());
  f.advance(50ms);
  auto ev = f.take();
  REQUIRE(ev.size() == 1);
  REQUIRE(ev[0].kind == event_kind::wait_timeout);
  REQUIRE(ev[0].owner == b);
  REQUIRE(f.table.cancel(c, 2, f.now, f.events));
  f.check();
  REQUIRE(f.take().at(0).kind == event_kind::cancelled);
  f.table.disconnect(b, f.now, f.events);  // the last waiter: the stalled key leaves
  f.check();
  REQUIRE(f.take().empty());
  REQUIRE(f.table.keys() == 0);
  f.tokens.on = true;
  f.table.resume_grants(f.now, f.events);
  f.check();
  REQUIRE(f.events.empty());
}

TEST_CASE("a lock delay that ends while tokens are unavailable keeps the key stalled",
          "[table]") {
  table_limits limits;
  limits.lock_delay_ms = 100;
  fixture f(limits);
  owner_id a = f.table.connect(), b = f.table.connect();
  f.acquire(a, "k", 0);
  f.acquire(b, "k", std::nullopt, 1);
  f.tokens.on = false;
  f.table.disconnect(a, f.now, f.events);
  f.check();
  f.advance(100ms);  // the delay ends; no token to grant with
  REQUIRE(f.events.empty());
  REQUIRE(f.table.keys() == 1);
  f.advance(1000ms);
  REQUIRE(f.events.empty());
  f.tokens.on = true;
  f.table.resume_grants(f.now, f.events);
  f.check();
  auto ev = f.take();
  REQUIRE(ev.size() == 1);
  REQUIRE(ev[0].kind == event_kind::granted);
  REQUIRE(ev[0].owner == b);
}

// --- bounded and lazy expiry -------------------------------------------------------------------

TEST_CASE("expire_due processes at most max_deadlines per call and says when more are due",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect();
  for (int i = 0; i < 10; ++i) f.acquire(a, numbered("k", i), 0, 0, 100 + static_cast<std::uint32_t>(i));
  f.now += 200ms;
  std::vector<std::size_t> per_call;
  std::vector<bool> more;
  for (int call = 0; call < 4; ++call) {
    more.push_back(f.table.expire_due(f.now, f.events, 3));
    f.check();
    per_call.push_back(f.take().size());
  }
  REQUIRE(per_call == std::vector<std::size_t>{3, 3, 3, 1});
  REQUIRE(more == std::vector<bool>{true, true, true, false});
  REQUIRE(f.table.held() == 0);
  REQUIRE_FALSE(f.table.expire_due(f.now, f.events, 3));
}

TEST_CASE("a try-lock is not refused because of a lease whose deadline passed", "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  auto old = f.acquire(a, "k", 0, 0, 100);
  f.now += 150ms;  // no expire_due
  auto r = f.acquire(b, "k", 0);
  REQUIRE(r.status == acquire_status::granted);
  REQUIRE(r.token > old.token);
  auto ev = f.take();
  REQUIRE(ev.size() == 1);
  REQUIRE(ev[0].kind == event_kind::expired);
  REQUIRE(ev[0].owner == a);
  REQUIRE(ev[0].token == old.token);
  REQUIRE(f.table.counters().expirations == 1);
}

TEST_CASE("an acquire behind an expired lease lets the key's waiters go first", "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect(), c = f.table.connect();
  f.acquire(a, "k", 0, 0, 100);
  f.acquire(b, "k", std::nullopt, 1);
  f.now += 150ms;
  REQUIRE(f.acquire(c, "k", 0).status == acquire_status::busy);
  auto ev = f.take();
  REQUIRE(ev.size() == 2);
  REQUIRE(ev[0].kind == event_kind::expired);
  REQUIRE(ev[1].kind == event_kind::granted);
  REQUIRE(ev[1].owner == b);
}

TEST_CASE("an idle key left after lazy expiry forgets its limit", "[table]") {
  fixture f;
  owner_id a = f.table.connect();
  f.acquire(a, "k", 0, 0, 100, 2);
  f.now += 150ms;
  REQUIRE(f.acquire(a, "k", 0, 0, 100, 1).status == acquire_status::granted);
}

TEST_CASE("inspect, held(now) and top leave out leases whose deadline passed", "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  f.acquire(a, "short", 0, 0, 100);
  auto live = f.acquire(a, "sem", 0, 0, 1000, 2);
  f.acquire(a, "sem", 0, 0, 100, 2);
  f.acquire(b, "sem", std::nullopt, 1, 1000, 2);
  f.acquire(b, "short", std::nullopt, 2);
  f.now += 100ms;  // three leases are over; no timer ran
  REQUIRE(f.table.held() == 3);
  REQUIRE(f.table.held(f.now) == 1);
  REQUIRE(f.table.held(f.now - 1ms) == 3);
  auto info = f.table.inspect("short", f.now);
  REQUIRE(info.holders.empty());
  REQUIRE(info.waiters == 1);
  info = f.table.inspect("sem", f.now);
  REQUIRE(info.holders.size() == 1);
  REQUIRE(info.holders[0].token == live.token);
  auto top = f.table.top(10, f.now);
  REQUIRE(top.oldest.size() == 1);
  REQUIRE(top.oldest[0].token == live.token);
  REQUIRE(top.queues.size() == 2);
  REQUIRE(top.queues[0].key == "sem");  // ties of one waiter: key order
  REQUIRE(top.queues[0].held == 1);
  REQUIRE(top.queues[1].key == "short");
  REQUIRE(top.queues[1].held == 0);
}

TEST_CASE("held(now) counts due leases correctly in a large deadline heap", "[table]") {
  fixture f;
  owner_id a = f.table.connect();
  std::mt19937_64 rng(7);
  std::vector<std::uint32_t> ttls;
  for (int i = 0; i < 500; ++i) {
    auto ttl = static_cast<std::uint32_t>(1 + rng() % 1000);
    ttls.push_back(ttl);
    f.acquire(a, numbered("k", i), 0, 0, ttl);
    if (i % 3 == 0) f.acquire(a, numbered("k", i), static_cast<std::uint32_t>(rng() % 1000), 0);
  }
  for (std::uint32_t t : {0u, 1u, 17u, 250u, 500u, 999u, 1000u}) {
    auto expected = static_cast<std::size_t>(
        std::count_if(ttls.begin(), ttls.end(), [&](std::uint32_t ttl) { return ttl > t; }));
    REQUIRE(f.table.held(f.now + std::chrono::milliseconds(t)) == expected);
  }
}

// --- top ---------------------------------------------------------------------------------------

TEST_CASE("top matches a brute-force reference over random operations, ties included",
          "[table]") {
  table_limits limits;
  limits.lock_delay_ms = 20;
  fixture f(limits);
  std::mt19937_64 rng(1234);
  // Keys with bytes above 0x7f: key order is bytewise, as unsigned char.
  std::vector<std::string> keys = {"a", "b", "B", "k\x01", "k\xff", "k\x7f", "zz", "z", "\xc3\xa9"};
  std::vector<owner_id> owners;
  for (int i = 0; i < 5; ++i) owners.push_back(f.table.connect());
  std::map<std::uint64_t, tick> granted_at;
  std::vector<std::pair<std::string, std::uint64_t>> held;
  auto absorb = [&] {
    for (const auto& ev : f.take()) {
      if (ev.kind == event_kind::granted) granted_at[ev.token] = f.now;
    }
  };
  for (int step = 0; step < 3000; ++step) {
    std::uint64_t r = rng();
    owner_id o = owners[r % owners.size()];
    const std::string& key = keys[(r >> 8) % keys.size()];
    const std::uint32_t limit = key.size() == 1 ? 1u : 2u;
    switch ((r >> 16) % 6) {
      case 0:
      case 1: {
        std::optional<std::uint32_t> wait;
        if ((r >> 24) % 3 == 1) wait = static_cast<std::uint32_t>((r >> 32) % 60);
        auto res = f.acquire(o, key, wait, step, 1 + (r >> 40) % 100, limit);
        if (res.status == acquire_status::granted) {
          granted_at[res.token] = f.now;
          held.emplace_back(key, res.token);
        }
        break;
      }
      case 2:
        if (!held.empty()) {
          auto i = (r >> 24) % held.size();
          f.release(held[i].first, held[i].second);
          held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
        }
        break;
      case 3:
        f.now += std::chrono::milliseconds((r >> 24) % 15);  // timers late: due leases linger
        break;
      case 4:
        if ((r >> 24) % 4 == 0) f.advance(0ms);
        break;
      default:
        if ((r >> 24) % 30 == 0) {
          f.table.cancel_waiters(o, f.now, f.events);
          f.check();
        }
        break;
    }
    absorb();
    // The reference: every key through inspect(), sorted by the documented orders.
    std::vector<top_queue> queues;
    std::vector<top_lease> oldest;
    for (const auto& k : keys) {
      auto info = f.table.inspect(k, f.now);
      if (info.waiters > 0) {
        queues.push_back({k, static_cast<std::uint32_t>(info.waiters),
                          static_cast<std::uint32_t>(info.holders.size()), info.limit});
      }
      for (const auto& h : info.holders) {
        oldest.push_back({k, h.token, f.now - granted_at.at(h.token), h.ttl_ms_left, h.owner});
      }
    }
    std::sort(queues.begin(), queues.end(), [](const top_queue& a, const top_queue& b) {
      return a.waiters != b.waiters ? a.waiters > b.waiters : a.key < b.key;
    });
    std::sort(oldest.begin(), oldest.end(), [](const top_lease& a, const top_lease& b) {
      return a.held_for != b.held_for ? a.held_for > b.held_for : a.token < b.token;
    });
    REQUIRE(f.table.held(f.now) == oldest.size());
    const std::size_t n = 1 + (r >> 56) % 6;
    if (queues.size() > n) queues.resize(n);
    if (oldest.size() > n) oldest.resize(n);
    auto top = f.table.top(n, f.now);
    REQUIRE(top.queues.size() == queues.size());
    for (std::size_t i = 0; i < queues.size(); ++i) {
      REQUIRE(top.queues[i].key == queues[i].key);
      REQUIRE(top.queues[i].waiters == queues[i].waiters);
      REQUIRE(top.queues[i].held == queues[i].held);
      REQUIRE(top.queues[i].limit == queues[i].limit);
    }
    REQUIRE(top.oldest.size() == oldest.size());
    for (std::size_t i = 0; i < oldest.size(); ++i) {
      REQUIRE(top.oldest[i].key == oldest[i].key);
      REQUIRE(top.oldest[i].token == oldest[i].token);
      REQUIRE(top.oldest[i].held_for == oldest[i].held_for);
      REQUIRE(top.oldest[i].ttl_ms_left == oldest[i].ttl_ms_left);
      REQUIRE(top.oldest[i].owner == oldest[i].owner);
    }
  }
}

// --- half-close --------------------------------------------------------------------------------

TEST_CASE("cancel_waiters answers every queued acquire of the owner in arrival order and keeps "
          "its leases",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  auto r = f.acquire(a, "k1", 0);
  f.acquire(a, "k2", 0);
  f.acquire(b, "k2", std::nullopt, 7);
  f.acquire(b, "k1", 50u, 8);
  f.acquire(b, "k2", std::nullopt, 9);
  f.acquire(a, "k2", std::nullopt, 1);  // another owner's waiter stays
  f.acquire(b, "solo", 0);
  f.table.cancel_waiters(b, f.now, f.events);
  f.check();
  auto ev = f.take();
  REQUIRE(ev.size() == 3);
  for (const auto& e : ev) {
    REQUIRE(e.kind == event_kind::cancelled);
    REQUIRE(e.owner == b);
  }
  REQUIRE(ev[0].request_id == std::optional<std::uint64_t>(7));
  REQUIRE(ev[1].request_id == std::optional<std::uint64_t>(8));
  REQUIRE(ev[2].request_id == std::optional<std::uint64_t>(9));
  REQUIRE(f.table.counters().cancels == 3);
  REQUIRE(f.table.owner_waiters(b) == 0);
  REQUIRE(f.table.owner_leases(b) == 1);
  REQUIRE(f.table.waiting() == 1);
  REQUIRE(f.table.top(5, f.now).queues.size() == 1);
  f.table.cancel_waiters(b, f.now, f.events);  // nothing left: no events
  REQUIRE(f.events.empty());
  REQUIRE(f.release("k1", r.token) == lease_status::ok);
  REQUIRE(f.take().empty());  // b's cancelled waiter on k1 is not granted
}

// --- shared and exclusive modes ------------------------------------------------------------------

namespace {

using ids = std::vector<std::uint64_t>;

}  // namespace

TEST_CASE("readers share a key while a writer waits for the last of them", "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect(), w = f.table.connect();
  auto r1 = f.shared(a, "k", 0);
  auto r2 = f.shared(b, "k", 0);
  REQUIRE(r1.status == acquire_status::granted);
  REQUIRE(r2.status == acquire_status::granted);
  REQUIRE(f.acquire(w, "k", 0).status == acquire_status::busy);
  REQUIRE(f.acquire(w, "k", std::nullopt, 9).status == acquire_status::queued);
  auto info = f.table.inspect("k", f.now);
  REQUIRE(info.holders.size() == 2);
  REQUIRE(info.holders[0].mode == lock_mode::shared);
  REQUIRE(info.holders[1].mode == lock_mode::shared);
  REQUIRE(info.waiters == 1);
  REQUIRE(f.release("k", r1.token) == lease_status::ok);
  REQUIRE(f.take().empty());  // one reader still holds
  REQUIRE(f.release("k", r2.token) == lease_status::ok);
  REQUIRE(f.granted_ids() == ids{9});
  REQUIRE(f.table.inspect("k", f.now).holders.at(0).mode == lock_mode::exclusive);
  REQUIRE(f.table.counters().grants == 3);
  REQUIRE(f.table.counters().grants_shared == 2);
}

TEST_CASE("a reader arriving while a writer waits queues behind it, so writers never starve",
          "[table]") {
  fixture f;
  owner_id r = f.table.connect(), w = f.table.connect(), late = f.table.connect();
  auto held = f.shared(r, "k", 0);
  REQUIRE(f.acquire(w, "k", std::nullopt, 1).status == acquire_status::queued);
  // The key is held in shared mode only, but a writer waits: no reader goes ahead of it.
  REQUIRE(f.shared(late, "k", 0).status == acquire_status::busy);
  REQUIRE(f.shared(late, "k", std::nullopt, 2).status == acquire_status::queued);
  REQUIRE(f.release("k", held.token) == lease_status::ok);
  REQUIRE(f.granted_ids() == ids{1});
}

TEST_CASE("waiters of mixed modes are granted in FIFO order, a run of readers together",
          "[table]") {
  fixture f;
  owner_id o = f.table.connect(), p = f.table.connect();
  auto writer = f.acquire(o, "k", 0);
  // Queue: R1 R2 W3 R4 R5 W6
  f.shared(p, "k", std::nullopt, 1);
  f.shared(p, "k", std::nullopt, 2);
  f.acquire(p, "k", std::nullopt, 3);
  f.shared(p, "k", std::nullopt, 4);
  f.shared(p, "k", std::nullopt, 5);
  f.acquire(p, "k", std::nullopt, 6);
  REQUIRE(f.release("k", writer.token) == lease_status::ok);
  auto evs = f.take();
  REQUIRE(evs.size() == 2);  // the run R1 R2, ended by the writer W3
  REQUIRE(evs[0].request_id == 1u);
  REQUIRE(evs[1].request_id == 2u);
  REQUIRE(f.release("k", evs[0].token) == lease_status::ok);
  REQUIRE(f.take().empty());
  REQUIRE(f.release("k", evs[1].token) == lease_status::ok);
  evs = f.take();
  REQUIRE(evs.size() == 1);
  REQUIRE(evs[0].request_id == 3u);
  REQUIRE(f.release("k", evs[0].token) == lease_status::ok);
  evs = f.take();
  REQUIRE(evs.size() == 2);
  REQUIRE(evs[0].request_id == 4u);
  REQUIRE(evs[1].request_id == 5u);
  REQUIRE(f.table.inspect("k", f.now).waiters == 1);
}

TEST_CASE("cancelling the writer at the head lets the readers behind it join the readers holding",
          "[table]") {
  fixture f;
  owner_id r = f.table.connect(), w = f.table.connect(), q = f.table.connect();
  f.shared(r, "k", 0);
  f.acquire(w, "k", std::nullopt, 1);
  f.shared(q, "k", std::nullopt, 2);
  f.shared(q, "k", std::nullopt, 3);
  f.acquire(q, "k", std::nullopt, 4);
  SECTION("by cancel") {
    REQUIRE(f.table.cancel(w, 1, f.now, f.events));
    f.check();
  }
  SECTION("by its owner's half-close") {
    f.table.cancel_waiters(w, f.now, f.events);
    f.check();
  }
  SECTION("by its owner's disconnect") {
    f.table.disconnect(w, f.now, f.events);
    f.check();
  }
  REQUIRE(f.granted_ids() == ids{2, 3});
  REQUIRE(f.table.inspect("k", f.now).holders.size() == 3);
  REQUIRE(f.table.inspect("k", f.now).waiters == 1);
}

TEST_CASE("a reader's wait timing out at the head of a queue behind a writer hands the key on",
          "[table]") {
  fixture f;
  owner_id r = f.table.connect(), w = f.table.connect(), q = f.table.connect();
  f.shared(r, "k", 0);
  f.acquire(w, "k", 50, 1);  // a writer with a bounded wait at the head
  f.shared(q, "k", std::nullopt, 2);
  f.advance(50ms);
  auto evs = f.take();
  REQUIRE(evs.size() == 2);
  REQUIRE(evs[0].kind == event_kind::wait_timeout);
  REQUIRE(evs[0].request_id == 1u);
  REQUIRE(evs[1].kind == event_kind::granted);
  REQUIRE(evs[1].request_id == 2u);
}

TEST_CASE("a shared lease past its deadline does not block a writer's try-lock", "[table]") {
  fixture f;
  owner_id r = f.table.connect(), w = f.table.connect();
  auto old = f.shared(r, "k", 0, 0, 100);
  f.now += 150ms;  // over; its timer has not run
  REQUIRE(f.table.inspect("k", f.now).holders.empty());
  auto got = f.acquire(w, "k", 0);
  REQUIRE(got.status == acquire_status::granted);
  auto evs = f.take();
  REQUIRE(evs.size() == 1);
  REQUIRE(evs[0].kind == event_kind::expired);
  REQUIRE(evs[0].token == old.token);
}

// --- several keys at once ------------------------------------------------------------------------

TEST_CASE("a set over overlapping keys is granted atomically, one token for every key",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect(), c = f.table.connect();
  auto x = f.acquire(a, "x", 0);
  REQUIRE(f.acquire_set(b, {"x", "y"}, std::nullopt, 1).status == acquire_status::queued);
  // y is free, but the set holds y's queue: a later request for y waits behind it.
  REQUIRE(f.table.inspect("y", f.now).holders.empty());
  REQUIRE(f.acquire(c, "y", 0).status == acquire_status::busy);
  REQUIRE(f.acquire(c, "y", std::nullopt, 2).status == acquire_status::queued);
  REQUIRE(f.release("x", x.token) == lease_status::ok);
  auto evs = f.take();
  REQUIRE(evs.size() == 1);
  REQUIRE(evs[0].request_id == 1u);
  auto hx = f.table.inspect("x", f.now).holders;
  auto hy = f.table.inspect("y", f.now).holders;
  REQUIRE(hx.size() == 1);
  REQUIRE(hy.size() == 1);
  REQUIRE(hx[0].token == evs[0].token);
  REQUIRE(hy[0].token == evs[0].token);
  REQUIRE(hx[0].keys == std::vector<std::string_view>{"x", "y"});
  REQUIRE(f.table.held() == 2);  // each key of the set is a lease
  REQUIRE(f.table.waiting() == 1);
  REQUIRE(f.table.counters().grants == 2);
}

TEST_CASE("sets requested in opposite orders never deadlock, nor do three in a cycle", "[table]") {
  fixture f;
  owner_id h = f.table.connect(), a = f.table.connect(), b = f.table.connect(),
           c = f.table.connect();
  SECTION("two sets") {
    auto hx = f.acquire(h, "x", 0);
    auto hy = f.acquire(h, "y", 0);
    f.acquire_set(a, {"x", "y"}, std::nullopt, 1);
    f.acquire_set(b, {"y", "x"}, std::nullopt, 2);
    REQUIRE(f.release("y", hy.token) == lease_status::ok);
    REQUIRE(f.take().empty());  // A is first on y too, and waits for x
    REQUIRE(f.release("x", hx.token) == lease_status::ok);
    auto evs = f.take();
    REQUIRE(evs.size() == 1);
    REQUIRE(evs[0].request_id == 1u);
    REQUIRE(f.release_set({"y", "x"}, evs[0].token) == lease_status::ok);
    REQUIRE(f.granted_ids() == ids{2});
  }
  SECTION("a cycle of three") {
    auto hx = f.acquire(h, "x", 0);
    auto hy = f.acquire(h, "y", 0);
    auto hz = f.acquire(h, "z", 0);
    f.acquire_set(a, {"x", "y"}, std::nullopt, 1);
    f.acquire_set(b, {"y", "z"}, std::nullopt, 2);
    f.acquire_set(c, {"z", "x"}, std::nullopt, 3);
    REQUIRE(f.release("z", hz.token) == lease_status::ok);
    REQUIRE(f.release("y", hy.token) == lease_status::ok);
    REQUIRE(f.take().empty());  // B needs z, where C is behind it, and y, where A is ahead
    REQUIRE(f.release("x", hx.token) == lease_status::ok);
    auto evs = f.take();
    REQUIRE(evs.size() == 1);
    REQUIRE(evs[0].request_id == 1u);
    REQUIRE(f.release("x", evs[0].token) == lease_status::ok);
    REQUIRE(f.granted_ids() == ids{2});  // C still waits behind B on z
    auto bz = f.table.inspect("z", f.now).holders.at(0).token;
    REQUIRE(f.release("y", bz) == lease_status::ok);
    REQUIRE(f.granted_ids() == ids{3});
  }
}

TEST_CASE("a set blocked on one key holds that key's queue, and its leaving unblocks the rest",
          "[table]") {
  fixture f;
  owner_id h = f.table.connect(), s = f.table.connect(), q = f.table.connect();
  f.acquire(h, "x", 0);
  REQUIRE(f.acquire_set(s, {"x", "y"}, 100, 1).status == acquire_status::queued);
  REQUIRE(f.acquire(q, "y", std::nullopt, 2).status == acquire_status::queued);
  REQUIRE(f.shared(q, "y", std::nullopt, 3).status == acquire_status::queued);
  REQUIRE(f.table.inspect("y", f.now).waiters == 3);
  std::vector<table_event> evs;
  SECTION("cancel") {
    REQUIRE(f.table.cancel(s, 1, f.now, f.events));
    f.check();
    evs = f.take();
    REQUIRE(evs.at(0).kind == event_kind::cancelled);
  }
  SECTION("wait timeout") {
    f.advance(100ms);
    evs = f.take();
    REQUIRE(evs.at(0).kind == event_kind::wait_timeout);
  }
  SECTION("disconnect") {
    f.table.disconnect(s, f.now, f.events);
    f.check();
    evs = f.take();
    evs.insert(evs.begin(), table_event{});  // no event for the departed owner
  }
  SECTION("cancel_waiters") {
    f.table.cancel_waiters(s, f.now, f.events);
    f.check();
    evs = f.take();
    REQUIRE(evs.at(0).kind == event_kind::cancelled);
  }
  // The exclusive waiter behind the set on y is granted (and the reader behind it waits).
  REQUIRE(evs.size() == 2);
  REQUIRE(evs[1].kind == event_kind::granted);
  REQUIRE(evs[1].request_id == 2u);
  REQUIRE(f.table.inspect("x", f.now).waiters == 0);
  REQUIRE(f.table.inspect("y", f.now).waiters == 1);
}

TEST_CASE("a set expires as a whole with one event naming every key in the order requested",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  auto set = f.acquire_set(a, {"k2", "k1", "k3"}, 0, 0, lock_mode::exclusive, 100);
  REQUIRE(set.status == acquire_status::granted);
  f.acquire(b, "k3", std::nullopt, 7);
  f.advance(100ms);
  auto evs = f.take();
  REQUIRE(evs.size() == 2);
  REQUIRE(evs[0].kind == event_kind::expired);
  REQUIRE(evs[0].owner == a);
  REQUIRE(evs[0].token == set.token);
  REQUIRE(evs[0].key == "k2");
  REQUIRE(evs[0].keys == std::vector<std::string>{"k2", "k1", "k3"});
  REQUIRE(evs[1].request_id == 7u);
  REQUIRE(f.table.held() == 1);
  REQUIRE(f.table.keys() == 1);
  REQUIRE(f.table.counters().expirations == 1);
  // A single-key lease's event has no key list.
  f.advance(1000ms);
  evs = f.take();
  REQUIRE(evs.size() == 1);
  REQUIRE(evs[0].keys.empty());
}

TEST_CASE("a set is released whole by any one of its keys or by its exact key set", "[table]") {
  fixture f;
  owner_id a = f.table.connect();
  auto set = f.acquire_set(a, {"x", "y", "z"}, 0);
  REQUIRE(set.status == acquire_status::granted);
  SECTION("by a member key") { REQUIRE(f.release("y", set.token) == lease_status::ok); }
  SECTION("by the set in another order") {
    REQUIRE(f.release_set({"z", "x", "y"}, set.token) == lease_status::ok);
  }
  SECTION("not by a wrong set, which changes nothing") {
    REQUIRE(f.release_set({"x", "y"}, set.token) == lease_status::not_held);
    REQUIRE(f.release_set({"x", "y", "z", "w"}, set.token) == lease_status::not_held);
    REQUIRE(f.release_set({"x", "y", "w"}, set.token) == lease_status::not_held);
    REQUIRE(f.release("w", set.token) == lease_status::not_held);
    REQUIRE(f.table.held() == 3);
    REQUIRE(f.release_set({"y", "z", "x"}, set.token) == lease_status::ok);
  }
  REQUIRE(f.table.held() == 0);
  REQUIRE(f.table.keys() == 0);
  REQUIRE(f.table.owner_leases(a) == 0);
  REQUIRE(f.table.counters().releases == 1);
  REQUIRE(f.release("x", set.token) == lease_status::not_held);
}

TEST_CASE("extend of a set moves the one deadline of all its keys", "[table]") {
  fixture f;
  owner_id a = f.table.connect();
  auto set = f.acquire_set(a, {"x", "y"}, 0, 0, lock_mode::exclusive, 100);
  f.now += 80ms;
  std::uint32_t applied = 0;
  SECTION("by a member key") {
    REQUIRE(f.table.extend("y", set.token, 100, f.now, f.events, &applied) == lease_status::ok);
  }
  SECTION("by its keys") {
    std::vector<std::string_view> ks{"y", "x"};
    REQUIRE(f.table.extend(ks, set.token, 100, f.now, f.events, &applied) == lease_status::ok);
    std::vector<std::string_view> wrong{"y"};
    REQUIRE(f.table.extend(wrong, set.token, 100, f.now, f.events, &applied) ==
            lease_status::not_held);
  }
  f.check();
  REQUIRE(applied == 100);
  REQUIRE(f.table.inspect("x", f.now).holders.at(0).ttl_ms_left == 100);
  REQUIRE(f.table.inspect("y", f.now).holders.at(0).ttl_ms_left == 100);
  f.advance(99ms);
  REQUIRE(f.take().empty());
  f.advance(1ms);
  auto evs = f.take();
  REQUIRE(evs.size() == 1);
  REQUIRE(evs[0].keys.size() == 2);
}

TEST_CASE("a try-lock of a set is granted only when every key is free, else changes nothing",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  f.acquire(a, "y", 0);
  REQUIRE(f.acquire_set(b, {"x", "y", "z"}, 0).status == acquire_status::busy);
  REQUIRE(f.table.keys() == 1);  // x and z were never added
  REQUIRE(f.table.waiting() == 0);
  REQUIRE(f.acquire_set(b, {"x", "z"}, 0).status == acquire_status::granted);
  REQUIRE(f.table.keys() == 3);
}

TEST_CASE("a set with a key live at another limit answers conflict without side effects",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  f.acquire(a, "sem", 0, 0, 1000, 3);
  REQUIRE(f.acquire_set(b, {"fresh", "sem"}, std::nullopt).status == acquire_status::conflict);
  REQUIRE(f.table.keys() == 1);
  REQUIRE(f.acquire_set(b, {"fresh", "sem"}, std::nullopt, 0, lock_mode::exclusive, 1000, 3)
              .status == acquire_status::granted);
}

TEST_CASE("each key of a set counts toward the lease bounds; a queued set is one pending acquire",
          "[table]") {
  SECTION("max_leases_per_owner") {
    table_limits limits;
    limits.max_leases_per_owner = 3;
    fixture f(limits);
    owner_id a = f.table.connect();
    f.acquire(a, "k0", 0);
    REQUIRE(f.acquire_set(a, {"x", "y", "z"}, 0).status ==
            acquire_status::too_many_owner_leases);
    REQUIRE(f.table.keys() == 1);
    REQUIRE(f.acquire_set(a, {"x", "y"}, 0).status == acquire_status::granted);
    REQUIRE(f.table.owner_leases(a) == 3);
  }
  SECTION("max_leases") {
    table_limits limits;
    limits.max_leases = 3;
    fixture f(limits);
    owner_id a = f.table.connect(), b = f.table.connect();
    auto k0 = f.acquire(a, "k0", 0);
    REQUIRE(f.acquire_set(b, {"x", "y", "z"}, 0).status == acquire_status::too_many_leases);
    REQUIRE(f.acquire_set(b, {"x", "y"}, 0).status == acquire_status::granted);
    REQUIRE(f.table.held() == 3);
    // Queued behind k0, the set would sit at w's free slot: that slot is reserved, and the
    // bound is reached. Once k0 is free, the set would need two leases where one frees.
    REQUIRE(f.acquire_set(a, {"k0", "w"}, std::nullopt).status == acquire_status::too_many_leases);
    REQUIRE(f.release("k0", k0.token) == lease_status::ok);
    REQUIRE(f.acquire_set(a, {"k0", "w"}, std::nullopt).status == acquire_status::too_many_leases);
    REQUIRE(f.table.keys() == 2);
  }
  SECTION("max_pending_per_owner and max_waiters_per_key") {
    table_limits limits;
    limits.max_pending_per_owner = 2;
    limits.max_waiters_per_key = 2;
    fixture f(limits);
    owner_id h = f.table.connect(), a = f.table.connect(), b = f.table.connect();
    f.acquire(h, "x", 0);
    REQUIRE(f.acquire_set(a, {"x", "y", "z"}, std::nullopt, 1).status == acquire_status::queued);
    REQUIRE(f.table.owner_waiters(a) == 1);
    REQUIRE(f.table.waiting() == 1);
    REQUIRE(f.acquire_set(a, {"x", "w"}, std::nullopt, 2).status == acquire_status::queued);
    REQUIRE(f.acquire(a, "v", std::nullopt, 3).status == acquire_status::granted);
    REQUIRE(f.acquire(a, "x", std::nullopt, 4).status == acquire_status::too_many_waiters);
    REQUIRE(f.acquire_set(b, {"q", "x"}, std::nullopt, 5).status ==
            acquire_status::too_many_waiters);
    REQUIRE(f.table.keys() == 5);  // q was never added
  }
}

TEST_CASE("a set that finds tokens unavailable when freed stalls, and resume grants it",
          "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  auto x = f.acquire(a, "x", 0);
  f.acquire_set(b, {"y", "x"}, std::nullopt, 1);
  f.tokens.on = false;
  REQUIRE(f.release("x", x.token) == lease_status::ok);
  REQUIRE(f.take().empty());
  REQUIRE(f.acquire_set(a, {"z", "y"}, 0).status == acquire_status::unavailable);
  f.tokens.on = true;
  // y's queue is held by the stalled set: a try-lock there waits its turn.
  REQUIRE(f.acquire(a, "y", 0).status == acquire_status::busy);
  f.table.resume_grants(f.now, f.events);
  f.check();
  REQUIRE(f.granted_ids() == ids{1});
}

TEST_CASE("a set lost by expiry or disconnect puts every key in its lock delay", "[table]") {
  table_limits limits;
  limits.lock_delay_ms = 100;
  fixture f(limits);
  owner_id a = f.table.connect(), b = f.table.connect();
  f.acquire_set(a, {"x", "y"}, 0, 0, lock_mode::exclusive, 50);
  SECTION("expiry") {
    f.advance(50ms);
    REQUIRE(f.take().size() == 1);
  }
  SECTION("disconnect") {
    f.table.disconnect(a, f.now, f.events);
    f.check();
  }
  REQUIRE(f.acquire(b, "x", 0).status == acquire_status::busy);
  REQUIRE(f.acquire(b, "y", 0).status == acquire_status::busy);
  REQUIRE(f.acquire_set(b, {"y", "x"}, std::nullopt, 3).status == acquire_status::queued);
  f.advance(99ms);
  REQUIRE(f.granted_ids().empty());
  f.advance(100ms);
  REQUIRE(f.granted_ids() == ids{3});
}

TEST_CASE("a released set is not delayed and its keys leave the table when idle", "[table]") {
  table_limits limits;
  limits.lock_delay_ms = 100;
  fixture f(limits);
  owner_id a = f.table.connect();
  auto set = f.acquire_set(a, {"x", "y"}, 0);
  REQUIRE(f.release("x", set.token) == lease_status::ok);
  REQUIRE(f.table.keys() == 0);
  REQUIRE(f.acquire_set(a, {"y", "x"}, 0).status == acquire_status::granted);
}

TEST_CASE("inspect and top show modes and a set's keys", "[table]") {
  fixture f;
  owner_id a = f.table.connect(), b = f.table.connect();
  f.shared(a, "r", 0);
  auto set = f.acquire_set(b, {"s1", "s2"}, 0);
  auto info = f.table.inspect("s2", f.now);
  REQUIRE(info.holders.at(0).keys == std::vector<std::string_view>{"s1", "s2"});
  REQUIRE(info.holders.at(0).mode == lock_mode::exclusive);
  REQUIRE(f.table.inspect("r", f.now).holders.at(0).keys.empty());
  auto top = f.table.top(10, f.now);
  REQUIRE(top.oldest.size() == 3);
  REQUIRE(top.oldest[0].key == "r");
  REQUIRE(top.oldest[0].mode == lock_mode::shared);
  REQUIRE(top.oldest[1].key == "s1");
  REQUIRE(top.oldest[2].key == "s2");
  REQUIRE(top.oldest[2].token == set.token);
}

TEST_CASE("random sets and modes keep every invariant and end empty", "[table]") {
  table_limits limits;
  limits.lock_delay_ms = 5;
  limits.max_leases = 12;
  fixture f(limits);
  std::mt19937 rng(12);
  std::vector<owner_id> owners;
  for (int i = 0; i < 4; ++i) owners.push_back(f.table.connect());
  const std::vector<std::string_view> names{"a", "b", "c", "d", "e"};
  std::uint64_t id = 0;
  for (int step = 0; step < 20000; ++step) {
    const std::uint32_t r = rng();
    owner_id o = owners[r % owners.size()];
    switch ((r >> 4) % 6) {
      case 0:
      case 1: {
        std::vector<std::string_view> ks;
        const std::size_t n = 1 + (r >> 8) % 3;
        for (std::size_t i = 0; i < n; ++i) ks.push_back(names[((r >> 12) + i * 2) % names.size()]);
        std::optional<std::uint32_t> wait;
        if ((r >> 16) % 3 == 0) wait = (r >> 18) % 20;
        const lock_mode mode = (r >> 20) & 1 ? lock_mode::shared : lock_mode::exclusive;
        f.acquire_set(o, ks, wait, ++id, mode, 1 + (r >> 21) % 30);
        break;
      }
      case 2: {
        auto info = f.table.inspect(names[(r >> 8) % names.size()], f.now);
        if (!info.holders.empty()) f.release(names[(r >> 8) % names.size()], info.holders[0].token);
        break;
      }
      case 3:
        f.table.cancel(o, (r >> 8) % (id + 1), f.now, f.events);
        f.check();
        break;
      case 4:
        f.advance(std::chrono::milliseconds((r >> 8) % 8));
        break;
      default:
        if ((r >> 8) % 16 == 0) {
          f.table.disconnect(o, f.now, f.events);
          f.check();
          owners[r % owners.size()] = f.table.connect();
        }
        break;
    }
    f.events.clear();
  }
  for (owner_id o : owners) f.table.disconnect(o, f.now, f.events);
  f.advance(1000ms);
  REQUIRE(f.table.keys() == 0);
  REQUIRE(f.table.held() == 0);
  REQUIRE(f.table.waiting() == 0);
}
