// Users and key ACLs (PROTOCOL.md "Users and access control"): the users_file, secret hashes,
// rule matching at its edges, the timing-safe secret check, logins, and every permission
// against every op through the dispatcher.
#include "dispatch_fixture.hpp"
#include "users.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

using namespace keylock;
using namespace keylock::testing;

namespace {

// PBKDF2-HMAC-SHA256("s3cret", salt, 1000) made by `keylockd --hash-secret` and checked
// independently with Python's hashlib.pbkdf2_hmac: the format is what other tools produce.
constexpr std::string_view s3cret_hash =
    "pbkdf2-sha256$1000$dL7RQJHlDyNo8n2+iLFbfg==$3zFBPPk+2M+qI2joGun89YGbxyJVG4/XXL3+i1+BH8k=";

std::shared_ptr<const user_directory> parse_ok(const std::string& text) {
  std::string err;
  auto dir = user_directory::parse(text, err);
  INFO(err);
  REQUIRE(dir != nullptr);
  return dir;
}

std::string parse_error(const std::string& text) {
  std::string err;
  REQUIRE(user_directory::parse(text, err) == nullptr);
  return err;
}

// A users_file of users named after what they may do on "a:" keys; every secret is "pw-NAME".
std::string matrix_users() {
  auto user = [](const std::string& name, const std::string& rules) {
    return R"({"name":")" + name + R"(","secret":")" + hash_secret("pw-" + name, 1000) +
           R"(","rules":[)" + rules + "]}";
  };
  return R"({"users":[)" + user("locker", R"({"prefix":"a:","allow":["lock"]})") + "," +
         user("locker2", R"({"prefix":"a:","allow":["lock"]})") + "," +
         user("viewer", R"({"prefix":"a:","allow":["inspect"]})") + "," +
         user("admin", R"({"prefix":"a:","allow":["admin"]})") + "," +
         user("stranger", R"({"prefix":"b:","allow":["lock","inspect","admin"]})") + "," +
         user("both", R"({"prefix":"a:","allow":["lock"]},{"pattern":"b:*","allow":["lock"]})") +
         "]}";
}

bool ok(const std::string& reply) { return reply.find(R"("ok":true)") != std::string::npos; }
bool denied(const std::string& reply) {
  return reply.find(R"("error":"denied")") != std::string::npos;
}
bool has_error(const std::string& reply, std::string_view code) {
  return reply.find(R"("error":")" + std::string(code) + "\"") != std::string::npos;
}

// The token of an acquire's reply.
std::string token_of(const std::string& reply) {
  auto at = reply.find(R"("token":)");
  REQUIRE(at != std::string::npos);
  at += 8;
  return reply.substr(at, reply.find_first_not_of("0123456789", at) - at);
}

struct acl_fixture : fixture {
  explicit acl_fixture(config c = {}) : fixture(std::move(c)) {
    dispatch.set_users(parse_ok(matrix_users()));
  }
  connection_info& login(const std::string& name) {
    connection_info& c = connect(name);
    const std::string r =
        send(c, R"({"op":"hello","id":1,"user":")" + name + R"(","auth":"pw-)" + name + "\"}");
    INFO(r);
    REQUIRE(ok(r));
    return c;
  }
};

}  // namespace

TEST_CASE("a secret hash made here verifies, and a foreign one in the same format too", "[acl]") {
  std::string err;
  auto made = parse_secret_hash(hash_secret("correct horse", 2000), err);
  REQUIRE(made);
  CHECK(made->iterations == 2000);
  CHECK(made->salt.size() == 16);
  CHECK(secret_matches(*made, "correct horse"));
  CHECK_FALSE(secret_matches(*made, "correct hors"));
  CHECK_FALSE(secret_matches(*made, "correct horsee"));

  auto foreign = parse_secret_hash(s3cret_hash, err);
  REQUIRE(foreign);
  CHECK(secret_matches(*foreign, "s3cret"));
  CHECK_FALSE(secret_matches(*foreign, "s3creT"));

  // Two hashes of one secret differ (fresh salt).
  CHECK(hash_secret("x", 1000) != hash_secret("x", 1000));
}

