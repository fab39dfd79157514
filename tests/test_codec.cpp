// Tests of the wire codec (keylock/codec.hpp): one case per class of bad input, the valid
// forms of every op, exact encodings, and the encode/decode round trip in both directions.
// Splitting a byte stream into frames is the server's job and is tested there.
#include "keylock/codec.hpp"
#include "keylock/protocol.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

using namespace std::string_literals;
using keylock::decode_error;
using keylock::errc;
using keylock::field;
using keylock::op;
using keylock::reply;
using keylock::request;

namespace {

constexpr std::uint64_t max_u64 = std::numeric_limits<std::uint64_t>::max();

// True when `s` is well-formed UTF-8 (RFC 3629). Written independently of the codec's own
// check so that the tests do not trust the code under test.
bool is_valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1;
      cp = c & 0x1Fu;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2;
      cp = c & 0x0Fu;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3;
      cp = c & 0x07u;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;  // the sequence is cut off
    for (std::size_t k = 1; k <= n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3Fu);
    }
    const std::uint32_t min_cp = n == 1 ? 0x80 : n == 2 ? 0x800 : 0x10000;
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

std::optional<decode_error> decode(std::string_view frame, request& out) {
  return keylock::decode_request(frame, out);
}

std::optional<decode_error> decode(std::string_view frame) {
  request out;
  return keylock::decode_request(frame, out);
}

// Decodes `frame`, requires bad_request, and returns the error for further checks.
decode_error require_bad_request(std::string_view frame) {
  INFO("frame: " << std::string(frame));
  const auto error = decode(frame);
  REQUIRE(error.has_value());
  CHECK(error->code == errc::bad_request);
  CHECK(!error->message.empty());
  CHECK(is_valid_utf8(error->message));
  return *error;
}

std::string encode(const reply& rep) {
  std::string out;
  keylock::append_reply(out, rep);
  return out;
}

std::string encode(const request& req) {
  std::string out;
  keylock::append_request(out, req);
  return out;
}

std::string json_string(std::string_view s) {
  std::string out;
  keylock::append_json_string(out, s);
  return out;
}

// `frame` without its terminating '\n' (which encoders add and decoders do not take).
std::string_view without_newline(const std::string& frame) {
  REQUIRE(!frame.empty());
  REQUIRE(frame.back() == '\n');
  return std::string_view(frame).substr(0, frame.size() - 1);
}

struct field_name {
  const char* name;
  field bit;
};

const std::vector<field_name> integer_fields = {
    {"id", field::id},         {"token", field::token},
    {"ttl_ms", field::ttl_ms}, {"wait_ms", field::wait_ms},
    {"limit", field::limit},   {"target", field::target},
    {"n", field::n},
};

const std::vector<field_name> string_fields = {
    {"key", field::key},
    {"auth", field::auth},
    {"client", field::client},
};

keylock::holder_info holder(std::uint64_t token, std::uint64_t ttl_ms_left, std::string client,
                            std::string peer) {
  keylock::holder_info h;
  h.token = token;
  h.ttl_ms_left = ttl_ms_left;
  h.client = std::move(client);
  h.peer = std::move(peer);
  return h;
}

void require_same_request(const request& actual, const request& expected) {
  CHECK(actual.kind == expected.kind);
  CHECK(actual.fields == expected.fields);
  CHECK(actual.id == expected.id);
  CHECK(actual.key == expected.key);
  CHECK(actual.token == expected.token);
  CHECK(actual.ttl_ms == expected.ttl_ms);
  CHECK(actual.wait_ms == expected.wait_ms);
  CHECK(actual.limit == expected.limit);
  CHECK(actual.target == expected.target);
  CHECK(actual.n == expected.n);
  CHECK(actual.auth == expected.auth);
  CHECK(actual.client == expected.client);
  CHECK(actual.op_name == expected.op_name);
  CHECK(actual.keys == expected.keys);
  CHECK(actual.mode == expected.mode);
}

void require_same_reply(const reply& actual, const reply& expected) {
  CHECK(actual.type == expected.type);
  CHECK(actual.id == expected.id);
  switch (expected.type) {
    case reply::kind::error:
      CHECK(actual.code == expected.code);
      CHECK(actual.code_name == keylock::to_string(expected.code));
      CHECK(actual.message == expected.message);
      return;
    case reply::kind::event:
      CHECK(actual.event == expected.event);
      CHECK(actual.key == expected.key);
      CHECK(actual.keys == expected.keys);
      CHECK(actual.token == expected.token);
      return;
    case reply::kind::ok:
      break;
  }
  CHECK(actual.token == expected.token);
  CHECK(actual.ttl_ms == expected.ttl_ms);
  CHECK(actual.server == expected.server);
  CHECK(actual.version == expected.version);
  CHECK(actual.protocol == expected.protocol);
  CHECK(actual.held == expected.held);
  REQUIRE(actual.holders.size() == expected.holders.size());
  for (std::size_t i = 0; i < expected.holders.size(); ++i) {
    CHECK(actual.holders[i].token == expected.holders[i].token);
    CHECK(actual.holders[i].ttl_ms_left == expected.holders[i].ttl_ms_left);
    CHECK(actual.holders[i].client == expected.holders[i].client);
    CHECK(actual.holders[i].peer == expected.holders[i].peer);
    CHECK(actual.holders[i].mode == expected.holders[i].mode);
    CHECK(actual.holders[i].keys == expected.holders[i].keys);
  }
  CHECK(actual.waiters == expected.waiters);
  CHECK(actual.limit == expected.limit);
  REQUIRE(actual.stats.has_value() == expected.stats.has_value());
  if (expected.stats) {
    CHECK(actual.stats->connections == expected.stats->connections);
    CHECK(actual.stats->keys == expected.stats->keys);
    CHECK(actual.stats->held == expected.stats->held);
    CHECK(actual.stats->waiting == expected.stats->waiting);
    CHECK(actual.stats->acquires == expected.stats->acquires);
    CHECK(actual.stats->grants == expected.stats->grants);
    CHECK(actual.stats->releases == expected.stats->releases);
    CHECK(actual.stats->timeouts == expected.stats->timeouts);
    CHECK(actual.stats->expirations == expected.stats->expirations);
    CHECK(actual.stats->uptime_ms == expected.stats->uptime_ms);
    CHECK(actual.stats->grants_shared == expected.stats->grants_shared);
  }
}

// Bytes that are not well-formed UTF-8, by kind.
struct bad_utf8 {
  const char* what;
  std::string bytes;
};

const std::vector<bad_utf8> bad_utf8_samples = {
    {"overlong 2-byte NUL", "\xC0\x80"s},
    {"overlong 2-byte '/'", "\xC1\xAF"s},
    {"overlong 3-byte", "\xE0\x80\xAF"s},
    {"overlong 4-byte", "\xF0\x80\x80\xAF"s},
    {"lone continuation byte", "\x80"s},
    {"continuation byte after ASCII", "a\xBF"s},
    {"surrogate U+D800 encoded in UTF-8", "\xED\xA0\x80"s},
    {"surrogate U+DFFF encoded in UTF-8", "\xED\xBF\xBF"s},
    {"truncated 3-byte sequence", "\xE2\x82"s},
    {"truncated 4-byte sequence", "\xF0\x9F\x98"s},
    {"above U+10FFFF", "\xF4\x90\x80\x80"s},
    {"byte F5", "\xF5\x80\x80\x80"s},
    {"byte FF", "\xFF"s},
    {"byte FE", "\xFE"s},
};

