// Metrics: histogram buckets, the Prometheus exposition checked by a real parser
// (prom_check), the parser's own rejections, and the JSON log format.
#include "keylock/protocol.hpp"
#include "log_format.hpp"
#include "metrics.hpp"
#include "prom_check.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/logger.h>
#include <spdlog/sinks/ostream_sink.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using keylock::duration_histogram;
using keylock::metrics_snapshot;

namespace {

std::string joined(const std::vector<std::string>& problems) {
  std::string out;
  for (const auto& p : problems) out += p + "\n";
  return out;
}

bool mentions(const std::vector<std::string>& problems, const std::string& what) {
  for (const auto& p : problems) {
    if (p.find(what) != std::string::npos) return true;
  }
  return false;
}

// The bucket index an observation landed in (the only non-zero one).
std::size_t bucket_of(std::chrono::nanoseconds d) {
  duration_histogram h;
  h.observe(d);
  for (std::size_t i = 0; i < h.buckets.size(); ++i) {
    if (h.buckets[i] == 1) return i;
  }
  return h.buckets.size();
}

metrics_snapshot known_snapshot() {
  metrics_snapshot m;
  m.connections = 3;
  m.keys = 2;
  m.held = 2;
  m.waiting = 1;
  m.acquires = 10;
  m.grants = 9;
  m.grants_shared = 4;
  m.releases = 7;
  m.extends = 4;
  m.timeouts = 1;
  m.cancels = 0;
  m.expirations = 1;
  m.disconnect_releases = 1;
  m.connections_accepted = 5;
  m.connections_refused = 2;
  m.errors[static_cast<std::size_t>(keylock::errc::timeout)] = 1;
  m.errors[static_cast<std::size_t>(keylock::errc::not_held)] = 3;
  m.bytes_in = 1234;
  m.bytes_out = 5678;
  m.wait.observe(0ns);
  m.wait.observe(0ns);
  m.wait.observe(10us);
  m.wait.observe(30ms);
  m.wait.observe(120s);  // beyond the last bound: only +Inf
  m.hold.observe(1500ms);
  m.start_time_seconds = 1700000000.25;
  m.version = "0.1.0";
  return m;
}

double value_of(const keylock::prom::exposition& e, std::string_view name,
                const keylock::prom::label_list& labels = {}) {
  auto v = keylock::prom::sample_value(e, name, labels);
  INFO("sample " << name);
  REQUIRE(v.has_value());
  return *v;
}

}  // namespace

// --- duration_histogram

TEST_CASE("a duration equal to a bucket bound is counted in that bucket", "[metrics]") {
  for (std::size_t i = 0; i < duration_histogram::bounds_ns.size(); ++i) {
    std::chrono::nanoseconds bound(duration_histogram::bounds_ns[i]);
    INFO("bound " << bound.count() << " ns");
    CHECK(bucket_of(bound) == i);
    CHECK(bucket_of(bound + 1ns) == i + 1);
    if (i > 0) CHECK(bucket_of(bound - 1ns) == i);
  }
}

TEST_CASE("zero and negative durations count as zero in the first bucket", "[metrics]") {
  duration_histogram h;
  h.observe(0ns);
  h.observe(-5s);
  CHECK(h.buckets[0] == 2);
  CHECK(h.count == 2);
  CHECK(h.sum_ns == 0);
}

TEST_CASE("durations over 60 s go to the +Inf bucket", "[metrics]") {
  CHECK(bucket_of(60s) == duration_histogram::bounds_ns.size() - 1);
  CHECK(bucket_of(60s + 1ns) == duration_histogram::bounds_ns.size());
  CHECK(bucket_of(24h) == duration_histogram::bounds_ns.size());
}

// --- render_prometheus

TEST_CASE("the exposition passes the format checker with no problems", "[metrics]") {
  SECTION("an empty snapshot") {
    auto problems = keylock::prom::check(keylock::render_prometheus(metrics_snapshot{}));
    INFO(joined(problems));
    CHECK(problems.empty());
  }
  SECTION("a busy snapshot") {
    std::string text = keylock::render_prometheus(known_snapshot());
    auto problems = keylock::prom::check(text);
    INFO(text << joined(problems));
    CHECK(problems.empty());
  }
}