TEST_CASE("malformed secret hashes are refused with the reason", "[acl]") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"s3cret", "not of the form"},
      {"bcrypt$1000$AAAAAAAAAAA=$AAAA", "unknown scheme"},
      {"pbkdf2-sha256$999$dL7RQJHlDyNo8n2+iLFbfg==$3zFBPPk+2M+qI2joGun89YGbxyJVG4/XXL3+i1+BH8k=",
       "iterations"},
      {"pbkdf2-sha256$1e4$dL7RQJHlDyNo8n2+iLFbfg==$3zFBPPk+2M+qI2joGun89YGbxyJVG4/XXL3+i1+BH8k=",
       "iterations"},
      {"pbkdf2-sha256$1000$dL7R$3zFBPPk+2M+qI2joGun89YGbxyJVG4/XXL3+i1+BH8k=", "salt"},
      {"pbkdf2-sha256$1000$dL7RQJHlDyNo8n2+iLFbfg==$3zFBPPk+2M+qI2jo", "32 bytes"},
      {"pbkdf2-sha256$1000$dL7RQJHlDyNo8n2+iLFbfg==$3zFBPPk+2M+qI2joGun89YGbxyJVG4/XXL3+i1+BH8k=$x",
       "not of the form"},
  };
  for (const auto& [text, reason] : cases) {
    INFO(text);
    std::string err;
    CHECK_FALSE(parse_secret_hash(text, err));
    CHECK_THAT(err, Catch::Contains(reason));
  }
}

TEST_CASE("a users_file with a mistake is refused whole, naming the user and rule", "[acl]") {
  const std::string h(s3cret_hash);
  CHECK_THAT(parse_error("{"), Catch::Contains("not valid JSON"));
  CHECK_THAT(parse_error(R"({"user":[]})"), Catch::Contains("'users'"));
  CHECK_THAT(parse_error(R"({"users":[{"name":"u","secret":"plain"}]})"),
             Catch::Contains("user 'u': 'secret' must be a hash"));
  CHECK_THAT(parse_error(R"({"users":[{"name":"u","password":"plain"}]})"),
             Catch::Contains("only hashes"));
  CHECK_THAT(parse_error(R"({"users":[{"name":"u","secret":")" + h + R"(","role":1}]})"),
             Catch::Contains("unknown member 'role'"));
  CHECK_THAT(parse_error(R"({"users":[{"name":"u"}]})"),
             Catch::Contains("needs 'secret' or 'cert_subject'"));
  CHECK_THAT(parse_error(R"({"users":[{"secret":")" + h + R"("}]})"), Catch::Contains("'name'"));
  CHECK_THAT(parse_error(R"({"users":[{"name":"u","secret":")" + h +
                         R"("},{"name":"u","secret":")" + h + R"("}]})"),
             Catch::Contains("'u' is defined twice"));
  CHECK_THAT(
      parse_error(
          R"({"users":[{"name":"u","secret":")" + h +
          R"(","rules":[{"prefix":"a","allow":["lock"]},{"prefix":"b","allow":["write"]}]}]})"),
      Catch::Contains("user 'u', rule 2: 'allow' lists lock, inspect or admin"));
  CHECK_THAT(parse_error(R"({"users":[{"name":"u","secret":")" + h +
                         R"(","rules":[{"allow":["lock"]}]}]})"),
             Catch::Contains("needs 'prefix' or 'pattern'"));
  CHECK_THAT(parse_error(R"({"users":[{"name":"u","secret":")" + h +
                         R"(","rules":[{"prefix":"a","pattern":"b","allow":["lock"]}]}]})"),
             Catch::Contains("one of 'prefix' and 'pattern'"));
  CHECK_THAT(parse_error(R"({"users":[{"name":"u","secret":")" + h +
                         R"(","rules":[{"prefix":"a","allow":[]}]}]})"),
             Catch::Contains("non-empty list"));
  CHECK_THAT(
      parse_error(
          R"({"users":[{"name":"u","cert_subject":"CN=x"},{"name":"v","cert_subject":"CN=x"}]})"),
      Catch::Contains("same cert_subject"));
}