// A deterministic source of test data for the round-trip properties.
class generator {
 public:
  explicit generator(std::uint32_t seed) : rng_(seed) {}

  std::uint64_t u64() {
    switch (below(4)) {
      case 0:
        return below(3);
      case 1:
        return max_u64 - below(3);
      case 2:
        return below(100000);
      default:
        return std::uniform_int_distribution<std::uint64_t>()(rng_);
    }
  }

  bool coin() { return below(2) == 0; }

  // Valid UTF-8 drawn from the characters that matter to an encoder: controls, quotes,
  // backslashes, DEL, and sequences of every length.
  std::string text(std::size_t max_pieces = 12) {
    // clang-format off
    static const std::vector<std::string> pieces = {
        "a", "Z", "0", " ", "\"", "\\", "/", "\n", "\r", "\t", "\b", "\f", "\x01", "\x1F", "\x7F",
        "\0"s, "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "\xEF\xBF\xBF", "\xF4\x8F\xBF\xBF",
        "{", "}", "[", "]", ":", ",", "\\u0000", "key:42"};
    // clang-format on
    std::string out;
    const std::size_t n = below(max_pieces + 1);
    for (std::size_t i = 0; i < n; ++i) out += pieces[below(pieces.size())];
    return out;
  }

  std::size_t below(std::size_t n) {
    return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng_);
  }

 private:
  std::mt19937 rng_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// decode_request: bad input, one case per class

TEST_CASE("invalid JSON is bad_request", "[codec]") {
  const std::vector<std::string> frames = {
      R"({"op":"ping")",      // truncated: object not closed
      R"({"op":)",            // truncated: value missing
      R"({"op":"pi)",         // truncated inside a string
      R"({"id":12)",          // truncated inside a number
      "{",                    //
      "}",                    //
      R"({} x)",              // trailing garbage
      R"({"op":"ping"} {})",  // a second value
      R"({"op":"ping"}})",    // a stray brace
      "not json",             // bare words
      "ping",                 //
      "tru",                  // a literal cut short
      R"({'op':'ping'})",     // single quotes
      R"({op:"ping"})",       // unquoted name
      R"({"op" "ping"})",     // no colon
      R"({"op":"ping",})",    // trailing comma
      R"({"op":"ping",,"id":1})",
      R"({"op":"ping" "id":1})",      // no comma
      "{\"op\":\"pi\x01ng\"}",        // raw control character in a string
      R"({"op":"ping","x":01})",      // leading zero
      R"({"op":"ping","x":1.})",      // fraction without digits
      R"({"op":"ping","x":+1})",      // plus sign
      R"({"op":"ping","x":NaN})",     //
      R"({"op":"ping","x":"\q"})",    // bad escape
      R"({"op":"ping","x":"\u12"})",  // short \u escape
      R"({"op":"ping"} // comment)",  // comments are not JSON
      "{\"op\":\"ping\"}\0"s,         // NUL after the object (nlohmann's end of input)
      "{\"op\":\"ping\"}\0{\"op\":\"release\",\"key\":\"k\",\"token\":1}"s,
      "{\"op\":\"ping\",\0\"id\":1}"s,  // NUL between tokens
      "{\"op\":\"pi\0ng\"}"s,           // NUL inside a string
      "\0"s,
  };
  for (const std::string& frame : frames) {
    const decode_error error = require_bad_request(frame);
    CHECK_THAT(error.message, Catch::StartsWith("invalid JSON"));
  }
}

TEST_CASE("a top-level value other than an object is bad_request", "[codec]") {
  for (const char* frame : {"[]", R"(["op","ping"])", R"([{"op":"ping"}])", R"("ping")", "42", "-1",
                            "1.5", "null", "true", "false"}) {
    const decode_error error = require_bad_request(frame);
    CHECK(error.message == "top-level value must be an object");
    CHECK_FALSE(error.id.has_value());
  }
}

TEST_CASE("a frame without op is bad_request", "[codec]") {
  for (const char* frame : {"{}", R"({"key":"a"})", R"({"OP":"ping"})", R"({"x":{"op":"ping"}})",
                            R"({"x":[{"op":"ping"}]})", R"({"op ":"ping"})"}) {
    const decode_error error = require_bad_request(frame);
    CHECK(error.message == "missing field 'op'");
  }
  SECTION("and still reports the id") {
    const decode_error error = require_bad_request(R"({"id":77})");
    CHECK(error.id == std::optional<std::uint64_t>(77));
  }
}

TEST_CASE("an op that is not a string is bad_request", "[codec]") {
  for (const char* value : {"1", "0", "-1", "1.5", "null", "true", "false", "[]", R"(["ping"])",
                            "{}", R"({"op":"ping"})"}) {
    const decode_error error = require_bad_request(R"({"op":)"s + value + "}");
    CHECK(error.message == "field 'op' must be a string");
  }
}

TEST_CASE("a known field of the wrong JSON type is bad_request naming the field", "[codec]") {
  SECTION("integer fields") {
    for (const field_name& f : integer_fields) {
      for (const char* value : {R"("1")", R"("")", "true", "false", "null", "[]", "[1]", "{}",
                                R"({"a":1})", "-1", "1.5", "1e3"}) {
        const decode_error error =
            require_bad_request(R"({"op":"acquire",")"s + f.name + R"(":)" + value + "}");
        CHECK(error.message ==
              "field '"s + f.name + "' must be an integer in 0..18446744073709551615");
      }
    }
  }
  SECTION("string fields") {
    for (const field_name& f : string_fields) {
      for (const char* value : {"1", "0", "-1", "1.5", "true", "false", "null", "[]", R"(["a"])",
                                "{}", R"({"a":"b"})"}) {
        const decode_error error =
            require_bad_request(R"({"op":"acquire",")"s + f.name + R"(":)" + value + "}");
        CHECK(error.message == "field '"s + f.name + "' must be a string");
      }
    }
  }
}

TEST_CASE("integers must be in 0..2^64-1 without fraction or exponent", "[codec]") {
  SECTION("rejected") {
    for (const char* value :
         {"-1", "-0", "-18446744073709551615", "1.0", "0.5", "1e3", "1E3", "1e+3", "10e-1",
          "18446744073709551616", "99999999999999999999999999999", "-9223372036854775809"}) {
      for (const field_name& f : integer_fields) {
        require_bad_request(R"({"op":"acquire",")"s + f.name + R"(":)" + value + "}");
      }
    }
  }
  SECTION("accepted at both ends of the range") {
    request req;
    REQUIRE_FALSE(decode(R"({"op":"acquire","ttl_ms":0,"token":18446744073709551615})", req));
    CHECK(req.ttl_ms == 0);
    CHECK(req.token == max_u64);
    CHECK(req.has(field::ttl_ms));
    CHECK(req.has(field::token));
  }
}