TEST_CASE("cluster mode's families appear only in cluster mode, with their values", "[metrics]") {
  metrics_snapshot m = known_snapshot();
  CHECK(keylock::render_prometheus(m).find("cluster") == std::string::npos);
  m.cluster = true;
  m.cluster_up = true;
  m.rights_held = 2;
  m.global_acquisitions = 7;
  m.local_handoffs = 40;
  m.remote_handoffs = 3;
  m.idle_releases = 4;
  m.sessions_lost = 1;
  m.etcd_round_trip.observe(800us);
  const std::string text = keylock::render_prometheus(m);
  auto problems = keylock::prom::check(text);
  INFO(text << joined(problems));
  CHECK(problems.empty());
  for (const char* line :
       {"keylock_cluster_up 1\n", "keylock_cluster_rights_held 2\n",
        "keylock_cluster_global_acquisitions_total 7\n", "keylock_cluster_local_handoffs_total 40\n",
        "keylock_cluster_remote_handoffs_total 3\n", "keylock_cluster_idle_releases_total 4\n",
        "keylock_cluster_sessions_lost_total 1\n", "keylock_etcd_round_trip_seconds_count 1\n"}) {
    CHECK(text.find(line) != std::string::npos);
  }
}

TEST_CASE("the exposition has every family with its type", "[metrics]") {
  auto e = keylock::prom::parse(keylock::render_prometheus(known_snapshot()));
  using keylock::prom::metric_type;
  const std::vector<std::pair<std::string, metric_type>> expected = {
      {"keylock_connections", metric_type::gauge},
      {"keylock_keys", metric_type::gauge},
      {"keylock_leases_held", metric_type::gauge},
      {"keylock_waiters", metric_type::gauge},
      {"keylock_acquires_total", metric_type::counter},
      {"keylock_grants_total", metric_type::counter},
      {"keylock_grants_by_mode_total", metric_type::counter},
      {"keylock_releases_total", metric_type::counter},
      {"keylock_extends_total", metric_type::counter},
      {"keylock_timeouts_total", metric_type::counter},
      {"keylock_cancels_total", metric_type::counter},
      {"keylock_expirations_total", metric_type::counter},
      {"keylock_disconnect_releases_total", metric_type::counter},
      {"keylock_connections_accepted_total", metric_type::counter},
      {"keylock_connections_refused_total", metric_type::counter},
      {"keylock_errors_total", metric_type::counter},
      {"keylock_bytes_received_total", metric_type::counter},
      {"keylock_bytes_sent_total", metric_type::counter},
      {"keylock_wait_seconds", metric_type::histogram},
      {"keylock_hold_seconds", metric_type::histogram},
      {"keylock_process_start_time_seconds", metric_type::gauge},
      {"keylock_build_info", metric_type::gauge},
  };
  CHECK(e.families.size() == expected.size());
  for (const auto& [name, type] : expected) {
    INFO("family " << name);
    const auto* f = e.find(name);
    REQUIRE(f != nullptr);
    CHECK(f->type == type);
    REQUIRE(f->help.has_value());
    CHECK(!f->help->empty());
  }
  const auto* errors = e.find("keylock_errors_total");
  REQUIRE(errors != nullptr);
  CHECK(errors->samples.size() == keylock::errc_count);
}

