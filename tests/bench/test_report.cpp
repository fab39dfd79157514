#include "json_check.hpp"
#include "report.hpp"

#include <catch2/catch.hpp>

#include <limits>
#include <sstream>
#include <string>
#include <vector>

using namespace keylock::bench;

namespace {

run_result sample(target_kind kind, double ops_per_s, double p50) {
  run_result r;
  r.workload = "contended";
  r.params = "32 clients, one key";
  r.kind = kind;
  r.target_url =
      kind == target_kind::keylock ? "keylock://127.0.0.1:7400" : "redis://127.0.0.1:6379";
  r.clients = 32;
  r.seconds = 5;
  r.op_label = "grant";
  r.latency_label = "acquire wait";
  r.ops = static_cast<std::uint64_t>(ops_per_s * 5);
  r.requests = r.ops * 2;
  r.ops_per_s = ops_per_s;
  r.requests_per_s = ops_per_s * 2;
  r.latency = {r.ops, p50, p50, p50 * 2, p50 * 3, p50 * 4, p50 * 5};
  r.placement = "load generator pinned to CPU 0; server pid 1 on CPUs 1";
  r.extras.push_back({"handoff_p50_us", "handoff p50 µs", p50 / 2});
  return r;
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

}  // namespace

TEST_CASE("numbers are formatted for people", "[bench][report]") {
  CHECK(format_count(0) == "0");
  CHECK(format_count(999) == "999");
  CHECK(format_count(1000) == "1,000");
  CHECK(format_count(1234567.8) == "1,234,568");
  CHECK(format_count(-1500) == "-1,500");
  CHECK(format_value(3.14159) == "3.14");
  CHECK(format_value(95.25) == "95.2");
  CHECK(format_value(-12.5) == "-12.5");
  CHECK(format_value(12345.6) == "12,346");
  CHECK(format_ratio(2.0) == "2.00×");
  CHECK(format_ratio(12.34) == "12.3×");
  CHECK(format_ratio(123.4) == "123×");
  CHECK(format_ratio(0.5) == "0.50×");
  CHECK(format_ratio(0.0123) == "0.012×");
  CHECK(display_width("p50 µs") == 6);
  CHECK(display_width("2.00×") == 5);
}

TEST_CASE("summaries convert nanoseconds to microseconds", "[bench][report]") {
  latency_histogram h;
  for (std::uint64_t v = 1; v <= 100; ++v) h.record(v * 1000);
  const latency_summary s = summarize(h);
  CHECK(s.count == 100);
  CHECK(s.p50_us == Approx(50.0).epsilon(0.01));
  CHECK(s.p99_us == Approx(99.0).epsilon(0.01));
  CHECK(s.max_us == Approx(100.0));
  CHECK(s.mean_us == Approx(50.5));
  CHECK(summarize(latency_histogram{}).count == 0);
}

TEST_CASE("ratios are keylock over redis for one pair of rows", "[bench][report]") {
  std::vector<run_result> rows{sample(target_kind::keylock, 30000, 100),
                               sample(target_kind::redis, 6000, 5000)};
  auto ratios = compute_ratios(rows);
  REQUIRE(ratios.size() == 5);
  CHECK(ratios[0].metric == "ops_per_s");
  CHECK(ratios[0].ratio == Approx(5.0));
  CHECK(ratios[2].metric == "p50_us");
  CHECK(ratios[2].ratio == Approx(0.02));
  CHECK(ratios[4].metric == "handoff_p50_us");
  CHECK(ratios[4].defined);

  SECTION("extras marked without ratio are left out") {
    rows[0].extras.push_back({"server_cpu_pct", "server CPU %", 90, false});
    rows[1].extras.push_back({"server_cpu_pct", "server CPU %", 45, false});
    CHECK(compute_ratios(rows).size() == 5);
    const std::string t = format_table(rows, output_style::text, true);
    CHECK(t.find("2.00×") == std::string::npos);
  }
  SECTION("a zero redis value has no ratio") {
    rows[1].ops_per_s = 0;
    auto r = compute_ratios(rows);
    CHECK_FALSE(r[0].defined);
  }
  SECTION("no pair, no ratios") {
    rows[1].kind = target_kind::keylock;
    CHECK(compute_ratios(rows).empty());
    CHECK(compute_ratios(std::span<const run_result>(rows.data(), 1)).empty());
  }
}

TEST_CASE("results group by consecutive workload and params", "[bench][report]") {
  std::vector<run_result> rows{sample(target_kind::keylock, 1, 1), sample(target_kind::redis, 1, 1),
                               sample(target_kind::keylock, 1, 1)};
  rows[2].workload = "rtt";
  auto groups = group_by_workload(rows);
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].size() == 2);
  CHECK(groups[1].size() == 1);
  CHECK(group_by_workload({}).empty());
}

