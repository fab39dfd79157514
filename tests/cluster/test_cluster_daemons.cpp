// Cluster mode end to end: real keylockd processes in front of a real etcd (Debian's
// etcd-server 3.4) started by each test on free loopback ports, everything stopped by PID.
// Tests wait for observable events (a reply, a log line, a probe) with generous bounds; none
// asserts a duration.
#include "etcd_harness.hpp"
#include "harness.hpp"
#include "replies.hpp"
#include "tcp_relay.hpp"

#include <catch2/catch.hpp>

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using keylock::errc;
using keylock::reply;
using keylock::test::call_reply;
using keylock::test::conn;
using keylock::test::etcd_cluster;
using keylock::test::parse_reply;
using keylock::test::require_error;
namespace test = keylock::test;

namespace {

constexpr auto bound = 30s;  // generous: a shared machine, sanitizer builds

// keylockd arguments for cluster mode.
// The etcd lease ttl is short (3 s) so that a dead daemon's keys free up soon.
std::vector<std::string> node_args(const std::string& endpoints, const std::string& name,
                                   std::vector<std::string> extra = {},
                                   const std::string& lease_ttl_ms = "3000") {
  std::vector<std::string> args = {"--etcd-endpoints",    endpoints,    "--node-name", name,
                                   "--etcd-lease-ttl-ms", lease_ttl_ms, "--log-level", "debug"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// Waits until /readyz answers 200: the daemon has an etcd lease and its mirror is synced.
void wait_ready(const test::daemon& d) {
  const auto deadline = std::chrono::steady_clock::now() + bound;
  while (std::chrono::steady_clock::now() < deadline) {
    if (test::http_get(d.metrics_port(), "/readyz").status == 200) return;
    std::this_thread::sleep_for(20ms);
  }
  FAIL("daemon not ready: " << d.log());
}

// Polls `pred` (an observable state) until true, bounded.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = bound) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

std::string acquire_frame(const std::string& key, int id, std::optional<int> wait_ms,
                          int ttl_ms = 30000) {
  std::string f = R"({"op":"acquire","id":)" + std::to_string(id) + R"(,"key":")" + key +
                  R"(","ttl_ms":)" + std::to_string(ttl_ms);
  if (wait_ms) f += R"(,"wait_ms":)" + std::to_string(*wait_ms);
  return f + "}";
}

std::string release_frame(const std::string& key, std::uint64_t token) {
  return R"({"op":"release","key":")" + key + R"(","token":)" + std::to_string(token) + "}";
}

reply inspect(std::uint16_t port, const std::string& key) {
  conn c(port);
  return call_reply(c, R"({"op":"inspect","key":")" + key + R"("})");
}

// A daemon's Prometheus counter (0 when absent).
std::uint64_t metric(const test::daemon& d, const std::string& name) {
  std::string body = test::http_get(d.metrics_port(), "/metrics").body;
  std::string needle = "\n" + name + " ";
  auto at = body.find(needle);
  if (at == std::string::npos) return 0;
  return std::stoull(body.substr(at + needle.size()));
}

}  // namespace