TEST_CASE("the exposition shows the snapshot's exact values", "[metrics]") {
  std::string text = keylock::render_prometheus(known_snapshot());
  auto e = keylock::prom::parse(text);
  INFO(text);
  REQUIRE(e.ok());

  CHECK(value_of(e, "keylock_connections") == 3);
  CHECK(value_of(e, "keylock_keys") == 2);
  CHECK(value_of(e, "keylock_leases_held") == 2);
  CHECK(value_of(e, "keylock_waiters") == 1);
  CHECK(value_of(e, "keylock_acquires_total") == 10);
  CHECK(value_of(e, "keylock_grants_total") == 9);
  CHECK(value_of(e, "keylock_grants_by_mode_total", {{"mode", "shared"}}) == 4);
  CHECK(value_of(e, "keylock_grants_by_mode_total", {{"mode", "exclusive"}}) == 5);
  CHECK(value_of(e, "keylock_releases_total") == 7);
  CHECK(value_of(e, "keylock_extends_total") == 4);
  CHECK(value_of(e, "keylock_timeouts_total") == 1);
  CHECK(value_of(e, "keylock_cancels_total") == 0);
  CHECK(value_of(e, "keylock_expirations_total") == 1);
  CHECK(value_of(e, "keylock_disconnect_releases_total") == 1);
  CHECK(value_of(e, "keylock_connections_accepted_total") == 5);
  CHECK(value_of(e, "keylock_connections_refused_total") == 2);
  CHECK(value_of(e, "keylock_bytes_received_total") == 1234);
  CHECK(value_of(e, "keylock_bytes_sent_total") == 5678);

  SECTION("errors by code, one sample per code") {
    CHECK(value_of(e, "keylock_errors_total", {{"code", "timeout"}}) == 1);
    CHECK(value_of(e, "keylock_errors_total", {{"code", "not_held"}}) == 3);
    CHECK(value_of(e, "keylock_errors_total", {{"code", "bad_request"}}) == 0);
    CHECK(value_of(e, "keylock_errors_total", {{"code", "shutting_down"}}) == 0);
    CHECK_FALSE(keylock::prom::sample_value(e, "keylock_errors_total").has_value());
  }

  SECTION("histogram buckets are cumulative, with bounds spelled stably") {
    const auto* f = e.find("keylock_wait_seconds");
    REQUIRE(f != nullptr);
    std::vector<std::string> les;
    for (const auto& s : f->samples) {
      if (s.name == "keylock_wait_seconds_bucket") les.push_back(s.labels.at(0).value);
    }
    CHECK(les == std::vector<std::string>{
                     "1e-05", "2.5e-05", "5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025",
                     "0.005", "0.01",    "0.025", "0.05",   "0.1",     "0.25",   "0.5",   "1",
                     "2.5",   "5",       "10",    "30",     "60",      "+Inf"});
    auto bucket = [&](const char* le) {
      return value_of(e, "keylock_wait_seconds_bucket", {{"le", le}});
    };
    CHECK(bucket("1e-05") == 3);  // 0, 0 and exactly 10 µs
    CHECK(bucket("0.025") == 3);
    CHECK(bucket("0.05") == 4);  // + 30 ms
    CHECK(bucket("60") == 4);
    CHECK(bucket("+Inf") == 5);  // + 120 s
    CHECK(value_of(e, "keylock_wait_seconds_count") == 5);
    CHECK(value_of(e, "keylock_hold_seconds_bucket", {{"le", "1"}}) == 0);
    CHECK(value_of(e, "keylock_hold_seconds_bucket", {{"le", "2.5"}}) == 1);
    CHECK(value_of(e, "keylock_hold_seconds_count") == 1);
  }

  SECTION("_sum is in seconds, written exactly") {
    CHECK(text.find("\nkeylock_wait_seconds_sum 120.03001\n") != std::string::npos);
    CHECK(text.find("\nkeylock_hold_seconds_sum 1.5\n") != std::string::npos);
    CHECK(value_of(e, "keylock_wait_seconds_sum") == 120.03001);
    CHECK(value_of(e, "keylock_hold_seconds_sum") == 1.5);
  }

  SECTION("process start time and build info") {
    CHECK(value_of(e, "keylock_process_start_time_seconds") == 1700000000.25);
    CHECK(value_of(e, "keylock_build_info", {{"version", "0.1.0"}}) == 1);
  }
}

TEST_CASE("a version with quotes and backslashes is escaped in its label", "[metrics]") {
  metrics_snapshot m;
  m.version = "1.0 \"dev\" \\ build\n2";
  std::string text = keylock::render_prometheus(m);
  auto e = keylock::prom::parse(text);
  INFO(text << joined(e.problems));
  REQUIRE(e.ok());
  CHECK(value_of(e, "keylock_build_info", {{"version", m.version}}) == 1);
}

// --- prom_check: what it accepts

