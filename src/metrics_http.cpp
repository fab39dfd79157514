// The metrics and health HTTP listener (metrics_http.hpp), after Beast's async HTTP server:
// one http_session per connection owning its stream, buffer, parser and the one response in
// flight, through do_read/on_read/do_write/on_write/do_close. Requests are answered one at a
// time (the next read starts after the response is written), so nothing queues up.
//
// With metrics_tls, sessions run over beast::ssl_stream (http_session<Stream> serves both).
//
// The only TU of keylock that includes Beast. Runs on the io_context thread only.
#include "metrics_http.hpp"

#include "asio_common.hpp"  // first: <utility> before any Asio/Beast header

#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <spdlog/spdlog.h>

#include <array>
#include <chrono>
#include <exception>
#include <unordered_set>
#include <vector>

namespace keylock {

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = boost::asio::ssl;

// Limits of the listener. It serves a scraper and probes, so they are small and fixed: what
// they bound is how much any peer of this port can cost the daemon's one thread.
//
// Connections open at once. One more that arrives is admitted, and the open connection that
// has waited longest without completing a request (oldest still reading; if none reads, the
// oldest) is closed instead: refusing the newcomer would let slow clients holding every slot
// starve /healthz, and a restarted daemon drops every lease (see metrics_http.hpp).
constexpr std::size_t max_http_connections = 64;
// Deadline of each read of a whole request and each write of a whole response. A client that
// trickles its header (slowloris) or idles between keep-alive requests is closed by it.
constexpr std::chrono::seconds io_timeout{5};
// Request line plus fields. A GET carries nothing more; beyond it: 400.
constexpr std::uint32_t max_header_bytes = 8 * 1024;
// The read buffer: the header limit plus room for the start of a pipelined next request.
constexpr std::size_t max_buffer_bytes = 16 * 1024;
// Requests per connection, after which the response says Connection: close.
constexpr unsigned max_requests_per_connection = 100;
// After a response that closes the connection: send FIN, then read and discard what the
// peer still sends (so that closing does not reset the connection and destroy the response
// before the peer reads it), for at most this long and this much.
constexpr std::chrono::seconds drain_timeout{1};
constexpr std::size_t max_drain_bytes = 64 * 1024;
// Back-off after a failed accept (EMFILE...), instead of spinning on the listen queue.
constexpr std::chrono::milliseconds accept_retry{100};
// At most one warning per this interval about connections evicted at the cap.
constexpr std::chrono::seconds eviction_log_interval{10};

constexpr std::string_view metrics_content_type = "text/plain; version=0.0.4; charset=utf-8";
constexpr std::string_view text_content_type = "text/plain; charset=utf-8";

// "ok\n", or "ok: REASON\n" when the daemon has something to say.
std::string probe_body(std::string_view verdict, const std::string& reason) {
  std::string body(verdict);
  if (!reason.empty()) {
    body += ": ";
    body += reason;
  }
  body += '\n';
  return body;
}

bool is_parse_error(const beast::error_code& ec) {
  return ec.category() == http::make_error_code(http::error::need_more).category();
}

// What the listener's registry and eviction policy see of a session, plain or TLS.
class http_session_base {
 public:
  virtual ~http_session_base() = default;
  // Closes the socket now; pending operations complete with operation_aborted and end.
  virtual void close_now() = 0;
  // For the eviction policy: closed (on its way out), reading (waiting for a request) since
  // the stamp read_since(), or else writing or draining. Stamps come from next_stamp().
  bool closed() const { return closed_; }
  bool reading() const { return reading_; }
  std::uint64_t read_since() const { return read_since_; }
  std::uint64_t accepted() const { return accepted_; }
  const std::string& peer() const { return peer_; }

 protected:
  http_session_base(std::string peer, std::uint64_t accepted)
      : peer_(std::move(peer)), accepted_(accepted) {}
  std::string peer_;  // "ip:port", for logs
  std::uint64_t accepted_;        // stamp of the accept
  std::uint64_t read_since_ = 0;  // stamp of the start of the current read
  bool reading_ = false;
  bool closed_ = false;
};

// The acceptor and the registry of open sessions. Shared by the pending accept and every
// session, so that it outlives them whatever order metrics_http and the handlers end in.
class listener : public std::enable_shared_from_this<listener> {
 public:
  listener(asio::io_context& io, metrics_http::hooks h)
      : hooks_(std::move(h)), acceptor_(io), retry_timer_(io) {}

