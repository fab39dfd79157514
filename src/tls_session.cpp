// The lock protocol over TLS (config listen_tls): a transport beneath `session`, through
// Asio's SSL stream over OpenSSL.
//
// Before the handshake the session looks at the first byte without taking it: a TLS
// connection starts with a handshake record (0x16); anything else is a client speaking plain
// JSON to the TLS port, which gets one plain error line and a close, and a log line. The
// handshake must be done within tls_handshake_timeout_ms (a client that connects and stalls,
// or trickles bytes, is closed then). After it, reads are completion-based through the SSL
// engine into a buffer of the session's own, and every write goes through async writes (the
// engine must encrypt it); a read and a write may be in flight at once.
//
// The graceful close flushes the replies, ends TCP's sending side (no close_notify exchange,
// which a peer could hold open) and reads until the peer closes, as the plain transport does,
// within the session's close deadline.
#include "tls_session.hpp"

#include <boost/asio/ssl.hpp>
#include <spdlog/spdlog.h>

#include <array>
#include <chrono>

namespace keylock {

namespace {

namespace ssl = asio::ssl;

// The reason OpenSSL gives for a failed handshake, for the log ("certificate verify failed").
std::string handshake_error(const error_code& ec) {
  std::string text = ec.message();
  if (ec.category() == asio::error::get_ssl_category()) {
    if (const char* reason = ERR_reason_error_string(static_cast<unsigned long>(ec.value()))) {
      text = reason;
    }
  }
  return text;
}

class tls_session final : public session {
 public:
  tls_session(tcp::socket socket, std::shared_ptr<ssl::context> context, session_host& host,
              owner_id owner, std::string peer)
      : session(host, owner, std::move(peer)),
        context_(std::move(context)),
        stream_(std::move(socket), *context_),
        handshake_timer_(stream_.get_executor()) {}

  void start() override {
    set_socket_options(stream_.next_layer(), host().settings());
    const std::chrono::milliseconds bound(host().settings().tls_handshake_timeout_ms);
    handshake_timer_.expires_after(bound);
    handshake_timer_.async_wait([this, keep = shared_from_this()](const error_code& ec) {
      if (ec || handshaken_ || closed()) return;
      spdlog::warn(
          "peer {}: TLS handshake not done within tls_handshake_timeout_ms ({} ms); "
          "closing",
          info().peer, host().settings().tls_handshake_timeout_ms);
      close(false);
      host().after_batch();
    });
    stream_.next_layer().async_wait(
        tcp::socket::wait_read,
        [this, keep = shared_from_this()](const error_code& ec) { on_first_bytes(ec); });
  }

 private:
  void on_first_bytes(const error_code& ec) {
    if (closed()) return;
    if (ec) {
      close(false);
      host().after_batch();
      return;
    }
    char first = 0;
    error_code peek;
    const std::size_t n =
        stream_.next_layer().receive(asio::buffer(&first, 1), tcp::socket::message_peek, peek);
    if (peek == asio::error::would_block || peek == asio::error::try_again) {
      start_peek_again();
      return;
    }
    if (peek || n == 0) {  // closed before a byte
      close(false);
      host().after_batch();
      return;
    }
    if (first != tls_handshake_byte) {
      spdlog::warn(
          "peer {}: sent plain text to the TLS lock port; closing (this port speaks "
          "the protocol over TLS)",
          info().peer);
      // One plain line the client can read, then the close. What it sent is read first (up to
      // a bound): closing with unread input would reset the connection, and the client could
      // lose the line.
      static constexpr std::string_view refusal =
          R"({"ok":false,"error":"bad_request","message":"this port speaks TLS: connect with TLS, or use the plain port"})"
          "\n";
      auto& socket = stream_.next_layer();
      error_code ignored;
      for (std::size_t drained = 0; drained < buffer_.size();) {
        error_code rec;
        const std::size_t got = socket.read_some(asio::buffer(buffer_), rec);
        if (rec || got == 0) break;
        drained += got;
      }
      socket.write_some(asio::buffer(refusal.data(), refusal.size()), ignored);
      socket.shutdown(tcp::socket::shutdown_send, ignored);
      close(false);
      host().after_batch();
      return;
    }
    stream_.async_handshake(
        ssl::stream_base::server,
        [this, keep = shared_from_this()](const error_code& e) { on_handshake(e); });
  }

  void start_peek_again() {
    stream_.next_layer().async_wait(
        tcp::socket::wait_read,
        [this, keep = shared_from_this()](const error_code& ec) { on_first_bytes(ec); });
  }