TEST_CASE("prefix rules match at their edges", "[acl]") {
  acl_rule r{"billing:", false, bit(permission::lock)};
  CHECK(r.matches("billing:"));
  CHECK(r.matches("billing:1"));
  CHECK_FALSE(r.matches("billing"));
  CHECK_FALSE(r.matches("billing;1"));
  CHECK_FALSE(r.matches("Billing:1"));
  CHECK_FALSE(r.matches("xbilling:1"));
  CHECK_FALSE(r.matches(""));
  acl_rule all{"", false, bit(permission::lock)};
  CHECK(all.matches("anything"));
  CHECK(all.matches(std::string(1024, 'x')));
  acl_rule utf8{"k\xC3\xA9:", false, bit(permission::lock)};  // "ké:"
  CHECK(utf8.matches("k\xC3\xA9:1"));
  CHECK_FALSE(utf8.matches("k\xC3:1"));
}

TEST_CASE("pattern rules: * any run, ? one byte, everything else itself", "[acl]") {
  CHECK(glob_matches("*", ""));
  CHECK(glob_matches("*", "abc"));
  CHECK(glob_matches("", ""));
  CHECK_FALSE(glob_matches("", "a"));
  CHECK(glob_matches("rep:*:monthly", "rep:eu:monthly"));
  CHECK(glob_matches("rep:*:monthly", "rep::monthly"));
  CHECK(glob_matches("rep:*:monthly", "rep:a:b:monthly"));
  CHECK_FALSE(glob_matches("rep:*:monthly", "rep:eu:monthly2"));
  CHECK_FALSE(glob_matches("rep:*:monthly", "xrep:eu:monthly"));
  CHECK(glob_matches("a?c", "abc"));
  CHECK_FALSE(glob_matches("a?c", "ac"));
  CHECK_FALSE(glob_matches("a?c", "abbc"));
  CHECK(glob_matches("a*b*c", "aXbYc"));
  CHECK_FALSE(glob_matches("a*b*c", "acb"));
  CHECK(glob_matches("**a", "a"));
  CHECK(glob_matches("a*", "a"));
  CHECK_FALSE(glob_matches("a", "a*"));  // a key's '*' is just a byte
  CHECK(glob_matches("a\\*", "a\\x"));   // no escapes: '\' is a byte too
  // A worst case for naive backtracking stays cheap (one backtrack point).
  CHECK_FALSE(glob_matches("*a*a*a*a*a*a*a*b", std::string(1024, 'a')));
}

TEST_CASE("a user's permissions on a key are the union of the rules that match it", "[acl]") {
  auto dir = parse_ok(
      R"({"users":[{"name":"u","secret":")" + std::string(s3cret_hash) +
      R"(","rules":[{"prefix":"a:","allow":["lock"]},{"pattern":"a:*:x","allow":["inspect"]},{"prefix":"z","allow":["admin"]}]}]})");
  auto u = dir->find("u");
  REQUIRE(u);
  CHECK(u->allowed("a:1") == bit(permission::lock));
  CHECK(u->allowed("a:1:x") == (bit(permission::lock) | bit(permission::inspect)));
  CHECK(u->allowed("b:1") == 0);
  CHECK(u->may_somewhere(permission::admin));
  CHECK(u->may_somewhere(permission::inspect));
  CHECK_FALSE(u->may(permission::inspect, "a:1"));
  CHECK(dir->find("v") == nullptr);
}

