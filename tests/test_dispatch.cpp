// The dispatcher: the command table against proto/ops.json, validation, auth, event routing.
#include "dispatch_fixture.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <map>
#include <set>
#include <string>

using namespace keylock;
using namespace keylock::testing;

namespace {

std::uint16_t mask_of(const nlohmann::json& names) {
  static const std::map<std::string, field> fields = {
      {"id", field::id},         {"key", field::key},         {"token", field::token},
      {"ttl_ms", field::ttl_ms}, {"wait_ms", field::wait_ms}, {"limit", field::limit},
      {"target", field::target}, {"auth", field::auth},       {"client", field::client},
      {"n", field::n},           {"noreply", field::noreply}, {"keys", field::keys},
      {"mode", field::mode},     {"user", field::user}};
  std::uint16_t m = 0;
  for (const auto& n : names) m = m | fields.at(n.get<std::string>());
  return m;
}

}  // namespace

TEST_CASE("the dispatcher's command table agrees with proto/ops.json", "[dispatch]") {
  std::ifstream in(KEYLOCK_SOURCE_DIR "/proto/ops.json");
  REQUIRE(in);
  auto doc = nlohmann::json::parse(in);
  std::set<std::string> documented;
  for (const auto& row : doc["ops"]) {
    std::string name = row["name"].get<std::string>();
    documented.insert(name);
    const op_spec* spec = nullptr;
    for (const op_spec& s : op_table()) {
      if (s.name == name) spec = &s;
    }
    INFO(name);
    REQUIRE(spec != nullptr);
    REQUIRE(spec->kind == op_from_string(name));
    REQUIRE(spec->required == mask_of(row["required"]));
    REQUIRE(spec->optional == mask_of(row["optional"]));
    REQUIRE(spec->one_of == mask_of(row.value("one_of", nlohmann::json::array())));
  }
  REQUIRE(documented.size() == op_table().size());
  std::set<std::string> codes;
  for (const auto& c : doc["errors"]) codes.insert(c.get<std::string>());
  for (int i = 0; i < static_cast<int>(errc_count); ++i) {
    REQUIRE(codes.count(std::string(to_string(static_cast<errc>(i)))) == 1);
  }
  REQUIRE(codes.size() == errc_count);
}

TEST_CASE("a missing required field is named in the bad_request message", "[dispatch]") {
  fixture f;
  auto& c = f.connect("a");
  std::string r = f.send(c, R"({"op":"release","id":4,"key":"k"})");
  REQUIRE(r.find(R"("error":"bad_request")") != std::string::npos);
  REQUIRE(r.find("token") != std::string::npos);
  REQUIRE(r.find(R"("id":4)") != std::string::npos);
}

TEST_CASE("ranges are checked against the configured limits", "[dispatch]") {
  config c;
  c.max_key_bytes = 4;
  c.max_ttl_ms = 1000;
  c.max_limit = 2;
  c.max_wait_ms = 500;
  fixture f(c);
  auto& conn = f.connect("a");
  REQUIRE(f.send(conn, R"({"op":"acquire","key":"12345"})").find("bad_request") !=
          std::string::npos);
  REQUIRE(f.send(conn, R"({"op":"acquire","key":"k","ttl_ms":1001})").find("bad_request") !=
          std::string::npos);
  REQUIRE(f.send(conn, R"({"op":"acquire","key":"k","limit":3})").find("bad_request") !=
          std::string::npos);
  REQUIRE(f.send(conn, R"({"op":"acquire","key":"k","wait_ms":501})").find("bad_request") !=
          std::string::npos);
  REQUIRE(f.send(conn, R"({"op":"acquire","key":"1234","ttl_ms":1000,"limit":2,"wait_ms":500})")
              .find(R"("ok":true)") != std::string::npos);
  REQUIRE(f.table.held() == 1);
}

TEST_CASE("a grant caused by one connection is delivered to the waiter's connection",
          "[dispatch]") {
  fixture f;
  auto& a = f.connect("a");
  auto& b = f.connect("b");
  std::string granted = f.send(a, R"({"op":"acquire","id":1,"key":"k"})");
  REQUIRE(granted.find(R"("token":1)") != std::string::npos);
  REQUIRE(f.send(b, R"({"op":"acquire","id":2,"key":"k"})").empty());  // queued: no reply yet
  std::string released = f.send(a, R"({"op":"release","id":3,"key":"k","token":1})");
  REQUIRE(released == "{\"id\":3,\"ok\":true}\n");
  REQUIRE(f.out.outputs[b.owner] == "{\"id\":2,\"ok\":true,\"token\":2,\"ttl_ms\":30000}\n");
}

