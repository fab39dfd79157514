#include "session.hpp"

#include <spdlog/spdlog.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <array>

namespace keylock {

namespace {

// Reads per wake-up before yielding to other connections: a client that streams requests
// must not starve the rest. What is left is read at the next wake-up.
constexpr int max_reads_per_wakeup = 4;
// A graceful close (flush the last replies, send FIN, drain the peer's input) gets this long
// from the moment it begins (and drains at most drain_bytes) before the socket closes.
constexpr std::chrono::milliseconds drain_time{1000};

bool would_block(const error_code& ec) {
  return ec == asio::error::would_block || ec == asio::error::try_again;
}

}  // namespace

// ---- session: everything above the bytes ----------------------------------------------------

session::session(session_host& host, owner_id owner, std::string peer)
    : host_(host), framer_(host.settings().max_frame_bytes) {
  info_.owner = owner;
  info_.peer = std::move(peer);
  connected_at_ = last_active_ =
      host_.now();  // mark_connected() moves them once the transport is up
}

void set_socket_options(tcp::socket& socket, const config& settings) {
  error_code ignored;
  socket.non_blocking(true, ignored);
  socket.set_option(tcp::no_delay(true), ignored);
  if (std::uint32_t idle = settings.tcp_keepalive_s; idle > 0) {
    socket.set_option(asio::socket_base::keep_alive(true), ignored);
    int fd = socket.native_handle();
    int secs = static_cast<int>(idle);
    int interval = std::max(1, secs / 6);
    int probes = 3;
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &secs, sizeof secs);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
  }
}

// Splits `data` into frames and handles them (line_framer: complete frames straight from the
// read buffer; only an unfinished tail is kept).
void session::consume(const char* data, std::size_t n) {
  const auto outcome = framer_.feed(data, n, [this](std::string_view frame) {
    handle_frame(frame);
    return !closed_;  // a frame may close the session: the rest is not read
  });
  if (outcome == line_framer::result::oversized) {
    host_.dispatch().handle_oversized_frame(info_, out_);
    host_.mark_dirty(info_.owner);
    close(true);
  }
}

// The peer half-closed: it may still read the replies to what it sent. Every acquire of it
// still waiting is answered `cancelled` (PROTOCOL.md "Half-close"), then the session closes.
void session::on_peer_finished() {
  host_.dispatch().half_close(info_, host_.now(), out_);
  host_.mark_dirty(info_.owner);
  close(true);
}

void session::handle_frame(std::string_view frame) {
  if (closed_) return;
  if (frame.empty() || frame == "\r") return;
  // A complete frame, even an empty or malformed one: the only thing that resets the idle
  // clock (bytes that never end a frame do not keep a connection open).
  last_active_ = wake_time_;
  const bool was_authenticated = info_.authenticated;
  request& req = host_.scratch_request();
  if (auto err = decode_request(frame, req)) {
    host_.dispatch().handle_decode_error(info_, *err, out_);
  } else {
    host_.dispatch().handle(info_, req, wake_time_, out_);
  }
  host_.mark_dirty(info_.owner);
  if (!was_authenticated && info_.authenticated) host_.on_authenticated(*this);
  if (info_.close_after_reply) {
    close(true);
  } else if (out_.size() > host_.settings().max_output_bytes) {
    // Large replies to a long pipeline: write now rather than at the end of the batch, so
    // memory stays bounded by max_output_bytes (flush closes a client that does not read).
    flush();
  }
}

std::size_t session::unsent() const { return out_.size() + writing_.size() - write_offset_; }

// A client that does not read its replies: closed once more than max_output_bytes wait.
bool session::too_much_unsent() {
  const std::size_t max_output = host_.settings().max_output_bytes;
  if (closed_ || unsent() <= max_output) return false;
  spdlog::warn("peer {}: not reading its replies ({} bytes unsent, max_output_bytes {}); closing",
               info_.peer, unsent(), max_output);
  close(false);
  return true;
}

void session::flush() {
  if (write_in_flight_) {
    too_much_unsent();
    return;  // on_write continues with out_
  }
  if (!out_.empty()) {
    if (!transport_open()) return;
    error_code ec;
    const std::size_t n = write_now(out_.data(), out_.size(), ec);
    if (ec) {
      spdlog::debug("peer {}: write failed: {}", info_.peer, ec.message());
      if (!closed_) close(false);
      finish_close();
      return;
    }
    host_.count_bytes(0, n);
    if (n == out_.size()) {
      out_.clear();
    } else {
      // The transport took part of it: hand the rest to async writes, keep out_ for new
      // replies.
      writing_.swap(out_);
      write_offset_ = n;
      out_.clear();
      if (too_much_unsent()) return;
      write_progress_at_ = host_.now();
      start_async_write();
      return;
    }
  }
  if (shutdown_pending_) {
    shutdown_pending_ = false;
    shut_down_sending();
  }
}

void session::start_async_write() {
  write_in_flight_ = true;
  write_async();
}

void session::on_write(const error_code& ec, std::size_t n) {
  write_in_flight_ = false;
  host_.count_bytes(0, n);
  if (ec) {
    if (!closed_) {
      close(false);
      host_.after_batch();
    }
    finish_close();
    return;
  }
  write_offset_ += n;
  if (n > 0) write_progress_at_ = host_.now();
  if (write_offset_ < writing_.size()) {
    start_async_write();
    return;
  }
  writing_.clear();
  write_offset_ = 0;
  if (writing_.capacity() > (64u << 10)) writing_.shrink_to_fit();
  flush();
}

