// Hostile clients against the real keylockd: a connection flood, a frame sent a byte at a time,
// and a client that pipelines 100,000 acquires without reading. Each gets its error or its
// disconnect while a well-behaved client on the same daemon keeps being answered.
//
// Bounds are generous on purpose (a shared CI machine): these tests prove "still served",
// not a latency figure.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "harness.hpp"
#include "keylock/codec.hpp"
#include "replies.hpp"

using namespace keylock;
using namespace keylock::test;

namespace {

// A well-behaved client's request must be answered within this, whatever the hostile one does.
constexpr std::chrono::milliseconds served_bound = 2s;

// One ping on `c`, answered ok within served_bound.
void require_served(conn& c, std::uint64_t id) {
  const std::string frame = R"({"op":"ping","id":)" + std::to_string(id) + "}";
  REQUIRE(c.send_line(frame));
  auto line = c.recv_line(served_bound);
  INFO("ping " << id << " of the well-behaved client");
  REQUIRE(line.has_value());
  reply r = parse_reply(line);
  REQUIRE(r.type == reply::kind::ok);
  REQUIRE(r.id == std::optional<std::uint64_t>(id));
}

std::uint64_t held_leases(conn& c) {
  REQUIRE(c.send_line(R"({"op":"stats","id":900})"));
  reply r = parse_reply(c.recv_line(served_bound));
  REQUIRE(r.stats.has_value());
  return r.stats->held;
}

}  // namespace

TEST_CASE("a client opening connections until the limit is refused and others stay served",
          "[integration][hostile]") {
  test::daemon d({"--max-connections", "8"});
  conn good(d.port());
  require_served(good, 1);

  std::vector<conn> flood;
  bool refused = false;
  for (int i = 0; i < 64 && !refused; ++i) {
    conn c(d.port());
    c.send_line(R"({"op":"ping","id":2})");
    auto line = c.recv_line();
    REQUIRE(line.has_value());
    reply r = parse_reply(line);
    if (r.type == reply::kind::error) {
      REQUIRE(r.code == errc::limit_exceeded);
      REQUIRE(c.wait_closed());
      refused = true;
    } else {
      flood.push_back(std::move(c));
    }
    require_served(good, 3 + static_cast<std::uint64_t>(i));
  }
  REQUIRE(refused);
  // The good client holds one of the 8 slots; the flood got exactly the other 7.
  REQUIRE(flood.size() == 7);

  flood.clear();
  require_served(good, 100);
  REQUIRE(new_connection_served(d.port()));
}

TEST_CASE("a frame sent a byte at a time is answered and never stalls other clients",
          "[integration][hostile]") {
  test::daemon d;
  conn good(d.port()), slow(d.port());
  const std::string frame = "{\"op\":\"ping\",\"id\":77}\n";
  std::uint64_t id = 1;
  for (char ch : frame) {
    REQUIRE(slow.send_raw(std::string_view(&ch, 1)));
    require_served(good, id++);
    // The slow client is not answered before its newline arrives.
    if (ch != '\n') REQUIRE_FALSE(slow.recv_line(50ms).has_value());
  }
  reply r = parse_reply(slow.recv_line());
  REQUIRE(r.type == reply::kind::ok);
  REQUIRE(r.id == std::optional<std::uint64_t>(77));
}

