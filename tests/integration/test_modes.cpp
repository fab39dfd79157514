// Shared/exclusive modes and several-key acquires against the real keylockd, in raw NDJSON
// (PROTOCOL.md "Modes" and "Several keys at once").
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "harness.hpp"
#include "keylock/codec.hpp"
#include "replies.hpp"

using namespace keylock;
using namespace keylock::test;

namespace {

std::string acquire_frame(std::uint64_t id, const std::string& target, const std::string& extra) {
  return R"({"op":"acquire","id":)" + std::to_string(id) + "," + target + extra + "}";
}

// Sends an acquire and expects its grant now; returns the token.
std::uint64_t granted(conn& c, std::uint64_t id, const std::string& target,
                      const std::string& extra = "") {
  reply r = call_reply(c, acquire_frame(id, target, extra));
  INFO("acquire " << target << extra << ": " << r.message);
  REQUIRE(r.type == reply::kind::ok);
  REQUIRE(r.id == std::optional<std::uint64_t>(id));
  return r.token.value();
}

// Sends an acquire that must queue: a ping sent after it is answered first.
void queued(conn& c, std::uint64_t id, const std::string& target, const std::string& extra = "") {
  REQUIRE(c.send_line(acquire_frame(id, target, extra)));
  reply r = call_reply(c, R"({"op":"ping","id":999})");
  INFO("expected the acquire " << id << " to wait");
  REQUIRE(r.id == std::optional<std::uint64_t>(999));
}

void release(conn& c, const std::string& target, std::uint64_t token) {
  reply r = call_reply(c, R"({"op":"release","id":77,)" + target + R"(,"token":)" +
                              std::to_string(token) + "}");
  INFO("release " << target << ": " << r.message);
  REQUIRE(r.type == reply::kind::ok);
}

const std::string shared = R"(,"mode":"shared")";

}  // namespace

TEST_CASE("shared holders coexist and an exclusive acquire waits for all of them",
          "[integration][modes]") {
  test::daemon d;
  conn r1(d.port()), r2(d.port()), w(d.port());
  std::uint64_t t1 = granted(r1, 1, R"("key":"doc")", shared);
  std::uint64_t t2 = granted(r2, 2, R"("key":"doc")", shared);
  REQUIRE(t2 > t1);
  queued(w, 3, R"("key":"doc")");
  reply info = call_reply(r1, R"({"op":"inspect","id":4,"key":"doc"})");
  REQUIRE(info.holders.size() == 2);
  REQUIRE(info.holders[0].mode == lock_mode::shared);
  REQUIRE(info.waiters == std::optional<std::uint64_t>(1));
  release(r1, R"("key":"doc")", t1);
  REQUIRE_FALSE(w.recv_line(100ms).has_value());  // one reader still holds
  release(r2, R"("key":"doc")", t2);
  reply g = parse_reply(w.recv_line());
  REQUIRE(g.id == std::optional<std::uint64_t>(3));
  REQUIRE(g.type == reply::kind::ok);
  reply after = call_reply(w, R"({"op":"inspect","id":5,"key":"doc"})");
  REQUIRE(after.holders.at(0).mode == lock_mode::exclusive);
}

TEST_CASE("a reader arriving while a writer waits queues behind it, then readers go in together",
          "[integration][modes]") {
  test::daemon d;
  conn r1(d.port()), w(d.port()), r2(d.port()), r3(d.port());
  std::uint64_t t1 = granted(r1, 1, R"("key":"doc")", shared);
  queued(w, 2, R"("key":"doc")");
  // Not granted at once although only readers hold: the writer must not starve.
  queued(r2, 3, R"("key":"doc")", shared);
  queued(r3, 4, R"("key":"doc")", shared);
  release(r1, R"("key":"doc")", t1);
  reply wg = parse_reply(w.recv_line());
  REQUIRE(wg.id == std::optional<std::uint64_t>(2));
  REQUIRE_FALSE(r2.recv_line(100ms).has_value());
  release(w, R"("key":"doc")", *wg.token);
  // Both readers behind the writer are granted by the one release.
  REQUIRE(parse_reply(r2.recv_line()).id == std::optional<std::uint64_t>(3));
  REQUIRE(parse_reply(r3.recv_line()).id == std::optional<std::uint64_t>(4));
  reply stats = call_reply(r2, R"({"op":"stats","id":5})");
  REQUIRE(stats.stats->grants_shared == 3);
  REQUIRE(stats.stats->grants == 4);
}

TEST_CASE("shared mode with a limit above 1 is bad_request", "[integration][modes]") {
  test::daemon d;
  conn c(d.port());
  reply r = call_reply(c, R"({"op":"acquire","id":1,"key":"k","mode":"shared","limit":2})");
  require_error(r, errc::bad_request);
  REQUIRE(r.message.find("limit 1") != std::string::npos);
  require_error(call_reply(c, R"({"op":"acquire","id":2,"key":"k","mode":"reader"})"),
                errc::bad_request);
}

