// The two log formats of keylockd (log_format.hpp). The JSON formatter writes straight into
// spdlog's buffer: no allocation per line beyond what the buffer itself needs, and no JSON
// library (a message is one escaped string).
#include "log_format.hpp"

#include <spdlog/formatter.h>
#include <spdlog/logger.h>
#include <spdlog/pattern_formatter.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <ctime>
#include <memory>
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

// Length of the well-formed UTF-8 sequence at s[0] (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF), or 0 when s[0] does not start one.
std::size_t utf8_sequence_length(std::string_view s) {
  auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  auto cont = [&](std::size_t i) { return i < s.size() && (byte(i) & 0xC0) == 0x80; };
  unsigned char b0 = byte(0);
  if (b0 < 0x80) return 1;
  if (b0 >= 0xC2 && b0 <= 0xDF) return cont(1) ? 2 : 0;
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    unsigned char b1 = byte(1);
    if (b0 == 0xE0 && b1 < 0xA0) return 0;  // overlong
    if (b0 == 0xED && b1 > 0x9F) return 0;  // UTF-16 surrogate
    return 3;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    unsigned char b1 = byte(1);
    if (b0 == 0xF0 && b1 < 0x90) return 0;  // overlong
    if (b0 == 0xF4 && b1 > 0x8F) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;  // a continuation byte, C0/C1 (overlong) or F5..FF
}

// `s` as the inside of a JSON string. Control characters are escaped; bytes that are not
// well-formed UTF-8 become U+FFFD one byte at a time, so the output is always valid JSON
// in valid UTF-8, whatever a client put into a key or a name that ends up in a message.
void append_json_string(spdlog::memory_buf_t& dest, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  std::size_t i = 0;
  while (i < s.size()) {
    // Copy the longest run that needs no escaping in one append.
    std::size_t run = i;
    while (run < s.size()) {
      auto c = static_cast<unsigned char>(s[run]);
      if (c < 0x20 || c == '"' || c == '\\' || c >= 0x7F) break;
      ++run;
    }
    append(dest, s.substr(i, run - i));
    i = run;
    if (i == s.size()) break;
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      std::size_t len = utf8_sequence_length(s.substr(i));
      if (len == 0) {
        append(dest, "\\ufffd");
        ++i;
      } else {
        append(dest, s.substr(i, len));
        i += len;
      }
      continue;
    }
    switch (c) {
      case '"':
        append(dest, "\\\"");
        break;
      case '\\':
        append(dest, "\\\\");
        break;
      case '\n':
        append(dest, "\\n");
        break;
      case '\r':
        append(dest, "\\r");
        break;
      case '\t':
        append(dest, "\\t");
        break;
      case '\b':
        append(dest, "\\b");
        break;
      case '\f':
        append(dest, "\\f");
        break;
      default: {  // other C0 controls and DEL
        const char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xF]};
        append(dest, std::string_view(esc, sizeof esc));
      }
    }
    ++i;
  }
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
    append(dest, "\",\"logger\":\"");
    append_json_string(dest, std::string_view(msg.logger_name.data(), msg.logger_name.size()));
    append(dest, "\",\"msg\":\"");
    append_json_string(dest, std::string_view(msg.payload.data(), msg.payload.size()));
    append(dest, "\"}\n");
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
};

}  // namespace

bool set_log_format(spdlog::logger& logger, std::string_view format) {
  if (format == "text") {
    logger.set_formatter(std::make_unique<spdlog::pattern_formatter>(text_pattern));
    return true;
  }
  if (format == "json") {
    logger.set_formatter(std::make_unique<json_formatter>());
    return true;
  }
  return false;
}

}  // namespace keylock