TEST_CASE("every failed login does the same verification work, whatever the secret or user",
          "[acl]") {
  // The time of a check must not tell an unknown user from a wrong secret, nor a near miss
  // from a far one: each costs one PBKDF2 of the same iteration count and a 32-byte
  // constant-time compare. Counted, not timed (tests never assert wall-clock).
  auto dir = parse_ok(R"({"users":[{"name":"u","secret":")" + hash_secret("right-secret", 3000) +
                      R"("},{"name":"cheap","secret":")" + hash_secret("x", 1000) + R"("}]})");
  auto attempt = [&](std::string_view name, std::string_view secret) {
    const verify_counters before = verification_work();
    REQUIRE(dir->authenticate(name, secret) == nullptr);
    const verify_counters& after = verification_work();
    return verify_counters{after.derivations - before.derivations,
                           after.iterations - before.iterations,
                           after.compared_bytes - before.compared_bytes};
  };
  const std::vector<std::pair<std::string, std::string>> failures = {
      {"u", "right-secreX"},          // differs in the last byte
      {"u", "Xight-secret"},          // in the first
      {"u", "r"},                     // much shorter
      {"u", std::string(4096, 'r')},  // much longer
      {"nobody", "right-secret"},     // unknown user
      {"", "x"},                      // empty name
  };
  for (const auto& [name, secret] : failures) {
    INFO(name << " / " << secret.size() << " bytes");
    const verify_counters w = attempt(name, secret);
    CHECK(w.derivations == 1);
    CHECK(w.iterations == 3000);  // an unknown user pays the directory's dearest hash
    CHECK(w.compared_bytes >= 32);
  }
  // A secret verified once is remembered: the next login costs no PBKDF2.
  REQUIRE(dir->authenticate("u", "right-secret") != nullptr);
  const std::uint64_t derivations = verification_work().derivations;
  REQUIRE(dir->authenticate("u", "right-secret") != nullptr);
  CHECK(verification_work().derivations == derivations);
}

TEST_CASE("login: hello with user and the right secret opens, anything else closes", "[acl]") {
  acl_fixture f;
  connection_info& a = f.connect("a");
  // Before login nothing but hello is heard.
  CHECK(has_error(f.send(a, R"({"op":"acquire","id":1,"key":"a:1"})"), "unauthenticated"));
  CHECK(a.close_after_reply);

  connection_info& b = f.connect("b");
  const std::string wrong =
      f.send(b, R"({"op":"hello","id":1,"user":"locker","auth":"pw-viewer"})");
  CHECK(has_error(wrong, "unauthenticated"));
  CHECK(b.close_after_reply);
  connection_info& c = f.connect("c");
  const std::string unknown = f.send(c, R"({"op":"hello","id":1,"user":"nobody","auth":"pw-x"})");
  // The same answer for an unknown user as for a wrong secret.
  CHECK(unknown == wrong);
  connection_info& d = f.connect("d");
  CHECK(has_error(f.send(d, R"({"op":"hello","id":1,"user":"locker"})"), "unauthenticated"));

  connection_info& e = f.login("locker");
  CHECK(e.authenticated);
  REQUIRE(e.user);
  CHECK(e.user->name == "locker");
  CHECK(ok(f.send(e, R"({"op":"acquire","id":2,"key":"a:1"})")));

  // A second hello with user changes the connection's user.
  CHECK(ok(f.send(e, R"({"op":"hello","id":3,"user":"viewer","auth":"pw-viewer"})")));
  CHECK(denied(f.send(e, R"({"op":"acquire","id":4,"key":"a:2"})")));
}

TEST_CASE("a hello with user on a server without users_file is refused", "[acl]") {
  config c;
  c.auth = "shared";
  fixture f(c);
  connection_info& a = f.connect("a");
  CHECK_THAT(f.send(a, R"({"op":"hello","id":1,"user":"u","auth":"shared"})"),
             Catch::Contains("no users_file"));
  CHECK(a.close_after_reply);
  fixture open;  // no auth at all
  connection_info& b = open.connect("b");
  CHECK(
      has_error(open.send(b, R"({"op":"hello","id":1,"user":"u","auth":"x"})"), "unauthenticated"));
}

TEST_CASE("the shared secret keeps every permission beside users", "[acl]") {
  config c;
  c.auth = "shared";
  acl_fixture f(c);
  connection_info& root = f.connect("root");
  REQUIRE(ok(f.send(root, R"({"op":"hello","id":1,"auth":"shared"})")));
  CHECK(root.user == nullptr);
  CHECK(ok(f.send(root, R"({"op":"acquire","id":2,"key":"anything"})")));
  CHECK(ok(f.send(root, R"({"op":"stats","id":3})")));
  connection_info& locker = f.login("locker");
  CHECK(denied(f.send(locker, R"({"op":"acquire","id":2,"key":"anything:else"})")));
}

