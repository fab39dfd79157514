// keylock-bench's results and how they are written: text or Markdown tables (one per
// workload, a row per target, the keylock/redis ratio under them), JSON, and tab-separated
// lines for scripts. Pure formatting, no I/O.
#pragma once

#include "stats.hpp"
#include "wire.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace keylock::bench {

struct latency_summary {
  std::uint64_t count = 0;
  double mean_us = 0;
  double p50_us = 0;
  double p90_us = 0;
  double p99_us = 0;
  double p999_us = 0;
  double max_us = 0;
};

// Percentiles of a histogram of nanoseconds, in microseconds.
latency_summary summarize(const latency_histogram& h);

// A workload-specific number (handoff latency, fairness, RSS...). `key` names it in JSON and
// TSV (snake_case, unit last: "handoff_other_p50_us"); `label` names it for people.
struct extra_metric {
  std::string key;
  std::string label;
  double value = 0;
  bool ratio = true;  // false: a keylock/redis ratio means nothing (CPU use, sample counts)
};

// One workload run against one target.
struct run_result {
  std::string workload;  // "rtt", "uncontended", ...
  std::string params;    // the settings that shape the run, for people: "32 clients, ..."
  target_kind kind = target_kind::keylock;
  std::string target_url;
  // Which way of doing the workload's op this row measured, when a workload runs one target in
  // several ways (multi: "keys" in one request, or "one-at-a-time"); empty otherwise. Shown
  // after the target in tables, as "variant" in JSON, and after the kind in TSV ("keylock:keys").
  std::string variant;
  std::uint32_t clients = 0;
  std::uint32_t pipeline = 1;
  double seconds = 0;    // the measured window
  std::string op_label;  // what one op is: "ping", "acquire+release", "grant", ...
  std::uint64_t ops = 0;
  std::uint64_t requests = 0;  // requests sent (an op may take several)
  double ops_per_s = 0;
  double requests_per_s = 0;
  std::string latency_label;  // what the latency columns measure: "round trip", "acquire wait"
  latency_summary latency;
  std::uint64_t errors = 0;
  std::uint64_t violations = 0;
  std::string placement;  // "generator CPU 0; server pid 123 on CPUs 1"
  // TLS targets (keylocks://, rediss://): the protocol and cipher of the target's first
  // connection, "TLSv1.3, TLS_AES_128_GCM_SHA256"; empty when no handshake completed.
  bool tls = false;
  std::string tls_session;
  std::vector<extra_metric> extras;
  std::string first_error;  // the first error seen, for people; empty when none

  const extra_metric* find_extra(std::string_view key) const noexcept;
};

enum class output_style : std::uint8_t { text, markdown };

// One table for the rows of one workload (same workload and params, one row per target):
// a title line with the params, ops/s, req/s, latency p50/p90/p99/p99.9/max in µs, errors and
// violations; then the extras of every row side by side; then the placement of each row. With
// `with_ratio` and exactly one redis row (and at least one keylock row), a ratio row and column
// of the first keylock row over the redis row are added ("n/a" where Redis's value is 0).
std::string format_table(std::span<const run_result> rows, output_style style, bool with_ratio);

// The keylock/redis ratios of a group of rows of one workload: of its first keylock row over
// its redis row. Empty unless the group holds exactly one redis row and at least one keylock
// row (several keylock rows are variants of one workload, the first the one the issue targets). Metrics: ops_per_s, requests_per_s, p50_us,
// p99_us and every extra both rows have whose `ratio` flag is set; `ratio` is 0 (and
// `defined` false) when Redis's value is 0.
struct ratio_entry {
  std::string metric;
  double keylock = 0;
  double redis = 0;
  double ratio = 0;
  bool defined = false;
};
std::vector<ratio_entry> compute_ratios(std::span<const run_result> rows);

// Splits `results` into consecutive groups of the same workload and params (how main() runs
// them: every target for one workload, then the next workload).
std::vector<std::span<const run_result>> group_by_workload(std::span<const run_result> results);

struct run_meta {
  std::string version;    // keylock-bench's version
  std::string command;    // the command line as run
  std::string generator;  // "pinned to CPU 0" / "not pinned"
};

// The whole run as one JSON object: {"tool","version","command","generator","results":[...],
// "ratios":[...]} with one result per line. Non-finite numbers are written as null.
std::string format_json(std::span<const run_result> results, const run_meta& meta,
                        bool with_ratios);

// The name of a row for people and scripts: "keylock", or with a variant "keylock:keys"; over
// TLS the URL scheme's "keylocks", "rediss".
std::string row_kind(const run_result& r);

// One line per metric: "LABEL\tWORKLOAD\tKIND\tMETRIC\tVALUE\n" (KIND as row_kind), for scripts (run-peers.sh
// builds its summary from these). Metrics as in JSON: ops_per_s, requests_per_s, p50_us, p90_us,
// p99_us, p99_9_us, max_us, errors, violations, then the extras.
std::string format_tsv(std::span<const run_result> results, std::string_view label);

// Number formatting shared by the tables: 1234567.8 -> "1,234,568".
std::string format_count(double v);
// Two decimals below 10, one below 1000, then format_count: 3.14159 -> "3.14", 95.25 -> "95.3".
std::string format_value(double v);
// A ratio with "×": 123.4 -> "123×", 12.34 -> "12.3×", 2.0 -> "2.00×", 0.5 -> "0.50×",
// 0.0123 -> "0.012×".
std::string format_ratio(double r);
// A JSON string literal of `s`, quotes included.
std::string json_quote(std::string_view s);
// The display width of UTF-8 text in a monospace terminal (code points; the bench only uses
// narrow characters such as µ and ×).
std::size_t display_width(std::string_view s) noexcept;

}  // namespace keylock::bench
