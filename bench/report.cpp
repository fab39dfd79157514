#include "report.hpp"

#include "keylock/codec.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdio>

namespace keylock::bench {

namespace {

constexpr double ns_per_us = 1000.0;

std::string pad(std::string_view s, std::size_t width, bool right) {
  const std::size_t w = display_width(s);
  std::string out;
  if (w >= width) return std::string(s);
  if (right) out.append(width - w, ' ');
  out += s;
  if (!right) out.append(width - w, ' ');
  return out;
}

// A grid of cells written as an aligned text table or a Markdown table. Column 0 is left
// aligned, the rest right aligned.
std::string render_grid(const std::vector<std::vector<std::string>>& grid, output_style style) {
  if (grid.empty()) return {};
  std::size_t cols = 0;
  for (const auto& row : grid) cols = std::max(cols, row.size());
  std::vector<std::size_t> width(cols, 0);
  for (const auto& row : grid) {
    for (std::size_t c = 0; c < row.size(); ++c)
      width[c] = std::max(width[c], display_width(row[c]));
  }
  std::string out;
  for (std::size_t r = 0; r < grid.size(); ++r) {
    const auto& row = grid[r];
    if (style == output_style::markdown) {
      out += '|';
      for (std::size_t c = 0; c < cols; ++c) {
        out += ' ';
        out += pad(c < row.size() ? row[c] : "", width[c], c > 0);
        out += " |";
      }
      out += '\n';
      if (r == 0) {
        out += '|';
        for (std::size_t c = 0; c < cols; ++c) {
          out += c == 0 ? ":" : "";
          out.append(width[c] + 1, '-');
          out += c == 0 ? "|" : ":|";
        }
        out += '\n';
      }
    } else {
      for (std::size_t c = 0; c < cols; ++c) {
        if (c > 0) out += "  ";
        out += pad(c < row.size() ? row[c] : "", width[c], c > 0);
      }
      while (!out.empty() && out.back() == ' ') out.pop_back();
      out += '\n';
    }
  }
  return out;
}

// The index of the first keylock row and of the one redis row, when the group has one redis
// row and at least one keylock row.
bool ratio_pair(std::span<const run_result> rows, std::size_t& k, std::size_t& r) {
  std::size_t nk = 0, nr = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].kind == target_kind::keylock) {
      if (nk == 0) k = i;
      ++nk;
    } else {
      r = i;
      ++nr;
    }
  }
  return nk >= 1 && nr == 1;
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  // Three decimals are more than any measurement here carries; shortest round-trip form.
  const double rounded = std::round(v * 1000.0) / 1000.0;
  std::array<char, 32> buf{};
  auto [ptr, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), rounded);
  if (ec != std::errc{}) return "null";
  return {buf.data(), ptr};
}

std::string json_uint(std::uint64_t v) { return std::to_string(v); }

void append_latency_json(std::string& out, const run_result& r) {
  const latency_summary& l = r.latency;
  out += R"("latency_us":{"what":)" + json_quote(r.latency_label) + R"(,"count":)" +
         json_uint(l.count) + R"(,"mean":)" + json_number(l.mean_us) + R"(,"p50":)" +
         json_number(l.p50_us) + R"(,"p90":)" + json_number(l.p90_us) + R"(,"p99":)" +
         json_number(l.p99_us) + R"(,"p99_9":)" + json_number(l.p999_us) + R"(,"max":)" +
         json_number(l.max_us) + "}";
}

std::string ratio_label(const run_result& keylock_row) {
  return keylock_row.variant.empty() ? std::string("keylock/redis")
                                     : "keylock " + keylock_row.variant + "/redis";
}

}  // namespace

std::string row_kind(const run_result& r) {
  std::string out(to_string(r.kind));
  if (r.tls) out += 's';
  if (!r.variant.empty()) out += ":" + r.variant;
  return out;
}