TEST_CASE("invalid UTF-8 is bad_request wherever it appears", "[codec]") {
  for (const bad_utf8& bad : bad_utf8_samples) {
    INFO(bad.what);
    const std::vector<std::string> frames = {
        R"({"op":"acquire","key":"k)" + bad.bytes + R"(x"})",   // known string field
        R"({"op":"ping","x":")" + bad.bytes + R"("})",          // unknown member's value
        R"({"op":"ping","x":[{"y":")" + bad.bytes + R"("}]})",  // nested in an unknown one
        R"({"op":"ping",")" + bad.bytes + R"(":1})",            // member name
        R"({"op":"ping","x":{")" + bad.bytes + R"(":1}})",      // nested member name
        R"({"op":")" + bad.bytes + R"("})",                     // op value
        R"({"op":"ping","client":")" + bad.bytes + R"("})",     //
        R"({"op":"ping"})" + bad.bytes,                         // after the object
        bad.bytes,                                              // the whole frame
    };
    for (const std::string& frame : frames) require_bad_request(frame);
  }
}

TEST_CASE("escaped lone or mismatched surrogates are bad_request", "[codec]") {
  for (const char* escape :
       {R"(\ud800)", R"(\udbff)", R"(\udc00)", R"(\udfff)", R"(\ud800x)", R"(\ud800\u0041)",
        R"(\ud800\ud800)", R"(\udc00\ud800)", R"(\ud800\n)"}) {
    INFO(escape);
    require_bad_request(R"({"op":"acquire","key":")"s + escape + R"("})");
    require_bad_request(R"({"op":"ping","x":")"s + escape + R"("})");
    require_bad_request(R"({"op":"ping",")"s + escape + R"(":1})");
  }
}

TEST_CASE("a known field given twice is bad_request", "[codec]") {
  SECTION("op") {
    const decode_error error = require_bad_request(R"({"op":"ping","id":1,"op":"ping"})");
    CHECK(error.message == "duplicate field 'op'");
    CHECK(error.id == std::optional<std::uint64_t>(1));
  }
  SECTION("every other field, with the same or another value") {
    for (const field_name& f : integer_fields) {
      const std::string name = R"(")"s + f.name + R"(")";
      require_bad_request(R"({"op":"acquire",)" + name + ":1," + name + ":1}");
      require_bad_request(R"({"op":"acquire",)" + name + ":1," + name + ":2}");
      require_bad_request(R"({"op":"acquire",)" + name + R"(:1,"x":0,)" + name + R"(:"a"})");
    }
    for (const field_name& f : string_fields) {
      const std::string name = R"(")"s + f.name + R"(")";
      const decode_error error =
          require_bad_request(R"({"op":"acquire",)" + name + R"(:"a",)" + name + R"(:"a"})");
      CHECK(error.message == "duplicate field '"s + f.name + "'");
    }
  }
  SECTION("the first id is the one reported") {
    const decode_error error = require_bad_request(R"({"id":5,"op":"ping","id":6})");
    CHECK(error.id == std::optional<std::uint64_t>(5));
  }
  SECTION("an escaped spelling of the name counts as the same field") {
    require_bad_request(R"({"op":"acquire","key":"a","\u006bey":"b"})");
  }
}

TEST_CASE("a deeply nested unknown member value is skipped without crashing", "[codec]") {
  constexpr std::size_t depth = 10000;
  SECTION("balanced arrays") {
    request req;
    const std::string frame =
        R"({"op":"ping","id":3,"deep":)" + std::string(depth, '[') + std::string(depth, ']') + "}";
    REQUIRE_FALSE(decode(frame, req));
    CHECK(req.kind == op::ping);
    CHECK(req.fields == static_cast<std::uint16_t>(field::id));
  }
  SECTION("balanced objects, with known names inside that do not count") {
    std::string frame = R"({"op":"ping","deep":)";
    for (std::size_t i = 0; i < depth; ++i) frame += R"({"op":1,"key":)";
    frame += "0";
    frame += std::string(depth, '}');
    frame += "}";
    request req;
    REQUIRE_FALSE(decode(frame, req));
    CHECK(req.kind == op::ping);
    CHECK(req.fields == 0);
  }
  SECTION("unbalanced") {
    const decode_error error =
        require_bad_request(R"({"op":"ping","deep":)" + std::string(depth, '['));
    CHECK(error.message.size() <= 200);
    require_bad_request(std::string(depth, '['));
  }
}

TEST_CASE("an empty frame is bad_request", "[codec]") {
  for (const std::string& frame : {""s, "\r"s, " "s, " \t "s, "\r\r"s}) {
    require_bad_request(frame);
  }
}

TEST_CASE("the id is reported when it was decoded before the fault", "[codec]") {
  const auto id_of = [](std::string_view frame) { return require_bad_request(frame).id; };
  const std::optional<std::uint64_t> none;
  CHECK(id_of(R"({"id":5,"op":7})") == std::optional<std::uint64_t>(5));
  CHECK(id_of(R"({"id":5,"op":"acquire","key":1})") == std::optional<std::uint64_t>(5));
  CHECK(id_of(R"({"id":5,"op":"ping",)") == std::optional<std::uint64_t>(5));
  CHECK(id_of(R"({"id":5,"op":"ping","x":")"
              "\xFF"
              R"("})") == std::optional<std::uint64_t>(5));
  CHECK(id_of(R"({"id":18446744073709551615,"op":1})") == std::optional<std::uint64_t>(max_u64));
  CHECK(id_of(R"({"op":7,"id":5})") == none);
  CHECK(id_of(R"({"id":-5,"op":"ping"})") == none);
  CHECK(id_of(R"({"id":"5","op":"ping"})") == none);
  CHECK(id_of(R"({"x":{"id":5},"op":1})") == none);
  CHECK(id_of(R"([{"id":5}])") == none);
  CHECK(id_of("not json") == none);
}

TEST_CASE("messages quote at most 64 bytes of input and are valid UTF-8", "[codec]") {
  // Each message is carried back in an error reply; decode_reply's parser rejects invalid
  // UTF-8, so a successful round trip proves the message is valid.
  const auto require_carriable = [](const decode_error& error) {
    CHECK(error.message.size() <= 200);
    reply rep;
    rep.type = reply::kind::error;
    rep.code = error.code;
    rep.message = error.message;
    const std::string frame = encode(rep);
    reply back;
    const auto fault = keylock::decode_reply(without_newline(frame), back);
    INFO("message: " << error.message);
    REQUIRE_FALSE(fault.has_value());
    CHECK(back.message == error.message);
  };

  std::string garbage;
  std::mt19937 rng(42);
  for (int i = 0; i < 2000; ++i) {
    garbage += static_cast<char>(std::uniform_int_distribution<int>(0x80, 0xFF)(rng));
  }
  std::string multibyte;  // 2000 bytes of valid UTF-8 followed by a fault
  while (multibyte.size() < 2000) multibyte += "\xE2\x82\xAC";

  const std::vector<std::string> frames = {
      R"({"op":"ping","x":")" + garbage + R"("})",
      R"({"op":"ping",")" + garbage + R"(":1})",
      garbage,
      R"({"op":"ping","x":")" + multibyte + "\xFF" + R"("})",
      R"({"op":"ping","x":")" + std::string(2000, 'a') + "\x01" + R"("})",
      R"({"op":"ping","x":")" + std::string(2000, '\x1F') + R"("})",
      std::string(2000, 'x'),
      "t" + std::string(2000, 'r'),
      R"({"op":"ping","x":1)" + std::string(2000, '0') + "e}",
      R"({"op":"ping","x":")" + multibyte,  // truncated inside a long string
  };
  for (const std::string& frame : frames) require_carriable(require_bad_request(frame));
}

