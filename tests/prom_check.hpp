// A strict parser and checker of the Prometheus text exposition format 0.0.4, for tests.
//
// parse() reads the whole text into families and records every problem it finds instead of
// stopping at the first: syntax (metric and label names, label-value and HELP escapes,
// values, timestamps, the final newline) and the rules a scraper relies on:
//   - every sample belongs to a family that has both # HELP and # TYPE, given before its
//     first sample; one HELP and one TYPE per family; the lines of a family are contiguous
//     (a family seen again later is a duplicate); no two samples with the same labels;
//   - counter samples are >= 0 (and not NaN);
//   - histograms: per label set, `_bucket` samples with an `le` label in strictly ascending
//     order, cumulative (non-decreasing) counts, a final le="+Inf" bucket equal to `_count`,
//     and a `_sum`;
//   - summaries: `quantile` on the bare samples, plus `_sum` and `_count`.
// Problems are plain strings ("line 7: ..."), so a test can print them all.
//
// Deliberately light (no JSON, no regex library) so it is cheap to compile into tests.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keylock::prom {

enum class metric_type { untyped, counter, gauge, histogram, summary };

std::string_view to_string(metric_type t) noexcept;

struct label {
  std::string name;
  std::string value;  // unescaped
};

struct sample {
  std::string name;           // as written: "x_bucket" in histogram family "x"
  std::vector<label> labels;  // in written order
  double value = 0;
  std::optional<std::int64_t> timestamp_ms;
  int line = 0;  // 1-based line number in the text
};

struct family {
  std::string name;
  std::optional<metric_type> type;  // nullopt: no # TYPE line (a problem)
  std::optional<std::string> help;  // unescaped; nullopt: no # HELP line (a problem)
  std::vector<sample> samples;
};

struct exposition {
  std::vector<family> families;  // in order of first appearance
  std::vector<std::string> problems;

  bool ok() const noexcept { return problems.empty(); }
  const family* find(std::string_view name) const noexcept;
};

// Parses and checks `text`. Never throws for any input (except std::bad_alloc).
exposition parse(std::string_view text);

// parse(text).problems.
std::vector<std::string> check(std::string_view text);

using label_list = std::vector<std::pair<std::string_view, std::string_view>>;

// The value of the sample named `name` (full sample name, e.g. "keylock_wait_seconds_count")
// whose label set is exactly `labels` (any order). nullopt when there is none.
std::optional<double> sample_value(const exposition& e, std::string_view name,
                                   const label_list& labels = {});

// Counters, histogram `_bucket` and `_count` samples present in both scrapes whose value went
// down from `before` to `after` (one string each, naming the sample, its labels and both
// values). A sample missing from either scrape is not reported.
std::vector<std::string> monotonic_problems(const exposition& before, const exposition& after);

// "name{a=\"x\",b=\"y\"}": how problems name a sample.
std::string describe(const sample& s);

}  // namespace keylock::prom
