// keylock's etcd client against a real etcd (Debian's etcd-server 3.4), started by each test on
// free loopback ports with its data under /dev/shm, and stopped by PID when the test ends.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <atomic>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cluster/etcd_client.hpp"
#include "cluster/etcd_session.hpp"
#include "etcd_harness.hpp"

using namespace std::chrono_literals;
using keylock::etcd_client;
using keylock::etcd_kv;
using keylock::etcd_options;
using keylock::etcd_status;
using keylock::test::etcd_cluster;
using keylock::test::free_port;
using keylock::test::url;

namespace {

// Generous bound for "this must happen" (a shared machine): tests wait for events, never sleep.
constexpr auto event_bound = 20s;

// A client whose cluster answers: lease grants are retried (bounded) until the members have
// elected a leader.
etcd_client ready_client(const etcd_cluster& cluster) {
  etcd_options options;
  options.endpoints = cluster.endpoints();
  options.rpc_timeout = 2s;
  etcd_client client(options);
  const auto deadline = std::chrono::steady_clock::now() + event_bound;
  std::int64_t id = 0;
  etcd_status st;
  do {
    st = client.lease_grant(10s, &id);
  } while (!st.ok() && std::chrono::steady_clock::now() < deadline);
  INFO(st.message);
  REQUIRE(st.ok());
  REQUIRE(client.lease_revoke(id).ok());
  return client;
}

}  // namespace

TEST_CASE("a key bound to a lease is created once, listed by create revision, and goes with "
          "its lease",
          "[cluster]") {
  etcd_cluster cluster(1);
  etcd_client client = ready_client(cluster);
  std::int64_t lease = 0;
  REQUIRE(client.lease_grant(30s, &lease).ok());

  bool created = false;
  std::int64_t rev_a = 0;
  std::string value;
  REQUIRE(client.create("/t/a", "node-a", lease, &created, &rev_a, &value).ok());
  REQUIRE(created);
  REQUIRE(value == "node-a");
  std::int64_t again = 0;
  REQUIRE(client.create("/t/a", "node-b", lease, &created, &again, &value).ok());
  REQUIRE_FALSE(created);  // it exists: nothing was written
  REQUIRE(again == rev_a);
  REQUIRE(value == "node-a");
  std::int64_t rev_b = 0;
  REQUIRE(client.create("/t/b", "node-b", lease, &created, &rev_b, nullptr).ok());
  REQUIRE(rev_b > rev_a);

  std::vector<etcd_kv> keys;
  std::int64_t revision = 0;
  REQUIRE(client.list_prefix("/t/", &keys, &revision).ok());
  REQUIRE(keys.size() == 2);
  REQUIRE(keys[0].key == "/t/a");
  REQUIRE(keys[1].key == "/t/b");
  REQUIRE(keys[0].lease == lease);
  REQUIRE(revision >= rev_b);

  std::int64_t ttl_left = 0;
  REQUIRE(client.lease_keep_alive(lease, &ttl_left).ok());
  REQUIRE(ttl_left > 0);
  REQUIRE(client.lease_revoke(lease).ok());
  REQUIRE(client.list_prefix("/t/", &keys, nullptr).ok());
  REQUIRE(keys.empty());
  REQUIRE(client.lease_keep_alive(lease, &ttl_left).ok());
  REQUIRE(ttl_left == 0);  // the lease is gone
}