TEST_CASE("append_ok_reply writes what append_reply writes for the same reply", "[codec]") {
  const std::vector<std::optional<std::uint64_t>> values = {
      std::nullopt,
      0u,
      1u,
      9u,
      10u,
      4294967295u,
      1764214523000001u,
      std::numeric_limits<std::uint64_t>::max()};
  for (const auto& id : values) {
    for (const auto& token : values) {
      for (const auto& ttl : values) {
        reply rep;
        rep.id = id;
        rep.token = token;
        rep.ttl_ms = ttl;
        std::string expected = "prefix";
        append_reply(expected, rep);
        std::string got = "prefix";
        keylock::append_ok_reply(got, id, token, ttl);
        REQUIRE(got == expected);
      }
    }
  }
}

TEST_CASE("a fault inside the value of auth never quotes the secret", "[codec]") {
  // Messages are logged (once per connection): a malformed hello must not put its secret there.
  const std::vector<std::string> frames = {
      R"({"op":"hello","auth":"Hidden-Secret\q"})",
      "{\"op\":\"hello\",\"user\":\"u\",\"auth\":\"Hidden-Secret\x01\"}",
      "{\"op\":\"hello\",\"auth\":\"Hidden-Secret\xFF\"}",
      R"({"op":"hello","auth":Hidden-Secret})",
      R"({"op":"hello","auth":"Hidden-Secret)",
  };
  for (const std::string& frame : frames) {
    const decode_error error = require_bad_request(frame);
    INFO(error.message);
    CHECK(error.message.find("Hidden") == std::string::npos);
  }
  // Elsewhere the token is still quoted, which is what makes the message useful.
  CHECK_THAT(require_bad_request(R"({"op":"hello","client":"Shown-Name\q"})").message,
             Catch::Contains("Shown-Name"));
}

// ---------------------------------------------------------------------------------------------
// decode_request: valid frames

TEST_CASE("every op decodes with all its fields", "[codec]") {
  request req;
  SECTION("hello") {
    REQUIRE_FALSE(
        decode(R"({"op":"hello","id":1,"auth":"s3cret","client":"billing-worker-7"})", req));
    CHECK(req.kind == op::hello);
    CHECK(req.fields == (field::id | field::auth | field::client));
    CHECK(req.id == 1);
    CHECK(req.auth == "s3cret");
    CHECK(req.client == "billing-worker-7");
  }
  SECTION("ping") {
    REQUIRE_FALSE(decode(R"({"op":"ping","id":2})", req));
    CHECK(req.kind == op::ping);
    CHECK(req.fields == static_cast<std::uint16_t>(field::id));
    CHECK(req.id == 2);
  }
  SECTION("acquire") {
    REQUIRE_FALSE(decode(
        R"({"op":"acquire","id":3,"key":"report:monthly","ttl_ms":30000,"wait_ms":5000,"limit":1})",
        req));
    CHECK(req.kind == op::acquire);
    CHECK(req.fields == (field::id | field::key | field::ttl_ms | field::wait_ms | field::limit));
    CHECK(req.id == 3);
    CHECK(req.key == "report:monthly");
    CHECK(req.ttl_ms == 30000);
    CHECK(req.wait_ms == 5000);
    CHECK(req.limit == 1);
  }
  SECTION("release") {
    REQUIRE_FALSE(
        decode(R"({"op":"release","id":4,"key":"report:monthly","token":1764214523000001})", req));
    CHECK(req.kind == op::release);
    CHECK(req.fields == (field::id | field::key | field::token));
    CHECK(req.key == "report:monthly");
    CHECK(req.token == 1764214523000001u);
  }
  SECTION("extend") {
    REQUIRE_FALSE(decode(
        R"({"op":"extend","id":5,"key":"report:monthly","token":1764214523000001,"ttl_ms":30000})",
        req));
    CHECK(req.kind == op::extend);
    CHECK(req.fields == (field::id | field::key | field::token | field::ttl_ms));
    CHECK(req.token == 1764214523000001u);
    CHECK(req.ttl_ms == 30000);
  }
  SECTION("cancel") {
    REQUIRE_FALSE(decode(R"({"op":"cancel","id":6,"target":3})", req));
    CHECK(req.kind == op::cancel);
    CHECK(req.fields == (field::id | field::target));
    CHECK(req.target == 3);
  }
  SECTION("inspect") {
    REQUIRE_FALSE(decode(R"({"op":"inspect","id":7,"key":"report:monthly"})", req));
    CHECK(req.kind == op::inspect);
    CHECK(req.fields == (field::id | field::key));
    CHECK(req.key == "report:monthly");
  }
  SECTION("stats") {
    REQUIRE_FALSE(decode(R"({"op":"stats","id":8})", req));
    CHECK(req.kind == op::stats);
    CHECK(req.fields == static_cast<std::uint16_t>(field::id));
  }
  SECTION("the reserved n, and fields an op does not use, are decoded all the same") {
    REQUIRE_FALSE(decode(R"({"op":"ping","n":10,"target":1,"key":""})", req));
    CHECK(req.fields == (field::n | field::target | field::key));
    CHECK(req.n == 10);
    CHECK(req.key.empty());
  }
  CHECK(req.op_name.empty());
}

TEST_CASE("an unknown op decodes as op::unknown with its name kept to 64 bytes", "[codec]") {
  request req;
  SECTION("short name") {
    REQUIRE_FALSE(decode(R"({"op":"nope","id":6})", req));
    CHECK(req.kind == op::unknown);
    CHECK(req.op_name == "nope");
    CHECK(req.id == 6);
  }
  SECTION("names differing from a known op only in case or spacing") {
    for (const char* name : {"PING", "Ping", " ping", "ping ", "unknown", ""}) {
      REQUIRE_FALSE(decode(R"({"op":")"s + name + R"("})", req));
      CHECK(req.kind == op::unknown);
      CHECK(req.op_name == name);
    }
  }
  SECTION("long name") {
    const std::string name(1000, 'q');
    REQUIRE_FALSE(decode(R"({"op":")" + name + R"("})", req));
    CHECK(req.kind == op::unknown);
    CHECK(req.op_name == std::string(64, 'q'));
  }
  SECTION("the cut does not split a UTF-8 sequence") {
    const std::string name = std::string(63, 'q') + "\xE2\x82\xAC" + "tail";
    REQUIRE_FALSE(decode(R"({"op":")" + name + R"("})", req));
    CHECK(req.op_name == std::string(63, 'q'));
    CHECK(is_valid_utf8(req.op_name));
  }
  SECTION("decoding a known op after an unknown one clears op_name") {
    REQUIRE_FALSE(decode(R"({"op":"nope"})", req));
    REQUIRE_FALSE(decode(R"({"op":"ping"})", req));
    CHECK(req.kind == op::ping);
    CHECK(req.op_name.empty());
  }
}

TEST_CASE("unknown members are ignored whatever their value", "[codec]") {
  request req;
  REQUIRE_FALSE(
      decode(R"({"x":1,"op":"acquire","y":{"key":1,"op":2,"id":"z"},"z":[1,{"a":[]},"s"],"w":null,)"
             R"("v":"s","u":-1.5e3,"t":true,"f":false,"big":184467440737095516160,"key":"k","":0})",
             req));
  CHECK(req.kind == op::acquire);
  CHECK(req.fields == static_cast<std::uint16_t>(field::key));
  CHECK(req.key == "k");
}