void session::close(bool graceful) {
  if (closed_) return;
  auto self = shared_from_this();  // the server drops its reference in on_closed
  closed_ = true;
  tick now = host_.now();
  host_.dispatch().disconnect(info_, now);
  host_.on_closed(*this, graceful);
  if (!graceful) {
    out_.clear();
    finish_close();
    return;
  }
  // One bound for the whole graceful close, from now: flushing included, so a peer that never
  // reads cannot keep the socket (and its slot) open.
  close_deadline_ = now + drain_time;
  shutdown_pending_ = true;
  if (!write_in_flight_) flush();
}

void session::abort() {
  if (!closed_) close(false);
  finish_close();
}

void session::finish_close() {
  if (!transport_open()) return;
  close_transport();
  host_.on_socket_closed(*this);
}

// ---- tcp_session: plain TCP ------------------------------------------------------------------

namespace {

// Reads are speculative async_read_some calls into a small buffer of the session's own, so the
// reactor's edge-triggered registration stays as it is and no read costs an epoll_ctl (a
// readiness wait, async_wait(wait_read), re-arms the descriptor with one each time). A read
// that fills the small buffer goes on into the server's shared scratch buffer, drained per
// wake-up (bounded), so a long pipeline still costs few reads and an idle connection costs
// only the small buffer. Writes go straight to the kernel when it takes them.
class tcp_session final : public session {
 public:
  tcp_session(tcp::socket socket, session_host& host, owner_id owner, std::string peer)
      : session(host, owner, std::move(peer)), socket_(std::move(socket)) {}

  void start() override {
    set_socket_options(socket_, host().settings());
    mark_connected();
    do_read();
  }

 private:
  void do_read() {
    socket_.async_read_some(
        asio::buffer(first_),
        [this, keep = shared_from_this()](const error_code& ec, std::size_t n) { on_read(ec, n); });
  }

  void on_read(const error_code& ec, std::size_t n) {
    if (closed()) return;
    if (ec == asio::error::operation_aborted) return;
    begin_batch();  // one clock read per wake-up
    if (!ec && take(first_.data(), n) && n == first_.size()) {
      // More may be waiting: go on into the big buffer.
      std::vector<char>& buf = host().scratch();
      for (int round = 0; round < max_reads_per_wakeup && !closed(); ++round) {
        error_code rec;
        const std::size_t got = socket_.read_some(asio::buffer(buf), rec);
        if (would_block(rec)) break;
        if (rec) {
          failed(rec);
          break;
        }
        if (!take(buf.data(), got) || got < buf.size()) break;
      }
    } else if (ec) {
      failed(ec);
    }
    host().after_reads();
    if (!closed() && !host().defer_read(*this)) do_read();
  }

  void resume_reading() override {
    if (!closed()) do_read();
  }

  // Bytes read: checked (a TLS handshake on this port) and framed. False when the session
  // closed on them.
  bool take(const char* data, std::size_t n) {
    host().count_bytes(n, 0);
    if (!heard_ && n > 0 && data[0] == tls_handshake_byte) {
      spdlog::warn(
          "peer {}: sent a TLS handshake to the plain-TCP lock port; closing (this "
          "port speaks newline-delimited JSON without TLS)",
          info().peer);
      close(false);
      return false;
    }
    heard_ = true;
    consume(data, n);
    return !closed();
  }

  // A read ended the stream (EOF: the peer half-closed) or failed.
  void failed(const error_code& ec) {
    if (ec == asio::error::eof) return on_peer_finished();
    spdlog::debug("peer {}: read failed: {}", info().peer, ec.message());
    close(false);
  }

  std::size_t write_now(const char* data, std::size_t n, error_code& ec) override {
    const std::size_t written = socket_.write_some(asio::buffer(data, n), ec);
    if (would_block(ec)) {
      ec = {};
      return 0;
    }
    return written;
  }

  // One write_some at a time rather than async_write: each completion shows progress, which
  // is what write_timeout_ms measures.
  void write_async() override {
    socket_.async_write_some(
        asio::buffer(writing_.data() + write_offset_, writing_.size() - write_offset_),
        [this, keep = shared_from_this()](const error_code& ec, std::size_t n) {
          on_write(ec, n);
        });
  }

  void shut_down_sending() override {
    error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
    do_drain();
  }

  void do_drain() {
    socket_.async_wait(tcp::socket::wait_read,
                       [this, keep = shared_from_this()](const error_code& ec) { on_drain(ec); });
  }

  void on_drain(const error_code& ec) {
    if (ec || !socket_.is_open()) return finish_close();
    std::vector<char>& buf = host().scratch();
    for (;;) {
      error_code rec;
      std::size_t n = socket_.read_some(asio::buffer(buf), rec);
      if (would_block(rec)) break;
      if (rec) return finish_close();  // EOF: the peer has everything
      drained_ += n;
      if (drained_ > drain_bytes) return finish_close();
    }
    do_drain();
  }

  bool transport_open() const override { return socket_.is_open(); }

  void close_transport() override {
    error_code ignored;
    socket_.close(ignored);
  }

  tcp::socket socket_;
  std::array<char, 512> first_{};  // each read's first bytes (see the class comment)
  bool heard_ = false;  // a byte has come: a TLS handshake would have been its first
};

}  // namespace

std::shared_ptr<session> make_tcp_session(tcp::socket socket, session_host& host, owner_id owner,
                                          std::string peer) {
  return std::make_shared<tcp_session>(std::move(socket), host, owner, std::move(peer));
}

}  // namespace keylock