TEST_CASE("cluster: one lock across three daemons", "[cluster]") {
  etcd_cluster etcd(1);
  const std::string eps = etcd.endpoint_list();
  test::daemon a(node_args(eps, "node-a")), b(node_args(eps, "node-b")),
      c(node_args(eps, "node-c"));
  wait_ready(a);
  wait_ready(b);
  wait_ready(c);

  SECTION("a holder on one daemon excludes the others; its release grants across hosts") {
    conn ca(a.port()), cb(b.port()), cc(c.port());
    reply ra = call_reply(ca, acquire_frame("k", 1, std::nullopt));
    REQUIRE(ra.type == reply::kind::ok);
    REQUIRE(cb.send_line(acquire_frame("k", 2, std::nullopt)));
    // b's daemon queues behind a's in etcd: every daemon sees it.
    REQUIRE(eventually([&] {
      auto v = inspect(c.port(), "k").cluster;
      return v && v->holder == "node-a" && v->daemons_waiting == 1;
    }));
    // A try-lock on the third daemon: another daemon has the key.
    require_error(call_reply(cc, acquire_frame("k", 3, 0)), errc::timeout);
    REQUIRE(call_reply(ca, release_frame("k", *ra.token)).type == reply::kind::ok);
    reply rb = parse_reply(cb.recv_line(bound));
    REQUIRE(rb.type == reply::kind::ok);
    REQUIRE(rb.id == 2u);
    CHECK(*rb.token > *ra.token);
    REQUIRE(eventually([&] {
      auto v = inspect(a.port(), "k").cluster;
      return v && v->holder == "node-b";
    }));
  }

  SECTION("no two clients on different daemons ever hold the key at once") {
    // Clients on every daemon loop acquire -> hold briefly -> release; each holder records its
    // interval on one clock. Intervals must not overlap, and tokens grow in grant order.
    struct interval {
      std::chrono::steady_clock::time_point from, to;
      std::uint64_t token;
    };
    std::mutex mu;
    std::vector<interval> held;
    std::atomic<bool> failed{false};
    std::vector<std::thread> workers;
    const std::uint16_t ports[] = {a.port(), b.port(), c.port()};
    for (int w = 0; w < 6; ++w) {
      workers.emplace_back([&, port = ports[w % 3]] {
        conn cw(port);
        for (int i = 0; i < 15 && !failed; ++i) {
          auto line = cw.call(acquire_frame("shared", 1, std::nullopt, 10000));
          reply r;
          if (keylock::decode_reply(line, r) || r.type != reply::kind::ok) {
            failed = true;
            return;
          }
          auto from = std::chrono::steady_clock::now();
          std::this_thread::sleep_for(1ms);
          auto to = std::chrono::steady_clock::now();
          {
            std::lock_guard lock(mu);
            held.push_back({from, to, *r.token});
          }
          reply rel;
          if (keylock::decode_reply(cw.call(release_frame("shared", *r.token)), rel) ||
              rel.type != reply::kind::ok) {
            failed = true;
            return;
          }
        }
      });
    }
    for (auto& t : workers) t.join();
    REQUIRE_FALSE(failed);
    REQUIRE(held.size() == 90);
    std::sort(held.begin(), held.end(),
              [](const interval& x, const interval& y) { return x.from < y.from; });
    for (std::size_t i = 1; i < held.size(); ++i) {
      INFO("interval " << i);
      CHECK(held[i - 1].to <= held[i].from);
      CHECK(held[i - 1].token < held[i].token);
    }
    CHECK(metric(a, "keylock_cluster_global_acquisitions_total") > 0);
    CHECK(metric(b, "keylock_cluster_global_acquisitions_total") > 0);
  }
}

TEST_CASE(
    "cluster: FIFO within a daemon, and at most handoff_limit local grants while another "
    "daemon waits",
    "[cluster]") {
  etcd_cluster etcd(1);
  const std::string eps = etcd.endpoint_list();
  test::daemon a(node_args(eps, "node-a", {"--handoff-limit", "3"})),
      b(node_args(eps, "node-b", {"--handoff-limit", "3"}));
  wait_ready(a);
  wait_ready(b);
  conn holder(a.port());
  reply first = call_reply(holder, acquire_frame("q", 100, std::nullopt));  // grant 1 of 3
  REQUIRE(first.type == reply::kind::ok);
  std::vector<conn> locals;
  for (int i = 1; i <= 4; ++i) {
    locals.emplace_back(a.port());
    REQUIRE(locals.back().send_line(acquire_frame("q", i, std::nullopt)));
  }
  REQUIRE(eventually([&] { return inspect(a.port(), "q").waiters == 4u; }));
  conn remote(b.port());
  REQUIRE(remote.send_line(acquire_frame("q", 9, std::nullopt)));
  REQUIRE(eventually([&] {
    auto v = inspect(a.port(), "q").cluster;
    return v && v->daemons_waiting == 1;
  }));

  // Release as each grant arrives; record the order of grants.
  std::vector<int> order;
  std::uint64_t token = *first.token;
  conn* current = &holder;
  for (int step = 0; step < 5; ++step) {
    REQUIRE(call_reply(*current, release_frame("q", token)).type == reply::kind::ok);
    // Whoever is granted next answers on its own connection.
    bool got = eventually([&] {
      for (std::size_t i = 0; i < locals.size(); ++i) {
        if (auto line = locals[i].recv_line(5ms)) {
          reply r = parse_reply(line);
          REQUIRE(r.type == reply::kind::ok);
          order.push_back(static_cast<int>(i + 1));
          token = *r.token;
          current = &locals[i];
          return true;
        }
      }
      if (auto line = remote.recv_line(5ms)) {
        reply r = parse_reply(line);
        REQUIRE(r.type == reply::kind::ok);
        order.push_back(9);
        token = *r.token;
        current = &remote;
        return true;
      }
      return false;
    });
    REQUIRE(got);
  }
  // Grants 2 and 3 of the tenure go to local waiters 1 and 2 in FIFO order, then the waiting
  // daemon gets the key, then node-a (queued again behind it) serves 3 and 4.
  CHECK(order == std::vector<int>{1, 2, 9, 3, 4});
  CHECK(metric(a, "keylock_cluster_remote_handoffs_total") >= 1);
}

