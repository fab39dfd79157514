// keylock-bench's connections: a lean blocking driver of the keylock protocol and a thin
// wrapper of a hiredis context. One per client thread; neither is thread-safe.
//
// Both block with a receive timeout (io_timeout), so a server that stops answering ends the
// client's run with an error instead of hanging the bench. Over TLS (keylocks://, rediss://)
// both run OpenSSL on the same blocking socket; the plain path pays one branch for it.
#pragma once

#include "wire.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

struct redisContext;
struct redisReader;
struct redisReply;
struct ssl_ctx_st;
struct ssl_st;

namespace keylock::bench {

// Nanoseconds on the monotonic clock (CLOCK_MONOTONIC): every latency, and the handoff
// between threads, is measured on this one clock.
std::int64_t mono_ns() noexcept;

// A blocking TCP connection (TCP_NODELAY, SO_RCVTIMEO/SO_SNDTIMEO). Returns an error message,
// or empty on success. Also used raw by the `connections` workload.
std::string tcp_connect(const std::string& host, std::uint16_t port,
                        std::chrono::milliseconds io_timeout, int& fd_out);

// Sends all of `data` on a blocking socket. False on error (errno says why).
bool send_all(int fd, std::string_view data);

// The TLS settings of the client side (--tls-ca, --tls-cert, --tls-key, --tls-ciphers,
// --tls-ciphersuites). Empty strings: OpenSSL's defaults.
struct tls_options {
  std::string ca_file;       // CA bundle the server's certificate must chain to (required)
  std::string cert_file;     // client certificate (PEM), for servers that ask for one
  std::string key_file;      // its private key (PEM)
  std::string ciphers;       // TLS 1.2 cipher list (SSL_CTX_set_cipher_list)
  std::string ciphersuites;  // TLS 1.3 suites (SSL_CTX_set_ciphersuites)
};

// A client TLS context (one SSL_CTX) for one target, shared by all its client threads: OpenSSL
// allows SSL objects to be made from one configured SSL_CTX on many threads. Every handshake
// verifies the server's certificate against the CA and its name (or IP address) against the
// target's host. Sessions are not resumed: every handshake is a full one.
class tls_client {
 public:
  // Empty on success, else what failed (unreadable CA, certificate or key, a cipher list that
  // names nothing OpenSSL knows).
  std::string init(const tls_options& options);
  ~tls_client();
  tls_client() = default;
  tls_client(const tls_client&) = delete;
  tls_client& operator=(const tls_client&) = delete;

  // Runs the client handshake on the connected blocking socket `fd` for `host`. Returns the
  // SSL object (owned by the caller: SSL_free), or null with `error` set (the socket stays open).
  ssl_st* handshake(int fd, const std::string& host, std::string& error) const;

  // "TLSv1.3, TLS_AES_128_GCM_SHA256" of the first handshake that succeeded; empty before.
  std::string negotiated() const;

 private:
  ssl_ctx_st* ctx_ = nullptr;
  mutable std::once_flag first_;
  mutable std::atomic<bool> have_first_{false};
  mutable std::string first_session_;
};

class keylock_conn {
 public:
  keylock_conn() = default;
  ~keylock_conn();
  keylock_conn(const keylock_conn&) = delete;
  keylock_conn& operator=(const keylock_conn&) = delete;

  // Empty on success, else what failed. A TLS target (t.tls) needs `tls`, which must outlive
  // the connection.
  std::string connect(const target& t, std::chrono::milliseconds io_timeout,
                      const tls_client* tls = nullptr);
  // Closes the connection (over TLS: sends close_notify first, without waiting for the peer's).
  void close();

  // Sends `bytes` (whole frames). False on error; see error().
  bool send(std::string_view bytes);

  // The next reply frame, pushed events skipped; blocks until one is complete. False on EOF,
  // error, receive timeout or a frame the scan cannot read; see error().
  bool next_reply(reply_view& out);

  // Whether a complete frame is already buffered (next_reply will not block).
  bool has_buffered_frame() const noexcept;

  // mono_ns() taken when the bytes of the last frame returned by next_reply arrived (one clock
  // read per recv, shared by the frames it brought).
  std::int64_t last_receive_ns() const noexcept { return received_ns_; }

  const std::string& error() const noexcept { return error_; }
  int fd() const noexcept { return fd_; }

 private:
  bool fill();
  bool send_tls(std::string_view bytes);

  int fd_ = -1;
  ssl_st* ssl_ = nullptr;  // null: plain TCP
  std::vector<char> buf_ = std::vector<char>(64 * 1024);
  std::size_t head_ = 0;
  std::size_t tail_ = 0;
  std::int64_t received_ns_ = 0;
  std::string error_;
};

struct redis_reply_deleter {
  void operator()(redisReply* r) const noexcept;
};
using redis_reply_ptr = std::unique_ptr<redisReply, redis_reply_deleter>;

// What the bench needs of a Redis reply.
enum class redis_outcome : std::uint8_t {
  ok,       // +OK, or any status/bulk/array reply
  nil,      // a nil reply: SET NX found the key held
  integer,  // an integer reply; see the value
  error,    // an error reply (-ERR ...); see the text
};

class redis_conn {
 public:
  redis_conn() = default;
  ~redis_conn();
  redis_conn(const redis_conn&) = delete;
  redis_conn& operator=(const redis_conn&) = delete;

  // Plain targets go through hiredis; a TLS target (t.tls, with `tls`, which must outlive the
  // connection) through OpenSSL on a blocking socket, replies parsed by hiredis's redisReader.
  std::string connect(const target& t, std::chrono::milliseconds io_timeout,
                      const tls_client* tls = nullptr);
  void close();

  // Queues one RESP-formatted command (append_resp_command) without sending it.
  bool append(std::string_view resp);
  // The next reply, flushing queued commands first when none is buffered. Null on I/O error;
  // see error().
  redis_reply_ptr next_reply();
  // append + next_reply.
  redis_reply_ptr call(std::string_view resp);

  const std::string& error() const noexcept { return error_; }

  static redis_outcome outcome_of(const redisReply& r, long long& integer, std::string& text);

 private:
  redis_reply_ptr next_reply_tls();

  redisContext* ctx_ = nullptr;  // plain: hiredis owns socket and buffers
  // TLS: our socket, its SSL, the queued commands and hiredis's reply parser.
  int fd_ = -1;
  ssl_st* ssl_ = nullptr;
  redisReader* reader_ = nullptr;
  std::string out_;
  std::string error_;
};

}  // namespace keylock::bench
