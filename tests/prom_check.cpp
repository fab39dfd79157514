// Prometheus text exposition 0.0.4: a strict line parser, then per-family checks. See
// prom_check.hpp for the rules. The grammar follows the format's specification (and where it
// is silent, the reference parser, expfmt's text_parse.go): tokens separated by blanks or
// tabs, label values and HELP text with backslash escapes, values as Go floats plus NaN,
// +Inf and -Inf, and an optional int64 millisecond timestamp.
#include "prom_check.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <limits>
#include <unordered_map>
#include <unordered_set>

namespace keylock::prom {

namespace {

bool is_blank(char c) { return c == ' ' || c == '\t'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_metric_char(char c, bool first) {
  return is_name_start(c) || c == ':' || (!first && is_digit(c));
}
bool is_label_char(char c, bool first) { return is_name_start(c) || (!first && is_digit(c)); }

std::string num(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  std::array<char, 64> buf{};
  auto res = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  return {buf.data(), res.ptr};
}

// Printable text of client-ish input in a problem message: at most 60 bytes, control
// characters shown as '?'.
std::string excerpt(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 60)) {
    out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  }
  if (s.size() > 60) out += "...";
  return out;
}

// A value: a Go-style decimal float ([+-]digits[.digits][e[+-]digits]), or exactly NaN, +Inf
// or -Inf. Hex floats, "inf", "nan(...)", and spaces are rejected.
std::optional<double> parse_value(std::string_view s) {
  if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
  if (s == "+Inf") return std::numeric_limits<double>::infinity();
  if (s == "-Inf") return -std::numeric_limits<double>::infinity();
  std::size_t i = 0;
  bool negative = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) negative = s[i++] == '-';
  std::size_t digits = 0;
  std::size_t start = i;
  while (i < s.size() && is_digit(s[i])) ++i, ++digits;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && is_digit(s[i])) ++i, ++digits;
  }
  if (digits == 0) return std::nullopt;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    std::size_t exp_digits = 0;
    while (i < s.size() && is_digit(s[i])) ++i, ++exp_digits;
    if (exp_digits == 0) return std::nullopt;
  }
  if (i != s.size()) return std::nullopt;
  double v = 0;
  auto res = std::from_chars(s.data() + start, s.data() + s.size(), v);
  if (res.ec != std::errc() || res.ptr != s.data() + s.size()) return std::nullopt;
  return negative ? -v : v;
}