TEST_CASE("cluster: a daemon keeps an idle key's right, and gives it up when another asks",
          "[cluster]") {
  etcd_cluster etcd(1);
  const std::string eps = etcd.endpoint_list();
  test::daemon a(node_args(eps, "node-a", {"--idle-keep-ms", "600000"})),
      b(node_args(eps, "node-b"));
  wait_ready(a);
  wait_ready(b);
  conn ca(a.port());
  for (int i = 0; i < 5; ++i) {
    reply r = call_reply(ca, acquire_frame("idle", 1, std::nullopt));
    REQUIRE(r.type == reply::kind::ok);
    REQUIRE(call_reply(ca, release_frame("idle", *r.token)).type == reply::kind::ok);
  }
  // One etcd acquisition for five local cycles; the right stays while nobody holds the key.
  CHECK(metric(a, "keylock_cluster_global_acquisitions_total") == 1);
  CHECK(metric(a, "keylock_cluster_local_handoffs_total") == 4);
  auto v = inspect(b.port(), "idle").cluster;
  REQUIRE(v);
  CHECK(v->holder == "node-a");
  // Another daemon asks: it is granted, though node-a's idle period is far from over.
  conn cb(b.port());
  reply rb = call_reply(cb, acquire_frame("idle", 2, std::nullopt));
  REQUIRE(rb.type == reply::kind::ok);
  CHECK(metric(a, "keylock_cluster_remote_handoffs_total") == 1);
}

TEST_CASE("cluster: fencing tokens increase per key across daemons and restarts", "[cluster]") {
  etcd_cluster etcd(1);
  const std::string eps = etcd.endpoint_list();
  test::daemon a(node_args(eps, "node-a", {"--idle-keep-ms", "0"})),
      b(node_args(eps, "node-b", {"--idle-keep-ms", "0"}));
  wait_ready(a);
  wait_ready(b);
  std::uint64_t last = 0;
  auto cycle = [&](std::uint16_t port) {
    conn c(port);
    reply r = call_reply(c, acquire_frame("f", 1, std::nullopt));
    REQUIRE(r.type == reply::kind::ok);
    CHECK(*r.token > last);
    CHECK(*r.token < (std::uint64_t{1} << 53));
    last = *r.token;
    REQUIRE(call_reply(c, release_frame("f", *r.token)).type == reply::kind::ok);
  };
  cycle(a.port());
  cycle(b.port());
  cycle(a.port());
  a.restart();
  wait_ready(a);
  cycle(a.port());
  b.restart();
  wait_ready(b);
  cycle(b.port());
  cycle(a.port());
}

TEST_CASE(
    "cluster: cut off from etcd, a daemon expires its leases and answers unavailable, "
    "then recovers",
    "[cluster]") {
  etcd_cluster etcd(1);
  test::tcp_relay relay(etcd.client_port(0));
  const std::string via = test::url(relay.port());
  test::daemon a(node_args(via, "node-a"));
  wait_ready(a);
  conn c(a.port());
  reply r = call_reply(c, acquire_frame("cut", 1, std::nullopt, 60000));
  REQUIRE(r.type == reply::kind::ok);
  CHECK(*r.ttl_ms < 3000u);  // capped below the etcd lease ttl
  // Keep extending while connected: the lease outlives its first ttl only through extends.
  REQUIRE(call_reply(c, R"({"op":"extend","key":"cut","token":)" + std::to_string(*r.token) + "}")
              .type == reply::kind::ok);
  relay.cut(true);
  // The holder is told its lease is gone, before etcd could have dropped the daemon's lease.
  auto event = parse_reply(c.recv_line(bound));
  REQUIRE(event.type == reply::kind::event);
  CHECK(event.event == "expired");
  CHECK(event.token == r.token);
  // Then the proof runs out: /readyz says so (a 503 may come earlier, from the watch failing).
  REQUIRE(eventually([&] {
    auto resp = test::http_get(a.metrics_port(), "/readyz");
    return resp.status == 503 && resp.body.find("no etcd lease proven alive") != std::string::npos;
  }));
  require_error(call_reply(c, acquire_frame("other", 2, 0)), errc::unavailable);
  require_error(
      call_reply(c, R"({"op":"extend","key":"cut","token":)" + std::to_string(*r.token) + "}"),
      errc::unavailable);
  relay.cut(false);
  wait_ready(a);
  reply again = call_reply(c, acquire_frame("cut", 3, std::nullopt));
  REQUIRE(again.type == reply::kind::ok);
  CHECK(*again.token > *r.token);
}

