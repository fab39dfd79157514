// The lock protocol over TLS: the TLS transport of a session (tls_session.cpp) and the
// server's TLS context. Only server.cpp and tls_session.cpp include this (and Asio's SSL).
#pragma once

#include "session.hpp"

#include <memory>
#include <string>
#include <variant>

namespace boost::asio::ssl {
class context;
}  // namespace boost::asio::ssl

namespace keylock {

// A connection over TLS with `context` (kept alive by the session).
std::shared_ptr<session> make_tls_session(tcp::socket socket,
                                          std::shared_ptr<asio::ssl::context> context,
                                          session_host& host, owner_id owner, std::string peer);

// A server context from tls_cert_file, tls_key_file and tls_ca_file; or why not.
std::variant<std::shared_ptr<asio::ssl::context>, std::string> make_tls_context(
    const config& settings);

}  // namespace keylock
