// The metrics and health HTTP listener (Boost.Beast), on the daemon's io_context.
//
//   GET /metrics  Prometheus text exposition 0.0.4 (hooks::render_metrics)
//   GET /healthz  200 "ok" while the event loop serves (hooks::healthy), else 503; a reason
//                 the daemon gives (for example, it cannot grant) follows "ok" on the line
//   GET /readyz   200 "ready", or 503 with the reason (hooks::ready)
//   other paths   404; methods other than GET/HEAD: 405; malformed or oversized: 400
//
// With metrics_tls the port speaks HTTPS only (the server's certificate; with tls_ca_file
// scrapers must present a client certificate), the handshake within the same 5 s deadline as a
// request.
//
// It is isolated from the lock protocol: its own acceptor, its own limits (a few concurrent
// connections, small header limit, short deadlines), and nothing it receives reaches the
// lock table. Runs on the io_context thread only.
//
// Connection cap policy: a connection that arrives while the cap is reached is admitted, and
// the open connection that has waited longest without completing a request (the oldest one
// still reading; if none is reading, the oldest one) is closed to make room. So slow clients
// that hold every slot (a partial request line, trickled or idle) cannot keep a liveness
// probe, which sends its request at once, from being answered: each newcomer displaces one of
// them, so an attacker has to keep reconnecting, and to shut a probe out it would have to open
// a full cap of connections between the probe's accept and the read of its request. Evictions
// are counted and logged at warn at most every 10 s. A per-peer cap would not do, since the
// probe and an attacker may share an address.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace boost::asio {
class io_context;
namespace ssl {
class context;
}  // namespace ssl
}  // namespace boost::asio

namespace keylock {

class metrics_http {
 public:
  // A probe's answer: ok or not, and why (for people; empty when there is nothing to say).
  struct probe {
    bool ok = true;
    std::string reason;
  };
  struct hooks {
    std::function<std::string()> render_metrics;
    std::function<probe()> healthy;  // unset: ok
    std::function<probe()> ready;    // unset: ok
  };

  metrics_http(boost::asio::io_context& io, hooks h);
  ~metrics_http();
  metrics_http(const metrics_http&) = delete;
  metrics_http& operator=(const metrics_http&) = delete;

  // Binds "HOST:PORT" (port 0 = ephemeral) and starts accepting. On success returns nullopt
  // and sets *bound to the address actually bound ("127.0.0.1:43121"); else an error message.
  std::optional<std::string> listen(const std::string& host_port, std::string* bound);

  // Serve HTTPS with `context` from now on (nullptr: plain HTTP). Connections already open
  // keep what they have; SIGHUP's reload hands over a new context this way.
  void set_tls(std::shared_ptr<boost::asio::ssl::context> context);

  // Stops accepting and closes every HTTP connection.
  void stop();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace keylock
