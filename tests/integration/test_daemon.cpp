// The real keylockd over loopback, spoken to in raw NDJSON.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <thread>

#include "harness.hpp"
#include "keylock/codec.hpp"
#include "replies.hpp"

using namespace keylock;
using namespace keylock::test;

TEST_CASE("hello, ping and stats answer over the wire", "[integration]") {
  test::daemon d;
  conn c(d.port());
  reply h = call_reply(c, R"({"op":"hello","id":1,"client":"it"})");
  REQUIRE(h.type == reply::kind::ok);
  REQUIRE(h.id == std::optional<std::uint64_t>(1));
  REQUIRE(h.server == "keylockd");
  REQUIRE(h.protocol == std::optional<int>(1));
  reply p = call_reply(c, R"({"op":"ping","id":2})");
  REQUIRE(p.type == reply::kind::ok);
  REQUIRE(p.id == std::optional<std::uint64_t>(2));
  reply s = call_reply(c, R"({"op":"stats","id":3})");
  REQUIRE(s.stats.has_value());
  REQUIRE(s.stats->connections == 1);
}

TEST_CASE("pipelined requests are answered, a waiting acquire out of order", "[integration]") {
  test::daemon d;
  conn holder(d.port()), c(d.port());
  std::uint64_t token = acquire_now(holder, "pipe");
  // One write: a blocking acquire, then two pings that must not wait behind it.
  REQUIRE(c.send_raw("{\"op\":\"acquire\",\"id\":10,\"key\":\"pipe\"}\n"
                     "{\"op\":\"ping\",\"id\":11}\n{\"op\":\"ping\",\"id\":12}\n"));
  REQUIRE(parse_reply(c.recv_line()).id == std::optional<std::uint64_t>(11));
  REQUIRE(parse_reply(c.recv_line()).id == std::optional<std::uint64_t>(12));
  reply rel = call_reply(holder, R"({"op":"release","id":2,"key":"pipe","token":)" +
                               std::to_string(token) + "}");
  REQUIRE(rel.type == reply::kind::ok);
  reply grant = parse_reply(c.recv_line());
  REQUIRE(grant.id == std::optional<std::uint64_t>(10));
  REQUIRE(grant.token > token);
}

TEST_CASE("frames split at every byte boundary are reassembled", "[integration]") {
  test::daemon d;
  const std::string stream =
      "{\"op\":\"ping\",\"id\":1}\n{\"op\":\"acquire\",\"id\":2,\"key\":\"sp\\u00e9\",\"wait_ms\":0}\n"
      "{\"op\":\"ping\",\"id\":3}\n";
  for (std::size_t cut = 1; cut < stream.size(); ++cut) {
    conn c(d.port());
    REQUIRE(c.send_raw(stream.substr(0, cut)));
    std::this_thread::yield();
    REQUIRE(c.send_raw(stream.substr(cut)));
    REQUIRE(parse_reply(c.recv_line()).id == std::optional<std::uint64_t>(1));
    reply a = parse_reply(c.recv_line());
    REQUIRE(a.id == std::optional<std::uint64_t>(2));
    REQUIRE(a.type == reply::kind::ok);
    REQUIRE(parse_reply(c.recv_line()).id == std::optional<std::uint64_t>(3));
  }  // each connection's close releases its lease for the next round
}

TEST_CASE("a lease that runs out pushes an expired event and grants the next waiter",
          "[integration]") {
  test::daemon d;
  conn holder(d.port()), waiter(d.port());
  std::uint64_t token = acquire_now(holder, "exp", 150);
  REQUIRE(waiter.send_line(R"({"op":"acquire","id":5,"key":"exp"})"));
  reply ev = parse_reply(holder.recv_line());
  REQUIRE(ev.type == reply::kind::event);
  REQUIRE(ev.event == "expired");
  REQUIRE(ev.key == "exp");
  REQUIRE(ev.token == std::optional<std::uint64_t>(token));
  reply grant = parse_reply(waiter.recv_line());
  REQUIRE(grant.id == std::optional<std::uint64_t>(5));
  REQUIRE(grant.type == reply::kind::ok);
  require_error(call_reply(holder, R"({"op":"release","id":6,"key":"exp","token":)" +
                                 std::to_string(token) + "}"),
                errc::not_held);
}

