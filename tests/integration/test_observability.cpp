// Metrics, health probes, `top` and JSON logs of the real keylockd.
#include "harness.hpp"
#include "keylock/codec.hpp"
#include "prom_check.hpp"
#include "replies.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <signal.h>

#include <sstream>
#include <string>
#include <vector>

using namespace keylock;
using namespace keylock::test;

namespace {

prom::exposition scrape(const test::daemon& d) {
  http_response r = http_get(d.metrics_port(), "/metrics");
  REQUIRE(r.status == 200);
  REQUIRE(r.headers.find("text/plain; version=0.0.4") != std::string::npos);
  prom::exposition e = prom::parse(r.body);
  for (const auto& p : e.problems) UNSCOPED_INFO(p);
  REQUIRE(e.ok());
  return e;
}

double value(const prom::exposition& e, std::string_view name, const prom::label_list& l = {}) {
  auto v = prom::sample_value(e, name, l);
  INFO(name);
  REQUIRE(v.has_value());
  return *v;
}

}  // namespace

TEST_CASE("metrics after a known workload hold exact counts in a valid exposition",
          "[observability]") {
  test::daemon d;
  conn a(d.port()), b(d.port());
  reply g = call_reply(a, R"({"op":"acquire","id":1,"key":"m","ttl_ms":60000})");
  REQUIRE(g.token.has_value());
  REQUIRE(call_reply(b, R"({"op":"acquire","id":2,"key":"m","wait_ms":0})").code == errc::timeout);
  REQUIRE(b.send_line(R"({"op":"acquire","id":3,"key":"m","ttl_ms":60000})"));
  // b's acquire is queued once inspect shows it.
  for (int i = 0; i < 1000; ++i) {
    if (call_reply(a, R"({"op":"inspect","id":9,"key":"m"})").waiters == 1u) break;
  }
  REQUIRE(
      call_reply(a, R"({"op":"release","id":4,"key":"m","token":)" + std::to_string(*g.token) + "}")
          .type == reply::kind::ok);
  reply g2 = parse_reply(b.recv_line());
  REQUIRE(
      call_reply(b, R"({"op":"extend","id":5,"key":"m","token":)" + std::to_string(*g2.token) + "}")
          .type == reply::kind::ok);
  REQUIRE(call_reply(
              b, R"({"op":"release","id":6,"key":"m","token":)" + std::to_string(*g2.token) + "}")
              .type == reply::kind::ok);
  REQUIRE(call_reply(a, "nope").code == errc::bad_request);
  REQUIRE(call_reply(a, R"({"op":"zap","id":7})").code == errc::unknown_op);

  prom::exposition first = scrape(d);
  CHECK(value(first, "keylock_connections") == 2);
  CHECK(value(first, "keylock_keys") == 0);
  CHECK(value(first, "keylock_leases_held") == 0);
  CHECK(value(first, "keylock_waiters") == 0);
  CHECK(value(first, "keylock_acquires_total") == 3);
  CHECK(value(first, "keylock_grants_total") == 2);
  CHECK(value(first, "keylock_releases_total") == 2);
  CHECK(value(first, "keylock_extends_total") == 1);
  CHECK(value(first, "keylock_timeouts_total") == 1);
  CHECK(value(first, "keylock_expirations_total") == 0);
  CHECK(value(first, "keylock_connections_accepted_total") == 2);
  CHECK(value(first, "keylock_errors_total", {{"code", "bad_request"}}) == 1);
  CHECK(value(first, "keylock_errors_total", {{"code", "unknown_op"}}) == 1);
  CHECK(value(first, "keylock_errors_total", {{"code", "timeout"}}) == 1);
  CHECK(value(first, "keylock_errors_total", {{"code", "not_held"}}) == 0);
  CHECK(value(first, "keylock_wait_seconds_count") == 2);
  CHECK(value(first, "keylock_wait_seconds_bucket", {{"le", "+Inf"}}) == 2);
  CHECK(value(first, "keylock_hold_seconds_count") == 2);
  CHECK(value(first, "keylock_build_info", {{"version", KEYLOCK_VERSION_FOR_TESTS}}) == 1);
  CHECK(value(first, "keylock_bytes_received_total") > 0);
  CHECK(value(first, "keylock_bytes_sent_total") > 0);
  CHECK(value(first, "keylock_process_start_time_seconds") > 1.6e9);

  // More work, then the counters only went up.
  for (int i = 0; i < 5; ++i) {
    reply r = call_reply(a, R"({"op":"acquire","id":1,"key":"m2","ttl_ms":60000})");
    call_reply(a, R"({"op":"release","id":2,"key":"m2","token":)" + std::to_string(*r.token) + "}");
  }
  a.close();
  prom::exposition second = scrape(d);
  auto decreased = prom::monotonic_problems(first, second);
  for (const auto& p : decreased) UNSCOPED_INFO(p);
  CHECK(decreased.empty());
  CHECK(value(second, "keylock_acquires_total") == 8);
  CHECK(value(second, "keylock_grants_total") == 7);
}

TEST_CASE("readyz turns 503 while shutting down while healthz stays 200", "[observability]") {
  test::daemon d({"--shutdown-grace-ms", "3000"});
  REQUIRE(http_get(d.metrics_port(), "/healthz").status == 200);
  REQUIRE(http_get(d.metrics_port(), "/readyz").status == 200);
  // A client that never closes keeps the daemon in its shutdown grace period.
  conn lingering(d.port());
  REQUIRE(call_reply(lingering, R"({"op":"ping","id":1})").type == reply::kind::ok);
  ::kill(d.pid(), SIGTERM);
  int ready = 200;
  for (int i = 0; i < 1000 && ready == 200; ++i)
    ready = http_get(d.metrics_port(), "/readyz").status;
  REQUIRE(ready == 503);
  REQUIRE(http_get(d.metrics_port(), "/healthz").status == 200);
  int status = d.stop(SIGTERM);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
}

