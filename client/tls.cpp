// TLS for the client: OpenSSL over a socket that client.cpp connected (see tls.hpp).
#include "tls.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <system_error>

namespace keylock::detail {
namespace {

// OpenSSL's reason for the error at the front of this thread's queue, then clears the queue.
std::string take_openssl_error() {
  const unsigned long code = ERR_get_error();
  std::string out;
  if (code != 0) {
    const char* reason = ERR_reason_error_string(code);
    if (reason != nullptr) {
      out = reason;
    } else {
      std::array<char, 256> buf{};
      ERR_error_string_n(code, buf.data(), buf.size());
      out = buf.data();
    }
  }
  ERR_clear_error();
  return out;
}

// ---- the socket BIO -----------------------------------------------------------------------
// OpenSSL's own socket BIO writes with write(2), which raises SIGPIPE when the daemon has
// gone; a library must not kill its user's process for that. This one sends with
// MSG_NOSIGNAL, and reports a clean end of stream through BIO_CTRL_EOF so that a dropped
// connection reads as "closed", not as a TLS error.

struct bio_socket {
  int fd = -1;
  bool eof = false;
};

bio_socket& socket_of(BIO* bio) { return *static_cast<bio_socket*>(BIO_get_data(bio)); }

int bio_write(BIO* bio, const char* data, std::size_t size, std::size_t* written) {
  BIO_clear_retry_flags(bio);
  for (;;) {
    const ssize_t n = ::send(socket_of(bio).fd, data, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      *written = static_cast<std::size_t>(n);
      return 1;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_write(bio);
    return 0;  // errno says why (SSL_ERROR_SYSCALL)
  }
}

int bio_read(BIO* bio, char* data, std::size_t size, std::size_t* read) {
  BIO_clear_retry_flags(bio);
  for (;;) {
    const ssize_t n = ::recv(socket_of(bio).fd, data, size, MSG_DONTWAIT);
    if (n > 0) {
      *read = static_cast<std::size_t>(n);
      return 1;
    }
    if (n == 0) {
      socket_of(bio).eof = true;
      return 0;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_read(bio);
    return 0;
  }
}

long bio_ctrl(BIO* bio, int cmd, long /*num*/, void* /*ptr*/) {  // NOLINT(google-runtime-int)
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;  // nothing is buffered here
    case BIO_CTRL_EOF:
      return socket_of(bio).eof ? 1 : 0;
    default:
      return 0;
  }
}

int bio_create(BIO* bio) {
  BIO_set_data(bio, new bio_socket);
  BIO_set_init(bio, 1);
  return 1;
}

int bio_destroy(BIO* bio) {
  delete static_cast<bio_socket*>(BIO_get_data(bio));
  BIO_set_data(bio, nullptr);
  return 1;
}

const BIO_METHOD* socket_method() {
  static BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "keylock socket");
    if (m != nullptr) {
      BIO_meth_set_write_ex(m, bio_write);
      BIO_meth_set_read_ex(m, bio_read);
      BIO_meth_set_ctrl(m, bio_ctrl);
      BIO_meth_set_create(m, bio_create);
      BIO_meth_set_destroy(m, bio_destroy);
    }
    return m;
  }();
  return method;
}

bool is_ip_address(const std::string& name) {
  in6_addr buf{};  // large enough for either
  return ::inet_pton(AF_INET, name.c_str(), &buf) == 1 ||
         ::inet_pton(AF_INET6, name.c_str(), &buf) == 1;
}

struct ctx_free {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};

}  // namespace

// ---- tls_context ----------------------------------------------------------------------------

tls_context::tls_context(const tls_files& files) {
  ERR_clear_error();
  std::unique_ptr<SSL_CTX, ctx_free> ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx)
    throw std::runtime_error("keylock: TLS: cannot create a context: " + take_openssl_error());
  auto fail = [](const std::string& what, const std::string& file) {
    return std::invalid_argument("keylock: TLS: cannot load " + what + " '" + file +
                                 "': " + take_openssl_error());
  };
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  // Writes may be retried from another buffer (client.cpp moves the unsent rest), and report
  // what they sent record by record, as send(2) does.
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
  if (files.ca_file.empty()) {
    if (SSL_CTX_set_default_verify_paths(ctx.get()) != 1) {
      throw std::invalid_argument("keylock: TLS: cannot load the system's CA certificates: " +
                                  take_openssl_error());
    }
  } else if (SSL_CTX_load_verify_locations(ctx.get(), files.ca_file.c_str(), nullptr) != 1) {
    throw fail("the CA file", files.ca_file);
  }
  if (files.cert_file.empty() && !files.key_file.empty()) {
    throw std::invalid_argument("keylock: TLS: a client key ('" + files.key_file +
                                "') needs its certificate (cert_file)");
  }
  if (!files.cert_file.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), files.cert_file.c_str()) != 1) {
      throw fail("the client certificate", files.cert_file);
    }
    const std::string& key = files.key_file.empty() ? files.cert_file : files.key_file;
    if (SSL_CTX_use_PrivateKey_file(ctx.get(), key.c_str(), SSL_FILETYPE_PEM) != 1) {
      throw fail("the client key", key);
    }
    if (SSL_CTX_check_private_key(ctx.get()) != 1) {
      throw std::invalid_argument("keylock: TLS: the client key '" + key +
                                  "' does not match the certificate '" + files.cert_file +
                                  "': " + take_openssl_error());
    }
  }
  ctx_ = ctx.release();
}

