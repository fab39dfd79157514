// The bench's hand-formatted frames and its reply scan, checked against the project's real
// codec (keylock_proto), so the fast path cannot drift from the protocol.
#include "keylock/codec.hpp"
#include "keylock/protocol.hpp"
#include "wire.hpp"

#include <catch2/catch.hpp>

#include <span>
#include <string>
#include <vector>

using namespace keylock::bench;

namespace {

keylock::request decode(const std::string& frame) {
  REQUIRE(!frame.empty());
  REQUIRE(frame.back() == '\n');
  REQUIRE(frame.find('\n') == frame.size() - 1);
  keylock::request req;
  auto err = keylock::decode_request(std::string_view(frame).substr(0, frame.size() - 1), req);
  INFO(frame);
  REQUIRE_FALSE(err.has_value());
  return req;
}

std::string encode(const keylock::reply& rep) {
  std::string out;
  keylock::append_reply(out, rep);
  REQUIRE(out.back() == '\n');
  out.pop_back();
  return out;
}

}  // namespace

TEST_CASE("target URLs name a scheme, a host and a port", "[bench][wire]") {
  std::string err;
  SECTION("keylock") {
    auto t = parse_target("keylock://127.0.0.1:7400", err);
    REQUIRE(t);
    CHECK(t->kind == target_kind::keylock);
    CHECK(t->host == "127.0.0.1");
    CHECK(t->port == 7400);
    CHECK(t->url == "keylock://127.0.0.1:7400");
  }
  SECTION("redis, with a trailing slash") {
    auto t = parse_target("redis://localhost:6379/", err);
    REQUIRE(t);
    CHECK(t->kind == target_kind::redis);
    CHECK(t->host == "localhost");
    CHECK(t->port == 6379);
  }
  SECTION("bracketed IPv6") {
    auto t = parse_target("redis://[::1]:6379", err);
    REQUIRE(t);
    CHECK(t->host == "::1");
  }
  SECTION("bad URLs") {
    for (const char* bad :
         {"http://127.0.0.1:80", "keylock://127.0.0.1", "keylock://:7400",
          "keylock://127.0.0.1:", "keylock://127.0.0.1:0", "keylock://127.0.0.1:65536",
          "keylock://127.0.0.1:74x", "keylock://::1:7400", "redis://[::1:6379", "127.0.0.1:7400"}) {
      INFO(bad);
      err.clear();
      CHECK_FALSE(parse_target(bad, err));
      CHECK_FALSE(err.empty());
    }
  }
}

TEST_CASE("keylock and etcd targets may list several servers; clients are spread over them",
          "[bench][wire]") {
  std::string err;
  auto t = parse_target("keylock://127.0.0.1:7400,127.0.0.1:7410,[::1]:7420", err);
  REQUIRE(t);
  REQUIRE(t->endpoints.size() == 3);
  CHECK(t->host == "127.0.0.1");
  CHECK(t->port == 7400);
  CHECK(t->endpoints[2].host == "::1");
  CHECK(server_of(*t, 0) == 0);
  CHECK(server_of(*t, 4) == 1);
  CHECK(client_target(*t, 5).port == 7420);
  CHECK(client_target(*t, 5).host == "::1");
  CHECK(endpoint_list(*t) == "127.0.0.1:7400,127.0.0.1:7410,[::1]:7420");
  auto e = parse_target("etcd://127.0.0.1:2379,127.0.0.1:2479", err);
  REQUIRE(e);
  CHECK(e->kind == target_kind::etcd);
  CHECK(endpoint_list(*e) == "127.0.0.1:2379,127.0.0.1:2479");
  for (const char* bad : {"redis://127.0.0.1:6379,127.0.0.1:6380", "keylock://127.0.0.1:7400,",
                          "keylock://127.0.0.1:7400,,127.0.0.1:7410", "etcd://127.0.0.1:0"}) {
    INFO(bad);
    err.clear();
    CHECK_FALSE(parse_target(bad, err));
    CHECK_FALSE(err.empty());
  }
}

TEST_CASE("Jain's fairness index", "[bench][wire]") {
  const std::vector<std::uint64_t> equal = {5, 5, 5, 5}, one = {8, 0, 0, 0}, half = {4, 4, 0, 0},
                                   none = {};
  CHECK(jain_index(equal) == Approx(1.0));
  CHECK(jain_index(one) == Approx(0.25));
  CHECK(jain_index(half) == Approx(0.5));
  CHECK(jain_index(none) == Approx(1.0));
}