namespace {

const std::string valid_text =
    "# HELP t_requests_total Requests served.\n"
    "# TYPE t_requests_total counter\n"
    "t_requests_total{code=\"200\"} 3\n"
    "t_requests_total{code=\"500\"} 1\n"
    "# HELP t_latency_seconds Latency.\n"
    "# TYPE t_latency_seconds histogram\n"
    "t_latency_seconds_bucket{le=\"0.1\"} 1\n"
    "t_latency_seconds_bucket{le=\"1\"} 2\n"
    "t_latency_seconds_bucket{le=\"+Inf\"} 3\n"
    "t_latency_seconds_sum 2.5\n"
    "t_latency_seconds_count 3\n";

// valid_text with the first occurrence of `from` replaced by `to`.
std::string with(std::string from, std::string to, std::string text = valid_text) {
  auto at = text.find(from);
  REQUIRE(at != std::string::npos);
  return text.replace(at, from.size(), to);
}

}  // namespace

TEST_CASE("prom_check accepts the format's escapes, special values and timestamps", "[metrics]") {
  const std::string text =
      "# A plain comment.\n"
      "\n"
      "# HELP t_odd A help with a \\\\ backslash\\nand a newline.\n"
      "# TYPE t_odd gauge\n"
      "t_odd{path=\"C:\\\\dir\",quote=\"say \\\"hi\\\"\",nl=\"a\\nb\",} NaN\n"
      "t_odd{path=\"x\"} +Inf 1700000000000\n"
      "t_odd{path=\"y\"} -Inf\n"
      "t_odd { path = \"z\" } -1.5e-3\t-42\n"
      "t_odd{} .5\n"
      "# HELP t_sum A summary.\n"
      "# TYPE t_sum summary\n"
      "t_sum{quantile=\"0.5\"} 1\n"
      "t_sum_sum 10\n"
      "t_sum_count 4\n";
  auto e = keylock::prom::parse(text);
  INFO(joined(e.problems));
  REQUIRE(e.ok());
  const auto* f = e.find("t_odd");
  REQUIRE(f != nullptr);
  CHECK(*f->help == "A help with a \\ backslash\nand a newline.");
  REQUIRE(f->samples.size() == 5);
  CHECK(std::isnan(f->samples[0].value));
  CHECK(f->samples[0].labels.size() == 3);
  CHECK(f->samples[0].labels[0].value == "C:\\dir");
  CHECK(f->samples[0].labels[1].value == "say \"hi\"");
  CHECK(f->samples[0].labels[2].value == "a\nb");
  CHECK(std::isinf(f->samples[1].value));
  CHECK(f->samples[1].timestamp_ms == 1700000000000);
  CHECK(f->samples[2].value == -INFINITY);
  CHECK(f->samples[3].value == -0.0015);
  CHECK(f->samples[3].timestamp_ms == -42);
  CHECK(f->samples[4].value == 0.5);
  CHECK(keylock::prom::sample_value(e, "t_odd",
                                    {{"quote", "say \"hi\""}, {"path", "C:\\dir"}, {"nl", "a\nb"}})
            .has_value());
  CHECK(keylock::prom::check(valid_text).empty());
  CHECK(keylock::prom::check("").empty());
}

// --- prom_check: one case per class of malformed input

TEST_CASE("prom_check rejects a family without HELP", "[metrics]") {
  auto problems = keylock::prom::check(with("# HELP t_latency_seconds Latency.\n", ""));
  CHECK(mentions(problems, "t_latency_seconds has samples but no # HELP"));
}

TEST_CASE("prom_check rejects a family without TYPE", "[metrics]") {
  SECTION("no TYPE at all") {
    auto problems = keylock::prom::check(with("# TYPE t_requests_total counter\n", ""));
    CHECK(mentions(problems, "t_requests_total has samples but no # TYPE"));
  }
  SECTION("a histogram without TYPE: its samples fit no declared family") {
    auto problems = keylock::prom::check(with("# TYPE t_latency_seconds histogram\n", ""));
    CHECK(mentions(problems, "t_latency_seconds_bucket has samples but no # HELP"));
    CHECK(mentions(problems, "t_latency_seconds_bucket has samples but no # TYPE"));
  }
  SECTION("TYPE after the samples") {
    auto problems = keylock::prom::check("# HELP t_x X.\nt_x 1\n# TYPE t_x gauge\n");
    CHECK(mentions(problems, "# TYPE for t_x after its samples"));
  }
  SECTION("an unknown type") {
    auto problems = keylock::prom::check("# HELP t_x X.\n# TYPE t_x meter\nt_x 1\n");
    CHECK(mentions(problems, "unknown type 'meter'"));
  }
}