TEST_CASE("extend keeps a lease alive past its first ttl", "[integration]") {
  test::daemon d;
  conn c(d.port());
  std::uint64_t token = acquire_now(c, "ext", 200);
  reply e = call_reply(c, R"({"op":"extend","id":2,"key":"ext","token":)" + std::to_string(token) +
                        R"(,"ttl_ms":60000})");
  REQUIRE(e.type == reply::kind::ok);
  REQUIRE(e.ttl_ms == std::optional<std::uint64_t>(60000));
  // No expiry event arrives in well over the first ttl; the lease still reports ~60 s left.
  REQUIRE_FALSE(c.recv_line(std::chrono::milliseconds(400)).has_value());
  reply i = call_reply(c, R"({"op":"inspect","id":3,"key":"ext"})");
  REQUIRE(i.holders.size() == 1);
  REQUIRE(i.holders[0].ttl_ms_left > 50000);
}

TEST_CASE("closing a connection releases its leases to the next waiter at once",
          "[integration]") {
  test::daemon d;
  conn waiter(d.port());
  {
    conn holder(d.port());
    acquire_now(holder, "disc");
    REQUIRE(waiter.send_line(R"({"op":"acquire","id":7,"key":"disc"})"));
    // Make sure the waiter is queued before the holder goes.
    conn probe(d.port());
    for (int i = 0; i < 1000; ++i) {
      if (call_reply(probe, R"({"op":"inspect","id":1,"key":"disc"})").waiters == 1u) break;
    }
  }
  reply grant = parse_reply(waiter.recv_line());
  REQUIRE(grant.id == std::optional<std::uint64_t>(7));
  REQUIRE(grant.type == reply::kind::ok);
}

TEST_CASE("a SIGKILLed holder process loses its lease to the waiter", "[integration]") {
  test::daemon d;
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // The holder: acquire, tell the parent, then hang until killed.
    try {
      conn c(d.port());
      reply r = parse_reply(c.call(R"({"op":"acquire","id":1,"key":"killed","ttl_ms":60000})"));
      char ok = r.type == reply::kind::ok ? 'y' : 'n';
      (void)!::write(ready[1], &ok, 1);
      for (;;) ::pause();
    } catch (...) {
      ::_exit(3);
    }
  }
  ::close(ready[1]);
  char ok = 0;
  REQUIRE(::read(ready[0], &ok, 1) == 1);
  ::close(ready[0]);
  REQUIRE(ok == 'y');
  conn waiter(d.port());
  REQUIRE(waiter.send_line(R"({"op":"acquire","id":2,"key":"killed"})"));
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  reply grant = parse_reply(waiter.recv_line());
  REQUIRE(grant.type == reply::kind::ok);
  REQUIRE(grant.id == std::optional<std::uint64_t>(2));
}

TEST_CASE("fencing tokens keep increasing across a restart", "[integration]") {
  temp_dir dir;
  SECTION("with a state dir") {
    test::daemon d({"--state-dir", dir.path.string()});
    std::uint64_t before = 0;
    {
      conn c(d.port());
      before = acquire_now(c, "fence");
    }
    d.restart();
    conn c(d.port());
    REQUIRE(acquire_now(c, "fence") > before);
    REQUIRE(std::filesystem::exists(dir.path / "fencing"));
  }
  SECTION("on the clock alone") {
    test::daemon d;
    std::uint64_t before = 0;
    {
      conn c(d.port());
      before = acquire_now(c, "fence");
    }
    d.restart();
    conn c(d.port());
    REQUIRE(acquire_now(c, "fence") > before);
  }
}

