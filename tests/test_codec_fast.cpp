// The fast request decoder against the full one: whatever the fast path accepts, the full
// decoder must accept with the same result, and the fast path must handle the common frames.
#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "codec_internal.hpp"

using namespace keylock;

namespace {

void require_same(const request& a, const request& b) {
  REQUIRE(a.kind == b.kind);
  REQUIRE(a.fields == b.fields);
  REQUIRE(a.id == b.id);
  REQUIRE(a.key == b.key);
  REQUIRE(a.token == b.token);
  REQUIRE(a.ttl_ms == b.ttl_ms);
  REQUIRE(a.wait_ms == b.wait_ms);
  REQUIRE(a.limit == b.limit);
  REQUIRE(a.target == b.target);
  REQUIRE(a.n == b.n);
  REQUIRE(a.auth == b.auth);
  REQUIRE(a.client == b.client);
  REQUIRE(a.op_name == b.op_name);
  REQUIRE(a.keys == b.keys);
  REQUIRE(a.mode == b.mode);
}

// A seed with up to three random edits (replace, insert, erase) from bytes that matter to JSON.
std::string mutated(const std::vector<std::string>& from, std::mt19937_64& rng) {
  static const std::string alphabet =
      "{}[]\":,0123456789 -.eE\\uabcdefghijklmnopqrstuvwxyz_\x01\xff\xc3\r";
  std::string frame = from[rng() % from.size()];
  const int edits = static_cast<int>(rng() % 4);
  for (int e = 0; e < edits && !frame.empty(); ++e) {
    const std::size_t at = rng() % frame.size();
    switch (rng() % 3) {
      case 0:
        frame[at] = alphabet[rng() % alphabet.size()];
        break;
      case 1:
        frame.insert(frame.begin() + static_cast<std::ptrdiff_t>(at),
                     alphabet[rng() % alphabet.size()]);
        break;
      default:
        frame.erase(at, 1);
        break;
    }
  }
  return frame;
}

const std::vector<std::string> seeds = {
    R"({"op":"ping","id":1})",
    R"({"op":"acquire","id":12345,"key":"user:42:report","ttl_ms":30000})",
    R"({"op":"acquire","id":7,"key":"k","ttl_ms":1,"wait_ms":0,"limit":3})",
    R"({"op":"release","id":1844674407370955161,"key":"k","token":1795751562920184})",
    R"({"op":"release","id":18446744073709551615,"key":"k","token":1})",
    R"({"op":"extend","key":"k","token":9,"ttl_ms":500})",
    R"({"op":"cancel","id":3,"target":2})",
    R"({"op":"hello","id":0,"auth":"s3cret","client":"worker-1"})",
    R"({"op":"inspect","key":"a b c"})",
    R"({"op":"stats"})",
    R"({"op":"frobnicate","id":4})",
    R"({"op":"release","key":"k","token":5,"noreply":true})",
    R"({"op":"release","key":"k","token":5,"noreply":false,"id":2})",
    R"( { "op" : "ping" , "id" : 10 } )",
    R"({"id":5,"op":"ping","extra":[1,{"x":2}]})",
    R"({"op":"acquire","key":"caf\u00e9","id":1})",
    "{\"op\":\"acquire\",\"key\":\"caf\xc3\xa9\",\"id\":1}",
    R"({"op":"release","key":"k","token":5,"noreply":1})",
    R"({"op":"release","key":"k","token":5,"noreply":"yes"})",
    R"({"op":"release","key":"k","token":5,"noreply":truex})",
    R"({"op":"ping","id":-1})",
    R"({"op":"ping","id":1.0})",
    R"({"op":"ping","id":01})",
    R"({"op":"ping","id":1e2})",
    R"({"op":"ping","id":99999999999999999999})",
    R"({"op":"ping","op":"ping"})",
    R"({"op":"acquire","key":"a","key":"b"})",
    R"({"op":"ping"} x)",
    R"({"op":"ping",})",
    R"({"op":"acquire","id":9,"keys":["a","b","c"],"mode":"shared","wait_ms":0})",
    R"({"op":"release","keys":["b","a"],"token":5,"noreply":true})",
    R"({"op":"acquire","key":"k","mode":"exclusive"})",
    R"({"op":"acquire","keys":[],"mode":"shared"})",
    R"({"op":"acquire","keys":["a",],"mode":"reader"})",
    R"({"op":7})",
    R"({})",
    R"([])",
};

}  // namespace

TEST_CASE("the fast decoder handles the frames clients send", "[codec]") {
  request r;
  for (std::size_t i = 0; i < 14; ++i) {
    if (i == 4) continue;  // 20 digits: left to the full parser
    INFO(seeds[i]);
    REQUIRE(decode_request_fast(seeds[i], r));
  }
  REQUIRE(decode_request_fast(R"({"op":"acquire","id":9,"keys":["a","b"],"mode":"shared"})", r));
  REQUIRE(r.keys == std::vector<std::string>{"a", "b"});
  REQUIRE(r.mode == lock_mode::shared);
  REQUIRE(decode_request_fast(R"({"op":"acquire","id":12345,"key":"user:42","ttl_ms":30000})", r));
  REQUIRE(r.kind == op::acquire);
  REQUIRE(r.key == "user:42");
  REQUIRE(r.ttl_ms == 30000);
}

