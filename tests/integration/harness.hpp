// Test harness: runs the real keylockd binary on an ephemeral loopback port and speaks raw
// NDJSON to it over blocking sockets with deadlines. No Asio here: tests stay quick to build.
//
// Note: `daemon` also names a libc function; qualify it as test::daemon in tests.
//
// Every process a harness object starts is stopped by its destructor (SIGTERM, then SIGKILL
// after a bounded wait), so a failing test never leaves a daemon behind.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace keylock::test {

using namespace std::chrono_literals;

// Generous bound for "this must happen": tests wait for observable events, never sleep blindly.
inline constexpr std::chrono::milliseconds event_bound = 10s;

// A running keylockd. Starts `KEYLOCKD_PATH --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0
// ARGS...` (either address only when ARGS do not name one),
// drains its stderr on a thread, and learns the bound port from the start log line
// ("listening on 127.0.0.1:PORT"). Throws std::runtime_error when it does not start.
class daemon {
 public:
  explicit daemon(std::vector<std::string> args = {});
  ~daemon();
  daemon(const daemon&) = delete;
  daemon& operator=(const daemon&) = delete;

  std::uint16_t port() const;
  // Port of the metrics/health HTTP listener (started on 127.0.0.1:0 unless the arguments
  // name --metrics-listen); 0 when it is off.
  std::uint16_t metrics_port() const;
  pid_t pid() const;

  // Sends `sig` and waits (bounded by event_bound) for the exit; returns the wait status
  // (as from waitpid), or -1 if it had to be SIGKILLed.
  int stop(int sig = 15);
  // Stops (SIGTERM) and starts again with the same arguments, on a new ephemeral port unless
  // the arguments name one.
  void restart();
  bool running() const;

  // Waits until the daemon's log contains `needle`; false after `timeout`.
  bool wait_log(std::string_view needle, std::chrono::milliseconds timeout = event_bound) const;
  std::string log() const;

 private:
  struct state;
  std::unique_ptr<state> state_;
};

// A blocking NDJSON connection to 127.0.0.1:port.
class conn {
 public:
  explicit conn(std::uint16_t port);
  // With SO_RCVBUF set to `receive_buffer` bytes before it connects, so the kernel never
  // advertises a window larger than it can hold. (Shrinking the buffer of a connected socket
  // makes the kernel drop what the daemon sends into the window advertised before, and the
  // daemon retransmit it: nstat's TcpExtRcvPruned and TcpExtTCPRcvQDrop count the drops.)
  conn(std::uint16_t port, int receive_buffer);
  ~conn();
  conn(conn&& other) noexcept;
  conn& operator=(conn&& other) noexcept;
  conn(const conn&) = delete;
  conn& operator=(const conn&) = delete;

  // Writes `bytes` as is (add the '\n' yourself, or use send_line).
  // Returns false when the peer is gone (EPIPE/ECONNRESET); never raises SIGPIPE.
  bool send_raw(std::string_view bytes);
  bool send_line(std::string_view frame);  // frame + newline
  // Next complete line without its '\n', or nullopt on timeout or when the peer closed.
  std::optional<std::string> recv_line(std::chrono::milliseconds timeout = event_bound);
  // True once the peer has closed (EOF or reset) within `timeout`; discards lines read.
  bool wait_closed(std::chrono::milliseconds timeout = event_bound);
  // send_line + recv_line, for one request with no others in flight.
  std::string call(std::string_view frame);
  void close();
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  std::string buf_;
};

// One HTTP/1.1 exchange on a fresh connection ("Connection: close"): sends `raw` as is and
// reads until the server closes. status 0 when no status line came back.
struct http_response {
  int status = 0;
  std::string headers;
  std::string body;
};
http_response http_exchange(std::uint16_t port, std::string_view raw);
http_response http_get(std::uint16_t port, std::string_view path);

}  // namespace keylock::test