TEST_CASE("whitespace between all tokens is accepted", "[codec]") {
  request req;
  REQUIRE_FALSE(
      decode(" \t{ \"op\" :\t\"acquire\" ,\n \"key\"\r: \"k\" , \"ttl_ms\" : 5 ,"
             " \"x\" : [ 1 , { } ] } \t ",
             req));
  CHECK(req.kind == op::acquire);
  CHECK(req.key == "k");
  CHECK(req.ttl_ms == 5);
}

TEST_CASE("a trailing carriage return is tolerated", "[codec]") {
  request req;
  REQUIRE_FALSE(decode("{\"op\":\"ping\",\"id\":9}\r", req));
  CHECK(req.kind == op::ping);
  CHECK(req.id == 9);
  // A carriage return inside a string is still a raw control character.
  require_bad_request("{\"op\":\"ping\",\"x\":\"\r\"}");
}

TEST_CASE("unicode escapes decode to UTF-8", "[codec]") {
  request req;
  SECTION("in a value") {
    REQUIRE_FALSE(
        decode(R"({"op":"acquire","key":"\u00e9\ud83d\ude00\u0041\u20AC\u0000\"\\\/"})", req));
    CHECK(req.key == "\xC3\xA9\xF0\x9F\x98\x80"s + "A\xE2\x82\xAC" + "\0\"\\/"s);
  }
  SECTION("raw UTF-8 in a value is kept as is") {
    REQUIRE_FALSE(decode("{\"op\":\"acquire\",\"key\":\"\xC3\xA9\xF0\x9F\x98\x80\"}", req));
    CHECK(req.key == "\xC3\xA9\xF0\x9F\x98\x80");
  }
  SECTION("in a member name") {
    REQUIRE_FALSE(decode(R"({"\u006fp":"ping","\u0069d":4})", req));
    CHECK(req.kind == op::ping);
    CHECK(req.id == 4);
  }
}

TEST_CASE("decoding resets the request and reuses its string capacity", "[codec]") {
  request req;
  const std::string long_key(200, 'k');
  REQUIRE_FALSE(decode(
      R"({"op":"acquire","id":1,"key":")" + long_key + R"(","ttl_ms":5,"auth":"a","client":"c"})",
      req));
  const char* key_buffer = req.key.data();
  const std::size_t capacity = req.key.capacity();
  REQUIRE(capacity >= 200);

  REQUIRE_FALSE(decode(R"({"op":"acquire","key":"short"})", req));
  CHECK(req.key == "short");
  CHECK(req.key.data() == key_buffer);
  CHECK(req.key.capacity() == capacity);
  CHECK(req.fields == static_cast<std::uint16_t>(field::key));
  CHECK(req.id == 0);
  CHECK(req.ttl_ms == 0);
  CHECK(req.auth.empty());
  CHECK(req.client.empty());
}

// ---------------------------------------------------------------------------------------------
// Encoding

TEST_CASE("append_json_string escapes quotes, backslashes and control characters", "[codec]") {
  CHECK(json_string("") == R"("")");
  CHECK(json_string("plain text: 1/2 {}[]") == R"("plain text: 1/2 {}[]")");
  CHECK(json_string("\"") == R"("\"")");
  CHECK(json_string("\\") == R"("\\")");
  CHECK(json_string("\n\r\t\b\f") == R"("\n\r\t\b\f")");
  CHECK(json_string("\0"s) == R"("\u0000")");
  CHECK(json_string("\x01\x1F") == R"("\u0001\u001f")");
  CHECK(json_string("\x0B") == R"("\u000b")");
  CHECK(json_string("\x7F") == R"("\u007f")");
  CHECK(json_string("a\"b\\c\nd") == R"("a\"b\\c\nd")");
  CHECK(json_string("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80") ==
        "\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\"");
  SECTION("appends to what is there") {
    std::string out = "x=";
    keylock::append_json_string(out, "y");
    CHECK(out == R"(x="y")");
  }
}

TEST_CASE("an acquire grant reply is encoded exactly", "[codec]") {
  reply rep;
  rep.id = 3;
  rep.token = 1764214523000001u;
  rep.ttl_ms = 30000;
  CHECK(encode(rep) == R"({"id":3,"ok":true,"token":1764214523000001,"ttl_ms":30000})"
                       "\n");
}

TEST_CASE("an ok reply without body or id is encoded exactly", "[codec]") {
  reply rep;
  CHECK(encode(rep) == "{\"ok\":true}\n");
  rep.id = max_u64;
  CHECK(encode(rep) == "{\"id\":18446744073709551615,\"ok\":true}\n");
}

TEST_CASE("a hello reply is encoded exactly", "[codec]") {
  reply rep;
  rep.id = 1;
  rep.server = "keylockd";
  rep.version = "0.1.0";
  rep.protocol = keylock::protocol_version;
  CHECK(encode(rep) == R"({"id":1,"ok":true,"server":"keylockd","version":"0.1.0","protocol":1})"
                       "\n");
}

TEST_CASE("an error reply is encoded with and without id", "[codec]") {
  reply rep;
  rep.type = reply::kind::error;
  rep.code = errc::timeout;
  rep.message = "lock is not free";
  SECTION("with id") {
    rep.id = 3;
    CHECK(encode(rep) == R"({"id":3,"ok":false,"error":"timeout","message":"lock is not free"})"
                         "\n");
  }
  SECTION("without id") {
    rep.code = errc::bad_request;
    rep.message = "invalid JSON: \"x\"\n";
    CHECK(encode(rep) == R"({"ok":false,"error":"bad_request","message":"invalid JSON: \"x\"\n"})"
                         "\n");
  }
  SECTION("body members are not written in an error reply") {
    rep.token = 1;
    rep.held = true;
    CHECK(encode(rep) == R"({"ok":false,"error":"timeout","message":"lock is not free"})"
                         "\n");
  }
}

TEST_CASE("an inspect reply lists holders and omits their empty client and peer", "[codec]") {
  reply rep;
  rep.id = 7;
  rep.held = true;
  rep.holders.push_back(holder(1764214523000001u, 29120, "billing-worker-7", "127.0.0.1:53114"));
  rep.holders.push_back(holder(1764214523000002u, 100, "", ""));
  rep.holders.push_back(holder(1764214523000003u, 0, "", "[::1]:9"));
  rep.waiters = 2;
  rep.limit = 3;
  CHECK(encode(rep) ==
        R"({"id":7,"ok":true,"held":true,"holders":[)"
        R"({"token":1764214523000001,"ttl_ms_left":29120,"mode":"exclusive",)"
        R"("client":"billing-worker-7","peer":"127.0.0.1:53114"},)"
        R"({"token":1764214523000002,"ttl_ms_left":100,"mode":"exclusive"},)"
        R"({"token":1764214523000003,"ttl_ms_left":0,"mode":"exclusive","peer":"[::1]:9"}],)"
        R"("waiters":2,"limit":3})"
        "\n");
  SECTION("a key nobody holds has an empty holders array") {
    reply idle;
    idle.id = 8;
    idle.held = false;
    idle.waiters = 0;
    idle.limit = 0;
    CHECK(encode(idle) == R"({"id":8,"ok":true,"held":false,"holders":[],"waiters":0,"limit":0})"
                          "\n");
  }
}

