// The two log formats of keylockd (log_format.hpp). Both escape client input with the codec's
// JSON string escaper (append_json_string with json_escape::log), the one escaper of keylock:
// the JSON formatter for every string it writes, the text formatter only for a message that
// holds a control character or invalid UTF-8 (is_printable_utf8), so that a message quoting a
// client's name or key cannot forge log lines or drive the operator's terminal. Neither uses a
// JSON library, and neither allocates per line once its scratch string has grown.
#include "log_format.hpp"

#include "keylock/codec.hpp"

#include <spdlog/formatter.h>
#include <spdlog/logger.h>
#include <spdlog/pattern_formatter.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <ctime>
#include <memory>
#include <string>
#include <string_view>

namespace keylock {

namespace {

// What main.cpp has always used for text logs.
constexpr const char* text_pattern = "%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v";

void append(spdlog::memory_buf_t& dest, std::string_view s) {
  dest.append(s.data(), s.data() + s.size());
}

// Lower-case names as log shippers expect them ("warn", not spdlog's "warning").
std::string_view level_name(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
      return "trace";
    case spdlog::level::debug:
      return "debug";
    case spdlog::level::info:
      return "info";
    case spdlog::level::warn:
      return "warn";
    case spdlog::level::err:
      return "error";
    case spdlog::level::critical:
      return "critical";
    case spdlog::level::off:
    case spdlog::level::n_levels:
      break;
  }
  return "off";
}

// Writes `v` as exactly `width` decimal digits, zero-padded.
void append_digits(spdlog::memory_buf_t& dest, long long v, int width) {
  std::array<char, 20> buf{};
  for (int i = width - 1; i >= 0; --i) {
    buf[static_cast<std::size_t>(i)] = static_cast<char>('0' + v % 10);
    v /= 10;
  }
  dest.append(buf.data(), buf.data() + width);
}

// Text: text_pattern, with the message escaped as the inside of a JSON string when it is not
// printable UTF-8 ("evil\n2026-..." stays on one line). A printable message is written as is.
class text_formatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    std::string_view payload(msg.payload.data(), msg.payload.size());
    if (is_printable_utf8(payload)) return pattern_.format(msg, dest);
    scratch_.clear();
    append_json_string(scratch_, payload, json_escape::log);
    spdlog::details::log_msg escaped = msg;
    escaped.payload = spdlog::string_view_t(scratch_.data() + 1, scratch_.size() - 2);  // no ""
    pattern_.format(escaped, dest);
    // The color sink reads the level's range from the message it passed in.
    msg.color_range_start = escaped.color_range_start;
    msg.color_range_end = escaped.color_range_end;
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<text_formatter>();
  }

 private:
  spdlog::pattern_formatter pattern_{text_pattern};
  std::string scratch_;  // the escaped message; keeps its capacity from line to line
};

class json_formatter final : public spdlog::formatter {
 public:
  // {"ts":"2026-11-27T04:10:21.123Z","level":"info","logger":"keylockd","msg":"..."}\n
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    using namespace std::chrono;
    auto since_epoch = msg.time.time_since_epoch();
    auto secs = floor<seconds>(since_epoch);
    auto ms = duration_cast<milliseconds>(since_epoch - secs).count();
    append(dest, "{\"ts\":\"");
    if (secs.count() != cached_second_ || cached_prefix_len_ == 0) cache_second(secs.count());
    dest.append(cached_prefix_.data(), cached_prefix_.data() + cached_prefix_len_);
    dest.push_back('.');
    append_digits(dest, ms, 3);
    append(dest, "Z\",\"level\":\"");
    append(dest, level_name(msg.level));
    append(dest, "\",\"logger\":");
    scratch_.clear();
    append_json_string(scratch_, std::string_view(msg.logger_name.data(), msg.logger_name.size()),
                       json_escape::log);
    scratch_ += ",\"msg\":";
    append_json_string(scratch_, std::string_view(msg.payload.data(), msg.payload.size()),
                       json_escape::log);
    append(dest, scratch_);
    append(dest, "}\n");
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<json_formatter>();
  }

 private:
  // "YYYY-MM-DDTHH:MM:SS" of a Unix second, in UTC; computed once per second (gmtime_r is
  // not free, and a busy daemon logs many lines in the same second).
  void cache_second(long long unix_seconds) {
    auto t = static_cast<std::time_t>(unix_seconds);
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    spdlog::memory_buf_t buf;
    append_digits(buf, tm.tm_year + 1900LL, 4);
    buf.push_back('-');
    append_digits(buf, tm.tm_mon + 1, 2);
    buf.push_back('-');
    append_digits(buf, tm.tm_mday, 2);
    buf.push_back('T');
    append_digits(buf, tm.tm_hour, 2);
    buf.push_back(':');
    append_digits(buf, tm.tm_min, 2);
    buf.push_back(':');
    append_digits(buf, tm.tm_sec, 2);
    cached_prefix_len_ = std::min(buf.size(), cached_prefix_.size());
    std::copy(buf.data(), buf.data() + cached_prefix_len_, cached_prefix_.data());
    cached_second_ = unix_seconds;
  }

  long long cached_second_ = 0;
  std::array<char, 24> cached_prefix_{};
  std::size_t cached_prefix_len_ = 0;
  std::string scratch_;  // the escaped strings of a line; keeps its capacity from line to line
};

}  // namespace

bool set_log_format(spdlog::logger& logger, std::string_view format) {
  if (format == "text") {
    logger.set_formatter(std::make_unique<text_formatter>());
    return true;
  }
  if (format == "json") {
    logger.set_formatter(std::make_unique<json_formatter>());
    return true;
  }
  return false;
}

}  // namespace keylock