TEST_CASE("hand-formatted requests decode through the real codec", "[bench][wire]") {
  std::string out;
  SECTION("ping") {
    append_ping(out, 42);
    auto req = decode(out);
    CHECK(req.kind == keylock::op::ping);
    CHECK(req.id == 42);
  }
  SECTION("acquire that waits until granted") {
    append_acquire(out, 7, "uc:3:1", 10000, std::nullopt, 1);
    auto req = decode(out);
    CHECK(req.kind == keylock::op::acquire);
    CHECK(req.id == 7);
    CHECK(req.key == "uc:3:1");
    CHECK(req.ttl_ms == 10000);
    CHECK_FALSE(req.has(keylock::field::wait_ms));
    CHECK(req.limit == 1);
  }
  SECTION("acquire that tries once") {
    append_acquire(out, 18446744073709551615ULL, "z:12", 1, 0, 4);
    auto req = decode(out);
    CHECK(req.id == 18446744073709551615ULL);
    CHECK(req.has(keylock::field::wait_ms));
    CHECK(req.wait_ms == 0);
    CHECK(req.limit == 4);
  }
  SECTION("release") {
    append_release(out, 9, "ct:shared", 1764214523000001ULL);
    auto req = decode(out);
    CHECK(req.kind == keylock::op::release);
    CHECK(req.key == "ct:shared");
    CHECK(req.token == 1764214523000001ULL);
  }
  SECTION("release without reply") {
    append_release(out, 10, "uc:0:0", 77, true);
    auto req = decode(out);
    CHECK(req.kind == keylock::op::release);
    CHECK(req.token == 77);
    CHECK(req.noreply);
    out.clear();
    append_release(out, 11, "uc:0:0", 77, false);
    CHECK_FALSE(decode(out).noreply);
  }
  SECTION("a shared acquire names its mode; an exclusive one keeps the old shape") {
    append_acquire(out, 3, "rw:shared", 10000, std::nullopt, 1, keylock::lock_mode::shared);
    CHECK(out ==
          R"({"op":"acquire","id":3,"key":"rw:shared","ttl_ms":10000,"limit":1,"mode":"shared"})"
          "\n");
    out.clear();
    append_acquire(out, 3, "rw:shared", 10000, 0, 1, keylock::lock_mode::exclusive);
    CHECK(out == R"({"op":"acquire","id":3,"key":"rw:shared","ttl_ms":10000,"wait_ms":0,"limit":1})"
                 "\n");
  }
  SECTION("an acquire of several keys lists them in place of key") {
    const std::vector<std::string> keys{"mk:1", "mk:20", "a\"b"};
    append_acquire_set(out, 4, keys, 5000, 2000, 1);
    CHECK(out ==
          R"({"op":"acquire","id":4,"keys":["mk:1","mk:20","a\"b"],"ttl_ms":5000,"wait_ms":2000,"limit":1})"
          "\n");
    out.clear();
    append_acquire_set(out, 5, std::span<const std::string>(keys.data(), 1), 5000, std::nullopt,
                       1, keylock::lock_mode::shared);
    CHECK(out == R"({"op":"acquire","id":5,"keys":["mk:1"],"ttl_ms":5000,"limit":1,"mode":"shared"})"
                 "\n");
  }
  SECTION("shared and several-key acquires decode with their mode and keys") {
    append_acquire(out, 3, "rw:shared", 10000, std::nullopt, 1, keylock::lock_mode::shared);
    auto req = decode(out);
    CHECK(req.key == "rw:shared");
    CHECK(req.mode == keylock::lock_mode::shared);
    CHECK(req.limit == 1);
    out.clear();
    const std::vector<std::string> keys{"mk:1", "mk:20", "mk:300", "mk:999"};
    append_acquire_set(out, 4, keys, 5000, std::nullopt, 1);
    req = decode(out);
    CHECK(req.kind == keylock::op::acquire);
    CHECK(req.keys == keys);
    CHECK(req.key.empty());
    CHECK(req.mode == keylock::lock_mode::exclusive);
    CHECK_FALSE(req.has(keylock::field::wait_ms));
  }
  SECTION("keys that need escaping") {
    const std::string key = std::string("a\"b\\c\x01") + "d";
    append_acquire(out, 1, key, 5, std::nullopt, 1);
    CHECK(decode(out).key == key);
  }
  SECTION("frames append to what is there") {
    append_ping(out, 1);
    append_ping(out, 2);
    CHECK(out == "{\"op\":\"ping\",\"id\":1}\n{\"op\":\"ping\",\"id\":2}\n");
  }
}