std::optional<std::int64_t> parse_timestamp(std::string_view s) {
  std::int64_t v = 0;
  if (s.empty() || s.front() == '+') return std::nullopt;
  auto res = std::from_chars(s.data(), s.data() + s.size(), v);
  if (res.ec != std::errc() || res.ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

// An unambiguous key for a label set, independent of the written order.
std::string label_key(const std::vector<label>& labels, std::string_view skip = {}) {
  std::vector<const label*> sorted;
  for (const label& l : labels) {
    if (skip.empty() || l.name != skip) sorted.push_back(&l);
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const label* a, const label* b) { return a->name < b->name; });
  std::string key;
  for (const label* l : sorted) {
    key += l->name;
    key += '=';
    key += std::to_string(l->value.size());
    key += ':';
    key += l->value;
    key += ',';
  }
  return key;
}

const label* find_label(const sample& s, std::string_view name) {
  for (const label& l : s.labels) {
    if (l.name == name) return &l;
  }
  return nullptr;
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() > suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

class parser {
 public:
  exposition run(std::string_view text) {
    if (!text.empty() && text.back() != '\n') {
      result_.problems.push_back("the text does not end with a newline");
    }
    int line_no = 0;
    std::size_t pos = 0;
    while (pos < text.size()) {
      std::size_t nl = text.find('\n', pos);
      std::size_t end = nl == std::string_view::npos ? text.size() : nl;
      ++line_no;
      line_ = line_no;
      parse_line(text.substr(pos, end - pos));
      pos = end + 1;
    }
    finish();
    return std::move(result_);
  }

 private:
  void problem(std::string what) {
    result_.problems.push_back("line " + std::to_string(line_) + ": " + std::move(what));
  }

  bool fail(std::string what) {
    problem(std::move(what));
    return false;
  }

  // Makes family `name` current (creating it), reporting a family whose lines are split.
  std::size_t enter(const std::string& name) {
    auto it = index_.find(name);
    std::size_t idx;
    if (it == index_.end()) {
      idx = result_.families.size();
      result_.families.push_back(family{name, std::nullopt, std::nullopt, {}});
      index_.emplace(name, idx);
      left_.push_back(false);
    } else {
      idx = it->second;
    }
    if (current_ != idx) {
      if (current_ != npos) left_[current_] = true;
      if (left_[idx]) {
        problem("family " + name +
                " appears again after other families (duplicate family; a family's lines "
                "must be contiguous)");
        left_[idx] = false;
      }
      current_ = idx;
    }
    return idx;
  }

  void parse_line(std::string_view line) {
    std::size_t i = 0;
    while (i < line.size() && is_blank(line[i])) ++i;
    if (i == line.size()) return;  // blank line
    if (line[i] == '#') return parse_comment(line.substr(i + 1));
    parse_sample(line.substr(i));
  }

  static std::string_view token(std::string_view s, std::size_t& i) {
    while (i < s.size() && is_blank(s[i])) ++i;
    std::size_t start = i;
    while (i < s.size() && !is_blank(s[i])) ++i;
    return s.substr(start, i - start);
  }

  void parse_comment(std::string_view s) {
    std::size_t i = 0;
    std::string_view keyword = token(s, i);
    if (keyword != "HELP" && keyword != "TYPE") return;  // an ordinary comment
    std::string_view name = token(s, i);
    if (name.empty()) return problem("# " + std::string(keyword) + " without a metric name");
    for (std::size_t k = 0; k < name.size(); ++k) {
      if (!is_metric_char(name[k], k == 0)) {
        return problem("# " + std::string(keyword) + ": invalid metric name '" + excerpt(name) +
                       "'");
      }
    }
    family& f = result_.families[enter(std::string(name))];
    if (keyword == "HELP") {
      while (i < s.size() && is_blank(s[i])) ++i;
      std::string help;
      for (; i < s.size(); ++i) {
        if (s[i] != '\\') {
          help += s[i];
          continue;
        }
        if (i + 1 == s.size()) return problem("HELP of " + f.name + " ends in a lone backslash");
        char e = s[++i];
        if (e == '\\') {
          help += '\\';
        } else if (e == 'n') {
          help += '\n';
        } else {
          return problem("HELP of " + f.name + " has an invalid escape \\" + excerpt({&e, 1}));
        }
      }
      if (f.help) problem("second # HELP for " + f.name);
      if (!f.samples.empty()) problem("# HELP for " + f.name + " after its samples");
      f.help = std::move(help);
      return;
    }
    std::string_view type_name = token(s, i);
    std::string_view rest = token(s, i);
    if (!rest.empty()) return problem("# TYPE " + f.name + ": unexpected text after the type");
    std::optional<metric_type> t;
    if (type_name == "counter") t = metric_type::counter;
    if (type_name == "gauge") t = metric_type::gauge;
    if (type_name == "histogram") t = metric_type::histogram;
    if (type_name == "summary") t = metric_type::summary;
    if (type_name == "untyped") t = metric_type::untyped;
    if (!t) return problem("# TYPE " + f.name + ": unknown type '" + excerpt(type_name) + "'");
    if (f.type) problem("second # TYPE for " + f.name);
    if (!f.samples.empty()) problem("# TYPE for " + f.name + " after its samples");
    f.type = t;
  }

  // Parses {name="value",...} at s[i] (which is '{'); false after reporting a problem.
  bool parse_labels(std::string_view s, std::size_t& i, std::vector<label>& out) {
    ++i;
    for (;;) {
      while (i < s.size() && is_blank(s[i])) ++i;
      if (i == s.size()) return fail("unterminated label set");
      if (s[i] == '}') {
        ++i;
        return true;
      }
      std::size_t start = i;
      while (i < s.size() && is_label_char(s[i], i == start)) ++i;
      std::string name(s.substr(start, i - start));
      if (name.empty()) {
        return fail("expected a label name at '" + excerpt(s.substr(i)) + "'");
      }
      while (i < s.size() && is_blank(s[i])) ++i;
      if (i == s.size() || s[i] != '=') {
        return fail("expected '=' after label " + name);
      }
      ++i;
      while (i < s.size() && is_blank(s[i])) ++i;
      if (i == s.size() || s[i] != '"') {
        return fail("expected '\"' to open the value of label " + name);
      }
      ++i;
      std::string value;
      bool closed = false;
      while (i < s.size()) {
        char c = s[i++];
        if (c == '"') {
          closed = true;
          break;
        }
        if (c != '\\') {
          value += c;
          continue;
        }
        if (i == s.size()) break;
        char e = s[i++];
        if (e == '\\') {
          value += '\\';
        } else if (e == '"') {
          value += '"';
        } else if (e == 'n') {
          value += '\n';
        } else {
          return fail("invalid escape \\" + excerpt({&e, 1}) + " in label " + name);
        }
      }
      if (!closed) return fail("unterminated value of label " + name);
      if (name.rfind("__", 0) == 0) problem("label name " + name + " is reserved (starts __)");
      for (const label& l : out) {
        if (l.name == name) problem("label " + name + " given twice");
      }
      out.push_back(label{std::move(name), std::move(value)});
      while (i < s.size() && is_blank(s[i])) ++i;
      if (i < s.size() && s[i] == ',') {
        ++i;
      } else if (i < s.size() && s[i] == '}') {
        ++i;
        return true;
      } else {
        return fail("expected ',' or '}' after the value of label " + out.back().name);
      }
    }
  }

  // The family a sample named `name` belongs to: the current family when it claims the name,
  // else a declared histogram/summary for a _bucket/_sum/_count suffix, else `name` itself.
  std::string family_for(const std::string& name) const {
    auto claims = [&](const family& f) {
      if (f.name == name) return true;
      bool hist = f.type == metric_type::histogram;
      bool summ = f.type == metric_type::summary;
      if (hist && name == f.name + "_bucket") return true;
      return (hist || summ) && (name == f.name + "_sum" || name == f.name + "_count");
    };
    if (current_ != npos && claims(result_.families[current_])) {
      return result_.families[current_].name;
    }
    for (std::string_view suffix : {"_bucket", "_sum", "_count"}) {
      if (!ends_with(name, suffix)) continue;
      auto it = index_.find(name.substr(0, name.size() - suffix.size()));
      if (it != index_.end() && claims(result_.families[it->second])) {
        return result_.families[it->second].name;
      }
    }
    return name;
  }

  void parse_sample(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size() && is_metric_char(s[i], i == 0)) ++i;
    if (i == 0) return problem("expected a metric name at '" + excerpt(s) + "'");
    sample smp;
    smp.name = std::string(s.substr(0, i));
    smp.line = line_;
    while (i < s.size() && is_blank(s[i])) ++i;
    if (i < s.size() && s[i] == '{' && !parse_labels(s, i, smp.labels)) return;
    std::string_view value_text = token(s, i);
    if (value_text.empty()) return problem("sample " + smp.name + " has no value");
    auto value = parse_value(value_text);
    if (!value) {
      return problem("sample " + smp.name + ": bad value '" + excerpt(value_text) + "'");
    }
    smp.value = *value;
    std::string_view ts = token(s, i);
    if (!ts.empty()) {
      smp.timestamp_ms = parse_timestamp(ts);
      if (!smp.timestamp_ms) {
        return problem("sample " + smp.name + ": bad timestamp '" + excerpt(ts) + "'");
      }
      if (!token(s, i).empty()) {
        return problem("sample " + smp.name + ": unexpected text after the timestamp");
      }
    }

    family& f = result_.families[enter(family_for(smp.name))];
    if (!seen_.insert(smp.name + '{' + label_key(smp.labels)).second) {
      problem("duplicate sample " + describe(smp));
    }
    check_sample(f, smp);
    f.samples.push_back(std::move(smp));
  }

  void check_sample(const family& f, const sample& smp) {
    metric_type t = f.type.value_or(metric_type::untyped);
    bool counts = t == metric_type::counter;
    if (t == metric_type::histogram) {
      if (smp.name == f.name) problem("histogram " + f.name + " has a bare sample (no suffix)");
      bool bucket = smp.name == f.name + "_bucket";
      counts = bucket || smp.name == f.name + "_count";
      if (bucket && !find_label(smp, "le")) problem(describe(smp) + " has no le label");
      if (!bucket && find_label(smp, "le")) problem(describe(smp) + " has an le label");
    }
    if (t == metric_type::summary) {
      bool bare = smp.name == f.name;
      counts = smp.name == f.name + "_count";
      if (bare && !find_label(smp, "quantile")) problem(describe(smp) + " has no quantile");
      if (!bare && find_label(smp, "quantile")) problem(describe(smp) + " has a quantile");
    }
    if (counts && (std::isnan(smp.value) || smp.value < 0)) {
      problem(describe(smp) + " is a count but its value is " + num(smp.value));
    }
  }

  void finish() {
    for (const family& f : result_.families) {
      if (f.samples.empty()) continue;
      line_ = f.samples.front().line;
      if (!f.help) problem("family " + f.name + " has samples but no # HELP");
      if (!f.type) problem("family " + f.name + " has samples but no # TYPE");
      if (f.type == metric_type::histogram) check_histogram(f);
      if (f.type == metric_type::summary) check_summary(f);
    }
  }

  struct series {
    int line = 0;
    std::string labels;  // describe()-style, for messages
    std::vector<const sample*> buckets;
    const sample* sum = nullptr;
    const sample* count = nullptr;
  };

  std::vector<series> group(const family& f, std::string_view skip_label) {
    std::vector<series> out;
    std::unordered_map<std::string, std::size_t> by_key;
    for (const sample& s : f.samples) {
      auto [it, inserted] = by_key.emplace(label_key(s.labels, skip_label), out.size());
      if (inserted) {
        sample without = s;
        without.name = f.name;
        without.labels.erase(std::remove_if(without.labels.begin(), without.labels.end(),
                                            [&](const label& l) { return l.name == skip_label; }),
                             without.labels.end());
        out.push_back(series{s.line, describe(without), {}, nullptr, nullptr});
      }
      series& g = out[it->second];
      if (s.name == f.name + "_sum") g.sum = &s;
      if (s.name == f.name + "_count") g.count = &s;
      if (s.name == f.name + "_bucket" || s.name == f.name) g.buckets.push_back(&s);
    }
    return out;
  }

  void check_histogram(const family& f) {
    for (const series& g : group(f, "le")) {
      line_ = g.line;
      if (!g.sum) problem("histogram " + g.labels + " has no _sum");
      if (!g.count) problem("histogram " + g.labels + " has no _count");
      if (g.buckets.empty()) {
        problem("histogram " + g.labels + " has no _bucket samples");
        continue;
      }
      std::optional<double> prev_le;
      double prev_count = 0;
      bool last_is_inf = false;
      for (const sample* b : g.buckets) {
        line_ = b->line;
        const label* le = find_label(*b, "le");
        if (!le) continue;  // reported per sample
        auto bound = parse_value(le->value);
        if (!bound || std::isnan(*bound)) {
          problem(describe(*b) + ": le is not a number");
          continue;
        }
        if (prev_le && !(*bound > *prev_le)) {
          problem(describe(*b) + ": le " + num(*bound) + " does not ascend from " + num(*prev_le));
        }
        if (b->value < prev_count) {
          problem(describe(*b) + ": bucket count " + num(b->value) +
                  " is below the previous bucket's " + num(prev_count) + " (not cumulative)");
        }
        prev_le = *bound;
        prev_count = b->value;
        last_is_inf = std::isinf(*bound) && *bound > 0;
      }
      line_ = g.buckets.back()->line;
      if (!last_is_inf) {
        problem("histogram " + g.labels + ": the last bucket is not le=\"+Inf\"");
      } else if (g.count && g.count->value != g.buckets.back()->value) {
        problem("histogram " + g.labels + ": the +Inf bucket (" + num(g.buckets.back()->value) +
                ") differs from _count (" + num(g.count->value) + ")");
      }
    }
  }

  void check_summary(const family& f) {
    for (const series& g : group(f, "quantile")) {
      line_ = g.line;
      if (!g.sum) problem("summary " + g.labels + " has no _sum");
      if (!g.count) problem("summary " + g.labels + " has no _count");
    }
  }

  static constexpr std::size_t npos = static_cast<std::size_t>(-1);
  exposition result_;
  std::unordered_map<std::string, std::size_t> index_;
  std::vector<bool> left_;  // per family: its lines ended and another family's began
  std::unordered_set<std::string> seen_;
  std::size_t current_ = npos;
  int line_ = 0;
};

}  // namespace