TEST_CASE("prom_check rejects histogram buckets that are not cumulative", "[metrics]") {
  SECTION("a count that goes down") {
    auto problems = keylock::prom::check(with("{le=\"1\"} 2", "{le=\"1\"} 0"));
    CHECK(mentions(problems, "not cumulative"));
  }
  SECTION("bounds out of order") {
    auto problems = keylock::prom::check(with("{le=\"1\"} 2", "{le=\"0.05\"} 2"));
    CHECK(mentions(problems, "does not ascend"));
  }
  SECTION("no +Inf bucket") {
    auto problems = keylock::prom::check(with("t_latency_seconds_bucket{le=\"+Inf\"} 3\n", ""));
    CHECK(mentions(problems, "the last bucket is not le=\"+Inf\""));
  }
  SECTION("no _sum") {
    auto problems = keylock::prom::check(with("t_latency_seconds_sum 2.5\n", ""));
    CHECK(mentions(problems, "has no _sum"));
  }
  SECTION("a bucket without le") {
    auto problems = keylock::prom::check(with("{le=\"1\"} 2", "{lf=\"1\"} 2"));
    CHECK(mentions(problems, "has no le label"));
  }
}

TEST_CASE("prom_check rejects a +Inf bucket that differs from _count", "[metrics]") {
  auto problems =
      keylock::prom::check(with("t_latency_seconds_count 3", "t_latency_seconds_count 4"));
  CHECK(mentions(problems, "the +Inf bucket (3) differs from _count (4)"));
  SECTION("and a histogram without _count") {
    auto missing = keylock::prom::check(with("t_latency_seconds_count 3\n", ""));
    CHECK(mentions(missing, "has no _count"));
  }
}

TEST_CASE("prom_check rejects bad label syntax", "[metrics]") {
  auto rejects = [](const std::string& labels) {
    auto problems = keylock::prom::check(with("{code=\"200\"}", labels));
    INFO("labels " << labels);
    CHECK_FALSE(problems.empty());
    return problems;
  };
  SECTION("an unquoted value") { CHECK(mentions(rejects("{code=200}"), "expected '\"'")); }
  SECTION("an unterminated value") {
    CHECK(mentions(rejects("{code=\"200} 3"), "unterminated value"));
  }
  SECTION("an unterminated set") { rejects("{code=\"200\""); }
  SECTION("a missing comma") { CHECK(mentions(rejects("{code=\"200\" x=\"1\"}"), "','")); }
  SECTION("an invalid escape") { CHECK(mentions(rejects("{code=\"2\\q0\"}"), "escape")); }
  SECTION("a label name starting with a digit") {
    CHECK(mentions(rejects("{1code=\"200\"}"), "label name"));
  }
  SECTION("a label given twice") {
    CHECK(mentions(rejects("{code=\"200\",code=\"201\"}"), "given twice"));
  }
  SECTION("a reserved label name") { CHECK(mentions(rejects("{__code=\"200\"}"), "reserved")); }
  SECTION("no '='") { CHECK(mentions(rejects("{code:\"200\"}"), "expected '='")); }
}

TEST_CASE("prom_check rejects bad values and timestamps", "[metrics]") {
  auto rejects = [](const std::string& value) {
    auto problems = keylock::prom::check(
        with("t_requests_total{code=\"500\"} 1", "t_requests_total{code=\"500\"} " + value));
    INFO("value '" << value << "'");
    CHECK_FALSE(problems.empty());
    return problems;
  };
  for (const char* bad :
       {"three", "1,5", "inf", "nan", "Infinity", "0x10", "1e", "--1", "1.2.3", "+", "1_000"}) {
    CHECK(mentions(rejects(bad), "bad value"));
  }
  CHECK(mentions(rejects(""), "has no value"));
  CHECK(mentions(rejects("1 1.5"), "bad timestamp"));
  CHECK(mentions(rejects("1 99999999999999999999"), "bad timestamp"));
  CHECK(mentions(rejects("1 2 3"), "after the timestamp"));
  CHECK(mentions(rejects("-1"), "is a count but its value is -1"));  // a negative counter
  CHECK(mentions(rejects("NaN"), "is a count but its value is NaN"));
  SECTION("a missing final newline") {
    CHECK(mentions(keylock::prom::check(valid_text.substr(0, valid_text.size() - 1)),
                   "does not end with a newline"));
  }
  SECTION("an invalid metric name") {
    CHECK(mentions(keylock::prom::check(valid_text + "1abc 1\n"), "expected a metric name"));
  }
}

