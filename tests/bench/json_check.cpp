#include "json_check.hpp"

#include <nlohmann/json.hpp>

namespace keylock::bench::test {

std::string check_bench_json(std::string_view text, const json_expectations& want) {
  using nlohmann::json;
  json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return "output is not valid JSON";
  if (!doc.is_object()) return "output is not a JSON object";
  for (const char* member : {"tool", "version", "command", "generator"}) {
    if (!doc.contains(member) || !doc[member].is_string()) {
      return std::string("missing string member '") + member + "'";
    }
  }
  if (!doc.contains("results") || !doc["results"].is_array()) return "missing results array";
  if (!doc.contains("ratios") || !doc["ratios"].is_array()) return "missing ratios array";
  const json& results = doc["results"];
  if (results.empty()) return "no results";
  if (want.results != 0 && results.size() != want.results) {
    return "expected " + std::to_string(want.results) + " results, got " +
           std::to_string(results.size());
  }
  for (const json& r : results) {
    const std::string where =
        r.value("workload", std::string("?")) + " on " + r.value("target", std::string("?"));
    for (const char* member :
         {"workload", "params", "target", "kind", "op", "placement", "first_error"}) {
      if (!r.contains(member) || !r[member].is_string()) {
        return where + ": missing string '" + member + "'";
      }
    }
    for (const char* member : {"clients", "pipeline", "ops", "requests", "errors", "violations"}) {
      if (!r.contains(member) || !r[member].is_number_unsigned()) {
        return where + ": missing count '" + member + "'";
      }
    }
    for (const char* member : {"seconds", "ops_per_s", "requests_per_s"}) {
      if (!r.contains(member) || !r[member].is_number() || r[member].get<double>() < 0) {
        return where + ": missing or negative '" + member + "'";
      }
    }
    if (r["violations"].get<std::uint64_t>() != 0) return where + ": mutual-exclusion violations";
    if (want.no_errors && r["errors"].get<std::uint64_t>() != 0) {
      return where + ": errors: " + r["first_error"].get<std::string>();
    }
    if (r["ops"].get<std::uint64_t>() == 0) return where + ": no ops done";
    if (!r.contains("latency_us") || !r["latency_us"].is_object()) return where + ": no latency";
    const json& l = r["latency_us"];
    double prev = 0;
    for (const char* p : {"p50", "p90", "p99", "p99_9", "max"}) {
      if (!l.contains(p) || !l[p].is_number()) return where + ": latency lacks " + p;
      const double v = l[p].get<double>();
      if (v < prev) return where + ": latency percentiles not ascending at " + p;
      prev = v;
    }
    if (!r.contains("extras") || !r["extras"].is_object()) return where + ": no extras object";
  }
  if (want.ratios && doc["ratios"].empty()) return "no ratios although --compare";
  for (const json& q : doc["ratios"]) {
    if (!q.contains("metric") || !q.contains("keylock_over_redis")) return "malformed ratio";
  }
  return {};
}

}  // namespace keylock::bench::test
