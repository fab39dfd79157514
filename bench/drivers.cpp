#include "drivers.hpp"

#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <ctime>

namespace keylock::bench {

namespace {

timeval to_timeval(std::chrono::milliseconds ms) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

// The reason of OpenSSL's last error (and the queue emptied), or `fallback`.
std::string ssl_error_text(const char* what, const char* fallback = "unknown error") {
  std::string out = what;
  out += ": ";
  const unsigned long e = ::ERR_get_error();
  if (e != 0) {
    std::array<char, 256> buf{};
    ::ERR_error_string_n(e, buf.data(), buf.size());
    out += buf.data();
  } else {
    out += fallback;
  }
  ::ERR_clear_error();
  return out;
}

// What a failed SSL_read/SSL_write on a blocking socket with SO_RCVTIMEO means.
std::string ssl_io_error(ssl_st* ssl, int rc, const char* what) {
  const int saved = errno;
  switch (::SSL_get_error(ssl, rc)) {
    case SSL_ERROR_ZERO_RETURN:
      return "server closed the connection";
    case SSL_ERROR_SYSCALL:
      if (::ERR_peek_error() == 0) {
        ::ERR_clear_error();
        if (rc == 0 || saved == 0) return "server closed the connection";
        if (saved == EAGAIN || saved == EWOULDBLOCK) return "no reply within the i/o timeout";
        errno = saved;
        return errno_text(what);
      }
      return ssl_error_text(what);
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
      // A blocking socket only wants more when its timeout expired.
      ::ERR_clear_error();
      return "no reply within the i/o timeout";
    default:
      return ssl_error_text(what);
  }
}

// Writes all of `data` (SSL_write on a blocking socket writes it all or fails).
bool ssl_write_all(ssl_st* ssl, std::string_view data, std::string& error) {
  if (data.empty()) return true;
  const int n = ::SSL_write(ssl, data.data(), static_cast<int>(data.size()));
  if (n > 0) return true;
  error = ssl_io_error(ssl, n, "SSL_write");
  return false;
}

// Ends a TLS session: sends our close_notify without waiting for the peer's, frees the SSL.
void ssl_close(ssl_st*& ssl) {
  if (ssl == nullptr) return;
  ::SSL_shutdown(ssl);
  ::SSL_free(ssl);
  ::ERR_clear_error();
  ssl = nullptr;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// tls_client

tls_client::~tls_client() {
  if (ctx_ != nullptr) ::SSL_CTX_free(ctx_);
}

std::string tls_client::init(const tls_options& o) {
  ctx_ = ::SSL_CTX_new(::TLS_client_method());
  if (ctx_ == nullptr) return ssl_error_text("SSL_CTX_new");
  // What the servers accept anyway (keylockd: TLS 1.2+); a cipher named by the options decides.
  ::SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
  ::SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
  if (o.ca_file.empty()) return "a TLS target needs --tls-ca (the CA that signed the server)";
  if (::SSL_CTX_load_verify_locations(ctx_, o.ca_file.c_str(), nullptr) != 1) {
    return ssl_error_text(("--tls-ca " + o.ca_file).c_str());
  }
  if (!o.cert_file.empty() &&
      ::SSL_CTX_use_certificate_chain_file(ctx_, o.cert_file.c_str()) != 1) {
    return ssl_error_text(("--tls-cert " + o.cert_file).c_str());
  }
  if (!o.key_file.empty()) {
    if (::SSL_CTX_use_PrivateKey_file(ctx_, o.key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
      return ssl_error_text(("--tls-key " + o.key_file).c_str());
    }
    if (::SSL_CTX_check_private_key(ctx_) != 1) {
      return ssl_error_text("--tls-key does not match --tls-cert");
    }
  }
  if (!o.ciphers.empty() && ::SSL_CTX_set_cipher_list(ctx_, o.ciphers.c_str()) != 1) {
    return ssl_error_text(("--tls-ciphers " + o.ciphers).c_str());
  }
  if (!o.ciphersuites.empty() && ::SSL_CTX_set_ciphersuites(ctx_, o.ciphersuites.c_str()) != 1) {
    return ssl_error_text(("--tls-ciphersuites " + o.ciphersuites).c_str());
  }
  // No client session cache: each connection of the handshakes workload pays a full handshake.
  ::SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_OFF);
  return {};
}

ssl_st* tls_client::handshake(int fd, const std::string& host, std::string& error) const {
  ssl_st* ssl = ::SSL_new(ctx_);
  if (ssl == nullptr) {
    error = ssl_error_text("SSL_new");
    return nullptr;
  }
  // The server's certificate must name the target's host: its IP address, or its DNS name
  // (also sent as SNI).
  std::array<unsigned char, 16> addr{};
  const bool is_ip = ::inet_pton(AF_INET, host.c_str(), addr.data()) == 1 ||
                     ::inet_pton(AF_INET6, host.c_str(), addr.data()) == 1;
  X509_VERIFY_PARAM* param = ::SSL_get0_param(ssl);
  const bool named =
      is_ip ? ::X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) == 1
            : ::SSL_set1_host(ssl, host.c_str()) == 1 &&
                  // SSL_set_tlsext_host_name, without its macro's C cast.
                  ::SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
                             const_cast<char*>(host.c_str())) == 1;
  if (!named || ::SSL_set_fd(ssl, fd) != 1) {
    error = ssl_error_text("TLS setup");
    ::SSL_free(ssl);
    return nullptr;
  }
  const int rc = ::SSL_connect(ssl);
  if (rc != 1) {
    const long verify = ::SSL_get_verify_result(ssl);
    error = verify != X509_V_OK ? std::string("TLS handshake: server certificate: ") +
                                      ::X509_verify_cert_error_string(verify)
                                : ssl_io_error(ssl, rc, "TLS handshake");
    if (error == "no reply within the i/o timeout") error = "TLS handshake: no answer in time";
    ::ERR_clear_error();
    ::SSL_free(ssl);
    return nullptr;
  }
  if (!have_first_.load(std::memory_order_acquire)) {
    std::call_once(first_, [&] {
      first_session_ = std::string(::SSL_get_version(ssl)) + ", " + ::SSL_get_cipher_name(ssl);
      have_first_.store(true, std::memory_order_release);
    });
  }
  return ssl;
}

std::string tls_client::negotiated() const {
  return have_first_.load(std::memory_order_acquire) ? first_session_ : std::string();
}

std::int64_t mono_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::string tcp_connect(const std::string& host, std::uint16_t port,
                        std::chrono::milliseconds io_timeout, int& fd_out) {
  fd_out = -1;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res); rc != 0) {
    return "cannot resolve " + host + ": " + ::gai_strerror(rc);
  }
  std::string err = "no address for " + host;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      err = errno_text("socket");
      continue;
    }
    const timeval tv = to_timeval(io_timeout);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      std::string what = "connect to ";
      what += host;
      what += ':';
      what += service;
      err = errno_text(what.c_str());
      ::close(fd);
      continue;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fd_out = fd;
    err.clear();
    break;
  }
  ::freeaddrinfo(res);
  return err;
}