TEST_CASE("failed logins beyond the budget are refused without PBKDF2", "[acl]") {
  acl_fixture f;
  for (std::uint32_t i = 0; i < dispatcher::max_failed_logins_per_second; ++i) {
    connection_info& c = f.connect("bad");
    CHECK_THAT(f.send(c, R"({"op":"hello","id":1,"user":"locker","auth":"nope"})"),
               Catch::Contains("wrong secret"));
  }
  const std::uint64_t derivations = verification_work().derivations;
  connection_info& late = f.connect("late");
  CHECK_THAT(f.send(late, R"({"op":"hello","id":1,"user":"viewer","auth":"pw-viewer"})"),
             Catch::Contains("too many failed logins"));
  CHECK(verification_work().derivations == derivations);
  // A second later the budget is back.
  f.now += std::chrono::seconds(1);
  f.login("viewer");
  // And a secret verified before passes even while the budget is spent.
  for (std::uint32_t i = 0; i < dispatcher::max_failed_logins_per_second; ++i) {
    connection_info& c = f.connect("bad");
    f.send(c, R"({"op":"hello","id":1,"user":"locker","auth":"nope"})");
  }
  f.login("viewer");
}

TEST_CASE("every permission against every op", "[acl]") {
  acl_fixture f;
  connection_info& locker = f.login("locker");
  connection_info& locker2 = f.login("locker2");
  connection_info& viewer = f.login("viewer");
  connection_info& admin = f.login("admin");
  connection_info& stranger = f.login("stranger");

  const std::string token = token_of(f.send(locker, R"({"op":"acquire","id":1,"key":"a:1"})"));
  auto release = [&](connection_info& c, const std::string& tok) {
    return f.send(c, R"({"op":"release","id":9,"key":"a:1","token":)" + tok + "}");
  };
  auto extend = [&](connection_info& c, const std::string& tok) {
    return f.send(c, R"({"op":"extend","id":9,"key":"a:1","token":)" + tok + "}");
  };

  SECTION("acquire needs lock") {
    CHECK(denied(f.send(viewer, R"({"op":"acquire","id":2,"key":"a:2"})")));
    CHECK(denied(f.send(admin, R"({"op":"acquire","id":2,"key":"a:2"})")));
    CHECK(denied(f.send(stranger, R"({"op":"acquire","id":2,"key":"a:2"})")));
    CHECK(ok(f.send(locker2, R"({"op":"acquire","id":2,"key":"a:2"})")));
    // A denied acquire did nothing: the key is not even live.
    CHECK_THAT(f.send(locker2, R"({"op":"inspect","id":3,"key":"a:3"})"),
               Catch::Contains("denied"));
    CHECK(f.table.inspect("a:3", f.now).limit == 0);
  }
  SECTION("release and extend of one's own lease need lock; of another user's, admin") {
    CHECK(denied(extend(viewer, token)));
    CHECK(denied(extend(stranger, token)));
    const std::string other = extend(locker2, token);
    CHECK(denied(other));
    CHECK_THAT(other, Catch::Contains("another user's lease"));
    CHECK(ok(extend(admin, token)));
    CHECK(ok(extend(locker, token)));
    CHECK(denied(release(viewer, token)));
    CHECK(denied(release(locker2, token)));
    CHECK(denied(release(stranger, token)));
    CHECK(ok(release(admin, token)));
  }
  SECTION("the same user on another connection may release") {
    connection_info& again = f.login("locker");
    CHECK(ok(release(again, token)));
  }
  SECTION("an unknown token is not_held on an allowed key, denied on another") {
    CHECK(has_error(release(locker, "12345"), "not_held"));
    CHECK(denied(f.send(viewer, R"({"op":"release","id":9,"key":"b:1","token":12345})")));
    CHECK(denied(release(stranger, "12345")));
  }
  SECTION("inspect needs inspect or admin") {
    CHECK(denied(f.send(locker, R"({"op":"inspect","id":2,"key":"a:1"})")));
    CHECK(denied(f.send(stranger, R"({"op":"inspect","id":2,"key":"a:1"})")));
    CHECK(ok(f.send(viewer, R"({"op":"inspect","id":2,"key":"a:1"})")));
    CHECK(ok(f.send(admin, R"({"op":"inspect","id":2,"key":"a:1"})")));
  }
  SECTION("stats and top need admin somewhere") {
    for (connection_info* c : {&locker, &viewer}) {
      CHECK(denied(f.send(*c, R"({"op":"stats","id":2})")));
      CHECK(denied(f.send(*c, R"({"op":"top","id":2})")));
    }
    CHECK(ok(f.send(admin, R"({"op":"stats","id":2})")));
    CHECK(ok(f.send(stranger, R"({"op":"top","id":2})")));
  }
  SECTION("hello, ping and cancel need nothing") {
    for (connection_info* c : {&locker, &viewer, &admin, &stranger}) {
      CHECK(ok(f.send(*c, R"({"op":"ping","id":2})")));
      CHECK(has_error(f.send(*c, R"({"op":"cancel","id":2,"target":77})"), "not_found"));
      CHECK(ok(f.send(*c, R"({"op":"hello","id":2,"client":"renamed"})")));
    }
  }
  SECTION("a denial names the user, the permission and the key, and the connection stays") {
    const std::string r = f.send(viewer, R"({"op":"acquire","id":5,"key":"a:9"})");
    CHECK_THAT(r, Catch::Contains("user 'viewer' may not lock 'a:9'"));
    CHECK_THAT(r, Catch::Contains(R"("id":5)"));
    CHECK_FALSE(viewer.close_after_reply);
    CHECK(ok(f.send(viewer, R"({"op":"ping","id":6})")));
  }
}

