// Catch-aware helpers for tests that speak raw NDJSON to keylockd through harness.hpp's conn.
#pragma once

#include <catch2/catch.hpp>

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
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

// Acquires `key` with wait_ms 0 and returns the token; fails the test when it is not granted.
inline std::uint64_t acquire_now(conn& c, const std::string& key, int ttl_ms = 30000,
                                 int limit = 1) {
  reply r = call_reply(c, R"({"op":"acquire","id":1,"key":")" + key + R"(","ttl_ms":)" +
                              std::to_string(ttl_ms) + R"(,"limit":)" + std::to_string(limit) +
                              R"(,"wait_ms":0})");
  INFO("acquire " << key << ": " << r.message);
  REQUIRE(r.type == reply::kind::ok);
  REQUIRE(r.token.has_value());
  return *r.token;
}

inline void require_error(const reply& r, errc code) {
  INFO("message: " << r.message);
  REQUIRE(r.type == reply::kind::error);
  REQUIRE(r.code == code);
}

// A fresh directory under the temp dir, removed with everything in it at scope exit.
struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    std::string templ = (std::filesystem::temp_directory_path() / "keylockd-it-XXXXXX").string();
    REQUIRE(::mkdtemp(templ.data()) != nullptr);
    path = templ;
  }
  ~temp_dir() { std::filesystem::remove_all(path); }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
};

// Whether a fresh connection to `port` gets its ping answered, trying up to 200 connections: a
// connection slot frees only once the daemon has seen a client's close, which a test cannot
// observe any other way.
inline bool new_connection_served(std::uint16_t port) {
  for (int i = 0; i < 200; ++i) {
    conn n(port);
    n.send_line(R"({"op":"ping","id":1})");
    auto line = n.recv_line();
    if (line && parse_reply(line).type == reply::kind::ok) return true;
  }
  return false;
}

}  // namespace keylock::test