// A failed list of the watch loop made /readyz say 503 ("cluster: etcd: Deadline Exceeded")
// for good when the lease loop had reported etcd reachable before it: only a new lease cleared
// the reason, and the lease, which outlives a short outage, was never taken again.
TEST_CASE("cluster: a daemon is ready again once etcd is back within its lease's ttl",
          "[cluster]") {
  etcd_cluster etcd(1);
  test::tcp_relay relay(etcd.client_port(0));
  // A lease ttl that outlasts the cut: the daemon keeps its lease and only its watch breaks.
  test::daemon a(node_args(test::url(relay.port()), "node-a", {}, "15000"));
  wait_ready(a);
  relay.cut(true);
  // The watch stream breaks; listing again fails (the rpc deadline passes while cut).
  REQUIRE(eventually([&] {
    auto resp = test::http_get(a.metrics_port(), "/readyz");
    return resp.status == 503 && resp.body.find("cluster: etcd: ") != std::string::npos;
  }));
  relay.cut(false);
  wait_ready(a);
  CHECK(metric(a, "keylock_cluster_sessions_lost_total") == 0);
}

TEST_CASE("cluster: a dead daemon's keys are granted elsewhere after its etcd lease runs out",
          "[cluster]") {
  etcd_cluster etcd(1);
  const std::string eps = etcd.endpoint_list();
  test::daemon a(node_args(eps, "node-a")), b(node_args(eps, "node-b"));
  wait_ready(a);
  wait_ready(b);
  conn ca(a.port());
  reply ra = call_reply(ca, acquire_frame("d", 1, std::nullopt));
  REQUIRE(ra.type == reply::kind::ok);
  conn cb(b.port());
  REQUIRE(cb.send_line(acquire_frame("d", 2, std::nullopt)));
  REQUIRE(eventually([&] {
    auto v = inspect(b.port(), "d").cluster;
    return v && v->daemons_waiting == 1;
  }));
  const auto killed = std::chrono::steady_clock::now();
  ::kill(a.pid(), SIGKILL);
  reply rb = parse_reply(cb.recv_line(bound));
  const auto waited = std::chrono::steady_clock::now() - killed;
  REQUIRE(rb.type == reply::kind::ok);
  CHECK(*rb.token > *ra.token);
  // Reported, not asserted: the etcd lease ttl is 3 s.
  WARN("granted on node-b " << std::chrono::duration_cast<std::chrono::milliseconds>(waited).count()
                            << " ms after SIGKILL of node-a");
}

TEST_CASE("cluster: killing one of three etcd members changes nothing visible", "[cluster]") {
  etcd_cluster etcd(3);
  const std::string eps = etcd.endpoint_list();
  // The default etcd lease ttl (10 s): an election after losing the leader takes a second or
  // two, which a 3 s lease's proof (renewed every second) would not always outlast.
  test::daemon a(node_args(eps, "node-a", {}, "10000")), b(node_args(eps, "node-b", {}, "10000"));
  wait_ready(a);
  wait_ready(b);
  conn ca(a.port()), cb(b.port());
  // A ttl that outlasts an election (when the killed member led, requests wait for the next
  // leader for a second or two); the daemon caps it below its etcd lease's proof.
  reply held = call_reply(ca, acquire_frame("m", 1, std::nullopt, 8000));
  REQUIRE(held.type == reply::kind::ok);
  const auto acquired = std::chrono::steady_clock::now();
  INFO("acquired with ttl_ms " << held.ttl_ms.value_or(0));
  etcd.kill_member(0);
  // The holder keeps its lease through extends; other keys keep working across daemons.
  for (int i = 0; i < 10; ++i) {
    reply e =
        call_reply(ca, R"({"op":"extend","key":"m","token":)" + std::to_string(*held.token) + "}");
    INFO("extend " << i << ": " << e.message << " ttl_ms " << e.ttl_ms.value_or(0) << " at "
                   << std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::steady_clock::now() - acquired)
                          .count()
                   << " ms after the acquire");
    REQUIRE(e.type == reply::kind::ok);
    conn& c = i % 2 == 0 ? ca : cb;
    reply r = call_reply(c, acquire_frame("n", 2, std::nullopt));
    INFO("acquire " << i << ": " << r.message << " " << r.event << " " << r.key);
    INFO("node-a log: " << a.log());
    REQUIRE(r.type == reply::kind::ok);
    REQUIRE(call_reply(c, release_frame("n", *r.token)).type == reply::kind::ok);
    std::this_thread::sleep_for(400ms);  // spread the cycles over more than the etcd lease ttl
  }
  CHECK(metric(a, "keylock_cluster_sessions_lost_total") == 0);
  CHECK(metric(b, "keylock_cluster_sessions_lost_total") == 0);
}