TEST_CASE("wait_deleted wakes when the watched key is deleted, and times out when it is not",
          "[cluster]") {
  etcd_cluster cluster(1);
  etcd_client client = ready_client(cluster);
  bool created = false;
  std::int64_t rev = 0;
  REQUIRE(client.create("/q/1", "first", 0, &created, &rev, nullptr).ok());

  bool deleted = true;
  REQUIRE(client.wait_deleted("/q/1", rev + 1, 200ms, &deleted).ok());
  REQUIRE_FALSE(deleted);

  auto waiter = std::async(std::launch::async, [&] {
    bool d = false;
    etcd_status st = client.wait_deleted("/q/1", rev + 1, event_bound, &d);
    return std::make_pair(st.ok(), d);
  });
  bool removed = false;
  REQUIRE(client.remove("/q/1", &removed).ok());
  REQUIRE(removed);
  auto [ok, seen] = waiter.get();
  REQUIRE(ok);
  REQUIRE(seen);
  // A deletion that happened before the watch started is still seen from its revision on.
  REQUIRE(client.wait_deleted("/q/1", rev + 1, event_bound, &deleted).ok());
  REQUIRE(deleted);
}

TEST_CASE("wait_deleted's timeout counts from etcd's confirmation of the watch, not the call",
          "[cluster]") {
  etcd_cluster cluster(1);
  etcd_client first = ready_client(cluster);
  bool created = false;
  std::int64_t rev = 0;
  REQUIRE(first.create("/s/1", "held", 0, &created, &rev, nullptr).ok());

  etcd_options options;
  options.endpoints = cluster.endpoints();
  options.rpc_timeout = event_bound;  // reaching etcd may take long; the wait is 100 ms
  etcd_client client(options);
  std::int64_t id = 0;
  REQUIRE(client.lease_grant(10s, &id).ok());  // connected
  // etcd stalls (a loaded member) for longer than the wait's timeout, then answers.
  cluster.stop_member(0, SIGSTOP);
  auto waiter = std::async(std::launch::async, [&] {
    bool d = true;
    etcd_status st = client.wait_deleted("/s/1", rev + 1, 100ms, &d);
    return std::make_pair(st, d);
  });
  std::this_thread::sleep_for(500ms);  // the stall itself, not a wait for an event
  cluster.stop_member(0, SIGCONT);
  auto [st, seen] = waiter.get();
  INFO(st.message);
  REQUIRE(st.ok());  // not "unavailable": etcd was reached within rpc_timeout
  REQUIRE_FALSE(seen);
}

TEST_CASE("an unreachable etcd answers unavailable within the call's bound", "[cluster]") {
  etcd_options options;
  options.endpoints = {url(free_port())};
  options.rpc_timeout = 300ms;
  etcd_client client(options);
  std::int64_t id = 0;
  etcd_status st = client.lease_grant(5s, &id);
  REQUIRE(st.what == etcd_status::code::unavailable);
  bool deleted = false;
  st = client.wait_deleted("/x", 1, 300ms, &deleted);
  REQUIRE(st.what == etcd_status::code::unavailable);
  REQUIRE_FALSE(deleted);
}

TEST_CASE("with three members, killing one changes nothing the client can see", "[cluster]") {
  etcd_cluster cluster(3);
  etcd_client client = ready_client(cluster);
  // Every member must have joined before one goes: else the two left may not be a quorum.
  for (const std::string& endpoint : cluster.endpoints()) {
    etcd_options one;
    one.endpoints = {endpoint};
    etcd_client member(one);
    std::vector<etcd_kv> none;
    const auto joined_by = std::chrono::steady_clock::now() + event_bound;
    etcd_status st;
    do {
      st = member.list_prefix("/k/", &none, nullptr);
    } while (!st.ok() && std::chrono::steady_clock::now() < joined_by);
    INFO(endpoint << ": " << st.message);
    REQUIRE(st.ok());
  }
  std::int64_t lease = 0;
  REQUIRE(client.lease_grant(30s, &lease).ok());
  bool created = false;
  std::int64_t rev = 0;
  REQUIRE(client.create("/k/before", "v", lease, &created, &rev, nullptr).ok());
  cluster.kill_member(0);
  // Quorum (2 of 3) remains: every call still succeeds, through the members left.
  const auto deadline = std::chrono::steady_clock::now() + event_bound;
  etcd_status st;
  std::int64_t rev2 = 0;
  do {
    st = client.create("/k/after", "v", lease, &created, &rev2, nullptr);
  } while (!st.ok() && std::chrono::steady_clock::now() < deadline);
  INFO(st.message);
  REQUIRE(st.ok());
  std::vector<etcd_kv> keys;
  REQUIRE(client.list_prefix("/k/", &keys, nullptr).ok());
  REQUIRE(keys.size() == 2);
  std::int64_t ttl_left = 0;
  REQUIRE(client.lease_keep_alive(lease, &ttl_left).ok());
  REQUIRE(ttl_left > 0);
}