std::string_view to_string(metric_type t) noexcept {
  switch (t) {
    case metric_type::untyped:
      return "untyped";
    case metric_type::counter:
      return "counter";
    case metric_type::gauge:
      return "gauge";
    case metric_type::histogram:
      return "histogram";
    case metric_type::summary:
      return "summary";
  }
  return "untyped";
}

const family* exposition::find(std::string_view name) const noexcept {
  for (const family& f : families) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

exposition parse(std::string_view text) { return parser().run(text); }

std::vector<std::string> check(std::string_view text) { return parse(text).problems; }

std::string describe(const sample& s) {
  std::string out = s.name;
  if (s.labels.empty()) return out;
  out += '{';
  for (std::size_t i = 0; i < s.labels.size(); ++i) {
    if (i > 0) out += ',';
    out += s.labels[i].name;
    out += "=\"";
    for (char c : s.labels[i].value) {
      if (c == '\\' || c == '"') out += '\\';
      if (c == '\n') {
        out += "\\n";
      } else {
        out += c;
      }
    }
    out += '"';
  }
  out += '}';
  return out;
}

std::optional<double> sample_value(const exposition& e, std::string_view name,
                                   const label_list& labels) {
  std::vector<label> wanted;
  for (const auto& [k, v] : labels) wanted.push_back(label{std::string(k), std::string(v)});
  std::string key = label_key(wanted);
  for (const family& f : e.families) {
    for (const sample& s : f.samples) {
      if (s.name == name && s.labels.size() == wanted.size() && label_key(s.labels) == key) {
        return s.value;
      }
    }
  }
  return std::nullopt;
}

namespace {

// The samples monotonic_problems compares: whole counters, and a histogram's _bucket/_count.
template <class Fn>
void for_each_monotonic(const exposition& e, Fn fn) {
  for (const family& f : e.families) {
    if (f.type == metric_type::counter) {
      for (const sample& s : f.samples) fn(s);
    } else if (f.type == metric_type::histogram) {
      for (const sample& s : f.samples) {
        if (s.name == f.name + "_bucket" || s.name == f.name + "_count") fn(s);
      }
    }
  }
}

}  // namespace

std::vector<std::string> monotonic_problems(const exposition& before, const exposition& after) {
  std::unordered_map<std::string, double> old;
  for_each_monotonic(
      before, [&](const sample& s) { old.emplace(s.name + '{' + label_key(s.labels), s.value); });
  std::vector<std::string> out;
  for_each_monotonic(after, [&](const sample& s) {
    auto it = old.find(s.name + '{' + label_key(s.labels));
    if (it != old.end() && s.value < it->second) {
      out.push_back(describe(s) + " decreased from " + num(it->second) + " to " + num(s.value));
    }
  });
  return out;
}

}  // namespace keylock::prom