TEST_CASE("the reply scan reads what the daemon's encoder writes", "[bench][wire]") {
  reply_view v;
  SECTION("a grant") {
    keylock::reply rep;
    rep.id = 12;
    rep.token = 1764214523000001ULL;
    rep.ttl_ms = 30000;
    REQUIRE(scan_reply(encode(rep), v));
    CHECK_FALSE(v.is_event);
    CHECK(v.ok);
    CHECK(v.has_id);
    CHECK(v.id == 12);
    CHECK(v.has_token);
    CHECK(v.token == 1764214523000001ULL);
    CHECK(v.error.empty());
  }
  SECTION("a ping or release answer") {
    keylock::reply rep;
    rep.id = 0;
    REQUIRE(scan_reply(encode(rep), v));
    CHECK(v.ok);
    CHECK(v.id == 0);
    CHECK_FALSE(v.has_token);
  }
  SECTION("an error") {
    keylock::reply rep;
    rep.id = 5;
    rep.type = keylock::reply::kind::error;
    rep.code = keylock::errc::not_held;
    rep.message = std::string("no lease with this key and token \"token\":7");
    REQUIRE(scan_reply(encode(rep), v));
    CHECK_FALSE(v.ok);
    CHECK(v.id == 5);
    CHECK(v.error == "not_held");
    CHECK_FALSE(v.has_token);
  }
  SECTION("an error without id") {
    keylock::reply rep;
    rep.type = keylock::reply::kind::error;
    rep.code = keylock::errc::bad_request;
    rep.message = std::string("invalid JSON");
    REQUIRE(scan_reply(encode(rep), v));
    CHECK_FALSE(v.has_id);
    CHECK(v.error == "bad_request");
  }
  SECTION("an event") {
    keylock::reply rep;
    rep.type = keylock::reply::kind::event;
    rep.event = std::string("expired");
    rep.key = std::string("k");
    rep.token = 3;
    REQUIRE(scan_reply(encode(rep), v));
    CHECK(v.is_event);
  }
  SECTION("unknown members are skipped") {
    REQUIRE(scan_reply(R"({"id":4,"ok":true,"future":{"x":[1,2]},"token":99,"ttl_ms":5})", v));
    CHECK(v.token == 99);
  }
  SECTION("frames that are not replies") {
    CHECK_FALSE(scan_reply("", v));
    CHECK_FALSE(scan_reply("hello", v));
    CHECK_FALSE(scan_reply(R"({"id":4})", v));
  }
}

TEST_CASE("RESP commands are arrays of bulk strings", "[bench][wire]") {
  std::string out;
  append_resp_command(out, {"SET", "k", "tok", "NX", "PX", "10000"});
  CHECK(out ==
        "*6\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\ntok\r\n$2\r\nNX\r\n$2\r\nPX\r\n$5\r\n10000\r\n");
  out.clear();
  append_resp_command(out, {"PING"});
  CHECK(out == "*1\r\n$4\r\nPING\r\n");
  out.clear();
  append_resp_command(out, {"ECHO", ""});
  CHECK(out == "*2\r\n$4\r\nECHO\r\n$0\r\n\r\n");
}

TEST_CASE("redis tokens are 32 hex digits and semaphore slots are numbered keys", "[bench][wire]") {
  token_text tok{};
  format_token(0x0123456789abcdefULL, 0xfedcba9876543210ULL, tok);
  CHECK(std::string(tok.data(), tok.size()) == "0123456789abcdeffedcba9876543210");
  CHECK(semaphore_slot_key("z:7", 3) == "z:7#3");
  CHECK(redis_release_script.find("del") != std::string_view::npos);
  CHECK(redis_semaphore_script.find("nx") != std::string_view::npos);
}