namespace {

// Waits (bounded) for `condition`, checking every few milliseconds.
template <class F>
bool eventually(F condition, std::chrono::milliseconds bound = event_bound) {
  const auto deadline = std::chrono::steady_clock::now() + bound;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(5ms);  // pacing of a poll for an observable, not a blind wait
  }
  return condition();
}

// One etcd member and a started session on it (lease ttl 2 s); `lost` records on_lost.
struct session_on_one_member {
  etcd_cluster cluster{1};
  etcd_client client = ready_client(cluster);
  keylock::etcd_session session{client, [] {
    keylock::etcd_session_options options;
    options.lease_ttl = 2s;
    return options;
  }()};
  std::atomic<bool> lost{false};

  session_on_one_member() { REQUIRE(session.start([this] { lost = true; }).ok()); }
};

}  // namespace

TEST_CASE("the proof of a lease ends before etcd could expire it", "[cluster]") {
  const keylock::steady_time sent{std::chrono::seconds(100)};
  // 10 s granted, 1 % drift, 250 ms margin: 10 s - 100 ms - 250 ms after the send.
  REQUIRE(keylock::proven_until(sent, 10s, 250ms, 10'000) == sent + 9650ms);
  REQUIRE(keylock::proven_until(sent, 10s, 0ms, 0) == sent + 10s);
  REQUIRE(keylock::proven_until(sent, 2s, 250ms, 10'000) < sent + 2s);
}

TEST_CASE("a session keeps its lease alive past its ttl and revokes it when stopped",
          "[cluster]") {
  session_on_one_member t;
  auto& [cluster, client, session, lost] = t;
  bool created = false;
  std::int64_t rev = 0;
  REQUIRE(client.create("/s/held", "me", session.lease_id(), &created, &rev, nullptr).ok());
  REQUIRE(created);
  // Renewals move the proof forward, past two ttls from now: the lease outlived its ttl.
  const auto start = std::chrono::steady_clock::now();
  REQUIRE(eventually([&] { return session.proven_until() > start + 4s; }));
  REQUIRE_FALSE(lost);
  std::vector<etcd_kv> keys;
  REQUIRE(client.list_prefix("/s/", &keys, nullptr).ok());
  REQUIRE(keys.size() == 1);
  session.stop();
  REQUIRE(client.list_prefix("/s/", &keys, nullptr).ok());
  REQUIRE(keys.empty());  // revoked: its keys went at once
  REQUIRE_FALSE(session.alive(std::chrono::steady_clock::now()));
}

TEST_CASE("a session whose etcd is gone reports its lease lost, and stops claiming it",
          "[cluster]") {
  session_on_one_member t;
  auto& [cluster, client, session, lost] = t;
  REQUIRE(session.alive(std::chrono::steady_clock::now()));
  cluster.stop_member(0, SIGSTOP);  // unreachable: no answer, no error
  REQUIRE(eventually([&] { return lost.load(); }));
  REQUIRE_FALSE(session.alive(std::chrono::steady_clock::now()));
  cluster.stop_member(0, SIGCONT);
}

TEST_CASE("a session learns at its next keep-alive that etcd dropped its lease", "[cluster]") {
  session_on_one_member t;
  auto& [cluster, client, session, lost] = t;
  REQUIRE(client.lease_revoke(session.lease_id()).ok());  // an operator, or a lease expiry
  REQUIRE(eventually([&] { return lost.load(); }));
}