TEST_CASE("with auth, nothing is heard before a hello with the right secret", "[integration]") {
  test::daemon d({"--auth", "correct horse battery"});
  SECTION("an op before hello is refused and the connection closed") {
    conn c(d.port());
    require_error(call_reply(c, R"({"op":"ping","id":1})"), errc::unauthenticated);
    REQUIRE(c.wait_closed());
  }
  SECTION("a wrong secret is refused and the connection closed") {
    conn c(d.port());
    require_error(call_reply(c, R"({"op":"hello","id":1,"auth":"wrong"})"), errc::unauthenticated);
    REQUIRE(c.wait_closed());
  }
  SECTION("garbage before hello is refused and the connection closed") {
    conn c(d.port());
    require_error(parse_reply(c.call("garbage")), errc::unauthenticated);
    REQUIRE(c.wait_closed());
  }
  SECTION("the right secret opens the connection") {
    conn c(d.port());
    REQUIRE(call_reply(c, R"({"op":"hello","id":1,"auth":"correct horse battery"})").type ==
            reply::kind::ok);
    REQUIRE(call_reply(c, R"({"op":"ping","id":2})").type == reply::kind::ok);
  }
  REQUIRE(d.log().find("correct horse") == std::string::npos);
}

TEST_CASE("bad input gets a clear error, the connection stays and no lease is lost",
          "[integration]") {
  test::daemon d;
  conn holder(d.port()), c(d.port());
  std::uint64_t token = acquire_now(holder, "keep");
  const std::pair<std::string, errc> cases[] = {
      {"{not json", errc::bad_request},
      {"[1,2]", errc::bad_request},
      {R"({"id":1})", errc::bad_request},
      {R"({"op":"acquire","id":1})", errc::bad_request},
      {R"({"op":"acquire","id":1,"key":7})", errc::bad_request},
      {R"({"op":"acquire","id":1,"key":""})", errc::bad_request},
      {R"({"op":"acquire","id":1,"key":"k","ttl_ms":0})", errc::bad_request},
      {R"({"op":"acquire","id":1,"key":"k","ttl_ms":-5})", errc::bad_request},
      {R"({"op":"acquire","id":1,"key":"k","limit":1.5})", errc::bad_request},
      {R"({"op":"acquire","id":1,"key":"k","ttl_ms":999999999})", errc::bad_request},
      {R"({"op":"release","id":1,"key":"keep"})", errc::bad_request},
      {"{\"op\":\"acquire\",\"id\":1,\"key\":\"\xff\xfe\"}", errc::bad_request},
      {R"({"op":"fly","id":1})", errc::unknown_op},
      {R"({"op":"acquire","id":1,"key":")" + std::string(1025, 'k') + "\"}", errc::bad_request},
  };
  for (const auto& [frame, code] : cases) {
    INFO(frame.substr(0, 80));
    require_error(parse_reply(c.call(frame)), code);
  }
  REQUIRE(call_reply(c, R"({"op":"ping","id":99})").type == reply::kind::ok);
  reply i = call_reply(c, R"({"op":"inspect","id":100,"key":"keep"})");
  REQUIRE(i.holders.size() == 1);
  REQUIRE(i.holders[0].token == token);
}

TEST_CASE("a frame over max_frame_bytes answers frame_too_large then closes", "[integration]") {
  test::daemon d({"--max-frame-bytes", "1024"});
  conn other(d.port());
  SECTION("no newline in sight") {
    conn c(d.port());
    c.send_raw(std::string(4096, 'x'));
    require_error(parse_reply(c.recv_line()), errc::frame_too_large);
    REQUIRE(c.wait_closed());
  }
  SECTION("a complete line that is too long") {
    conn c(d.port());
    c.send_raw(R"({"op":"ping","id":1,"pad":")" + std::string(2000, 'p') + "\"}\n");
    require_error(parse_reply(c.recv_line()), errc::frame_too_large);
    REQUIRE(c.wait_closed());
  }
  REQUIRE(call_reply(other, R"({"op":"ping","id":1})").type == reply::kind::ok);
  REQUIRE(d.wait_log("frame_too_large"));
}