latency_summary summarize(const latency_histogram& h) {
  latency_summary s;
  s.count = h.count();
  if (s.count == 0) return s;
  auto us = [](std::uint64_t ns) { return static_cast<double>(ns) / ns_per_us; };
  s.mean_us = h.mean() / ns_per_us;
  s.p50_us = us(h.percentile(50));
  s.p90_us = us(h.percentile(90));
  s.p99_us = us(h.percentile(99));
  s.p999_us = us(h.percentile(99.9));
  s.max_us = us(h.max());
  return s;
}

const extra_metric* run_result::find_extra(std::string_view key) const noexcept {
  for (const auto& e : extras) {
    if (e.key == key) return &e;
  }
  return nullptr;
}

std::size_t display_width(std::string_view s) noexcept {
  std::size_t n = 0;
  for (char c : s) {
    if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++n;
  }
  return n;
}

std::string format_count(double v) {
  if (!std::isfinite(v)) return "n/a";
  const bool negative = v < 0;
  auto n = static_cast<std::uint64_t>(std::llround(std::fabs(v)));
  std::string digits = std::to_string(n);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return negative && n != 0 ? "-" + out : out;
}

std::string format_value(double v) {
  if (!std::isfinite(v)) return "n/a";
  std::array<char, 64> buf{};
  const double a = std::fabs(v);
  if (a < 10) {
    std::snprintf(buf.data(), buf.size(), "%.2f", v);
  } else if (a < 1000) {
    std::snprintf(buf.data(), buf.size(), "%.1f", v);
  } else {
    return format_count(v);
  }
  return buf.data();
}

std::string format_ratio(double r) {
  if (!std::isfinite(r)) return "n/a";
  std::array<char, 64> buf{};
  const double a = std::fabs(r);
  const char* fmt = a >= 100 ? "%.0f×" : a >= 10 ? "%.1f×" : a >= 0.1 ? "%.2f×" : "%.2g×";
  std::snprintf(buf.data(), buf.size(), fmt, r);
  return buf.data();
}

std::string json_quote(std::string_view s) {
  std::string out;
  keylock::append_json_string(out, s);  // the protocol codec's escaping, one implementation
  return out;
}

std::vector<ratio_entry> compute_ratios(std::span<const run_result> rows) {
  std::vector<ratio_entry> out;
  std::size_t k = 0, r = 0;
  if (!ratio_pair(rows, k, r)) return out;
  const run_result& a = rows[k];
  const run_result& b = rows[r];
  auto add = [&out](std::string metric, double kv, double rv) {
    ratio_entry e{std::move(metric), kv, rv, 0, false};
    if (rv != 0 && std::isfinite(kv) && std::isfinite(rv)) {
      e.ratio = kv / rv;
      e.defined = true;
    }
    out.push_back(std::move(e));
  };
  add("ops_per_s", a.ops_per_s, b.ops_per_s);
  add("requests_per_s", a.requests_per_s, b.requests_per_s);
  add("p50_us", a.latency.p50_us, b.latency.p50_us);
  add("p99_us", a.latency.p99_us, b.latency.p99_us);
  for (const auto& e : a.extras) {
    const extra_metric* other = b.find_extra(e.key);
    if (other != nullptr && e.ratio) add(e.key, e.value, other->value);
  }
  return out;
}

std::vector<std::span<const run_result>> group_by_workload(std::span<const run_result> results) {
  std::vector<std::span<const run_result>> groups;
  std::size_t begin = 0;
  for (std::size_t i = 1; i <= results.size(); ++i) {
    if (i == results.size() || results[i].workload != results[begin].workload ||
        results[i].params != results[begin].params) {
      if (i > begin) groups.push_back(results.subspan(begin, i - begin));
      begin = i;
    }
  }
  return groups;
}