TEST_CASE("cancel answers the cancelled acquire before itself", "[dispatch]") {
  fixture f;
  auto& a = f.connect("a");
  auto& b = f.connect("b");
  f.send(a, R"({"op":"acquire","id":1,"key":"k"})");
  f.send(b, R"({"op":"acquire","id":2,"key":"k"})");
  std::string r = f.send(b, R"({"op":"cancel","id":3,"target":2})");
  auto cancelled = r.find(R"({"id":2,"ok":false,"error":"cancelled")");
  auto ok = r.find(R"({"id":3,"ok":true})");
  REQUIRE(cancelled != std::string::npos);
  REQUIRE(ok != std::string::npos);
  REQUIRE(cancelled < ok);
}

TEST_CASE("inspect names each holder's client and peer", "[dispatch]") {
  fixture f;
  auto& a = f.connect("billing-7");
  auto& b = f.connect("b");
  f.send(a, R"({"op":"acquire","id":1,"key":"k"})");
  std::string r = f.send(b, R"({"op":"inspect","id":2,"key":"k"})");
  REQUIRE(r.find(R"("client":"billing-7")") != std::string::npos);
  REQUIRE(r.find(R"("peer":")" + a.peer + "\"") != std::string::npos);
}

TEST_CASE("with auth every op before hello closes, and the right hello opens", "[dispatch]") {
  config c;
  c.auth = "s3cret";
  fixture f(c);
  auto& a = f.connect("a");
  REQUIRE(f.send(a, R"({"op":"ping","id":1})").find("unauthenticated") != std::string::npos);
  REQUIRE(a.close_after_reply);
  auto& b = f.connect("b");
  REQUIRE(f.send(b, R"({"op":"hello","id":1,"auth":"s3cre"})").find("unauthenticated") !=
          std::string::npos);
  REQUIRE(b.close_after_reply);
  auto& d = f.connect("d");
  REQUIRE(f.send(d, R"({"op":"hello","id":1,"auth":"s3cret"})").find(R"("ok":true)") !=
          std::string::npos);
  REQUIRE(f.send(d, R"({"op":"ping","id":2})") == "{\"id\":2,\"ok\":true}\n");
  REQUIRE_FALSE(d.close_after_reply);
}

TEST_CASE("client errors are reported to the server's hook, normal failures are not",
          "[dispatch]") {
  fixture f;
  std::vector<errc> seen;
  f.dispatch.on_client_error = [&](connection_info&, errc code, std::string_view) {
    seen.push_back(code);
  };
  auto& a = f.connect("a");
  f.send(a, "nope");
  f.send(a, R"({"op":"zap"})");
  f.send(a, R"({"op":"release","key":"k","token":5})");  // not_held: normal
  REQUIRE(seen == std::vector<errc>{errc::bad_request, errc::unknown_op});
  REQUIRE(f.dispatch.counters().errors[static_cast<std::size_t>(errc::not_held)] == 1);
}

TEST_CASE("a noreply release is not answered but still grants the next waiter", "[dispatch]") {
  fixture f;
  auto& a = f.connect("a");
  auto& b = f.connect("b");
  f.send(a, R"({"op":"acquire","id":1,"key":"k"})");
  f.send(b, R"({"op":"acquire","id":2,"key":"k"})");
  REQUIRE(f.send(a, R"({"op":"release","id":3,"key":"k","token":1,"noreply":true})").empty());
  REQUIRE(f.out.outputs[b.owner].find(R"({"id":2,"ok":true,"token":2)") != std::string::npos);
  SECTION("not_held is not answered either") {
    REQUIRE(f.send(a, R"({"op":"release","id":4,"key":"k","token":1,"noreply":true})").empty());
  }
  SECTION("a malformed noreply release is answered") {
    REQUIRE(f.send(a, R"({"op":"release","id":5,"key":"k","noreply":true})").find("bad_request") !=
            std::string::npos);
  }
}