TEST_CASE("max_connections refuses the next connection with limit_exceeded", "[integration]") {
  test::daemon d({"--max-connections", "2"});
  conn a(d.port()), b(d.port());
  REQUIRE(call_reply(a, R"({"op":"ping","id":1})").type == reply::kind::ok);
  REQUIRE(call_reply(b, R"({"op":"ping","id":1})").type == reply::kind::ok);
  conn c(d.port());
  require_error(parse_reply(c.recv_line()), errc::limit_exceeded);
  REQUIRE(c.wait_closed());
  a.close();
  REQUIRE(new_connection_served(d.port()));
}

TEST_CASE("key, waiter and pending limits answer limit_exceeded", "[integration]") {
  test::daemon d({"--max-keys", "2", "--max-waiters-per-key", "2", "--max-pending-per-connection", "3"});
  conn a(d.port()), b(d.port()), c(d.port());
  acquire_now(a, "k1");
  acquire_now(a, "k2");
  require_error(call_reply(a, R"({"op":"acquire","id":3,"key":"k3"})"), errc::limit_exceeded);
  REQUIRE(b.send_line(R"({"op":"acquire","id":4,"key":"k1"})"));
  REQUIRE(b.send_line(R"({"op":"acquire","id":5,"key":"k1"})"));
  require_error(call_reply(c, R"({"op":"acquire","id":6,"key":"k1"})"), errc::limit_exceeded);
  REQUIRE(b.send_line(R"({"op":"acquire","id":7,"key":"k2"})"));
  require_error(call_reply(b, R"({"op":"acquire","id":8,"key":"k2"})"), errc::limit_exceeded);
  REQUIRE(d.wait_log("limit_exceeded"));
}

TEST_CASE("a limit of 3 admits three holders; another limit on the live key conflicts",
          "[integration]") {
  test::daemon d;
  conn c(d.port());
  for (int i = 0; i < 3; ++i) acquire_now(c, "sem", 30000, 3);
  require_error(call_reply(c, R"({"op":"acquire","id":2,"key":"sem","limit":3,"wait_ms":0})"),
                errc::timeout);
  require_error(call_reply(c, R"({"op":"acquire","id":3,"key":"sem","limit":2,"wait_ms":0})"),
                errc::conflict);
  reply i = call_reply(c, R"({"op":"inspect","id":4,"key":"sem"})");
  REQUIRE(i.holders.size() == 3);
  REQUIRE(i.limit == std::optional<std::uint64_t>(3));
}

TEST_CASE("wait_ms runs out with timeout; cancel answers the acquire then itself",
          "[integration]") {
  test::daemon d;
  conn holder(d.port()), c(d.port());
  acquire_now(holder, "w");
  require_error(call_reply(c, R"({"op":"acquire","id":1,"key":"w","wait_ms":100})"), errc::timeout);
  REQUIRE(c.send_line(R"({"op":"acquire","id":2,"key":"w"})"));
  REQUIRE(c.send_line(R"({"op":"cancel","id":3,"target":2})"));
  reply first = parse_reply(c.recv_line());
  require_error(first, errc::cancelled);
  REQUIRE(first.id == std::optional<std::uint64_t>(2));
  reply second = parse_reply(c.recv_line());
  REQUIRE(second.type == reply::kind::ok);
  REQUIRE(second.id == std::optional<std::uint64_t>(3));
  require_error(call_reply(c, R"({"op":"cancel","id":4,"target":2})"), errc::not_found);
}