TEST_CASE("prom_check rejects a duplicate family", "[metrics]") {
  SECTION("the same family again after another") {
    auto problems = keylock::prom::check(valid_text +
                                         "# HELP t_requests_total Requests served.\n"
                                         "# TYPE t_requests_total counter\n"
                                         "t_requests_total{code=\"404\"} 1\n");
    CHECK(mentions(problems, "duplicate family"));
  }
  SECTION("a sample of an earlier family after another family") {
    auto problems = keylock::prom::check(valid_text + "t_requests_total{code=\"404\"} 1\n");
    CHECK(mentions(problems, "duplicate family"));
  }
  SECTION("a second TYPE or HELP") {
    auto problems = keylock::prom::check(
        with("# TYPE t_requests_total counter\n",
             "# TYPE t_requests_total counter\n# TYPE t_requests_total counter\n"
             "# HELP t_requests_total Again.\n"));
    CHECK(mentions(problems, "second # TYPE for t_requests_total"));
    CHECK(mentions(problems, "second # HELP for t_requests_total"));
  }
  SECTION("the same sample twice") {
    auto problems = keylock::prom::check(
        with("t_requests_total{code=\"500\"} 1\n",
             "t_requests_total{code=\"500\"} 1\nt_requests_total{code=\"500\"} 2\n"));
    CHECK(mentions(problems, "duplicate sample t_requests_total{code=\"500\"}"));
  }
}

TEST_CASE("monotonic_problems reports counters and buckets that went down", "[metrics]") {
  auto before = keylock::prom::parse(valid_text);
  SECTION("no change and increases are fine") {
    CHECK(keylock::prom::monotonic_problems(before, before).empty());
    auto after = keylock::prom::parse(with("{code=\"200\"} 3", "{code=\"200\"} 4"));
    CHECK(keylock::prom::monotonic_problems(before, after).empty());
  }
  SECTION("a counter that decreased") {
    auto after = keylock::prom::parse(with("{code=\"200\"} 3", "{code=\"200\"} 2"));
    auto problems = keylock::prom::monotonic_problems(before, after);
    REQUIRE(problems.size() == 1);
    CHECK(problems[0] == "t_requests_total{code=\"200\"} decreased from 3 to 2");
  }
  SECTION("a bucket and the count that decreased") {
    auto text = with("{le=\"+Inf\"} 3", "{le=\"+Inf\"} 2");
    auto after = keylock::prom::parse(with("_count 3", "_count 2", text));
    CHECK(after.ok());
    auto problems = keylock::prom::monotonic_problems(before, after);
    CHECK(problems.size() == 2);
    CHECK(mentions(problems, "t_latency_seconds_bucket{le=\"+Inf\"} decreased from 3 to 2"));
    CHECK(mentions(problems, "t_latency_seconds_count decreased from 3 to 2"));
  }
  SECTION("two renders of growing snapshots") {
    auto m = known_snapshot();
    auto first = keylock::prom::parse(keylock::render_prometheus(m));
    m.grants += 1;
    m.wait.observe(1ms);
    auto second = keylock::prom::parse(keylock::render_prometheus(m));
    CHECK(keylock::prom::monotonic_problems(first, second).empty());
    CHECK(keylock::prom::monotonic_problems(second, first).size() > 3);
  }
}

// --- JSON log format

namespace {

struct captured_logger {
  std::ostringstream out;
  std::shared_ptr<spdlog::logger> logger;

  explicit captured_logger(std::string_view format) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_st>(out);
    logger = std::make_shared<spdlog::logger>("keylockd", sink);
    logger->set_level(spdlog::level::trace);
    REQUIRE(keylock::set_log_format(*logger, format));
  }

  std::vector<std::string> lines() const {
    std::vector<std::string> result;
    std::istringstream in(out.str());
    for (std::string line; std::getline(in, line);) result.push_back(line);
    return result;
  }
};

