// TLS for the client (issue 15): an OpenSSL client context built once per Client from its
// options, and one session per connection over the socket that client.cpp connected.
//
// The session never waits: every call returns at once, and says when it would block which
// readiness of the socket to wait for before the same call is made again. client.cpp waits as
// it does for plain TCP (Asio's async_wait on the I/O thread, poll in a leader), all under its
// io_mtx_: one thread at a time uses a tls_stream. The socket I/O underneath is our own
// (send with MSG_NOSIGNAL, never raising SIGPIPE in the user's process, and recv).
//
// No OpenSSL in this header: client.cpp and the public header stay free of it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

struct ssl_ctx_st;  // OpenSSL's SSL_CTX
struct ssl_st;      // OpenSSL's SSL

namespace keylock::detail {

// What a client context is built from (client_options::tls, after the environment defaults).
struct tls_files {
  std::string ca_file;    // PEM bundle of trusted CAs; empty: OpenSSL's default paths
  std::string cert_file;  // PEM client certificate chain for mutual TLS; empty: none
  std::string key_file;   // its private key; empty: read from cert_file
};

// The outcome of one non-blocking call.
enum class tls_status : std::uint8_t {
  done,        // completed; read/write moved `bytes` (at least 1)
  want_read,   // would block: call again once the socket is readable
  want_write,  // would block: call again once the socket is writable
  closed,      // the peer ended the session (close_notify) or closed the connection cleanly
  failed,      // a TLS or socket error; tls_stream::error() says what
};

struct tls_result {
  tls_status status = tls_status::failed;
  std::size_t bytes = 0;
};

// An SSL_CTX for clients: TLS 1.2 or newer, the server's certificate verified against
// `ca_file` (or the system's CAs), and a client certificate when one is given. Immutable once
// built; shared by every connection of a Client.
class tls_context {
 public:
  // Throws std::invalid_argument, naming the file and OpenSSL's reason, when a file cannot be
  // loaded or the key does not match the certificate.
  explicit tls_context(const tls_files& files);
  ~tls_context();
  tls_context(const tls_context&) = delete;
  tls_context& operator=(const tls_context&) = delete;

 private:
  friend class tls_stream;
  ssl_ctx_st* ctx_ = nullptr;
};

// One client session over a connected, non-blocking socket. Does not own the socket: destroy
// the stream before closing it.
class tls_stream {
 public:
  // `server_name` is what the server's certificate must name: a host name (also sent as SNI)
  // or an IP address (v4 or v6, checked against the certificate's IP addresses).
  tls_stream(const tls_context& context, int fd, const std::string& server_name);
  ~tls_stream();
  tls_stream(const tls_stream&) = delete;
  tls_stream& operator=(const tls_stream&) = delete;

  // Advances the handshake; `done` once it is complete and the server verified.
  tls_result handshake();
  // Up to `size` bytes of decrypted data into `data`.
  tls_result read(char* data, std::size_t size);
  // Encrypts and sends a prefix of data[0, size). After want_read/want_write, the next write
  // must start with the same bytes (they may have moved: the buffer may be another one).
  tls_result write(const char* data, std::size_t size);
  // Whether decrypted bytes wait inside OpenSSL: they do not make the socket readable, so a
  // reader must read() before it polls.
  bool buffered() const;
  // Sends close_notify if the session is established and healthy; never blocks or throws.
  void close_notify() noexcept;
  // Why the last call failed: OpenSSL's reason, with the certificate verification error
  // when there was one ("certificate verify failed: hostname mismatch").
  const std::string& error() const { return error_; }

 private:
  tls_result result_of(int ret, std::size_t bytes);

  ssl_st* ssl_ = nullptr;
  bool broken_ = false;  // a fatal error happened: no more calls, no close_notify
  std::string error_;
};

}  // namespace keylock::detail