tls_context::~tls_context() { SSL_CTX_free(ctx_); }

// ---- tls_stream -----------------------------------------------------------------------------

tls_stream::tls_stream(const tls_context& context, int fd, const std::string& server_name) {
  ERR_clear_error();
  ssl_ = SSL_new(context.ctx_);
  BIO* bio = ssl_ != nullptr ? BIO_new(socket_method()) : nullptr;
  if (bio == nullptr) {
    broken_ = true;
    error_ = "cannot create a session: " + take_openssl_error();
    return;
  }
  socket_of(bio).fd = fd;
  SSL_set_bio(ssl_, bio, bio);  // the session owns the BIO
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl_);
  bool named = false;
  if (is_ip_address(server_name)) {
    // An address: checked against the certificate's IP entries; no SNI (RFC 6066 has none).
    named = X509_VERIFY_PARAM_set1_ip_asc(param, server_name.c_str()) == 1;
  } else {
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    // SSL_set_tlsext_host_name, without the macro's C cast.
    named = SSL_ctrl(ssl_, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
                     const_cast<char*>(server_name.c_str())) == 1 &&
            X509_VERIFY_PARAM_set1_host(param, server_name.c_str(), server_name.size()) == 1;
  }
  if (!named) {
    broken_ = true;
    error_ = "invalid server name '" + server_name + "': " + take_openssl_error();
    return;
  }
  SSL_set_connect_state(ssl_);
}

tls_stream::~tls_stream() { SSL_free(ssl_); }

tls_result tls_stream::handshake() {
  if (broken_) return {};
  ERR_clear_error();
  tls_result result = result_of(SSL_do_handshake(ssl_), 0);
  if (result.status == tls_status::closed) {
    // Not a TLS server, or one that refused us without an alert.
    result.status = tls_status::failed;
    error_ = "the server closed the connection during the handshake (is it a TLS port?)";
  }
  return result;
}

tls_result tls_stream::read(char* data, std::size_t size) {
  if (broken_) return {};
  ERR_clear_error();
  std::size_t n = 0;
  const int ret = SSL_read_ex(ssl_, data, size, &n);
  return result_of(ret, n);
}

tls_result tls_stream::write(const char* data, std::size_t size) {
  if (broken_) return {};
  ERR_clear_error();
  std::size_t n = 0;
  const int ret = SSL_write_ex(ssl_, data, size, &n);
  return result_of(ret, n);
}

bool tls_stream::buffered() const { return !broken_ && SSL_pending(ssl_) > 0; }

void tls_stream::close_notify() noexcept {
  if (broken_ || SSL_is_init_finished(ssl_) != 1) return;
  ERR_clear_error();
  SSL_shutdown(ssl_);  // one try, non-blocking: the socket closes next either way
  ERR_clear_error();
}

tls_result tls_stream::result_of(int ret, std::size_t bytes) {
  if (ret == 1) return {tls_status::done, bytes};
  const int code = SSL_get_error(ssl_, ret);
  switch (code) {
    case SSL_ERROR_WANT_READ:
      return {tls_status::want_read};
    case SSL_ERROR_WANT_WRITE:
      return {tls_status::want_write};
    case SSL_ERROR_ZERO_RETURN:
      error_ = "the server ended the TLS session";
      return {tls_status::closed};
    default:
      break;
  }
  // Fatal: OpenSSL forbids further calls on the session, close_notify included.
  broken_ = true;
  const int saved_errno = errno;
  if (socket_of(SSL_get_rbio(ssl_)).eof) {  // closed without close_notify
    ERR_clear_error();
    error_ = "the connection was closed";
    return {tls_status::closed};
  }
  error_ = take_openssl_error();
  const long verify = SSL_get_verify_result(ssl_);  // NOLINT(google-runtime-int)
  if (verify != X509_V_OK) {
    error_ += error_.empty() ? "" : ": ";
    error_ += X509_verify_cert_error_string(verify);
  }
  if (error_.empty()) {
    error_ = code == SSL_ERROR_SYSCALL && saved_errno != 0
                 ? std::system_category().message(saved_errno)
                 : "TLS error " + std::to_string(code);
  }
  return {tls_status::failed};
}

}  // namespace keylock::detail