  std::optional<std::string> listen(const std::string& host_port, std::string* bound);
  void stop();

  const metrics_http::hooks& hooks() const { return hooks_; }
  bool stopped() const { return stopped_; }
  void add(http_session_base* s) { sessions_.insert(s); }
  void remove(http_session_base* s) { sessions_.erase(s); }
  void set_tls(std::shared_ptr<ssl::context> context) { tls_ = std::move(context); }
  // Increasing stamps that order accepts and the starts of reads (no clock needed).
  std::uint64_t next_stamp() { return ++stamp_; }

 private:
  void do_accept();
  void on_accept(const error_code& ec, tcp::socket socket);
  // At the cap: closes the session chosen by the policy of max_http_connections.
  void evict_one(const std::string& newcomer);

  metrics_http::hooks hooks_;
  tcp::acceptor acceptor_;
  asio::steady_timer retry_timer_;
  std::unordered_set<http_session_base*> sessions_;  // every live session; each erases itself
  std::shared_ptr<ssl::context> tls_;               // set: new connections speak HTTPS
  std::uint64_t stamp_ = 0;
  std::uint64_t evicted_ = 0;
  std::chrono::steady_clock::time_point last_eviction_log_{};
  bool stopped_ = false;
};

// One connection, over `Stream`: beast::tcp_stream (HTTP) or an ssl_stream over it (HTTPS).
template <class Stream>
class http_session final : public http_session_base,
                           public std::enable_shared_from_this<http_session<Stream>> {
  static constexpr bool tls = !std::is_same_v<Stream, beast::tcp_stream>;

 public:
  http_session(tcp::socket&& socket, std::string peer, std::shared_ptr<listener> owner,
               std::shared_ptr<ssl::context> context)
      : http_session_base(std::move(peer), owner->next_stamp()),
        stream_(make_stream(std::move(socket), context)),
        buffer_(max_buffer_bytes),
        owner_(std::move(owner)),
        context_(std::move(context)) {
    owner_->add(this);
  }
  ~http_session() override { owner_->remove(this); }
  http_session(const http_session&) = delete;
  http_session& operator=(const http_session&) = delete;

  void start() {
    if constexpr (tls) {
      // The handshake has the deadline of a request: a peer that stalls in it is cut.
      reading_ = true;
      read_since_ = owner_->next_stamp();
      lowest().expires_after(io_timeout);
      stream_.async_handshake(ssl::stream_base::server,
                              beast::bind_front_handler(&http_session::on_handshake, self()));
    } else {
      do_read();
    }
  }

  void close_now() override {
    if (closed_) return;
    closed_ = true;
    lowest().close();
  }

 private:
  static Stream make_stream(tcp::socket&& socket, const std::shared_ptr<ssl::context>& context) {
    if constexpr (tls) {
      return Stream(std::move(socket), *context);
    } else {
      return Stream(std::move(socket));
    }
  }

  beast::tcp_stream& lowest() { return beast::get_lowest_layer(stream_); }
  std::shared_ptr<http_session> self() { return this->shared_from_this(); }

  void on_handshake(beast::error_code ec) {
    reading_ = false;
    if (closed_) return;
    if (ec) {
      // Debug, not warn: this port may face scanners (see on_read).
      spdlog::debug("metrics https: peer {}: TLS handshake failed: {}", peer_, ec.message());
      return close_now();
    }
    do_read();
  }

  void do_read() {
    reading_ = true;
    read_since_ = owner_->next_stamp();
    parser_.emplace();
    parser_->header_limit(max_header_bytes);
    parser_->body_limit(0);  // GET and HEAD have no body: any body fails the read (400)
    // One deadline for the whole request, not per byte: a trickled header is cut at 5 s.
    lowest().expires_after(io_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     beast::bind_front_handler(&http_session::on_read, self()));
  }

  void on_read(beast::error_code ec, std::size_t /*bytes*/) {
    reading_ = false;
    if (closed_) return;
    if (ec == http::error::end_of_stream) return do_close();  // EOF between requests
    if (ec && is_parse_error(ec)) {
      // Debug, not warn: this port is unauthenticated and a scanner must not flood the log.
      spdlog::debug("metrics http: peer {}: bad request: {}", peer_, ec.message());
      // Malformed, oversized, or a request with a body. A body is only seen after the start
      // line was parsed, so for a POST with a body the method is known and the better answer.
      bool body = ec == http::error::body_limit || ec == http::error::unexpected_body;
      if (body && !is_get_or_head(parser_->get().method())) {
        return respond(http::status::method_not_allowed, "method not allowed\n", text_content_type,
                       close_after::yes);
      }
      return respond(http::status::bad_request, "bad request\n", text_content_type,
                     close_after::yes);
    }
    if (ec) return close_now();  // timeout, reset, aborted: nobody to answer
    handle_request();
  }

  static bool is_get_or_head(http::verb v) { return v == http::verb::get || v == http::verb::head; }

  enum class close_after : bool { no, yes };

  void handle_request() {
    const auto& req = parser_->get();
    ++requests_;
    head_ = req.method() == http::verb::head;
    version_ = req.version();
    close_after close =
        (req.keep_alive() && requests_ < max_requests_per_connection && !owner_->stopped())
            ? close_after::no
            : close_after::yes;
    if (!is_get_or_head(req.method())) {
      return respond(http::status::method_not_allowed, "method not allowed\n", text_content_type,
                     close);
    }
    beast::string_view target = req.target();
    beast::string_view path = target.substr(0, target.find('?'));
    const metrics_http::hooks& h = owner_->hooks();
    // A hook that throws must not take the daemon's thread down: it answers 500.
    try {
      if (path == "/metrics") {
        return respond(http::status::ok, h.render_metrics ? h.render_metrics() : std::string(),
                       metrics_content_type, close);
      }
      if (path == "/healthz") {
        // Answered by the event loop itself: a stuck loop answers nothing, and the probe
        // times out. Unset hooks count as ok.
        metrics_http::probe p = h.healthy ? h.healthy() : metrics_http::probe{};
        return respond(p.ok ? http::status::ok : http::status::service_unavailable,
                       probe_body(p.ok ? "ok" : "unhealthy", p.reason), text_content_type, close);
      }
      if (path == "/readyz") {
        metrics_http::probe p = h.ready ? h.ready() : metrics_http::probe{};
        return respond(p.ok ? http::status::ok : http::status::service_unavailable,
                       probe_body(p.ok ? "ready" : "not ready", p.reason), text_content_type,
                       close);
      }
    } catch (const std::exception&) {
      return respond(http::status::internal_server_error, "internal error\n", text_content_type,
                     close_after::yes);
    }
    respond(http::status::not_found, "not found\n", text_content_type, close);
  }

  void respond(http::status status, std::string body, std::string_view content_type,
               close_after close) {
    res_ = {};
    res_.version(version_ == 10 ? 10 : 11);
    res_.result(status);
    res_.set(http::field::server, "keylockd");
    res_.set(http::field::content_type,
             beast::string_view(content_type.data(), content_type.size()));
    if (status == http::status::method_not_allowed) res_.set(http::field::allow, "GET, HEAD");
    res_.keep_alive(close == close_after::no);
    res_.body() = std::move(body);
    res_.prepare_payload();
    if (head_) res_.body().clear();  // HEAD: the GET's Content-Length, no body
    close_after_write_ = close == close_after::yes;
    do_write();
  }

  void do_write() {
    lowest().expires_after(io_timeout);
    http::async_write(stream_, res_, beast::bind_front_handler(&http_session::on_write, self()));
  }

  void on_write(beast::error_code ec, std::size_t /*bytes*/) {
    if (closed_) return;
    if (ec) return close_now();
    if (close_after_write_) return do_close();
    head_ = false;
    do_read();
  }

  // Graceful close: FIN (over TLS, close_notify first), then drain (see drain_timeout), then
  // close.
  void do_close() {
    lowest().expires_after(drain_timeout);
    if constexpr (tls) {
      stream_.async_shutdown([me = self()](beast::error_code) { me->close_now(); });
    } else {
      beast::error_code ignored;
      stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
      do_drain();
    }
  }

  void do_drain() {
    stream_.async_read_some(asio::buffer(drain_buf_),
                            beast::bind_front_handler(&http_session::on_drain, self()));
  }

  void on_drain(beast::error_code ec, std::size_t bytes) {
    if (closed_) return;
    drained_ += bytes;
    if (ec || drained_ > max_drain_bytes) return close_now();  // EOF ends the drain too
    do_drain();
  }

  Stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::empty_body>> parser_;
  http::response<http::string_body> res_;
  std::shared_ptr<listener> owner_;
  std::shared_ptr<ssl::context> context_;  // kept alive while the stream uses it (TLS)
  std::array<char, 2048> drain_buf_{};
  std::size_t drained_ = 0;
  unsigned requests_ = 0;
  unsigned version_ = 11;
  bool head_ = false;
  bool close_after_write_ = false;
};

std::optional<std::string> listener::listen(const std::string& host_port, std::string* bound) {
  if (stopped_) return "the metrics listener was stopped";
  if (acceptor_.is_open()) return "the metrics listener is already listening";
  tcp::endpoint local;
  if (auto err = open_listener(acceptor_, host_port, local)) return err;
  if (bound != nullptr) *bound = endpoint_text(local);
  do_accept();
  return std::nullopt;
}

void listener::stop() {
  stopped_ = true;
  error_code ignored;
  acceptor_.close(ignored);
  retry_timer_.cancel();
  // close_now() only starts the end of a session (its handlers run later), so the set does
  // not change under the loop; iterate a copy all the same.
  std::vector<http_session_base*> open(sessions_.begin(), sessions_.end());
  for (http_session_base* s : open) s->close_now();
}

void listener::do_accept() {
  acceptor_.async_accept([self = shared_from_this()](const error_code& ec, tcp::socket socket) {
    self->on_accept(ec, std::move(socket));
  });
}

void listener::on_accept(const error_code& ec, tcp::socket socket) {
  if (stopped_ || ec == asio::error::operation_aborted) return;
  if (ec) {
    spdlog::warn("metrics http: accept failed: {}; retrying in {} ms", ec.message(),
                 accept_retry.count());
    retry_timer_.expires_after(accept_retry);
    retry_timer_.async_wait([self = shared_from_this()](const error_code& e) {
      if (!e && !self->stopped_) self->do_accept();
    });
    return;
  }
  error_code pe;
  auto remote = socket.remote_endpoint(pe);
  std::string peer = pe ? std::string("?") : endpoint_text(remote);
  if (sessions_.size() >= max_http_connections) evict_one(peer);
  try {
    if (tls_) {
      std::make_shared<http_session<beast::ssl_stream<beast::tcp_stream>>>(
          std::move(socket), std::move(peer), shared_from_this(), tls_)
          ->start();
    } else {
      std::make_shared<http_session<beast::tcp_stream>>(std::move(socket), std::move(peer),
                                                        shared_from_this(), nullptr)
          ->start();
    }
  } catch (const std::exception&) {
    // bad_alloc: this connection is dropped (its socket closes with it); keep accepting.
  }
  do_accept();
}

void listener::evict_one(const std::string& newcomer) {
  // Sessions already closed stay in the set until their aborted handlers have run (in this
  // turn of the loop); they do not count against the cap and cannot be evicted again.
  std::size_t open = 0;
  http_session_base* oldest_reading = nullptr;
  http_session_base* oldest = nullptr;
  for (http_session_base* s : sessions_) {
    if (s->closed()) continue;
    ++open;
    if (s->reading() &&
        (oldest_reading == nullptr || s->read_since() < oldest_reading->read_since())) {
      oldest_reading = s;
    }
    if (oldest == nullptr || s->accepted() < oldest->accepted()) oldest = s;
  }
  if (open < max_http_connections) return;
  http_session_base* victim = oldest_reading != nullptr ? oldest_reading : oldest;
  ++evicted_;
  auto now = std::chrono::steady_clock::now();
  if (now - last_eviction_log_ >= eviction_log_interval) {
    last_eviction_log_ = now;
    spdlog::warn(
        "metrics http: {} connections open; closed peer {} ({}) to admit peer {} ({} "
        "evicted so far)",
        max_http_connections, victim->peer(),
        victim == oldest_reading ? "longest waiting for a request" : "oldest, none reading",
        newcomer, evicted_);
  }
  victim->close_now();
}

}  // namespace

struct metrics_http::impl {
  std::shared_ptr<listener> l;
};

metrics_http::metrics_http(boost::asio::io_context& io, hooks h)
    : impl_(std::make_unique<impl>(impl{std::make_shared<listener>(io, std::move(h))})) {}

metrics_http::~metrics_http() { impl_->l->stop(); }

std::optional<std::string> metrics_http::listen(const std::string& host_port, std::string* bound) {
  return impl_->l->listen(host_port, bound);
}

void metrics_http::set_tls(std::shared_ptr<ssl::context> context) {
  impl_->l->set_tls(std::move(context));
}

void metrics_http::stop() { impl_->l->stop(); }

}  // namespace keylock
