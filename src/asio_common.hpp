// The one header through which the daemon includes Asio. Three TUs include it (server.cpp,
// session.cpp through session.hpp, metrics_http.cpp): Asio costs ~30 s of compile time per TU
// on the build machines, so keep it out of every other header.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including <utility> (GCC 12).
#include "config.hpp"  // split_host_port: one HOST:PORT rule for every listener

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

namespace keylock {
namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

// "ADDR:PORT", with brackets round an IPv6 address.
inline std::string endpoint_text(const tcp::endpoint& ep) {
  std::string addr = ep.address().to_string();
  if (ep.address().is_v6()) addr = "[" + addr + "]";
  return addr + ":" + std::to_string(ep.port());
}

// Opens `acceptor` listening on `address` ("HOST:PORT", "localhost" meaning 127.0.0.1), with
// reuse_address; `bound` is where it listens (port 0 picks one). On failure, says why and
// leaves the acceptor closed. Every listener of the daemon (lock, TLS, metrics) opens here.
inline std::optional<std::string> open_listener(tcp::acceptor& acceptor, const std::string& address,
                                                tcp::endpoint& bound) {
  std::string host;
  std::uint16_t port = 0;
  if (!split_host_port(address, host, port)) return "address must be HOST:PORT, not " + address;
  if (host == "localhost") host = "127.0.0.1";
  error_code ec;
  const auto ip = asio::ip::make_address(host, ec);
  if (ec) return "cannot parse address " + address + ": " + ec.message();
  const tcp::endpoint ep(ip, port);
  acceptor.open(ep.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(ep, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (!ec) bound = acceptor.local_endpoint(ec);
  if (ec) {
    error_code ignored;
    acceptor.close(ignored);
    return "cannot listen on " + address + ": " + ec.message();
  }
  return std::nullopt;
}
}  // namespace keylock