TEST_CASE("several keys are granted all at once, with one token", "[integration][modes]") {
  test::daemon d;
  conn a(d.port()), b(d.port());
  std::uint64_t ta = granted(a, 1, R"("key":"acct:42")");
  queued(b, 2, R"("keys":["acct:17","acct:42"])");
  // acct:17 is free, but the set waits: nothing of it is held meanwhile.
  reply part = call_reply(a, R"({"op":"inspect","id":3,"key":"acct:17"})");
  REQUIRE(part.held == std::optional<bool>(false));
  release(a, R"("key":"acct:42")", ta);
  reply g = parse_reply(b.recv_line());
  REQUIRE(g.id == std::optional<std::uint64_t>(2));
  REQUIRE(g.type == reply::kind::ok);
  for (const char* key : {"acct:17", "acct:42"}) {
    reply info = call_reply(a, std::string(R"({"op":"inspect","id":4,"key":")") + key + "\"}");
    REQUIRE(info.holders.size() == 1);
    REQUIRE(info.holders[0].token == *g.token);
    REQUIRE(info.holders[0].keys == std::vector<std::string>{"acct:17", "acct:42"});
  }
  // Any one key releases the whole set.
  release(b, R"("key":"acct:17")", *g.token);
  REQUIRE(call_reply(a, R"({"op":"inspect","id":5,"key":"acct:42"})").held ==
          std::optional<bool>(false));
}

TEST_CASE("requests for overlapping sets in opposite orders never deadlock",
          "[integration][modes]") {
  test::daemon d;
  conn holder(d.port()), ab(d.port()), ba(d.port());
  std::uint64_t t = granted(holder, 1, R"("keys":["x","y"])");
  queued(ab, 2, R"("keys":["x","y"])");
  queued(ba, 3, R"("keys":["y","x"])");
  release(holder, R"("keys":["y","x"])", t);  // the exact set, in another order
  reply first = parse_reply(ab.recv_line());
  REQUIRE(first.id == std::optional<std::uint64_t>(2));
  release(ab, R"("key":"x")", *first.token);
  reply second = parse_reply(ba.recv_line());
  REQUIRE(second.id == std::optional<std::uint64_t>(3));
  REQUIRE(*second.token > *first.token);
}

TEST_CASE("release and extend of a set take any member or the exact set, nothing else",
          "[integration][modes]") {
  test::daemon d;
  conn c(d.port());
  std::uint64_t t = granted(c, 1, R"("keys":["p","q","r"])", R"(,"ttl_ms":60000)");
  const std::string tok = std::to_string(t);
  require_error(call_reply(c, R"({"op":"release","id":2,"keys":["p","q"],"token":)" + tok + "}"),
                errc::not_held);
  reply ext = call_reply(c, R"({"op":"extend","id":3,"key":"q","token":)" + tok +
                                R"(,"ttl_ms":5000})");
  REQUIRE(ext.type == reply::kind::ok);
  reply info = call_reply(c, R"({"op":"inspect","id":4,"key":"r"})");
  REQUIRE(info.holders.at(0).ttl_ms_left <= 5000);
  REQUIRE(call_reply(c, R"({"op":"extend","id":5,"keys":["r","q","p"],"token":)" + tok + "}")
              .type == reply::kind::ok);
  release(c, R"("keys":["r","p","q"])", t);
  require_error(call_reply(c, R"({"op":"release","id":6,"key":"p","token":)" + tok + "}"),
                errc::not_held);
}

TEST_CASE("a set that expires names every key in its event", "[integration][modes]") {
  test::daemon d;
  conn c(d.port());
  std::uint64_t t = granted(c, 1, R"("keys":["e1","e2"])", R"(,"ttl_ms":50)");
  reply ev = parse_reply(c.recv_line());
  REQUIRE(ev.type == reply::kind::event);
  REQUIRE(ev.event == "expired");
  REQUIRE(ev.token == std::optional<std::uint64_t>(t));
  REQUIRE(ev.key == "e1");
  REQUIRE(ev.keys == std::vector<std::string>{"e1", "e2"});
}

TEST_CASE("a waiting set can be cancelled, and its keys' queues move on", "[integration][modes]") {
  test::daemon d;
  conn holder(d.port()), set(d.port()), single(d.port());
  std::uint64_t t = granted(holder, 1, R"("key":"m2")");
  queued(set, 2, R"("keys":["m1","m2"])");
  queued(single, 3, R"("key":"m1")");  // behind the set on m1, although m1 is free
  reply cancelled = call_reply(set, R"({"op":"cancel","id":4,"target":2})");
  // The cancelled reply of the acquire comes first, then the cancel's own.
  require_error(cancelled, errc::cancelled);
  REQUIRE(parse_reply(set.recv_line()).id == std::optional<std::uint64_t>(4));
  reply g = parse_reply(single.recv_line());
  REQUIRE(g.id == std::optional<std::uint64_t>(3));
  REQUIRE(g.type == reply::kind::ok);
  release(holder, R"("key":"m2")", t);
}

TEST_CASE("key and keys are validated", "[integration][modes]") {
  test::daemon d({"--max-key-bytes", "8"});
  conn c(d.port());
  std::string many = R"({"op":"acquire","id":1,"keys":[)";
  for (int i = 0; i < 65; ++i) {
    many += i > 0 ? ",\"k" : "\"k";
    many += std::to_string(i);
    many += '"';
  }
  many += "]}";
  for (const std::string& frame :
       {std::string(R"({"op":"acquire","id":1,"key":"a","keys":["b"]})"),
        std::string(R"({"op":"acquire","id":1,"ttl_ms":10})"),
        std::string(R"({"op":"acquire","id":1,"keys":[]})"),
        std::string(R"({"op":"acquire","id":1,"keys":["a","a"]})"),
        std::string(R"({"op":"acquire","id":1,"keys":["a","123456789"]})"),
        std::string(R"({"op":"acquire","id":1,"keys":["a",""]})"),
        std::string(R"({"op":"release","id":1,"token":1})"), many}) {
    INFO(frame);
    require_error(call_reply(c, frame), errc::bad_request);
  }
  REQUIRE(call_reply(c, R"({"op":"ping","id":2})").type == reply::kind::ok);
}