TEST_CASE("the metrics listener answers 404, 405 and 400 and never disturbs the lock port",
          "[observability]") {
  test::daemon d;
  conn c(d.port());
  REQUIRE(http_get(d.metrics_port(), "/nope").status == 404);
  REQUIRE(http_exchange(d.metrics_port(),
                        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                        "Connection: close\r\n\r\n")
              .status == 405);
  REQUIRE(http_exchange(d.metrics_port(), "garbage garbage\r\n\r\n").status == 400);
  std::string huge =
      "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(64 * 1024, 'a') + "\r\n\r\n";
  REQUIRE(http_exchange(d.metrics_port(), huge).status == 400);
  REQUIRE(call_reply(c, R"({"op":"ping","id":1})").type == reply::kind::ok);
}

TEST_CASE("health probes are answered while slow clients hold every metrics connection",
          "[observability][integration][hostile]") {
  test::daemon d;
  conn lock(d.port());
  const std::uint16_t port = d.metrics_port();
  // max_http_connections in metrics_http.cpp. Each slow client sends part of a request and then
  // nothing: it holds its slot until the 5 s read deadline.
  constexpr int cap = 64;
  constexpr std::string_view partial = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
  std::vector<conn> slow;
  for (int i = 0; i < cap; ++i) {
    slow.emplace_back(port);
    REQUIRE(slow.back().send_raw(partial));
  }
  // The listen queue is FIFO: the daemon accepts all the slow connections before each probe,
  // so the probe arrives at an exhausted cap (and was closed unanswered: status 0).
  CHECK(http_get(port, "/healthz").status == 200);
  CHECK(http_get(port, "/readyz").status == 200);
  // The attacker reconnects whenever it loses a slot; the probes keep getting in.
  for (int round = 0; round < 20; ++round) {
    for (conn& c : slow) {
      if (!c.wait_closed(0ms)) continue;
      c = conn(port);
      REQUIRE(c.send_raw(partial));
    }
    INFO("round " << round);
    REQUIRE(http_get(port, "/healthz").status == 200);
  }
  REQUIRE(call_reply(lock, R"({"op":"ping","id":1})").type == reply::kind::ok);
}

TEST_CASE("top names the longest queue and the oldest holder with its client and peer",
          "[observability]") {
  test::daemon d;
  conn holder(d.port()), waiter(d.port()), viewer(d.port());
  REQUIRE(call_reply(holder, R"({"op":"hello","id":1,"client":"stuck-worker"})").type ==
          reply::kind::ok);
  reply g = call_reply(holder, R"({"op":"acquire","id":2,"key":"stuck","ttl_ms":60000})");
  REQUIRE(waiter.send_line(R"({"op":"acquire","id":3,"key":"stuck"})"));
  reply t;
  for (int i = 0; i < 1000; ++i) {
    t = call_reply(viewer, R"({"op":"top","id":4,"n":3})");
    if (t.queues && !t.queues->empty()) break;
  }
  REQUIRE(t.stats.has_value());
  REQUIRE(t.queues.has_value());
  REQUIRE(t.queues->size() == 1);
  CHECK(t.queues->at(0).key == "stuck");
  CHECK(t.queues->at(0).waiters == 1);
  REQUIRE(t.oldest.has_value());
  REQUIRE(t.oldest->size() == 1);
  CHECK(t.oldest->at(0).key == "stuck");
  CHECK(t.oldest->at(0).token == *g.token);
  CHECK(t.oldest->at(0).client == "stuck-worker");
  CHECK(t.oldest->at(0).peer.rfind("127.0.0.1:", 0) == 0);
}

TEST_CASE("a client name with a newline and terminal escapes is escaped in the text log",
          "[observability][integration][hostile]") {
  test::daemon d;
  conn c(d.port());
  // JSON-escaped on the wire; the daemon decodes it into a raw newline and a raw ESC.
  REQUIRE(call_reply(c, R"({"op":"hello","id":1,)"
                        R"("client":"evil\n2026-01-01T00:00:00.000 info forged line\u001b[2J"})")
              .type == reply::kind::ok);
  // A bad request: the daemon warns once, naming the client.
  REQUIRE(call_reply(c, R"({"op":"zap","id":2})").code == errc::unknown_op);
  REQUIRE(d.wait_log("unknown_op"));
  std::string log = d.log();
  INFO(log);
  CHECK(log.find(R"(client evil\n2026-01-01T00:00:00.000 info forged line\u001b[2J)") !=
        std::string::npos);
  CHECK(log.find('\x1b') == std::string::npos);
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    CHECK(line.rfind("2026-01-01T00:00:00.000 info forged", 0) != 0);
  }
}

TEST_CASE("with --log-format json every log line is one JSON object", "[observability]") {
  test::daemon d({"--log-format", "json"});
  conn c(d.port());
  // A bad client is logged once at warn, quoting its input: quotes, a control byte, non-UTF-8.
  c.send_raw("{\"op\":\"x\\\"\x01\xff\n");
  REQUIRE(c.recv_line().has_value());
  REQUIRE(d.wait_log("\"level\":\"warn\""));
  std::istringstream lines(d.log());
  std::string line;
  int count = 0;
  while (std::getline(lines, line)) {
    INFO(line);
    auto j = nlohmann::json::parse(line, nullptr, false);
    REQUIRE_FALSE(j.is_discarded());
    REQUIRE(j.is_object());
    REQUIRE(j.contains("ts"));
    REQUIRE(j.contains("level"));
    REQUIRE(j["msg"].is_string());
    ++count;
  }
  REQUIRE(count >= 2);  // the start lines and the warning
}