TEST_CASE("the fast decoder declines what it cannot decide and agrees with the full one",
          "[codec]") {
  std::mt19937_64 rng(20261127);
  std::size_t accepted = 0;
  for (std::size_t round = 0; round < 200'000; ++round) {
    const std::string frame = mutated(seeds, rng);
    request fast;
    if (!decode_request_fast(frame, fast)) continue;
    ++accepted;
    request full;
    auto err = decode_request_full(frame, full);
    INFO(frame);
    REQUIRE_FALSE(err.has_value());
    require_same(fast, full);
  }
  REQUIRE(accepted > 10'000);  // the comparison above really ran on many frames
}

TEST_CASE("noreply is a boolean, decoded by both paths alike", "[codec]") {
  request fast, full;
  REQUIRE(decode_request_fast(R"({"op":"release","key":"k","token":5,"noreply":true})", fast));
  REQUIRE(fast.noreply);
  REQUIRE(fast.has(field::noreply));
  REQUIRE_FALSE(decode_request_full(R"({"op":"release","key":"k","token":5,"noreply" : true })",
                                    full));
  REQUIRE(full.noreply);
  auto err = decode_request(R"({"op":"release","key":"k","token":5,"noreply":1})", full);
  REQUIRE(err.has_value());
  REQUIRE(err->message.find("noreply") != std::string::npos);
  std::string encoded;
  append_request(encoded, fast);
  REQUIRE(encoded.find(R"("noreply":true)") != std::string::npos);
}

namespace {

void require_same(const reply& a, const reply& b) {
  REQUIRE(a.type == b.type);
  REQUIRE(a.id == b.id);
  REQUIRE(a.code == b.code);
  REQUIRE(a.code_name == b.code_name);
  REQUIRE(a.message == b.message);
  REQUIRE(a.event == b.event);
  REQUIRE(a.key == b.key);
  REQUIRE(a.keys == b.keys);
  REQUIRE(a.token == b.token);
  REQUIRE(a.ttl_ms == b.ttl_ms);
  REQUIRE(a.server == b.server);
  REQUIRE(a.version == b.version);
  REQUIRE(a.protocol == b.protocol);
  REQUIRE(a.held == b.held);
  REQUIRE(a.waiters == b.waiters);
  REQUIRE(a.limit == b.limit);
  REQUIRE(a.stats.has_value() == b.stats.has_value());
}

const std::vector<std::string> reply_seeds = {
    R"({"id":2,"ok":true,"token":1796482194123111,"ttl_ms":30000})",
    R"({"id":7,"ok":true})",
    R"({"id":3,"ok":false,"error":"timeout","message":"not acquired within 0 ms"})",
    R"({"id":3,"ok":false,"error":"brand_new_code","message":"from a newer daemon"})",
    R"({"event":"expired","key":"k","token":42})",
    R"({"event":"expired","key":"a","keys":["a","b"],"token":42})",
    R"({"ok":false,"error":"bad_request","message":"invalid JSON"})",
    R"( { "id" : 1 , "ok" : true } )",
    R"({"id":1,"ok":true,"version":"1.4.0","server":"h:7400","protocol":1})",
    R"({"id":1,"ok":true,"held":false,"waiters":0,"limit":1,"holders":[]})",
    R"({"id":1,"ok":true,"future_member":{"x":[1,2]}})",
    R"({"id":1,"ok":1})",
    R"({"id":1,"ok":"true"})",
    R"({"id":-1,"ok":true})",
    R"({"id":1.5,"ok":true})",
    R"({"id":99999999999999999999,"ok":true})",
    R"({"id":1,"id":2,"ok":true})",
    R"({"id":1,"ok":true,"message":"caf\u00e9"})",
    "{\"id\":1,\"ok\":false,\"error\":\"x\",\"message\":\"caf\xc3\xa9\"}",
    R"({"id":1})",
    R"({"id":1,"ok":true} x)",
    R"({"id":1,"ok":true,})",
    R"({})",
    R"([])",
};

}  // namespace

TEST_CASE("the fast reply decoder handles the replies a client reads most", "[codec]") {
  reply r;
  for (std::size_t i = 0; i < 5; ++i) {
    INFO(reply_seeds[i]);
    REQUIRE(decode_reply_fast(reply_seeds[i], r));
  }
  REQUIRE(decode_reply_fast(reply_seeds[0], r));
  REQUIRE(r.type == reply::kind::ok);
  REQUIRE(r.token == 1796482194123111U);
  REQUIRE(r.ttl_ms == 30000U);
  REQUIRE(decode_reply_fast(reply_seeds[3], r));
  REQUIRE(r.type == reply::kind::error);
  REQUIRE(r.code == errc::bad_request);  // a code this build does not know
  REQUIRE(r.code_name == "brand_new_code");
  REQUIRE(decode_reply_fast(reply_seeds[4], r));
  REQUIRE(r.type == reply::kind::event);
  // What it declines, decode_reply still decodes (or rejects) through the full parser.
  REQUIRE_FALSE(decode_reply_fast(reply_seeds[5], r));
  REQUIRE_FALSE(decode_reply(reply_seeds[5], r).has_value());
  REQUIRE(r.keys == std::vector<std::string>{"a", "b"});
  REQUIRE(decode_reply(reply_seeds[12], r).has_value());
}

TEST_CASE("the fast reply decoder declines what it cannot decide and agrees with the full one",
          "[codec]") {
  std::mt19937_64 rng(20261205);
  std::size_t accepted = 0;
  for (std::size_t round = 0; round < 200'000; ++round) {
    const std::string frame = mutated(reply_seeds, rng);
    reply fast;
    if (!decode_reply_fast(frame, fast)) continue;
    ++accepted;
    reply full;
    const auto err = decode_reply_full(frame, full);
    INFO(frame);
    REQUIRE_FALSE(err.has_value());
    require_same(fast, full);
  }
  REQUIRE(accepted > 10'000);  // the comparison above really ran on many frames
}