TEST_CASE("a stats reply writes its members flat in stats_info order", "[codec]") {
  reply rep;
  rep.id = 8;
  rep.stats = keylock::stats_info{3, 1, 1, 2, 10, 8, 6, 1, 1, 81234};
  CHECK(encode(rep) ==
        R"({"id":8,"ok":true,"connections":3,"keys":1,"held":1,"waiting":2,"acquires":10,)"
        R"("grants":8,"releases":6,"timeouts":1,"expirations":1,"uptime_ms":81234,)"
        R"("grants_shared":0})"
        "\n");
}

TEST_CASE("the expired event is encoded without id", "[codec]") {
  reply rep;
  rep.type = reply::kind::event;
  rep.id = 99;  // events carry none, whatever the struct says
  rep.event = "expired";
  rep.key = "report:monthly";
  rep.token = 1764214523000001u;
  CHECK(encode(rep) == R"({"event":"expired","key":"report:monthly","token":1764214523000001})"
                       "\n");
}

TEST_CASE("append_reply appends to what is already in the buffer", "[codec]") {
  std::string out = "{\"ok\":true}\n";
  reply rep;
  rep.id = 2;
  keylock::append_reply(out, rep);
  CHECK(out == "{\"ok\":true}\n{\"id\":2,\"ok\":true}\n");
}

TEST_CASE("append_request writes op and then only the fields that are set", "[codec]") {
  request req;
  req.kind = op::acquire;
  req.key = "report:monthly";
  req.ttl_ms = 30000;
  req.token = 5;  // not set in fields: not written
  req.set(field::key);
  req.set(field::ttl_ms);
  req.set(field::id);
  req.id = 3;
  CHECK(encode(req) == R"({"op":"acquire","id":3,"key":"report:monthly","ttl_ms":30000})"
                       "\n");

  request unknown;
  unknown.op_name = "top";
  unknown.n = 10;
  unknown.set(field::n);
  CHECK(encode(unknown) == "{\"op\":\"top\",\"n\":10}\n");

  request every;
  every.kind = op::hello;
  every.fields = 0x3FF;
  every.key = "k";
  every.auth = "a\"";
  every.client = "c";
  CHECK(encode(every) ==
        R"({"op":"hello","id":0,"key":"k","token":0,"ttl_ms":0,"wait_ms":0,"limit":0,)"
        R"("target":0,"auth":"a\"","client":"c","n":0})"
        "\n");
}

// ---------------------------------------------------------------------------------------------
// decode_reply

TEST_CASE(
    "decode_reply rejects invalid JSON, non-objects and frames that are neither reply "
    "nor event",
    "[codec]") {
  for (const std::string& frame :
       {""s, "not json"s, R"({"ok":true)"s, R"({"ok":true} x)"s, "[]"s, "1"s, "null"s, R"("ok")"s,
        "{}"s, R"({"id":1})"s, R"({"error":"timeout"})"s, "{\"ok\":false,\"message\":\"\xFF\"}"s,
        "{\"ok\":false,\"message\":\"\xED\xA0\x80\"}"s, "{\"ok\":true}\0{\"ok\":false}"s}) {
    INFO(frame);
    reply rep;
    const auto error = keylock::decode_reply(frame, rep);
    REQUIRE(error.has_value());
    CHECK(error->code == errc::bad_request);
  }
}

TEST_CASE("decode_reply rejects mistyped members", "[codec]") {
  for (const char* frame : {R"({"ok":1})",
                            R"({"ok":"true"})",
                            R"({"id":"1","ok":true})",
                            R"({"id":-1,"ok":true})",
                            R"({"id":1.5,"ok":true})",
                            R"({"ok":true,"token":"1"})",
                            R"({"ok":true,"ttl_ms":-1})",
                            R"({"ok":false,"error":1})",
                            R"({"ok":false,"message":null})",
                            R"({"event":1,"key":"k"})",
                            R"({"event":"expired","key":1})",
                            R"({"ok":true,"server":1})",
                            R"({"ok":true,"version":[]})",
                            R"({"ok":true,"protocol":"1"})",
                            R"({"ok":true,"protocol":1.5})",
                            R"({"ok":true,"protocol":4294967296})",
                            R"({"ok":true,"held":"yes"})",
                            R"({"ok":true,"held":-1})",
                            R"({"ok":true,"holders":{}})",
                            R"({"ok":true,"holders":[1]})",
                            R"({"ok":true,"holders":[{"token":"1"}]})",
                            R"({"ok":true,"holders":[{"token":1,"ttl_ms_left":-1}]})",
                            R"({"ok":true,"holders":[{"token":1,"client":1}]})",
                            R"({"ok":true,"holders":[{"token":1,"peer":false}]})",
                            R"({"ok":true,"waiters":true})",
                            R"({"ok":true,"limit":{}})",
                            R"({"ok":true,"connections":"3"})",
                            R"({"ok":true,"uptime_ms":-5})"}) {
    INFO(frame);
    reply rep;
    const auto error = keylock::decode_reply(frame, rep);
    REQUIRE(error.has_value());
    CHECK(error->code == errc::bad_request);
  }
  SECTION("reporting the id when it was valid") {
    reply rep;
    const auto error = keylock::decode_reply(R"({"id":4,"ok":true,"token":"x"})", rep);
    REQUIRE(error.has_value());
    CHECK(error->id == std::optional<std::uint64_t>(4));
  }
}

TEST_CASE("decode_reply keeps an unknown error code's name and maps it to bad_request", "[codec]") {
  reply rep;
  REQUIRE_FALSE(
      keylock::decode_reply(R"({"id":1,"ok":false,"error":"quota_exceeded","message":"m"})", rep));
  CHECK(rep.type == reply::kind::error);
  CHECK(rep.code == errc::bad_request);
  CHECK(rep.code_name == "quota_exceeded");
  CHECK(rep.message == "m");

  REQUIRE_FALSE(keylock::decode_reply(R"({"ok":false,"error":"not_held","message":""})", rep));
  CHECK(rep.code == errc::not_held);
  CHECK(rep.code_name == "not_held");
  CHECK_FALSE(rep.id.has_value());
}

TEST_CASE("decode_reply ignores unknown members and resets the reply", "[codec]") {
  reply rep;
  rep.server = "stale";
  rep.holders.resize(2);
  REQUIRE_FALSE(
      keylock::decode_reply(R"({"id":2,"ok":true,"new":{"x":[1,2]},"token":5,"later":"s"})"
                            "\r",
                            rep));
  CHECK(rep.type == reply::kind::ok);
  CHECK(rep.id == std::optional<std::uint64_t>(2));
  CHECK(rep.token == std::optional<std::uint64_t>(5));
  CHECK(rep.server.empty());
  CHECK(rep.holders.empty());
  CHECK_FALSE(rep.stats.has_value());

  REQUIRE_FALSE(keylock::decode_reply(R"({"event":"renamed","key":"k","to":"j"})", rep));
  CHECK(rep.type == reply::kind::event);
  CHECK(rep.event == "renamed");
  CHECK(rep.key == "k");
  CHECK_FALSE(rep.id.has_value());
  CHECK_FALSE(rep.token.has_value());
}

