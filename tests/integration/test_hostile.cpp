// Hostile clients against the real keylockd: a connection flood, a frame sent a byte at a time,
// and a client that pipelines 100,000 acquires without reading. Each gets its error or its
// disconnect while a well-behaved client on the same daemon keeps being answered.
//
// Bounds are generous on purpose (a shared CI machine): these tests prove "still served",
// not a latency figure.
#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <optional>
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