TEST_CASE("a text table has a title, aligned rows, extras and placements", "[bench][report]") {
  std::vector<run_result> rows{sample(target_kind::keylock, 30000, 100),
                               sample(target_kind::redis, 6000, 5000)};
  const std::string t = format_table(rows, output_style::text, true);
  INFO(t);
  CHECK(t.find("== contended — 32 clients, one key — 5.0 s per target ==") == 0);
  CHECK(t.find("p99.9 µs") != std::string::npos);
  CHECK(t.find("keylock://127.0.0.1:7400") != std::string::npos);
  CHECK(t.find("30,000") != std::string::npos);
  CHECK(t.find("keylock/redis") != std::string::npos);
  CHECK(t.find("5.00×") != std::string::npos);
  CHECK(t.find("handoff p50 µs") != std::string::npos);
  CHECK(t.find("placement (keylock): load generator pinned to CPU 0") != std::string::npos);
  CHECK(t.find("placement (redis):") != std::string::npos);
  // The main grid: header, two targets, the ratio row, all of one width.
  auto lines = lines_of(t);
  REQUIRE(lines.size() > 6);
  const std::size_t w = display_width(lines[2]);
  CHECK(display_width(lines[3]) == w);
  CHECK(display_width(lines[4]) == w);

  SECTION("targets that ran for different times each show theirs") {
    rows[1].seconds = 2.25;
    CHECK(format_table(rows, output_style::text, true)
              .find("== contended — 32 clients, one key — 5.0 / 2.2 s ==") == 0);
  }
  SECTION("without --compare there is no ratio") {
    const std::string plain = format_table(rows, output_style::text, false);
    CHECK(plain.find("keylock/redis") == std::string::npos);
  }
  SECTION("errors are shown") {
    rows[1].first_error = "connect: refused";
    CHECK(format_table(rows, output_style::text, true)
              .find("first error (redis): connect: refused") != std::string::npos);
  }
}

TEST_CASE("a markdown table has a header separator and pipes", "[bench][report]") {
  std::vector<run_result> rows{sample(target_kind::keylock, 30000, 100)};
  const std::string t = format_table(rows, output_style::markdown, true);
  INFO(t);
  CHECK(t.find("**contended — ") == 0);
  CHECK(t.find("| target ") != std::string::npos);
  CHECK(t.find("|:---") != std::string::npos);
  CHECK(t.find("---:|") != std::string::npos);
  CHECK(t.find("- placement (keylock):") != std::string::npos);
  CHECK(format_table({}, output_style::markdown, true).empty());
}