TEST_CASE("an acquire of several keys needs lock on every one", "[acl]") {
  acl_fixture f;
  connection_info& locker = f.login("locker");
  connection_info& both = f.login("both");
  const std::string r = f.send(locker, R"({"op":"acquire","id":1,"keys":["a:1","b:1"]})");
  CHECK(denied(r));
  CHECK_THAT(r, Catch::Contains("'b:1'"));
  CHECK(f.table.inspect("a:1", f.now).limit == 0);  // all or nothing: a:1 was not taken
  const std::string t = token_of(f.send(both, R"({"op":"acquire","id":2,"keys":["a:1","b:1"]})"));
  CHECK(
      denied(f.send(locker, R"({"op":"release","id":3,"keys":["a:1","b:1"],"token":)" + t + "}")));
  CHECK(ok(f.send(both, R"({"op":"release","id":3,"keys":["a:1","b:1"],"token":)" + t + "}")));
}

TEST_CASE("top lists only the keys the user may see", "[acl]") {
  acl_fixture f;
  connection_info& both = f.login("both");
  connection_info& both2 = f.login("both");
  for (const char* k : {"a:1", "b:1"}) {
    f.send(both, std::string(R"({"op":"acquire","id":1,"key":")") + k + "\"}");
    f.send(both2, std::string(R"({"op":"acquire","id":2,"key":")") + k + "\"}");  // waits
  }
  connection_info& admin = f.login("admin");  // admin on a: only
  const std::string top = f.send(admin, R"({"op":"top","id":3})");
  CHECK_THAT(top, Catch::Contains(R"("key":"a:1")"));
  CHECK_THAT(top, !Catch::Contains("b:1"));
  connection_info& stranger = f.login("stranger");  // admin on b: only
  const std::string other = f.send(stranger, R"({"op":"top","id":3})");
  CHECK_THAT(other, Catch::Contains(R"("key":"b:1")"));
  CHECK_THAT(other, !Catch::Contains("a:1"));
}

TEST_CASE("changed rules apply to the connection's next op", "[acl]") {
  acl_fixture f;
  connection_info& viewer = f.login("viewer");
  CHECK(denied(f.send(viewer, R"({"op":"acquire","id":1,"key":"a:1"})")));
  // What the server does on SIGHUP: a new directory, the connection moved to its account.
  auto next = parse_ok(R"({"users":[{"name":"viewer","secret":")" + hash_secret("pw-viewer", 1000) +
                       R"(","rules":[{"prefix":"a:","allow":["lock"]}]}]})");
  f.dispatch.set_users(next);
  viewer.user = next->find("viewer");
  CHECK(ok(f.send(viewer, R"({"op":"acquire","id":2,"key":"a:1"})")));
}