std::string format_table(std::span<const run_result> rows, output_style style, bool with_ratio) {
  if (rows.empty()) return {};
  const bool md = style == output_style::markdown;
  const run_result& first = rows.front();
  std::size_t k = 0, r = 0;
  const bool ratio = with_ratio && ratio_pair(rows, k, r);

  std::string out;
  // The window is the same for every target of a timed workload; hold-many and connections
  // take as long as filling takes, so each target's time is shown.
  std::string secs;
  bool same = true;
  for (const auto& row : rows) same = same && std::fabs(row.seconds - first.seconds) < 0.05;
  for (const auto& row : rows) {
    std::array<char, 32> one{};
    std::snprintf(one.data(), one.size(), "%.1f", row.seconds);
    if (!secs.empty()) secs += " / ";
    secs += one.data();
    if (same) break;
  }
  secs += same ? " s per target" : " s";
  out += md ? "**" : "== ";
  out += first.workload + " — " + first.params + " — " + secs;
  out += md ? "**\n\n" : " ==\n";
  out += "op: " + first.op_label + "; latency: " + first.latency_label + "\n";
  if (md) out += '\n';

  std::vector<std::vector<std::string>> grid;
  grid.push_back({"target", "ops/s", "req/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs",
                  "errors", "violations"});
  for (const auto& row : rows) {
    grid.push_back({row.variant.empty() ? row.target_url : row.target_url + " " + row.variant,
                    format_count(row.ops_per_s), format_count(row.requests_per_s),
                    format_value(row.latency.p50_us), format_value(row.latency.p90_us),
                    format_value(row.latency.p99_us), format_value(row.latency.p999_us),
                    format_value(row.latency.max_us), format_count(static_cast<double>(row.errors)),
                    format_count(static_cast<double>(row.violations))});
  }
  if (ratio) {
    const run_result& a = rows[k];
    const run_result& b = rows[r];
    auto rat = [](double x, double y) { return y == 0 ? std::string("n/a") : format_ratio(x / y); };
    grid.push_back(
        {ratio_label(a), rat(a.ops_per_s, b.ops_per_s), rat(a.requests_per_s, b.requests_per_s),
         rat(a.latency.p50_us, b.latency.p50_us), rat(a.latency.p90_us, b.latency.p90_us),
         rat(a.latency.p99_us, b.latency.p99_us), rat(a.latency.p999_us, b.latency.p999_us),
         rat(a.latency.max_us, b.latency.max_us), "", ""});
  }
  out += render_grid(grid, style);

  // Extras: one row per metric (in order of first appearance), one column per target.
  std::vector<const extra_metric*> keys;
  for (const auto& row : rows) {
    for (const auto& e : row.extras) {
      if (std::none_of(keys.begin(), keys.end(),
                       [&e](const extra_metric* x) { return x->key == e.key; })) {
        keys.push_back(&e);
      }
    }
  }
  if (!keys.empty()) {
    std::vector<std::vector<std::string>> extras;
    std::vector<std::string> head{"metric"};
    for (const auto& row : rows) head.emplace_back(row_kind(row));
    if (ratio) head.emplace_back(ratio_label(rows[k]));
    extras.push_back(std::move(head));
    for (const extra_metric* key : keys) {
      std::vector<std::string> line{key->label};
      for (const auto& row : rows) {
        const extra_metric* e = row.find_extra(key->key);
        line.push_back(e != nullptr ? format_value(e->value) : "");
      }
      if (ratio) {
        const extra_metric* a = rows[k].find_extra(key->key);
        const extra_metric* b = rows[r].find_extra(key->key);
        line.push_back(a != nullptr && b != nullptr && a->ratio && b->value != 0
                           ? format_ratio(a->value / b->value)
                           : "");
      }
      extras.push_back(std::move(line));
    }
    out += '\n';
    out += render_grid(extras, style);
  }
  out += '\n';
  for (const auto& row : rows) {
    out += md ? "- " : "";
    out += "placement (" + row_kind(row) + "): " + row.placement + "\n";
    if (row.tls) {
      out += md ? "- " : "";
      out += "tls (" + row_kind(row) + "): " +
             (row.tls_session.empty() ? std::string("no handshake completed") : row.tls_session) +
             "\n";
    }
    if (!row.first_error.empty()) {
      out += md ? "- " : "";
      out += "first error (" + row_kind(row) + "): " + row.first_error + "\n";
    }
  }
  return out;
}