bool looks_like_utc_timestamp(const std::string& ts) {
  // 2026-11-27T04:10:21.123Z
  const std::string shape = "dddd-dd-ddTdd:dd:dd.dddZ";
  if (ts.size() != shape.size()) return false;
  for (std::size_t i = 0; i < ts.size(); ++i) {
    bool digit = ts[i] >= '0' && ts[i] <= '9';
    if (shape[i] == 'd' ? !digit : ts[i] != shape[i]) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("json log lines are JSON objects whose msg round-trips", "[metrics][log]") {
  captured_logger cap("json");
  const std::vector<std::string> valid = {
      "plain message",
      "peer 127.0.0.1:5000: key \"a\\b\" not held",
      "multi\nline\r\nmessage\twith tab",
      std::string("controls \x01\x02\x1f\x7f and NUL ") + '\0' + " end",
      "utf-8: h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80",
      "{\"looks\":\"like json\"}",
      "",
  };
  for (const auto& m : valid) cap.logger->info("{}", m);
  cap.logger->warn("a warning");
  cap.logger->error("an error");

  auto lines = cap.lines();
  REQUIRE(lines.size() == valid.size() + 2);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    INFO("line: " << lines[i]);
    auto j = nlohmann::json::parse(lines[i], nullptr, false);
    REQUIRE_FALSE(j.is_discarded());
    REQUIRE(j.is_object());
    CHECK(j.size() == 4);
    REQUIRE(j.contains("ts"));
    CHECK(looks_like_utc_timestamp(j["ts"].get<std::string>()));
    CHECK(j["logger"] == "keylockd");
    if (i < valid.size()) {
      CHECK(j["level"] == "info");
      CHECK(j["msg"].get<std::string>() == valid[i]);
    }
  }
  CHECK(nlohmann::json::parse(lines[valid.size()])["level"] == "warn");
  CHECK(nlohmann::json::parse(lines[valid.size() + 1])["level"] == "error");
}

TEST_CASE("json log lines stay valid JSON for invalid UTF-8", "[metrics][log]") {
  captured_logger cap("json");
  const std::string replacement = "\xef\xbf\xbd";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"lone \xff byte", "lone " + replacement + " byte"},
      {"truncated \xc3", "truncated " + replacement},
      {"overlong \xc0\xaf slash", "overlong " + replacement + replacement + " slash"},
      {"surrogate \xed\xa0\x80!", "surrogate " + replacement + replacement + replacement + "!"},
      {"above max \xf4\x90\x80\x80",
       "above max " + replacement + replacement + replacement + replacement},
      {"stray continuation \x80\xbf ok \xc3\xa9",
       "stray continuation " + replacement + replacement + " ok \xc3\xa9"},
  };
  for (const auto& [in, expected] : cases) cap.logger->info("{}", in);
  auto lines = cap.lines();
  REQUIRE(lines.size() == cases.size());
  for (std::size_t i = 0; i < lines.size(); ++i) {
    INFO("line: " << lines[i]);
    auto j = nlohmann::json::parse(lines[i], nullptr, false);
    REQUIRE_FALSE(j.is_discarded());
    CHECK(j["msg"].get<std::string>() == cases[i].second);
  }
}

TEST_CASE("json log lines have the exact shape, with UTC milliseconds", "[metrics][log]") {
  captured_logger cap("json");
  auto t = std::chrono::system_clock::time_point(std::chrono::seconds(1700000000)) + 7ms;
  cap.logger->log(t, spdlog::source_loc{}, spdlog::level::critical, "say \"bye\"");
  CHECK(cap.out.str() ==
        "{\"ts\":\"2023-11-14T22:13:20.007Z\",\"level\":\"critical\",\"logger\":\"keylockd\","
        "\"msg\":\"say \\\"bye\\\"\"}\n");
}

TEST_CASE("set_log_format knows text and json only", "[metrics][log]") {
  captured_logger cap("text");
  cap.logger->info("hello");
  auto lines = cap.lines();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].find(" info hello") != std::string::npos);
  CHECK(lines[0][4] == '-');
  CHECK(lines[0][10] == 'T');
  CHECK_FALSE(keylock::set_log_format(*cap.logger, "xml"));
  CHECK_FALSE(keylock::set_log_format(*cap.logger, ""));
}