TEST_CASE("the JSON output parses and carries every result and ratio", "[bench][report]") {
  std::vector<run_result> rows{sample(target_kind::keylock, 30000, 100),
                               sample(target_kind::redis, 6000, 5000)};
  rows[1].first_error = "a \"quoted\"\tcontrol\x01 text\n";
  run_meta meta{"0.1.0", "keylock-bench --target 'x y'", "pinned to CPU 0"};
  const std::string j = format_json(rows, meta, true);
  test::json_expectations want;
  want.results = 2;
  want.ratios = true;
  want.no_errors = true;
  CHECK(test::check_bench_json(j, want).empty());
  CHECK(j.find(R"("keylock_over_redis":5)") != std::string::npos);
  CHECK(j.find(R"("handoff_p50_us":50)") != std::string::npos);

  SECTION("violations are caught by the checker") {
    rows[0].violations = 1;
    CHECK_FALSE(test::check_bench_json(format_json(rows, meta, true), want).empty());
  }
  SECTION("without ratios the array is empty") {
    const std::string plain = format_json(rows, meta, false);
    CHECK(plain.find(R"("ratios":[]})") != std::string::npos);
    CHECK(test::check_bench_json(plain, {2, true, false}).empty());
  }
  SECTION("non-finite numbers become null") {
    rows[0].extras.push_back({"odd", "odd", std::numeric_limits<double>::infinity()});
    CHECK(format_json(rows, meta, false).find(R"("odd":null)") != std::string::npos);
  }
  SECTION("the checker rejects what is not bench output") {
    CHECK_FALSE(test::check_bench_json("not json", want).empty());
    CHECK_FALSE(test::check_bench_json("[]", want).empty());
    CHECK_FALSE(test::check_bench_json(format_json(rows, meta, true), {3, true, true}).empty());
  }
}

TEST_CASE("TSV lines carry label, workload, kind, metric and value", "[bench][report]") {
  std::vector<run_result> rows{sample(target_kind::keylock, 30000, 100)};
  const std::string tsv = format_tsv(rows, "c32");
  auto lines = lines_of(tsv);
  REQUIRE(lines.size() == 10);
  CHECK(lines[0] == "c32\tcontended\tkeylock\tops_per_s\t30000");
  CHECK(lines[9] == "c32\tcontended\tkeylock\thandoff_p50_us\t50");
}

TEST_CASE("variants of one workload are rows of their own, the first keylock row against redis",
          "[bench][report]") {
  std::vector<run_result> rows{sample(target_kind::keylock, 30000, 100),
                               sample(target_kind::keylock, 12000, 300),
                               sample(target_kind::redis, 6000, 5000)};
  rows[0].variant = "keys";
  rows[1].variant = "one-at-a-time";
  rows[2].variant = "one-at-a-time";
  auto ratios = compute_ratios(rows);
  REQUIRE_FALSE(ratios.empty());
  CHECK(ratios[0].ratio == Approx(5.0));
  const std::string t = format_table(rows, output_style::markdown, true);
  INFO(t);
  CHECK(t.find("keylock://127.0.0.1:7400 keys ") != std::string::npos);
  CHECK(t.find("keylock://127.0.0.1:7400 one-at-a-time") != std::string::npos);
  CHECK(t.find("redis://127.0.0.1:6379 one-at-a-time") != std::string::npos);
  CHECK(t.find("| keylock keys/redis ") != std::string::npos);
  CHECK(t.find("placement (keylock:one-at-a-time):") != std::string::npos);
  const std::string tsv = format_tsv(rows, "multi");
  CHECK(tsv.find("multi\tcontended\tkeylock:keys\tops_per_s\t30000\n") != std::string::npos);
  CHECK(tsv.find("multi\tcontended\tredis:one-at-a-time\tops_per_s\t6000\n") !=
        std::string::npos);
  run_meta meta{"0.1.0", "keylock-bench -w multi", "pinned to CPU 0"};
  const std::string json = format_json(rows, meta, true);
  CHECK(json.find(R"("variant":"one-at-a-time")") != std::string::npos);
  CHECK(test::check_bench_json(json, {3, true, true}).empty());

  SECTION("two redis rows have no pair") {
    rows[0].kind = target_kind::redis;
    CHECK(compute_ratios(rows).empty());
  }
}