TEST_CASE("lock delay holds a key lost by disconnect for its delay", "[integration]") {
  test::daemon d({"--lock-delay-ms", "300"});
  conn waiter(d.port()), probe(d.port());
  {
    conn holder(d.port());
    acquire_now(holder, "ld");
  }
  // Once the holder's disconnect is processed the key is still unavailable, held by nobody.
  reply i;
  for (int n = 0; n < 1000; ++n) {
    i = call_reply(probe, R"({"op":"inspect","id":1,"key":"ld"})");
    if (i.holders.empty()) break;
  }
  REQUIRE(i.holders.empty());
  REQUIRE(i.limit == std::optional<std::uint64_t>(1));  // the key is live: in its delay
  require_error(call_reply(probe, R"({"op":"acquire","id":2,"key":"ld","wait_ms":0})"), errc::timeout);
  REQUIRE(waiter.send_line(R"({"op":"acquire","id":3,"key":"ld"})"));
  reply grant = parse_reply(waiter.recv_line());
  REQUIRE(grant.type == reply::kind::ok);
}

TEST_CASE("a client that never reads its replies is cut off; others are served",
          "[integration]") {
  test::daemon d({"--max-output-bytes", "65536"});
  conn other(d.port());
  // A key with many holders makes every inspect reply large.
  conn filler(d.port());
  for (int i = 0; i < 100; ++i) acquire_now(filler, "big", 600000, 100);
  // ~9 KB per reply, 4000 requests: far more than loopback socket buffers hold.
  conn slow(d.port());
  std::string burst;
  for (int i = 0; i < 200; ++i) burst += R"({"op":"inspect","id":1,"key":"big"})" "\n";
  bool sent_all = true;
  for (int round = 0; round < 20 && sent_all; ++round) sent_all = slow.send_raw(burst);
  REQUIRE(d.wait_log("not reading its replies"));
  REQUIRE(slow.wait_closed());
  REQUIRE(call_reply(other, R"({"op":"ping","id":1})").type == reply::kind::ok);
  REQUIRE(call_reply(other, R"({"op":"inspect","id":2,"key":"big"})").holders.size() == 100);
}

TEST_CASE("idle connections without leases are closed; holders are kept", "[integration]") {
  test::daemon d({"--idle-timeout-ms", "200"});
  conn holder(d.port()), idle(d.port());
  acquire_now(holder, "idle-held", 60000);
  REQUIRE(idle.wait_closed());
  REQUIRE(call_reply(holder, R"({"op":"ping","id":2})").type == reply::kind::ok);
  REQUIRE(d.wait_log("idle for"));
}

TEST_CASE("SIGTERM answers waiting acquires shutting_down and exits 0", "[integration]") {
  test::daemon d;
  conn holder(d.port()), waiter(d.port());
  acquire_now(holder, "bye");
  REQUIRE(waiter.send_line(R"({"op":"acquire","id":9,"key":"bye"})"));
  REQUIRE(call_reply(waiter, R"({"op":"ping","id":10})").type == reply::kind::ok);  // queued by now
  int status = d.stop(SIGTERM);
  reply r = parse_reply(waiter.recv_line());
  require_error(r, errc::shutting_down);
  REQUIRE(r.id == std::optional<std::uint64_t>(9));
  REQUIRE(waiter.wait_closed());
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
}

TEST_CASE("keylockd refuses a non-loopback address without auth and says why", "[integration]") {
  REQUIRE_THROWS_WITH(test::daemon({"--listen", "0.0.0.0:0"}),
                      Catch::Matchers::Contains("without auth"));
}

TEST_CASE("a noreply release frees the key without a reply", "[integration]") {
  test::daemon d;
  conn c(d.port()), other(d.port());
  std::uint64_t token = acquire_now(c, "nr");
  REQUIRE(other.send_line(R"({"op":"acquire","id":8,"key":"nr"})"));
  REQUIRE(c.send_line(R"({"op":"release","id":2,"key":"nr","noreply":true,"token":)" +
                      std::to_string(token) + "}"));
  REQUIRE(c.send_line(R"({"op":"ping","id":3})"));
  REQUIRE(parse_reply(c.recv_line()).id == std::optional<std::uint64_t>(3));
  REQUIRE(parse_reply(other.recv_line()).id == std::optional<std::uint64_t>(8));
}