TEST_CASE("cluster: a daemon authenticates to etcd with etcd_user and etcd_password_file",
          "[cluster]") {
  etcd_cluster etcd(1);
  const std::string eps = etcd.endpoint_list();
  // Enable etcd's authentication: a root user with a password (etcdctl, from etcd-client).
  const std::string ctl = "ETCDCTL_API=3 etcdctl --endpoints " + eps + " --command-timeout=5s ";
  REQUIRE(eventually(
      [&] { return std::system((ctl + "put /probe ok >/dev/null 2>&1").c_str()) == 0; }));
  REQUIRE(std::system((ctl + "role add root >/dev/null").c_str()) == 0);
  REQUIRE(std::system((ctl + "user add root --new-user-password=s3cret --interactive=false "
                             ">/dev/null")
                          .c_str()) == 0);
  REQUIRE(std::system((ctl + "user grant-role root root >/dev/null").c_str()) == 0);
  REQUIRE(std::system((ctl + "auth enable >/dev/null").c_str()) == 0);
  test::temp_dir dir;
  const std::string password_file = (dir.path / "etcd-password").string();
  {
    std::FILE* f = std::fopen(password_file.c_str(), "w");
    REQUIRE(f != nullptr);
    std::fputs("s3cret\n", f);
    std::fclose(f);
  }
  test::daemon good(
      node_args(eps, "node-a", {"--etcd-user", "root", "--etcd-password-file", password_file}));
  wait_ready(good);
  conn c(good.port());
  reply r = call_reply(c, acquire_frame("auth", 1, std::nullopt));
  REQUIRE(r.type == reply::kind::ok);
  // Without credentials etcd refuses the daemon's reads: never ready, and /readyz says why.
  test::daemon anonymous(node_args(eps, "node-b"));
  REQUIRE(eventually([&] {
    auto resp = test::http_get(anonymous.metrics_port(), "/readyz");
    return resp.status == 503 && resp.body.find("user name is empty") != std::string::npos;
  }));
}

TEST_CASE("cluster: a daemon reaches etcd over TLS with a client certificate", "[cluster]") {
  test::temp_dir dir;
  const std::string d = dir.path.string();
  // A server certificate for 127.0.0.1 and a client certificate, each self-signed (each is
  // its own CA), made with openssl(1).
  const std::string make =
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 "
      "-addext subjectAltName=IP:127.0.0.1 -keyout " +
      d + "/server.key -out " + d +
      "/server.pem >/dev/null 2>&1 && "
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=keylockd -keyout " +
      d + "/client.key -out " + d + "/client.pem >/dev/null 2>&1";
  REQUIRE(std::system(make.c_str()) == 0);
  etcd_cluster etcd(1, {"--cert-file", d + "/server.pem", "--key-file", d + "/server.key",
                        "--client-cert-auth", "--trusted-ca-file", d + "/client.pem"});
  const std::string eps = etcd.endpoint_list();
  REQUIRE(eps.rfind("https://", 0) == 0);
  test::daemon a(node_args(eps, "node-a",
                           {"--etcd-ca-file", d + "/server.pem", "--etcd-cert-file",
                            d + "/client.pem", "--etcd-key-file", d + "/client.key"}));
  wait_ready(a);
  conn c(a.port());
  REQUIRE(call_reply(c, acquire_frame("tls", 1, std::nullopt)).type == reply::kind::ok);
  // Without the client certificate etcd refuses the handshake: never ready.
  test::daemon b(node_args(eps, "node-b", {"--etcd-ca-file", d + "/server.pem"}));
  REQUIRE(b.wait_log("cluster: etcd: ", bound));  // a failed request to etcd, logged
  auto resp = test::http_get(b.metrics_port(), "/readyz");
  CHECK(resp.status == 503);
  CHECK(resp.body.find("cluster") != std::string::npos);
}