std::string format_json(std::span<const run_result> results, const run_meta& meta,
                        bool with_ratios) {
  std::string out = R"({"tool":"keylock-bench","version":)" + json_quote(meta.version) +
                    R"(,"command":)" + json_quote(meta.command) + R"(,"generator":)" +
                    json_quote(meta.generator) + ",\"results\":[\n";
  for (std::size_t i = 0; i < results.size(); ++i) {
    const run_result& r = results[i];
    out += R"({"workload":)" + json_quote(r.workload) + R"(,"params":)" + json_quote(r.params) +
           R"(,"target":)" + json_quote(r.target_url) + R"(,"kind":)" +
           json_quote(to_string(r.kind)) + R"(,"variant":)" + json_quote(r.variant) +
           R"(,"clients":)" + json_uint(r.clients) +
           R"(,"pipeline":)" + json_uint(r.pipeline) + R"(,"seconds":)" + json_number(r.seconds) +
           R"(,"op":)" + json_quote(r.op_label) + R"(,"ops":)" + json_uint(r.ops) +
           R"(,"requests":)" + json_uint(r.requests) + R"(,"ops_per_s":)" +
           json_number(r.ops_per_s) + R"(,"requests_per_s":)" + json_number(r.requests_per_s) + ",";
    append_latency_json(out, r);
    out += R"(,"errors":)" + json_uint(r.errors) + R"(,"violations":)" + json_uint(r.violations) +
           R"(,"placement":)" + json_quote(r.placement) + R"(,"tls":)" +
           (r.tls ? json_quote(r.tls_session) : std::string("null")) + R"(,"extras":{)";
    for (std::size_t j = 0; j < r.extras.size(); ++j) {
      if (j > 0) out += ',';
      out += json_quote(r.extras[j].key) + ":" + json_number(r.extras[j].value);
    }
    out += R"(},"first_error":)" + json_quote(r.first_error) + "}";
    out += i + 1 < results.size() ? ",\n" : "\n";
  }
  out += "],\"ratios\":[";
  if (with_ratios) {
    bool first = true;
    for (auto group : group_by_workload(results)) {
      for (const ratio_entry& e : compute_ratios(group)) {
        out += first ? "\n" : ",\n";
        first = false;
        out += R"({"workload":)" + json_quote(group.front().workload) + R"(,"params":)" +
               json_quote(group.front().params) + R"(,"metric":)" + json_quote(e.metric) +
               R"(,"keylock":)" + json_number(e.keylock) + R"(,"redis":)" + json_number(e.redis) +
               R"(,"keylock_over_redis":)" + (e.defined ? json_number(e.ratio) : "null") + "}";
      }
    }
    if (!first) out += '\n';
  }
  out += "]}\n";
  return out;
}

std::string format_tsv(std::span<const run_result> results, std::string_view label) {
  std::string out;
  for (const run_result& r : results) {
    auto line = [&](std::string_view metric, double v) {
      out += label;
      out += '\t';
      out += r.workload;
      out += '\t';
      out += row_kind(r);
      out += '\t';
      out += metric;
      out += '\t';
      out += json_number(v);
      out += '\n';
    };
    line("ops_per_s", r.ops_per_s);
    line("requests_per_s", r.requests_per_s);
    line("p50_us", r.latency.p50_us);
    line("p90_us", r.latency.p90_us);
    line("p99_us", r.latency.p99_us);
    line("p99_9_us", r.latency.p999_us);
    line("max_us", r.latency.max_us);
    line("errors", static_cast<double>(r.errors));
    line("violations", static_cast<double>(r.violations));
    for (const auto& e : r.extras) line(e.key, e.value);
  }
  return out;
}

}  // namespace keylock::bench
