// Checks the JSON that `keylock-bench --json` prints: used by the unit tests (format_json
// output) and by the smoke test (the real tool's output, through bench_json_check).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace keylock::bench::test {

struct json_expectations {
  std::size_t results = 0;  // how many results there must be (0: at least one)
  bool no_errors = true;    // every result must have errors == 0
  bool ratios = false;      // the ratios array must not be empty
};

// Empty when `text` is one JSON object of the documented shape: tool, version, command,
// generator, results (each with workload, target, kind, ops, ops_per_s >= 0, requests_per_s,
// latency_us {p50 <= p90 <= p99 <= p99_9 <= max}, errors, violations == 0, placement,
// extras), ratios. Otherwise what is wrong.
std::string check_bench_json(std::string_view text, const json_expectations& want);

}  // namespace keylock::bench::test
