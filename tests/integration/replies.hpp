// Catch-aware helpers for tests that speak raw NDJSON to keylockd through harness.hpp's conn.
#pragma once

#include <catch2/catch.hpp>

#include <optional>
#include <string>

#include "harness.hpp"
#include "keylock/codec.hpp"

namespace keylock::test {

// Decodes a server frame; fails the test when there is none or it does not decode.
inline reply parse_reply(const std::optional<std::string>& line) {
  INFO("line: " << line.value_or("<none>"));
  REQUIRE(line.has_value());
  reply r;
  auto err = decode_reply(*line, r);
  INFO("decode error: " << (err ? err->message : ""));
  REQUIRE_FALSE(err.has_value());
  return r;
}

// One request with nothing else in flight on `c`, and its decoded reply.
inline reply call_reply(conn& c, const std::string& frame) { return parse_reply(c.call(frame)); }

}  // namespace keylock::test