TEST_CASE("top answers stats plus queues and oldest leases with their clients", "[dispatch]") {
  fixture f;
  auto& a = f.connect("holder-a");
  auto& b = f.connect("b");
  f.send(a, R"({"op":"acquire","id":1,"key":"q"})");
  f.send(b, R"({"op":"acquire","id":2,"key":"q"})");
  std::string r = f.send(b, R"({"op":"top","id":3,"n":5})");
  reply rep;
  REQUIRE_FALSE(decode_reply(std::string_view(r).substr(0, r.size() - 1), rep));
  REQUIRE(rep.stats.has_value());
  REQUIRE(rep.stats->waiting == 1);
  REQUIRE(rep.queues.has_value());
  REQUIRE(rep.queues->size() == 1);
  REQUIRE(rep.queues->at(0).key == "q");
  REQUIRE(rep.queues->at(0).waiters == 1);
  REQUIRE(rep.oldest->size() == 1);
  REQUIRE(rep.oldest->at(0).client == "holder-a");
  REQUIRE(rep.oldest->at(0).token == 1);
  REQUIRE(f.send(b, R"({"op":"top","id":4,"n":101})").find("bad_request") != std::string::npos);
}

TEST_CASE("the command table is found by op, whatever the order of its rows", "[dispatch]") {
  std::set<op> seen;
  for (const op_spec& spec : op_table()) {
    INFO(spec.name);
    REQUIRE(spec.run != nullptr);
    REQUIRE(seen.insert(spec.kind).second);  // one row per op
    REQUIRE(spec.name == to_string(spec.kind));
  }
  REQUIRE(seen.size() == static_cast<std::size_t>(op::unknown));
  // Flags: only hello runs before auth; stats and top read the whole server.
  for (const op_spec& spec : op_table()) {
    INFO(spec.name);
    REQUIRE(spec.has(op_flag::before_auth) == (spec.kind == op::hello));
    REQUIRE(spec.has(op_flag::admin) == (spec.kind == op::stats || spec.kind == op::top));
  }
}

TEST_CASE("while tokens are unavailable acquire answers unavailable and waiters resume in order",
          "[dispatch]") {
  fixture f;
  connection_info& a = f.connect("a");
  connection_info& b = f.connect("b");
  REQUIRE(f.send(a, R"({"op":"acquire","id":1,"key":"k"})").find(R"("token":1)") !=
          std::string::npos);
  REQUIRE(f.send(b, R"({"op":"acquire","id":2,"key":"k"})").empty());  // queued
  f.tokens.available = false;
  std::string refused = f.send(a, R"({"op":"acquire","id":3,"key":"other","wait_ms":0})");
  REQUIRE(refused.find(R"("error":"unavailable")") != std::string::npos);
  REQUIRE(refused.find(R"("id":3)") != std::string::npos);
  // The release frees the key, but no token may be issued: b stays queued.
  REQUIRE(f.send(a, R"({"op":"release","id":4,"key":"k","token":1})").find(R"("ok":true)") !=
          std::string::npos);
  REQUIRE(f.out.outputs[b.owner].empty());
  f.tokens.available = true;
  f.dispatch.resume_grants(f.now);
  REQUIRE(f.out.outputs[b.owner] == "{\"id\":2,\"ok\":true,\"token\":2,\"ttl_ms\":30000}\n");
}

TEST_CASE("a half-close answers the connection's waiting acquires cancelled", "[dispatch]") {
  fixture f;
  connection_info& a = f.connect("a");
  connection_info& b = f.connect("b");
  f.send(a, R"({"op":"acquire","id":1,"key":"k"})");
  REQUIRE(f.send(b, R"({"op":"acquire","id":2,"key":"k"})").empty());
  REQUIRE(f.send(b, R"({"op":"acquire","id":3,"key":"k2"})").find(R"("ok":true)") !=
          std::string::npos);
  std::string out;
  f.dispatch.half_close(b, f.now, out);
  REQUIRE(out.find(R"("id":2,"ok":false,"error":"cancelled")") != std::string::npos);
  // Its lease stays until the connection is gone.
  REQUIRE(f.table.owner_leases(b.owner) == 1);
}

TEST_CASE("a known member the op does not take is ignored, as an unknown one is", "[dispatch]") {
  fixture f;
  connection_info& a = f.connect("a");
  REQUIRE(f.send(a, R"({"op":"ping","id":1,"key":"","keys":[]})") == "{\"id\":1,\"ok\":true}\n");
  // The same members are checked where they mean something.
  REQUIRE(f.send(a, R"({"op":"acquire","id":2,"keys":[]})").find("bad_request") !=
          std::string::npos);
  REQUIRE(f.send(a, R"({"op":"inspect","id":3,"key":""})").find("bad_request") !=
          std::string::npos);
}