TEST_CASE("decode_reply survives a deeply nested unknown member", "[codec]") {
  constexpr std::size_t depth = 10000;
  reply rep;
  REQUIRE_FALSE(keylock::decode_reply(
      R"({"ok":true,"deep":)" + std::string(depth, '[') + std::string(depth, ']') + "}", rep));
  CHECK(rep.type == reply::kind::ok);
  CHECK(keylock::decode_reply(R"({"ok":true,"deep":)" + std::string(depth, '['), rep));
}

TEST_CASE("decode_reply tells inspect's boolean held from stats' count", "[codec]") {
  reply rep;
  REQUIRE_FALSE(keylock::decode_reply(R"({"ok":true,"held":true,"holders":[]})", rep));
  CHECK(rep.held == std::optional<bool>(true));
  CHECK_FALSE(rep.stats.has_value());

  REQUIRE_FALSE(keylock::decode_reply(R"({"ok":true,"held":2})", rep));
  CHECK_FALSE(rep.held.has_value());
  REQUIRE(rep.stats.has_value());
  CHECK(rep.stats->held == 2);

  REQUIRE_FALSE(keylock::decode_reply(R"({"ok":true,"uptime_ms":7})", rep));
  REQUIRE(rep.stats.has_value());
  CHECK(rep.stats->uptime_ms == 7);
}

// ---------------------------------------------------------------------------------------------
// Round trips

TEST_CASE("decode_reply reproduces every reply append_reply writes", "[codec]") {
  std::vector<reply> replies;
  {
    reply grant;
    grant.id = 3;
    grant.token = 1764214523000001u;
    grant.ttl_ms = 30000;
    replies.push_back(grant);

    reply hello;
    hello.id = 1;
    hello.server = "keylockd";
    hello.version = "0.1.0";
    hello.protocol = 1;
    replies.push_back(hello);

    reply inspect;
    inspect.id = 7;
    inspect.held = true;
    inspect.holders = {holder(1, 2, "c", "p"), holder(3, 4, "", ""),
                       holder(max_u64, max_u64, "\xC3\xA9", "")};
    inspect.waiters = 2;
    inspect.limit = 1;
    replies.push_back(inspect);

    reply idle;
    idle.held = false;
    idle.waiters = 0;
    idle.limit = 0;
    replies.push_back(idle);

    reply stats;
    stats.id = 8;
    stats.stats = keylock::stats_info{1, 2, 3, 4, 5, 6, 7, 8, 9, max_u64};
    replies.push_back(stats);

    reply zero_stats;
    zero_stats.stats = keylock::stats_info{};
    replies.push_back(zero_stats);

    reply expired;
    expired.type = reply::kind::event;
    expired.event = "expired";
    expired.key = "report:monthly";
    expired.token = 1764214523000001u;
    replies.push_back(expired);

    for (int code = 0; code < static_cast<int>(keylock::errc_count); ++code) {
      reply error;
      error.type = reply::kind::error;
      error.id = static_cast<std::uint64_t>(code);
      error.code = static_cast<errc>(code);
      error.message = "message \"" + std::to_string(code) + "\"\n\x7F";
      replies.push_back(error);
    }
  }
  generator gen(7);
  for (int i = 0; i < 500; ++i) {
    reply rep;
    rep.type = static_cast<reply::kind>(gen.below(3));
    if (rep.type != reply::kind::event && gen.coin()) rep.id = gen.u64();
    switch (rep.type) {
      case reply::kind::error:
        rep.code = static_cast<errc>(gen.below(11));
        rep.message = gen.text();
        break;
      case reply::kind::event:
        rep.event = gen.text(3);
        rep.key = gen.text();
        for (std::size_t k = gen.coin() ? gen.below(4) : 0; k > 0; --k) {
          rep.keys.push_back(gen.text());
        }
        if (gen.coin()) rep.token = gen.u64();
        break;
      case reply::kind::ok:
        if (gen.coin()) rep.token = gen.u64();
        if (gen.coin()) rep.ttl_ms = gen.u64();
        if (gen.coin()) rep.server = gen.text();
        if (gen.coin()) rep.version = gen.text();
        if (gen.coin()) {
          rep.protocol = static_cast<int>(gen.below(3)) - 1;
          if (gen.coin()) rep.protocol = std::numeric_limits<int>::max();
          if (gen.coin()) rep.protocol = std::numeric_limits<int>::min();
        }
        if (gen.coin()) {
          // `held` is inspect's and stats' member: one reply carries one of them.
          rep.stats = keylock::stats_info{gen.u64(), gen.u64(), gen.u64(), gen.u64(),
                                          gen.u64(), gen.u64(), gen.u64(), gen.u64(),
                                          gen.u64(), gen.u64(), gen.u64()};
        } else if (gen.coin()) {
          rep.held = gen.coin();
          for (std::size_t h = gen.below(4); h > 0; --h) {
            keylock::holder_info one = holder(gen.u64(), gen.u64(), gen.text(), gen.text());
            if (gen.coin()) one.mode = keylock::lock_mode::shared;
            for (std::size_t k = gen.coin() ? gen.below(4) : 0; k > 0; --k) {
              one.keys.push_back(gen.text());
            }
            rep.holders.push_back(std::move(one));
          }
        }
        if (gen.coin()) rep.waiters = gen.u64();
        if (gen.coin()) rep.limit = gen.u64();
        break;
    }
    replies.push_back(rep);
  }

  for (const reply& rep : replies) {
    const std::string frame = encode(rep);
    INFO("frame: " << frame);
    REQUIRE(frame.find('\n') == frame.size() - 1);  // one line: the newline is a delimiter
    reply back;
    back.server = "stale";
    const auto error = keylock::decode_reply(without_newline(frame), back);
    REQUIRE_FALSE(error.has_value());
    require_same_reply(back, rep);
  }
}

TEST_CASE("decode_request reproduces every request append_request writes", "[codec]") {
  std::vector<request> requests;
  const std::vector<field_name> all = [] {
    std::vector<field_name> fields = integer_fields;
    fields.insert(fields.end(), string_fields.begin(), string_fields.end());
    return fields;
  }();
  for (int kind = 0; kind <= static_cast<int>(op::unknown); ++kind) {
    request req;
    req.kind = static_cast<op>(kind);
    if (req.kind == op::unknown) req.op_name = "frobnicate";
    requests.push_back(req);  // no fields
    req.fields = 0x3FF;       // every field
    req.id = max_u64;
    req.key = "report:monthly";
    req.token = 1764214523000001u;
    req.ttl_ms = 30000;
    req.wait_ms = 0;
    req.limit = 1;
    req.target = 3;
    req.n = 10;
    req.auth = "s3cret";
    req.client = "billing-worker-7";
    requests.push_back(req);
  }
  generator gen(11);
  for (int i = 0; i < 1000; ++i) {
    request req;
    req.kind = static_cast<op>(gen.below(9));
    if (req.kind == op::unknown) {
      // Any op string this build does not know, within the 64 bytes the decoder keeps.
      do {
        req.op_name = gen.text(8);
      } while (keylock::op_from_string(req.op_name) != op::unknown || req.op_name.size() > 64);
    }
    for (const field_name& f : all) {
      if (!gen.coin()) continue;
      req.set(f.bit);
    }
    if (req.has(field::id)) req.id = gen.u64();
    if (req.has(field::key)) req.key = gen.text();
    if (req.has(field::token)) req.token = gen.u64();
    if (req.has(field::ttl_ms)) req.ttl_ms = gen.u64();
    if (req.has(field::wait_ms)) req.wait_ms = gen.u64();
    if (req.has(field::limit)) req.limit = gen.u64();
    if (req.has(field::target)) req.target = gen.u64();
    if (req.has(field::n)) req.n = gen.u64();
    if (req.has(field::auth)) req.auth = gen.text();
    if (req.has(field::client)) req.client = gen.text();
    if (gen.coin()) {
      req.set(field::mode);
      req.mode = gen.coin() ? keylock::lock_mode::shared : keylock::lock_mode::exclusive;
    }
    if (gen.coin()) {
      req.set(field::keys);
      for (std::size_t k = gen.below(5); k > 0; --k) req.keys.push_back(gen.text());
    }
    requests.push_back(req);
  }

  request back;  // reused, as the daemon does
  for (const request& req : requests) {
    const std::string frame = encode(req);
    INFO("frame: " << frame);
    REQUIRE(frame.find('\n') == frame.size() - 1);
    const auto error = keylock::decode_request(without_newline(frame), back);
    REQUIRE_FALSE(error.has_value());
    require_same_request(back, req);
  }
}