TEST_CASE("a client pipelining 100000 acquires without reading is cut off while others stay "
          "served",
          "[integration][hostile]") {
  const bool one_key = GENERATE(false, true);
  INFO((one_key ? "one key" : "distinct keys"));
  test::daemon d({"--max-output-bytes", "65536"});
  conn good(d.port()), hostile(d.port());
  // A small receive buffer: otherwise loopback autotuning lets the kernel buffer megabytes of
  // replies, and the daemon would never see them unsent.
  const int rcvbuf = 4096;
  REQUIRE(::setsockopt(hostile.fd(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0);
  require_served(good, 1);

  std::string bytes;
  for (int i = 0; i < 100000; ++i) {
    // Appended piecewise: GCC 12 warns falsely (-Wrestrict) on "k" + std::to_string(i).
    bytes += R"({"op":"acquire","id":)";
    bytes += std::to_string(i);
    bytes += R"(,"key":")";
    if (one_key) {
      bytes += "hot";
    } else {
      bytes += 'k';
      bytes += std::to_string(i);
    }
    bytes += "\",\"ttl_ms\":60000}\n";
  }

  // Write without ever reading, non-blocking, bounded in time: the daemon either closes the
  // connection (output limit) or stops reading it (back-pressure); either way it must not block.
  std::size_t sent = 0;
  bool peer_gone = false;
  const auto deadline = std::chrono::steady_clock::now() + event_bound;
  std::uint64_t id = 2;
  while (sent < bytes.size() && !peer_gone && std::chrono::steady_clock::now() < deadline) {
    const ssize_t n = ::send(hostile.fd(), bytes.data() + sent, bytes.size() - sent,
                             MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
      peer_gone = true;
      break;
    }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      FAIL("send failed: errno " << errno);
    }
    // Socket buffers full: the daemon is not taking more. Meanwhile others are served.
    require_served(good, id++);
    pollfd p{hostile.fd(), POLLOUT, 0};
    ::poll(&p, 1, 100);
    if (p.revents & (POLLERR | POLLHUP)) peer_gone = true;
  }
  require_served(good, id++);

  // The hostile connection must end, closed by the output limit: its unread replies pass
  // 64 KiB long before 100000 acquires are answered. The daemon says so in its log; only then
  // is the socket read (reading earlier would let the daemon flush).
  INFO("sent " << sent << " of " << bytes.size() << " bytes");
  REQUIRE(d.wait_log("not reading its replies"));
  bool closed = peer_gone;
  const auto drain_deadline = std::chrono::steady_clock::now() + event_bound;
  while (!closed && std::chrono::steady_clock::now() < drain_deadline) {
    char buf[65536];
    pollfd p{hostile.fd(), POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    closed = ::recv(hostile.fd(), buf, sizeof buf, 0) <= 0;
  }
  REQUIRE(closed);

  // Its leases went with it, and the daemon serves others as before.
  bool released = false;
  for (int i = 0; i < 100 && !released; ++i) {
    released = held_leases(good) == 0;
    if (!released) REQUIRE_FALSE(good.recv_line(50ms).has_value());
  }
  REQUIRE(released);
  require_served(good, id++);
  conn fresh(d.port());
  require_served(fresh, 1);
}

// ---- Issue 11: holes found by attacks and a code review on 005de2c -------------------------

namespace {

// The daemon's end of a loopback connection, as /proc/net/tcp shows it.
struct tcp_entry {
  unsigned long inode = 0;  // 0 once no process holds the socket
  std::string state;        // hex, as in include/net/tcp_states.h: 01 ESTABLISHED, 08 CLOSE_WAIT
};

std::uint16_t local_port(const conn& c) {
  sockaddr_in addr{};
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(c.fd(), reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  return ntohs(addr.sin_port);
}

// The socket bound to 127.0.0.1:`local` and connected to 127.0.0.1:`remote`, if there is one.
std::optional<tcp_entry> find_tcp(std::uint16_t local, std::uint16_t remote) {
  char want_local[32], want_remote[32];
  std::snprintf(want_local, sizeof want_local, "0100007F:%04X", local);
  std::snprintf(want_remote, sizeof want_remote, "0100007F:%04X", remote);
  std::ifstream in("/proc/net/tcp");
  std::string line;
  std::getline(in, line);  // the header
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string slot, l, r, st, queues, timer, retransmits, uid, timeout;
    unsigned long inode = 0;
    fields >> slot >> l >> r >> st >> queues >> timer >> retransmits >> uid >> timeout >> inode;
    if (l == want_local && r == want_remote) return tcp_entry{inode, st};
  }
  return std::nullopt;
}

// Whether process `pid` has socket `inode` among its open descriptors.
bool holds_socket(pid_t pid, unsigned long inode) {
  const std::string target = "socket:[" + std::to_string(inode) + "]";
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    std::error_code rec;
    if (std::filesystem::read_symlink(it->path(), rec).string() == target) return true;
  }
  return false;
}

// The daemon's ends of the connections given to add(), and whether the daemon (process `pid`,
// listening on `port`) still holds them.
class daemon_ends {
 public:
  daemon_ends(pid_t pid, std::uint16_t port) : pid_(pid), port_(port) {}

  // Records the daemon's socket of `c`, waiting (bounded) for the daemon to accept it.
  bool add(const conn& c) {
    const std::uint16_t peer = local_port(c);
    const auto deadline = std::chrono::steady_clock::now() + event_bound;
    while (std::chrono::steady_clock::now() < deadline) {
      auto e = find_tcp(port_, peer);
      if (e && e->inode != 0 && holds_socket(pid_, e->inode)) {
        ends_.push_back({peer, e->inode});
        return true;
      }
      pollfd none{-1, 0, 0};
      ::poll(&none, 0, 20);  // paced polling of an observable, not a wait for time to pass
    }
    return false;
  }

  // Waits (bounded by event_bound) until the daemon holds none of them.
  bool all_released() const {
    const auto deadline = std::chrono::steady_clock::now() + event_bound;
    while (std::chrono::steady_clock::now() < deadline) {
      if (held() == 0) return true;
      pollfd none{-1, 0, 0};
      ::poll(&none, 0, 20);
    }
    return false;
  }

  // Those the daemon still holds, with their TCP state: ESTABLISHED (01) means the peer's FIN
  // has not reached the daemon's socket, CLOSE_WAIT (08) that it has.
  std::string report() const {
    std::string out;
    for (const auto& [peer, inode] : ends_) {
      if (!holds_socket(pid_, inode)) continue;
      auto e = find_tcp(port_, peer);
      out += " peer port " + std::to_string(peer) + " state " + (e ? e->state : "?") + ";";
    }
    return out.empty() ? " none" : out;
  }

 private:
  std::size_t held() const {
    std::size_t n = 0;
    for (const auto& [peer, inode] : ends_) n += holds_socket(pid_, inode) ? 1 : 0;
    return n;
  }

  pid_t pid_;
  std::uint16_t port_;
  std::vector<std::pair<std::uint16_t, unsigned long>> ends_;  // peer port, socket inode
};

// Writes `bytes` without blocking until all is sent or the socket stops taking more for a
// while (the peer's buffers are full). Returns the bytes sent.
std::size_t send_until_full(conn& c, const std::string& bytes) {
  std::size_t sent = 0;
  int stalls = 0;
  const auto deadline = std::chrono::steady_clock::now() + event_bound;
  while (sent < bytes.size() && stalls < 5 && std::chrono::steady_clock::now() < deadline) {
    const ssize_t n = ::send(c.fd(), bytes.data() + sent, bytes.size() - sent,
                             MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
      stalls = 0;
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) break;
    pollfd p{c.fd(), POLLOUT, 0};
    if (::poll(&p, 1, 100) == 0) ++stalls;
  }
  return sent;
}

std::string repeat_frame(std::string_view frame, std::size_t times) {
  std::string out;
  out.reserve((frame.size() + 1) * times);
  for (std::size_t i = 0; i < times; ++i) {
    out += frame;
    out += '\n';
  }
  return out;
}

void shrink_receive_buffer(conn& c) {
  const int rcvbuf = 4096;
  REQUIRE(::setsockopt(c.fd(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0);
}

}  // namespace

TEST_CASE("connections that half-close and never read their replies release their descriptors",
          "[integration][hostile]") {
  // max_output_bytes far above what the kernel buffers hold: only the bound on a graceful
  // close (1 s from the half-close) can end these connections. (No short idle timeout: the
  // well-behaved client below idles meanwhile.)
  test::daemon d({"--max-output-bytes", "67108864"});
  conn good(d.port());
  require_served(good, 1);

  const std::string pings = repeat_frame(R"({"op":"ping","id":123456789})", 200000);
  daemon_ends ends(d.pid(), d.port());
  std::vector<conn> attackers;
  for (int i = 0; i < 5; ++i) {
    conn a(d.port(), 4096);  // small from the start: see conn(port, receive_buffer)
    REQUIRE(ends.add(a));
    std::size_t sent = send_until_full(a, pings);
    INFO("attacker " << i << " sent " << sent << " bytes");
    REQUIRE(sent > 0);
    REQUIRE(::shutdown(a.fd(), SHUT_WR) == 0);
    attackers.push_back(std::move(a));  // kept open, never read
  }
  require_served(good, 2);
  // The daemon's socket of every attacker is closed although none of them ever reads.
  const bool released = ends.all_released();
  INFO("attackers' sockets the daemon still holds:" << ends.report());
  REQUIRE(released);
  require_served(good, 3);
  REQUIRE(new_connection_served(d.port()));
}

TEST_CASE("a client that does not read its replies is closed after write_timeout_ms",
          "[integration][hostile]") {
  test::daemon d({"--max-output-bytes", "67108864", "--write-timeout-ms", "300"});
  conn good(d.port()), slow(d.port());
  shrink_receive_buffer(slow);
  acquire_now(slow, "held-by-slow");
  send_until_full(slow, repeat_frame(R"({"op":"ping","id":1})", 400000));
  REQUIRE(d.wait_log("write_timeout_ms"));
  // Closing released its lease.
  REQUIRE(call_reply(good, R"({"op":"acquire","id":5,"key":"held-by-slow","wait_ms":10000})")
              .type == reply::kind::ok);
}

TEST_CASE("unauthenticated connections trickling bytes cannot lock out a client with the secret",
          "[integration][hostile]") {
  test::daemon d({"--auth", "s3cret", "--max-connections", "20"});
  std::vector<conn> slowloris;
  for (int i = 0; i < 20; ++i) {
    conn c(d.port());
    c.send_raw("{");  // a frame that never ends
    slowloris.push_back(std::move(c));
  }
  for (auto& c : slowloris) c.send_raw(" ");
  conn good(d.port());
  reply hello = call_reply(good, R"({"op":"hello","id":1,"auth":"s3cret","client":"good"})");
  INFO("hello answered " << hello.message);
  REQUIRE(hello.type == reply::kind::ok);
  require_served(good, 2);
  // The attackers keep trickling; the authenticated client stays served.
  for (auto& c : slowloris) c.send_raw(" ");
  require_served(good, 3);
}

TEST_CASE("a connection that does not complete hello within auth_timeout_ms is closed",
          "[integration][hostile]") {
  test::daemon d({"--auth", "s3cret", "--auth-timeout-ms", "300"});
  conn silent(d.port());
  reply r = parse_reply(silent.recv_line());
  require_error(r, errc::unauthenticated);
  REQUIRE(silent.wait_closed());
  REQUIRE(d.wait_log("auth_timeout_ms"));
}

TEST_CASE("a TLS client on the plain-TCP port is closed at once, with a log line",
          "[integration][hostile]") {
  test::daemon d;
  conn tls_client(d.port());
  // The start of a TLS 1.2 ClientHello record: type 22, version 3.1, length, handshake type 1.
  REQUIRE(tls_client.send_raw(std::string("\x16\x03\x01\x00\x2f\x01\x00\x00\x2b\x03\x03", 11)));
  REQUIRE(tls_client.wait_closed());
  REQUIRE(d.wait_log("sent a TLS handshake to the plain-TCP lock port"));
  // A JSON client is served as before.
  conn plain(d.port());
  plain.send_line(R"({"op":"ping","id":1})");
  CHECK(parse_reply(plain.recv_line()).type == reply::kind::ok);
}

TEST_CASE("bytes that never complete a frame do not reset the idle clock",
          "[integration][hostile]") {
  test::daemon d({"--idle-timeout-ms", "400"});
  conn trickler(d.port());
  bool closed = false;
  // One space every 100 ms, for at most event_bound: the connection must be closed by then.
  const auto deadline = std::chrono::steady_clock::now() + event_bound;
  while (!closed && std::chrono::steady_clock::now() < deadline) {
    closed = !trickler.send_raw(" ") || trickler.wait_closed(100ms);
  }
  REQUIRE(closed);
  REQUIRE(d.wait_log("idle for"));
}

TEST_CASE("a half-close gets one reply to every request read before it, cancelled for waiters",
          "[integration][hostile]") {
  test::daemon d;
  conn holder(d.port()), c(d.port());
  acquire_now(holder, "hc");
  REQUIRE(c.send_raw(R"({"op":"acquire","id":1,"key":"mine"})"
                     "\n"
                     R"({"op":"acquire","id":2,"key":"hc"})"
                     "\n"
                     R"({"op":"ping","id":3})"
                     "\n"));
  REQUIRE(::shutdown(c.fd(), SHUT_WR) == 0);
  std::vector<reply> replies;
  for (int i = 0; i < 3; ++i) replies.push_back(parse_reply(c.recv_line()));
  REQUIRE(c.wait_closed());
  auto by_id = [&](std::uint64_t id) {
    for (const reply& r : replies) {
      if (r.id == std::optional<std::uint64_t>(id)) return r;
    }
    FAIL("no reply with id " << id);
    return reply{};
  };
  REQUIRE(by_id(1).type == reply::kind::ok);
  require_error(by_id(2), errc::cancelled);
  REQUIRE(by_id(3).type == reply::kind::ok);
  // Its lease on "mine" went with the connection.
  REQUIRE(call_reply(holder, R"({"op":"acquire","id":4,"key":"mine","wait_ms":10000})").type ==
          reply::kind::ok);
}

TEST_CASE("leases per connection and leases in all are bounded", "[integration][hostile]") {
  test::daemon d({"--max-leases-per-connection", "3", "--max-leases", "5"});
  conn a(d.port()), b(d.port());
  acquire_now(a, "a0");
  acquire_now(a, "a1");
  acquire_now(a, "a2");
  reply r = call_reply(a, R"({"op":"acquire","id":9,"key":"a3"})");
  require_error(r, errc::limit_exceeded);
  REQUIRE(r.message.find("max_leases_per_connection") != std::string::npos);
  // A waiting acquire counts against the connection too.
  require_error(call_reply(a, R"({"op":"acquire","id":10,"key":"a0"})"), errc::limit_exceeded);
  acquire_now(b, "b0");
  acquire_now(b, "b1");
  r = call_reply(b, R"({"op":"acquire","id":11,"key":"b2"})");
  require_error(r, errc::limit_exceeded);
  REQUIRE(r.message.find("max_leases") != std::string::npos);
  require_served(a, 12);
}

TEST_CASE("SIGHUP re-reads auth_file without dropping authenticated connections",
          "[integration][hostile]") {
  temp_dir dir;
  const auto path = dir.path / "secret";
  std::ofstream(path) << "old-secret\n";
  test::daemon d({"--auth-file", path.string()});
  conn before(d.port());
  REQUIRE(call_reply(before, R"({"op":"hello","id":1,"auth":"old-secret"})").type ==
          reply::kind::ok);
  acquire_now(before, "rotating");

  std::ofstream(path, std::ios::trunc) << "new-secret\n";
  REQUIRE(::kill(d.pid(), SIGHUP) == 0);
  REQUIRE(d.wait_log("re-read auth_file"));
  REQUIRE(d.running());

  conn old_secret(d.port());
  require_error(call_reply(old_secret, R"({"op":"hello","id":2,"auth":"old-secret"})"),
                errc::unauthenticated);
  conn new_secret(d.port());
  REQUIRE(call_reply(new_secret, R"({"op":"hello","id":3,"auth":"new-secret"})").type ==
          reply::kind::ok);
  // The connection authenticated before the rotation keeps its session and its lease.
  require_served(before, 4);
  reply held = call_reply(new_secret, R"({"op":"inspect","id":5,"key":"rotating"})");
  REQUIRE(held.held == std::optional<bool>(true));
}

TEST_CASE("a second SIGTERM during a slow shutdown ends the daemon at once",
          "[integration][hostile]") {
  test::daemon d({"--shutdown-grace-ms", "10000", "--max-output-bytes", "67108864"});
  conn stuck(d.port());
  shrink_receive_buffer(stuck);
  send_until_full(stuck, repeat_frame(R"({"op":"ping","id":1})", 400000));
  REQUIRE(::kill(d.pid(), SIGTERM) == 0);
  REQUIRE(d.wait_log("shutting down"));
  REQUIRE(d.running());  // still flushing to a client that does not read
  int status = d.stop(SIGTERM);
  REQUIRE(d.wait_log("during shutdown: exiting now"));
  REQUIRE(WIFEXITED(status));
}

namespace {

std::uint64_t stored_mark(const std::filesystem::path& dir) {
  std::ifstream in(dir / "fencing");
  std::uint64_t mark = 0;
  in >> mark;
  return mark;
}

}  // namespace

TEST_CASE("when the fencing state cannot be made durable no token reaches the stored mark, "
          "acquires answer unavailable, and grants resume once the disk recovers",
          "[integration][hostile]") {
  temp_dir dir;
  test::daemon d({"--state-dir", dir.path.string(), "--fencing-block", "64"});
  conn holder(d.port()), waiter(d.port()), churn(d.port());
  const std::uint64_t held = acquire_now(holder, "stalled");
  std::uint64_t highest = held;
  REQUIRE(waiter.send_line(R"({"op":"acquire","id":7,"key":"stalled"})"));
  require_served(waiter, 8);  // the acquire is queued by now

  // A directory where the daemon's temporary state file must go: every reservation fails,
  // as on a full or read-only disk.
  std::filesystem::create_directory(dir.path / "fencing.tmp");
  bool unavailable = false;
  int granted = 0;
  for (int i = 0; i < 1000 && !unavailable; ++i) {
    reply r = call_reply(churn, R"({"op":"acquire","id":1,"key":"churn","wait_ms":0})");
    if (r.type == reply::kind::error) {
      require_error(r, errc::unavailable);
      unavailable = true;
      break;
    }
    ++granted;
    highest = std::max(highest, *r.token);
    REQUIRE(call_reply(churn, R"({"op":"release","id":2,"key":"churn","token":)" +
                                  std::to_string(*r.token) + "}")
                .type == reply::kind::ok);
  }
  INFO("granted " << granted << " before unavailable");
  REQUIRE(unavailable);
  REQUIRE(highest < stored_mark(dir.path));  // nothing at or above the durable mark

  http_response ready = http_get(d.metrics_port(), "/readyz");
  REQUIRE(ready.status == 503);
  REQUIRE(ready.body.find("fencing state not durable") != std::string::npos);
  http_response health = http_get(d.metrics_port(), "/healthz");
  REQUIRE(health.status == 200);
  REQUIRE(health.body.find("fencing state not durable") != std::string::npos);

  // A release while tokens are unavailable grants nobody; the waiter keeps its place.
  REQUIRE(call_reply(holder, R"({"op":"release","id":3,"key":"stalled","token":)" +
                                 std::to_string(held) + "}")
              .type == reply::kind::ok);
  reply still = call_reply(churn, R"({"op":"inspect","id":5,"key":"stalled"})");
  REQUIRE(still.held == std::optional<bool>(false));
  REQUIRE(still.waiters == std::optional<std::uint64_t>(1));

  // The daemon has seen a write fail, not merely run out of tokens while its first write
  // waited for the disk thread (a loaded machine): else that write could run only after the
  // disk recovers, succeed, and there would be no failure to recover from.
  REQUIRE(d.wait_log("cannot reserve tokens"));

  // The disk recovers: the retry succeeds and the waiter is granted, above every earlier token.
  std::filesystem::remove(dir.path / "fencing.tmp");
  reply grant = parse_reply(waiter.recv_line());
  REQUIRE(grant.id == std::optional<std::uint64_t>(7));
  REQUIRE(grant.type == reply::kind::ok);
  REQUIRE(*grant.token > highest);
  REQUIRE(*grant.token < stored_mark(dir.path));
  REQUIRE(http_get(d.metrics_port(), "/readyz").status == 200);
  REQUIRE(d.wait_log("tokens reserved up to"));
}

TEST_CASE("a storm of expiries to a client that does not read obeys max_output_bytes",
          "[integration][hostile]") {
  test::daemon d({"--max-output-bytes", "65536", "--max-leases-per-connection", "200000"});
  conn good(d.port()), hoarder(d.port());
  // 150,000 leases that all run out together; their expired events (~50 bytes each, 7 MB)
  // are far more than max_output_bytes and than what loopback's kernel buffers hold.
  const int leases = 150000;
  // Acquired in batches, each read back before the next, so that the acquire replies never
  // pile up: only the expiries may. The ttl must outlast the acquiring on a slow (sanitizer)
  // build, so it is set from how long the first batch took.
  const int batch = 5000;
  auto acquire_batch = [&](int first, std::int64_t ttl_ms) {
    std::string frames;
    for (int i = first; i < first + batch; ++i) {
      frames += R"({"op":"acquire","key":"storm)";
      frames += std::to_string(i);
      frames += R"(","wait_ms":0,"ttl_ms":)";
      frames += std::to_string(ttl_ms);
      frames += "}\n";
    }
    REQUIRE(hoarder.send_raw(frames));
    for (int i = 0; i < batch; ++i) {
      reply r = parse_reply(hoarder.recv_line());
      REQUIRE(r.type == reply::kind::ok);
    }
  };
  const auto start = std::chrono::steady_clock::now();
  acquire_batch(0, 600000);  // these stay: the storm is the rest
  const auto per_batch = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - start);
  const std::int64_t ttl_ms = 2 * (leases / batch) * per_batch.count() + 1000;
  for (int first = batch; first < leases; first += batch) acquire_batch(first, ttl_ms);
  shrink_receive_buffer(hoarder);  // from now on it reads nothing
  // The expiries are delivered in bounded batches: the hoarder is cut by the output limit,
  // and the good client is served throughout. The storm starts only when the ttl runs out,
  // which on a slow build can be most of the ttl from now.
  REQUIRE(d.wait_log("not reading its replies",
                     std::chrono::milliseconds(ttl_ms) + test::event_bound));
  require_served(good, 1);
  bool released = false;
  for (int i = 0; i < 200 && !released; ++i) {
    released = held_leases(good) == 0;  // the 5,000 long leases went with the connection
    if (!released) REQUIRE_FALSE(good.recv_line(50ms).has_value());
  }
  REQUIRE(released);
}
