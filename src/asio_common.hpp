// The one header through which the daemon includes Asio. Three TUs include it (server.cpp,
// session.cpp through session.hpp, metrics_http.cpp): Asio costs ~30 s of compile time per TU
// on the build machines, so keep it out of every other header.
#pragma once

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including <utility> (GCC 12).
#include <utility>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

namespace keylock {
namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
}  // namespace keylock
