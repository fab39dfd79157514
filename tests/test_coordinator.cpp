// Cluster mode's coordinator, deterministically: two daemons (each a coordinator and its lock
// table) over a simulated etcd that applies their requests in order and feeds both the watch
// events, with a fake clock. No threads, no sockets, no real etcd.
#include "cluster/coordinator.hpp"
#include "lock_table.hpp"

#include <catch2/catch.hpp>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

using namespace keylock;
using namespace std::chrono_literals;

namespace {

struct sim_etcd;

// One daemon: coordinator + table, its requests queued to the simulated etcd.
struct node final : etcd_port {
  sim_etcd& etcd;
  std::string name;
  std::int64_t lease;
  tick proof{std::chrono::hours(100'000)};  // far after the simulated clock
  coordinator coord;
  lock_table table;
  std::vector<table_event> events;

  node(sim_etcd& e, std::string n, std::int64_t l, std::uint32_t handoff_limit, tick idle_keep)
      : etcd(e),
        name(std::move(n)),
        lease(l),
        coord(options(handoff_limit, idle_keep, e), *this, [this] { return proof; }),
        table(table_limits{}, coord, table_histograms{}, hash_seed{}, &coord) {
    coord.attach(table);
  }
  static coordinator_options options(std::uint32_t limit, tick idle, sim_etcd& e);
  void create(const std::string& key, const std::string& etcd_key, std::int64_t l,
              const std::string& leaving) override;
  void remove(const std::string& key, const std::string& etcd_key) override;
  void bump_revision() override;
};

// etcd as the coordinators see it: a revision counter, keys with create revisions, and a watch
// that delivers every change to every node. Requests wait in `pending` until pump() runs them.
struct sim_etcd {
  std::int64_t revision = 1;
  std::size_t writes = 0;  // transactions that changed the store
  std::map<std::string, std::pair<std::int64_t, std::string>> keys;  // key -> (create rev, value)
  std::deque<std::function<void()>> pending;
  std::vector<node*> nodes;
  tick now{1'000'000'000};

  void broadcast(std::vector<etcd_event> evs) {
    ++writes;
    etcd_watch_batch batch;
    batch.revision = revision;
    batch.events = std::move(evs);
    for (node* n : nodes) n->coord.on_watch(batch, now, n->events);
  }
  void broadcast(etcd_event ev) { broadcast(std::vector<etcd_event>{std::move(ev)}); }
  // Runs queued requests (and what they cause) until none is left, or `limit` ran (a livelock:
  // rights going round without a grant). Returns how many ran.
  std::size_t pump(std::size_t limit = 10'000) {
    std::size_t ran = 0;
    while (!pending.empty() && ran++ < limit) {
      auto job = std::move(pending.front());
      pending.pop_front();
      job();
      for (node* n : nodes) n->coord.process(now, n->events);
    }
    return ran;
  }
  void start(node& n) {
    nodes.push_back(&n);
    std::vector<etcd_kv> kvs;
    n.coord.on_snapshot(revision, kvs, now, n.events);
    n.coord.session_up(n.lease, now, n.events);
  }
};

coordinator_options node::options(std::uint32_t limit, tick idle, sim_etcd& e) {
  coordinator_options o;
  o.handoff_limit = limit;
  o.idle_keep = idle;
  o.clock = [&e] { return e.now; };
  return o;
}

// One transaction: delete `leaving` (if given), create `etcd_key` if absent; one revision.
void node::create(const std::string& key, const std::string& etcd_key, std::int64_t l,
                  const std::string& leaving) {
  etcd.pending.push_back([this, key, etcd_key, l, leaving] {
    std::vector<etcd_event> evs;
    const std::int64_t rev = etcd.revision + 1;
    if (!leaving.empty() && etcd.keys.erase(leaving) != 0) {
      etcd_event ev;
      ev.what = etcd_event::kind::remove;
      ev.kv.key = leaving;
      ev.kv.mod_revision = rev;
      evs.push_back(ev);
    }
    auto it = etcd.keys.find(etcd_key);
    if (it == etcd.keys.end()) {
      it = etcd.keys.emplace(etcd_key, std::pair{rev, name}).first;
      etcd_event ev;
      ev.kv = {etcd_key, name, rev, rev, l};
      evs.push_back(ev);
    }
    if (!evs.empty()) {
      etcd.revision = rev;
      etcd.broadcast(std::move(evs));
    }
    coord.on_created(key, etcd_key, true, it->second.first, etcd.now, events);
  });
}

void node::remove(const std::string& key, const std::string& etcd_key) {
  etcd.pending.push_back([this, key, etcd_key] {
    if (etcd.keys.erase(etcd_key) != 0) {
      ++etcd.revision;
      etcd_event ev;
      ev.what = etcd_event::kind::remove;
      ev.kv.key = etcd_key;
      ev.kv.mod_revision = etcd.revision;
      etcd.broadcast(ev);
    }
    coord.on_removed(key, etcd_key, true, etcd.now, events);
  });
}

void node::bump_revision() {
  etcd.pending.push_back([this] {
    ++etcd.revision;
    coord.on_revision(etcd.revision, etcd.now, events);
  });
}

acquire_result acquire(node& n, owner_id o, std::string_view key, std::uint64_t id,
                       std::optional<std::uint32_t> wait_ms = std::nullopt) {
  acquire_args a;
  a.key = key;
  a.ttl_ms = 60'000;
  a.wait_ms = wait_ms;
  a.request_id = id;
  auto r = n.table.acquire(o, a, n.etcd.now, n.events);
  n.coord.process(n.etcd.now, n.events);
  return r;
}

// The grants in `events` (request id -> token), then clears them.
std::map<std::uint64_t, std::uint64_t> take_grants(node& n) {
  std::map<std::uint64_t, std::uint64_t> out;
  for (const auto& ev : n.events) {
    if (ev.kind == event_kind::granted) out[ev.request_id.value_or(0)] = ev.token;
  }
  n.events.clear();
  return out;
}

// Two daemons over one etcd; a client of `a` has been granted `k` (its token returned).
std::uint64_t a_holds_k(sim_etcd& etcd, node& a, node& b) {
  etcd.start(a);
  etcd.start(b);
  owner_id o = a.table.connect();
  acquire(a, o, "k", 1);
  etcd.pump();
  auto g = take_grants(a);
  REQUIRE(g.count(1));
  return g[1];
}

void release(node& n, std::string_view key, std::uint64_t token) {
  REQUIRE(n.table.release(key, token, n.etcd.now, n.events) == lease_status::ok);
  n.coord.process(n.etcd.now, n.events);
}

}  // namespace

TEST_CASE("coordinator: a key's right is won in etcd, then local grants need no round trip") {
  sim_etcd etcd;
  node a(etcd, "a", 0xa, 32, 500ms);
  etcd.start(a);
  owner_id o = a.table.connect();
  REQUIRE(acquire(a, o, "k", 1).status == acquire_status::queued);
  CHECK(etcd.pending.size() == 1);  // the create
  etcd.pump();
  auto g = take_grants(a);
  REQUIRE(g.count(1));
  // The token is derived from a revision at least that of the win.
  CHECK(g[1] >> 20 >= static_cast<std::uint64_t>(etcd.keys.begin()->second.first));
  CHECK(a.coord.view("k").holder == "a");
  release(a, "k", g[1]);
  // Held and idle: the next acquire is granted at once, with no etcd request.
  auto r = acquire(a, o, "k", 2);
  REQUIRE(r.status == acquire_status::granted);
  CHECK(r.token > g[1]);
  CHECK(etcd.pending.empty());
  CHECK(a.coord.counters().global_acquisitions == 1);
}

TEST_CASE(
    "coordinator: the right goes to a waiting daemon after handoff_limit local grants, "
    "and tokens keep increasing across daemons") {
  sim_etcd etcd;
  node a(etcd, "a", 0xa, 2, 500ms), b(etcd, "b", 0xb, 2, 500ms);
  etcd.start(a);
  etcd.start(b);
  owner_id a1 = a.table.connect(), a2 = a.table.connect(), a3 = a.table.connect();
  owner_id b1 = b.table.connect();
  acquire(a, a1, "k", 1);
  etcd.pump();
  auto g = take_grants(a);
  REQUIRE(g.count(1));
  std::uint64_t last = g[1];
  acquire(a, a2, "k", 2);
  acquire(a, a3, "k", 3);
  REQUIRE(acquire(b, b1, "k", 9).status == acquire_status::queued);
  etcd.pump();
  CHECK(b.coord.view("k").daemons_waiting == 1);
  release(a, "k", last);  // grant 2 of 2 goes to a2
  g = take_grants(a);
  REQUIRE(g.count(2));
  CHECK(g[2] > last);
  last = g[2];
  release(a, "k", last);  // limit reached, b waits: a3 is not granted, the right moves
  CHECK(take_grants(a).empty());
  const std::size_t writes = etcd.writes;
  etcd.pump();
  g = take_grants(b);
  REQUIRE(g.count(9));
  CHECK(g[9] > last);
  last = g[9];
  CHECK(a.coord.counters().remote_handoffs == 1);
  // One etcd write passed the right on and queued a again (for a3) behind b.
  CHECK(etcd.writes == writes + 1);
  CHECK(b.coord.view("k").daemons_waiting == 1);
  // a queued again behind b: b's release hands the right back, and a3 is granted.
  release(b, "k", last);
  etcd.pump();
  g = take_grants(a);
  REQUIRE(g.count(3));
  CHECK(g[3] > last);
}

TEST_CASE("coordinator: an idle right is given up after idle_keep, or at once when asked") {
  sim_etcd etcd;
  node a(etcd, "a", 0xa, 32, 500ms), b(etcd, "b", 0xb, 32, 500ms);
  release(a, "k", a_holds_k(etcd, a, b));
  REQUIRE(a.coord.next_deadline());
  CHECK(*a.coord.next_deadline() == etcd.now + 500ms);
  SECTION("after idle_keep") {
    etcd.now += 499ms;
    a.coord.process(etcd.now, a.events);
    CHECK(etcd.pending.empty());
    etcd.now += 1ms;
    a.coord.process(etcd.now, a.events);
    REQUIRE(etcd.pending.size() == 1);  // the remove
    etcd.pump();
    CHECK(a.coord.view("k").holder.empty());
    CHECK(a.coord.counters().idle_releases == 1);
  }
  SECTION("when another daemon asks") {
    owner_id p = b.table.connect();
    acquire(b, p, "k", 5);
    etcd.pump();
    CHECK(take_grants(b).count(5) == 1);
  }
}

TEST_CASE("coordinator: a try-lock is busy when another daemon has the key") {
  sim_etcd etcd;
  node a(etcd, "a", 0xa, 32, 500ms), b(etcd, "b", 0xb, 32, 500ms);
  a_holds_k(etcd, a, b);
  owner_id p = b.table.connect();
  REQUIRE(acquire(b, p, "k", 2, 0).status == acquire_status::queued);
  etcd.pump();
  bool busy = false;
  for (const auto& ev : b.events)
    busy = busy || (ev.kind == event_kind::busy && ev.request_id == 2u);
  CHECK(busy);
  // b withdrew from etcd's queue: a's right is not contended.
  CHECK(a.coord.view("k").daemons_waiting == 0);
}

TEST_CASE("coordinator: losing the etcd lease ends every lease and stops every grant") {
  sim_etcd etcd;
  node a(etcd, "a", 0xa, 32, 500ms);
  etcd.start(a);
  owner_id o = a.table.connect(), p = a.table.connect();
  acquire(a, o, "k", 1);
  etcd.pump();
  REQUIRE(take_grants(a).count(1));
  acquire(a, p, "k", 2);
  a.proof = tick{0};  // the proof ran out
  CHECK_FALSE(a.coord.ready());
  CHECK(acquire(a, p, "other", 3).status == acquire_status::unavailable);
  a.coord.session_lost(etcd.now, a.events);
  std::size_t expired = 0;
  for (const auto& ev : a.events) expired += ev.kind == event_kind::expired;
  CHECK(expired == 1);
  CHECK(take_grants(a).empty());  // the waiter is not granted
  CHECK(a.table.activity("k").waiting == 1);
  // A new lease: the waiter's key is asked for again, and granted.
  a.proof = tick{std::chrono::hours(100'000)};
  a.lease = 0xaa;
  a.coord.session_up(a.lease, etcd.now, a.events);
  // The old lease's keys go when etcd revokes (or expires) it; the waiter's key waits for that.
  etcd.pump();
  CHECK(take_grants(a).empty());
  while (!etcd.keys.empty()) {
    auto it = etcd.keys.begin();
    if (it->first.find("/00000000000000aa") != std::string::npos) break;  // the new lease's
    std::string gone = it->first;
    etcd.keys.erase(it);
    ++etcd.revision;
    etcd_event ev;
    ev.what = etcd_event::kind::remove;
    ev.kv.key = gone;
    etcd.broadcast(ev);
  }
  a.coord.process(etcd.now, a.events);
  etcd.pump();
  CHECK(take_grants(a).count(2) == 1);
}

TEST_CASE("coordinator: ttl is capped by what the proof of the etcd lease has left") {
  sim_etcd etcd;
  node a(etcd, "a", 0xa, 32, 500ms);
  etcd.start(a);
  a.proof = etcd.now + 1500ms;
  CHECK(a.coord.ttl_cap(etcd.now) == 1500);
  CHECK(a.coord.ttl_cap(etcd.now + 2s) == 0);
}

TEST_CASE("coordinator: sets over the same keys from two daemons are granted, not chased round") {
  sim_etcd etcd;
  node a(etcd, "a", 0xa, 32, 500ms), b(etcd, "b", 0xb, 32, 500ms);
  etcd.start(a);
  etcd.start(b);
  // Crossed rights: a holds m0 and b holds m1, each for a single-key lease.
  owner_id a1 = a.table.connect(), b1 = b.table.connect();
  acquire(a, a1, "m0", 10);
  acquire(b, b1, "m1", 20);
  etcd.pump();
  const std::uint64_t ta = take_grants(a).at(10), tb = take_grants(b).at(20);
  // Each daemon then queues a set of both keys, and the single leases end.
  owner_id a2 = a.table.connect(), b2 = b.table.connect();
  const std::vector<std::string_view> keys = {"m1", "m0"};
  for (auto [n, o, id] : {std::tuple{&a, a2, 1u}, std::tuple{&b, b2, 2u}}) {
    acquire_args args;
    args.keys = keys;
    args.ttl_ms = 60'000;
    args.request_id = id;
    REQUIRE(n->table.acquire(o, args, etcd.now, n->events).status == acquire_status::queued);
    n->coord.process(etcd.now, n->events);
  }
  etcd.pump();
  release(a, "m0", ta);
  release(b, "m1", tb);
  // Without an order, each daemon gives away the key its set cannot use yet, takes the other's,
  // and so on for ever. Taking rights in key order, the daemon holding m0 keeps it.
  REQUIRE(etcd.pump() < 10'000);
  auto ga = take_grants(a), gb = take_grants(b);
  REQUIRE(ga.size() + gb.size() == 1);  // one set holds both keys
  node& first = ga.empty() ? b : a;
  node& second = ga.empty() ? a : b;
  const std::uint64_t token = ga.empty() ? gb.begin()->second : ga.begin()->second;
  REQUIRE(first.table.release(keys, token, etcd.now, first.events) == lease_status::ok);
  first.coord.process(etcd.now, first.events);
  REQUIRE(etcd.pump() < 10'000);
  auto g2 = take_grants(second);
  REQUIRE(g2.size() == 1);
  CHECK(g2.begin()->second > token);
}