bool send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// keylock_conn

keylock_conn::~keylock_conn() { close(); }

void keylock_conn::close() {
  ssl_close(ssl_);
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

std::string keylock_conn::connect(const target& t, std::chrono::milliseconds io_timeout,
                                  const tls_client* tls) {
  close();
  head_ = tail_ = 0;
  std::string err = tcp_connect(t.host, t.port, io_timeout, fd_);
  if (!err.empty() || !t.tls) return err;
  if (tls == nullptr) err = "a TLS target needs --tls-ca";
  if (err.empty()) ssl_ = tls->handshake(fd_, t.host, err);
  if (ssl_ == nullptr) close();
  return err;
}

bool keylock_conn::send(std::string_view bytes) {
  if (ssl_ != nullptr) [[unlikely]]
    return send_tls(bytes);
  if (send_all(fd_, bytes)) return true;
  error_ = errno_text("send");
  return false;
}

bool keylock_conn::send_tls(std::string_view bytes) { return ssl_write_all(ssl_, bytes, error_); }

bool keylock_conn::has_buffered_frame() const noexcept {
  return std::memchr(buf_.data() + head_, '\n', tail_ - head_) != nullptr;
}

bool keylock_conn::fill() {
  if (head_ > 0) {
    // Move the unfinished frame to the front; frames are small, so this is rare and short.
    std::memmove(buf_.data(), buf_.data() + head_, tail_ - head_);
    tail_ -= head_;
    head_ = 0;
  }
  if (tail_ == buf_.size()) buf_.resize(buf_.size() * 2);
  if (ssl_ != nullptr) [[unlikely]] {
    const int n = ::SSL_read(ssl_, buf_.data() + tail_, static_cast<int>(buf_.size() - tail_));
    if (n > 0) {
      tail_ += static_cast<std::size_t>(n);
      received_ns_ = mono_ns();
      return true;
    }
    error_ = ssl_io_error(ssl_, n, "SSL_read");
    return false;
  }
  for (;;) {
    ssize_t n = ::recv(fd_, buf_.data() + tail_, buf_.size() - tail_, 0);
    if (n > 0) {
      tail_ += static_cast<std::size_t>(n);
      received_ns_ = mono_ns();
      return true;
    }
    if (n == 0) {
      error_ = "server closed the connection";
      return false;
    }
    if (errno == EINTR) continue;
    error_ = (errno == EAGAIN || errno == EWOULDBLOCK) ? "no reply within the i/o timeout"
                                                       : errno_text("recv");
    return false;
  }
}

bool keylock_conn::next_reply(reply_view& out) {
  for (;;) {
    const char* begin = buf_.data() + head_;
    const void* nl = std::memchr(begin, '\n', tail_ - head_);
    if (nl == nullptr) {
      if (!fill()) return false;
      continue;
    }
    const auto len = static_cast<std::size_t>(static_cast<const char*>(nl) - begin);
    std::string_view frame(begin, len);
    head_ += len + 1;
    if (!frame.empty() && frame.back() == '\r') frame.remove_suffix(1);
    if (frame.empty()) continue;
    if (!scan_reply(frame, out)) {
      error_ = "unreadable frame from server: " + std::string(frame.substr(0, 128));
      return false;
    }
    if (out.is_event) continue;
    return true;
  }
}

// ---------------------------------------------------------------------------------------------
// redis_conn

void redis_reply_deleter::operator()(redisReply* r) const noexcept { freeReplyObject(r); }

redis_conn::~redis_conn() { close(); }

void redis_conn::close() {
  if (ctx_ != nullptr) redisFree(ctx_);
  ctx_ = nullptr;
  ssl_close(ssl_);
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (reader_ != nullptr) redisReaderFree(reader_);
  reader_ = nullptr;
  out_.clear();
}

std::string redis_conn::connect(const target& t, std::chrono::milliseconds io_timeout,
                                const tls_client* tls) {
  close();
  if (t.tls) {
    // hiredis 0.14 has no TLS: our own socket and SSL, and hiredis only to parse replies.
    std::string err = tcp_connect(t.host, t.port, io_timeout, fd_);
    if (err.empty() && tls == nullptr) err = "a TLS target needs --tls-ca";
    if (err.empty()) ssl_ = tls->handshake(fd_, t.host, err);
    if (err.empty()) {
      reader_ = redisReaderCreate();
      if (reader_ == nullptr) err = "cannot allocate a redis reply reader";
    }
    if (!err.empty()) close();
    return err;
  }
  ctx_ = redisConnectWithTimeout(t.host.c_str(), t.port, to_timeval(io_timeout));
  if (ctx_ == nullptr) return "cannot allocate a redis context";
  if (ctx_->err != 0) return "connect to " + t.url + ": " + ctx_->errstr;
  if (redisSetTimeout(ctx_, to_timeval(io_timeout)) != REDIS_OK) return "cannot set timeout";
  return {};
}

bool redis_conn::append(std::string_view resp) {
  if (ssl_ != nullptr) [[unlikely]] {
    out_.append(resp);
    return true;
  }
  if (redisAppendFormattedCommand(ctx_, resp.data(), resp.size()) == REDIS_OK) return true;
  error_ = ctx_->errstr;
  return false;
}

redis_reply_ptr redis_conn::next_reply() {
  if (ssl_ != nullptr) [[unlikely]]
    return next_reply_tls();
  void* r = nullptr;
  if (redisGetReply(ctx_, &r) != REDIS_OK || r == nullptr) {
    error_ = ctx_->err != 0 ? std::string(ctx_->errstr) : std::string("no reply");
    if (error_.find("Resource temporarily unavailable") != std::string::npos) {
      error_ = "no reply within the i/o timeout";
    }
    return nullptr;
  }
  return redis_reply_ptr(static_cast<redisReply*>(r));
}

// What redisGetReply does: a reply already parsed, else flush the queued commands, then read
// (16 KiB at a time, as hiredis does) until the parser has one.
redis_reply_ptr redis_conn::next_reply_tls() {
  void* r = nullptr;
  if (redisReaderGetReply(reader_, &r) != REDIS_OK) {
    error_ = std::string("bad reply: ") + reader_->errstr;
    return nullptr;
  }
  if (r != nullptr) return redis_reply_ptr(static_cast<redisReply*>(r));
  if (!out_.empty()) {
    if (!ssl_write_all(ssl_, out_, error_)) return nullptr;
    out_.clear();
  }
  std::array<char, 16 * 1024> buf{};
  for (;;) {
    const int n = ::SSL_read(ssl_, buf.data(), static_cast<int>(buf.size()));
    if (n <= 0) {
      error_ = ssl_io_error(ssl_, n, "SSL_read");
      return nullptr;
    }
    if (redisReaderFeed(reader_, buf.data(), static_cast<std::size_t>(n)) != REDIS_OK ||
        redisReaderGetReply(reader_, &r) != REDIS_OK) {
      error_ = std::string("bad reply: ") + reader_->errstr;
      return nullptr;
    }
    if (r != nullptr) return redis_reply_ptr(static_cast<redisReply*>(r));
  }
}

redis_reply_ptr redis_conn::call(std::string_view resp) {
  if (!append(resp)) return nullptr;
  return next_reply();
}

redis_outcome redis_conn::outcome_of(const redisReply& r, long long& integer, std::string& text) {
  switch (r.type) {
    case REDIS_REPLY_NIL:
      return redis_outcome::nil;
    case REDIS_REPLY_INTEGER:
      integer = r.integer;
      return redis_outcome::integer;
    case REDIS_REPLY_ERROR:
      text.assign(r.str, r.len);
      return redis_outcome::error;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
      text.assign(r.str, r.len);
      return redis_outcome::ok;
    default:
      return redis_outcome::ok;
  }
}

}  // namespace keylock::bench