  void on_handshake(const error_code& ec) {
    if (closed()) return;
    if (ec) {
      spdlog::warn("peer {}: TLS handshake failed: {}; closing", info().peer, handshake_error(ec));
      close(false);
      host().after_batch();
      return;
    }
    handshaken_ = true;
    handshake_timer_.cancel();
    if (auto subject = peer_subject(); !subject.empty()) host().on_peer_certificate(*this, subject);
    mark_connected();
    do_read();
  }

  // The verified client certificate's subject in RFC 2253 form ("CN=billing,O=Acme"), or empty
  // when the client sent none.
  std::string peer_subject() {
    X509* cert = SSL_get_peer_certificate(stream_.native_handle());
    if (cert == nullptr) return {};
    std::string out;
    if (BIO* bio = BIO_new(BIO_s_mem())) {
      if (X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
        char* data = nullptr;
        const long n = BIO_get_mem_data(bio, &data);
        if (n > 0) out.assign(data, static_cast<std::size_t>(n));
      }
      BIO_free(bio);
    }
    X509_free(cert);
    return out;
  }

  void do_read() {
    reading_ = true;
    stream_.async_read_some(
        asio::buffer(buffer_),
        [this, keep = shared_from_this()](const error_code& ec, std::size_t n) { on_read(ec, n); });
  }

  void on_read(const error_code& ec, std::size_t n) {
    reading_ = false;
    if (closed()) {  // draining after the last reply
      if (!draining_) return;
      drained_ += n;
      if (ec || drained_ > drain_bytes) return finish_close();
      return do_read();
    }
    if (ec) {
      // close_notify, a FIN (truncation) or an error: the peer sends nothing more. Replies to
      // what it sent still go out, as after a plain half-close.
      if (ec == asio::error::eof || ec == ssl::error::stream_truncated) {
        on_peer_finished();
      } else {
        spdlog::debug("peer {}: TLS read failed: {}", info().peer, ec.message());
        close(false);
      }
      host().after_batch();
      return;
    }
    begin_batch();
    host().count_bytes(n, 0);
    consume(buffer_.data(), n);
    host().after_batch();
    if (!closed()) do_read();
  }

  // Everything is written through the engine.
  std::size_t write_now(const char*, std::size_t, error_code& ec) override {
    ec = {};
    return 0;
  }

  void write_async() override {
    stream_.async_write_some(
        asio::buffer(writing_.data() + write_offset_, writing_.size() - write_offset_),
        [this, keep = shared_from_this()](const error_code& ec, std::size_t n) {
          on_write(ec, n);
        });
  }

  void shut_down_sending() override {
    error_code ignored;
    stream_.next_layer().shutdown(tcp::socket::shutdown_send, ignored);
    if (!handshaken_) return finish_close();
    draining_ = true;
    if (!reading_) do_read();
  }

  bool transport_open() const override { return stream_.next_layer().is_open(); }

  void close_transport() override {
    handshake_timer_.cancel();
    error_code ignored;
    stream_.next_layer().close(ignored);
  }

  std::shared_ptr<ssl::context> context_;  // kept: a SIGHUP reload makes a new one
  ssl::stream<tcp::socket> stream_;
  asio::steady_timer handshake_timer_;
  std::array<char, 16384> buffer_{};  // one TLS record at most
  bool handshaken_ = false;
  bool reading_ = false;
  bool draining_ = false;
};

}  // namespace

std::shared_ptr<session> make_tls_session(tcp::socket socket,
                                          std::shared_ptr<asio::ssl::context> context,
                                          session_host& host, owner_id owner, std::string peer) {
  return std::make_shared<tls_session>(std::move(socket), std::move(context), host, owner,
                                       std::move(peer));
}

// The server's TLS settings as a context: TLS 1.2 at least, the certificate chain and key,
// and with a CA file, client certificates required and verified.
std::variant<std::shared_ptr<asio::ssl::context>, std::string> make_tls_context(
    const config& settings) {
  auto context = std::make_shared<ssl::context>(ssl::context::tls_server);
  error_code ec;
  context->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                           ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                           ssl::context::no_tlsv1_1 | ssl::context::single_dh_use,
                       ec);
  if (!ec) context->use_certificate_chain_file(settings.tls_cert_file, ec);
  if (ec) return "tls_cert_file " + settings.tls_cert_file + ": " + handshake_error(ec);
  context->use_private_key_file(settings.tls_key_file, ssl::context::pem, ec);
  if (ec) return "tls_key_file " + settings.tls_key_file + ": " + handshake_error(ec);
  if (!settings.tls_ca_file.empty()) {
    context->load_verify_file(settings.tls_ca_file, ec);
    if (ec) return "tls_ca_file " + settings.tls_ca_file + ": " + handshake_error(ec);
    context->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert, ec);
    if (ec) return "tls_ca_file: " + handshake_error(ec);
  }
  return context;
}

}  // namespace keylock
