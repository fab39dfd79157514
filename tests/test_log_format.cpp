// Log lines that quote client input: the text format escapes control characters and invalid
// UTF-8, the JSON format stays valid JSON, and both use the codec's one JSON string escaper
// (append_json_string, whose json_escape::log mode and \ufffd replacement are tested here).
#include "keylock/codec.hpp"
#include "log_format.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/details/log_msg.h>
#include <spdlog/logger.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/ostream_sink.h>

#include <chrono>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>

using namespace std::literals;

namespace {

// What main.cpp has always used for text logs, and what log_format.cpp's "text" prints.
constexpr const char* text_pattern = "%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v";

// A message that tries everything: a forged line, a carriage return, an SGR escape, DEL, CSI as
// a C1 control in UTF-8, and a byte that is not UTF-8.
const std::string hostile =
    "a\nb\rc\x1b[31md\x7f"
    "e\xc2\x9b"
    "f\xff"
    "g";

// One warn line with a fixed time, formatted by `formatter` (or by set_log_format(format)).
std::string format_line(std::string_view payload, std::string_view format,
                        std::unique_ptr<spdlog::formatter> formatter = nullptr) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_st>(out);
  spdlog::logger logger("keylockd", sink);
  if (formatter) {
    logger.set_formatter(std::move(formatter));
  } else {
    REQUIRE(keylock::set_log_format(logger, format));
  }
  spdlog::details::log_msg msg(spdlog::log_clock::time_point(std::chrono::seconds(1'790'000'000)),
                               spdlog::source_loc{}, "keylockd", spdlog::level::warn,
                               spdlog::string_view_t(payload.data(), payload.size()));
  sink->log(msg);
  sink->flush();
  return out.str();
}

std::string json_string(std::string_view s, keylock::json_escape mode) {
  std::string out;
  keylock::append_json_string(out, s, mode);
  return out;
}

}  // namespace

TEST_CASE("a text log line escapes control characters and invalid UTF-8 in the message", "[log]") {
  std::string line = format_line(hostile, "text");
  INFO(line);
  // One line: the only newline is the one that ends it.
  REQUIRE(line.find('\n') == line.size() - 1);
  CHECK(line.find('\r') == std::string::npos);
  CHECK(line.find('\x1b') == std::string::npos);
  CHECK(line.find('\x7f') == std::string::npos);
  CHECK(line.find("\xc2\x9b") == std::string::npos);
  CHECK(line.find('\xff') == std::string::npos);
  std::string_view expected = R"(a\nb\rc\u001b[31md\u007fe\u009bf\ufffdg)";
  CHECK(std::string_view(line).substr(0, line.size() - 1).ends_with(expected));
}

TEST_CASE("a json log line with control characters and invalid UTF-8 is valid JSON", "[log]") {
  std::string line = format_line(hostile, "json");
  INFO(line);
  REQUIRE(line.find('\n') == line.size() - 1);
  CHECK(line.find('\x1b') == std::string::npos);
  CHECK(line.find("\xc2\x9b") == std::string::npos);  // C1 escaped in logs, not raw
  auto j = nlohmann::json::parse(line, nullptr, false);
  REQUIRE_FALSE(j.is_discarded());
  REQUIRE(j.is_object());
  // Everything decodes back but the byte that was not UTF-8, which is U+FFFD.
  CHECK(j["msg"].get<std::string>() ==
        "a\nb\rc\x1b[31md\x7f"
        "e\xc2\x9b"
        "f\xef\xbf\xbd"
        "g");
}

TEST_CASE("a text log line with a printable message is what the plain pattern writes", "[log]") {
  for (std::string_view clean :
       {"plain message"sv, "peer 127.0.0.1:5000: key \"a\\b\" not held"sv,
        "utf-8: h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80 \xc2\xa0"sv, ""sv}) {
    INFO(clean);
    std::string ours = format_line(clean, "text");
    CHECK(ours ==
          format_line(clean, "", std::make_unique<spdlog::pattern_formatter>(text_pattern)));
    std::string tail = " ";  // after the level
    tail.append(clean);
    tail += '\n';
    CHECK(ours.ends_with(tail));
  }
}

TEST_CASE("is_printable_utf8 rejects controls, C1 and invalid UTF-8 only", "[log]") {
  CHECK(keylock::is_printable_utf8(""));
  CHECK(keylock::is_printable_utf8("key \"a\\b\" {}"));
  CHECK(keylock::is_printable_utf8("\xc2\xa0 \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  CHECK_FALSE(keylock::is_printable_utf8("\n"));
  CHECK_FALSE(keylock::is_printable_utf8("\t"));
  CHECK_FALSE(keylock::is_printable_utf8("\0"s));
  CHECK_FALSE(keylock::is_printable_utf8("\x1b"));
  CHECK_FALSE(keylock::is_printable_utf8("\x7f"));
  CHECK_FALSE(keylock::is_printable_utf8("\xc2\x80"));
  CHECK_FALSE(keylock::is_printable_utf8("\xc2\x9f"));
  CHECK_FALSE(keylock::is_printable_utf8("\xff"));
  CHECK_FALSE(keylock::is_printable_utf8("\xc3"));              // truncated
  CHECK_FALSE(keylock::is_printable_utf8("\xc0\xaf"));          // overlong
  CHECK_FALSE(keylock::is_printable_utf8("\xed\xa0\x80"));      // surrogate
  CHECK_FALSE(keylock::is_printable_utf8("\xf4\x90\x80\x80"));  // above U+10FFFF
}

TEST_CASE("append_json_string writes C1 raw on the wire and escaped in logs", "[log][codec]") {
  using keylock::json_escape;
  CHECK(json_string("\xc2\x80\xc2\x9f", json_escape::wire) == "\"\xc2\x80\xc2\x9f\"");
  CHECK(json_string("\xc2\x80\xc2\x9f", json_escape::log) == R"("\u0080\u009f")");
  CHECK(json_string("\xc2\xa0", json_escape::log) == "\"\xc2\xa0\"");  // U+00A0 is not C1
  CHECK(json_string("\x1b\x7f", json_escape::wire) == R"("\u001b\u007f")");
}

TEST_CASE("append_json_string replaces each byte that is not UTF-8 with U+FFFD", "[log][codec]") {
  using keylock::json_escape;
  for (json_escape mode : {json_escape::wire, json_escape::log}) {
    CHECK(json_string("a\xff"
                      "b",
                      mode) == R"("a\ufffdb")");
    CHECK(json_string("\xc3", mode) == R"("\ufffd")");                      // truncated
    CHECK(json_string("\xc0\xaf", mode) == R"("\ufffd\ufffd")");            // overlong
    CHECK(json_string("\xed\xa0\x80", mode) == R"("\ufffd\ufffd\ufffd")");  // surrogate
    CHECK(json_string("\xe2\x82"
                      "x",
                      mode) == R"("\ufffd\ufffdx")");  // cut short
    // Well-formed UTF-8 around a stray byte is kept.
    CHECK(json_string("\xc3\xa9\x80\xe2\x82\xac", mode) == "\"\xc3\xa9\\ufffd\xe2\x82\xac\"");
  }
}