TEST_CASE("the wire spellings of errc and op map back to their enumerators", "[codec]") {
  for (int code = 0; code < static_cast<int>(keylock::errc_count); ++code) {
    const auto e = static_cast<errc>(code);
    CHECK(keylock::errc_from_string(keylock::to_string(e)) == std::optional<errc>(e));
  }
  CHECK(keylock::to_string(errc::frame_too_large) == "frame_too_large");
  CHECK_FALSE(keylock::errc_from_string("").has_value());
  CHECK_FALSE(keylock::errc_from_string("Timeout").has_value());
  for (int kind = 0; kind < static_cast<int>(op::unknown); ++kind) {
    const auto o = static_cast<op>(kind);
    CHECK(keylock::op_from_string(keylock::to_string(o)) == o);
  }
  CHECK(keylock::op_from_string("unknown") == op::unknown);
  CHECK(keylock::op_from_string("") == op::unknown);
}

TEST_CASE("acquire decodes mode and keys by both decoders alike", "[codec]") {
  for (std::string_view frame :
       {std::string_view(R"({"op":"acquire","id":1,"keys":["acct:17","acct:42"],"mode":"shared"})"),
        std::string_view(R"({"op":"acquire","id":1,"keys": [ "acct:17" , "acct:42" ] ,"mode":"shared"})"),
        std::string_view(R"({"op":"acquire","id":1,"keys":["acct:\u0031\u0037","acct:42"],"mode":"shared"})")}) {
    INFO(frame);
    request r;
    REQUIRE_FALSE(keylock::decode_request(frame, r).has_value());
    REQUIRE(r.has(field::keys));
    REQUIRE(r.has(field::mode));
    REQUIRE(r.keys == std::vector<std::string>{"acct:17", "acct:42"});
    REQUIRE(r.mode == keylock::lock_mode::shared);
    REQUIRE_FALSE(r.has(field::key));
  }
  request r;
  REQUIRE_FALSE(keylock::decode_request(R"({"op":"acquire","key":"k","mode":"exclusive"})", r));
  REQUIRE(r.mode == keylock::lock_mode::exclusive);
  // The next frame starts from a clean request: no keys, exclusive.
  REQUIRE_FALSE(keylock::decode_request(R"({"op":"acquire","key":"k"})", r));
  REQUIRE(r.keys.empty());
  REQUIRE_FALSE(r.has(field::mode));
}

TEST_CASE("a mode that is not exclusive or shared is bad_request", "[codec]") {
  for (std::string_view frame : {R"({"op":"acquire","key":"k","mode":"read"})",
                                 R"({"op":"acquire","key":"k","mode":1})",
                                 R"({"op":"acquire","key":"k","mode":["shared"]})"}) {
    INFO(frame);
    request r;
    auto err = keylock::decode_request(frame, r);
    REQUIRE(err.has_value());
    REQUIRE(err->code == errc::bad_request);
    REQUIRE(err->message.find("mode") != std::string::npos);
  }
}

TEST_CASE("keys must be an array of at most 64 strings", "[codec]") {
  std::string many = R"({"op":"acquire","keys":[)";
  for (int i = 0; i < 65; ++i) {
    if (i > 0) many += ',';
    many += '"';
    many += std::to_string(i);
    many += '"';
  }
  many += "]}";
  for (std::string_view frame : {std::string_view(R"({"op":"acquire","keys":"k"})"),
                                 std::string_view(R"({"op":"acquire","keys":["a",1]})"),
                                 std::string_view(R"({"op":"acquire","keys":["a",["b"]]})"),
                                 std::string_view(R"({"op":"acquire","keys":["a",{"b":1}]})"),
                                 std::string_view(R"({"op":"acquire","keys":["a",null]})"),
                                 std::string_view(R"({"op":"acquire","keys":{"a":"b"}})"),
                                 std::string_view(many)}) {
    INFO(frame);
    request r;
    auto err = keylock::decode_request(frame, r);
    REQUIRE(err.has_value());
    REQUIRE(err->code == errc::bad_request);
    REQUIRE(err->message.find("keys") != std::string::npos);
  }
  request r;
  // Empty, duplicate or overlong keys decode; the dispatcher checks them against the limits.
  REQUIRE_FALSE(keylock::decode_request(R"({"op":"acquire","keys":[]})", r).has_value());
  REQUIRE(r.has(field::keys));
  REQUIRE(r.keys.empty());
  REQUIRE_FALSE(keylock::decode_request(R"({"op":"acquire","keys":["a","a"]})", r).has_value());
  REQUIRE(r.keys.size() == 2);
}

TEST_CASE("holders carry their mode and set, and a set's expired event names every key",
          "[codec]") {
  reply rep;
  rep.id = 3;
  rep.held = true;
  keylock::holder_info h = holder(5, 100, "", "");
  h.mode = keylock::lock_mode::shared;
  h.keys = {"a", "b"};
  rep.holders.push_back(h);
  rep.waiters = 0;
  rep.limit = 1;
  CHECK(encode(rep) == R"({"id":3,"ok":true,"held":true,"holders":[{"token":5,"ttl_ms_left":100,)"
                       R"("mode":"shared","keys":["a","b"]}],"waiters":0,"limit":1})"
                       "\n");
  reply ev;
  ev.type = reply::kind::event;
  ev.event = "expired";
  ev.key = "a";
  ev.keys = {"a", "b"};
  ev.token = 9;
  CHECK(encode(ev) == R"({"event":"expired","key":"a","keys":["a","b"],"token":9})"
                      "\n");
  reply back;
  REQUIRE_FALSE(keylock::decode_reply(R"({"event":"expired","key":"a","keys":["a","b"],"token":9})",
                                      back));
  REQUIRE(back.keys == std::vector<std::string>{"a", "b"});
  REQUIRE_FALSE(back.stats.has_value());  // `keys` here is the list, not stats' count
  // A holder without mode (an older server) reads as exclusive.
  REQUIRE_FALSE(keylock::decode_reply(
      R"({"id":1,"ok":true,"held":true,"holders":[{"token":1,"ttl_ms_left":1}],"waiters":0,"limit":1})",
      back));
  REQUIRE(back.holders.at(0).mode == keylock::lock_mode::exclusive);
}
