#include "session.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <spdlog/spdlog.h>

#include <cstring>

namespace keylock {

namespace {

// Reads per wake-up before yielding to other connections: a client that streams requests
// must not starve the rest. What is left is read at the next wake-up.
constexpr int max_reads_per_wakeup = 4;
// After a closing reply, how long and how much input is drained before the socket is closed.
constexpr std::chrono::milliseconds drain_time{1000};
constexpr std::size_t drain_bytes = 1u << 20;

bool would_block(const error_code& ec) {
  return ec == asio::error::would_block || ec == asio::error::try_again;
}

}  // namespace

session::session(tcp::socket socket, session_host& host, owner_id owner, std::string peer)
    : socket_(std::move(socket)), host_(host) {
  info_.owner = owner;
  info_.peer = std::move(peer);
}

void session::start() {
  error_code ignored;
  socket_.non_blocking(true, ignored);
  socket_.set_option(tcp::no_delay(true), ignored);
  if (std::uint32_t idle = host_.settings().tcp_keepalive_s; idle > 0) {
    socket_.set_option(asio::socket_base::keep_alive(true), ignored);
    int fd = socket_.native_handle();
    int secs = static_cast<int>(idle);
    int interval = std::max(1, secs / 6);
    int probes = 3;
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &secs, sizeof secs);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
  }
  last_active_ = host_.now();
  do_read();
}

void session::do_read() {
  socket_.async_wait(tcp::socket::wait_read,
                     [self = shared_from_this()](const error_code& ec) { self->on_readable(ec); });
}

void session::on_readable(const error_code& ec) {
  if (closed_) return;
  if (ec) {
    if (ec != asio::error::operation_aborted) {
      close(false);
      host_.after_batch();
    }
    return;
  }
  last_active_ = host_.now();
  std::vector<char>& buf = host_.scratch();
  for (int round = 0; round < max_reads_per_wakeup && !closed_; ++round) {
    error_code rec;
    std::size_t n = socket_.read_some(asio::buffer(buf), rec);
    if (would_block(rec)) break;
    if (rec == asio::error::eof) {
      // The peer finished sending; it may still read the replies to what it sent.
      close(true);
      break;
    }
    if (rec) {
      spdlog::debug("peer {}: read failed: {}", info_.peer, rec.message());
      close(false);
      break;
    }
    host_.count_bytes(n, 0);
    consume(buf.data(), n);
    if (n < buf.size()) break;
  }
  host_.after_batch();
  if (!closed_) do_read();
}

// Splits `data` into frames. Complete frames are handled straight from the read buffer; only
// the tail of an unfinished frame is kept. A frame is known to be too large as soon as more
// than max_frame_bytes have arrived without a newline.
void session::consume(const char* data, std::size_t n) {
  const std::size_t max_frame = host_.settings().max_frame_bytes;
  auto oversized = [this] {
    partial_.clear();
    partial_.shrink_to_fit();
    host_.dispatch().handle_oversized_frame(info_, out_);
    host_.mark_dirty(info_.owner);
    close(true);
  };
  if (!partial_.empty()) {
    const void* nl = std::memchr(data, '\n', n);
    std::size_t len = nl ? static_cast<std::size_t>(static_cast<const char*>(nl) - data) : n;
    if (partial_.size() + len > max_frame) return oversized();
    partial_.append(data, len);
    if (nl == nullptr) return;
    handle_frame(partial_);
    partial_.clear();
    if (partial_.capacity() > 4096) partial_.shrink_to_fit();  // a big frame once: give it back
    data += len + 1;
    n -= len + 1;
  }
  while (n > 0 && !closed_) {
    const void* nl = std::memchr(data, '\n', n);
    if (nl == nullptr) {
      if (n > max_frame) return oversized();
      partial_.assign(data, n);
      return;
    }
    std::size_t len = static_cast<std::size_t>(static_cast<const char*>(nl) - data);
    if (len > max_frame) return oversized();
    handle_frame(std::string_view(data, len));
    data += len + 1;
    n -= len + 1;
  }
}

void session::handle_frame(std::string_view frame) {
  if (closed_) return;
  if (frame.empty() || frame == "\r") return;
  request& req = host_.scratch_request();
  if (auto err = decode_request(frame, req)) {
    host_.dispatch().handle_decode_error(info_, *err, out_);
  } else {
    host_.dispatch().handle(info_, req, last_active_, out_);
  }
  host_.mark_dirty(info_.owner);
  if (info_.close_after_reply) {
    close(true);
  } else if (out_.size() > host_.settings().max_output_bytes) {
    // Large replies to a long pipeline: write now rather than at the end of the batch, so
    // memory stays bounded by max_output_bytes (flush closes a client that does not read).
    flush();
  }
}

void session::flush() {
  if (write_in_flight_) {
    if (!closed_ && out_.size() + writing_.size() > host_.settings().max_output_bytes) {
      spdlog::warn("peer {}: not reading its replies ({} bytes unsent, max_output_bytes {}); "
                   "closing",
                   info_.peer, out_.size() + writing_.size(), host_.settings().max_output_bytes);
      close(false);
    }
    return;  // on_write continues with out_
  }
  if (!out_.empty()) {
    if (!socket_.is_open()) return;
    error_code ec;
    std::size_t n = socket_.write_some(asio::buffer(out_), ec);
    if (would_block(ec)) {
      n = 0;
      ec = {};
    }
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
      // The kernel took part of it: hand the rest to an async write, keep out_ for new replies.
      writing_.swap(out_);
      writing_.erase(0, n);
      out_.clear();
      if (!closed_ && writing_.size() > host_.settings().max_output_bytes) {
        spdlog::warn("peer {}: not reading its replies ({} bytes unsent, max_output_bytes {}); "
                     "closing",
                     info_.peer, writing_.size(), host_.settings().max_output_bytes);
        close(false);
        return;
      }
      do_write();
      return;
    }
  }
  if (shutdown_pending_) {
    shutdown_pending_ = false;
    error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
    do_drain();
  }
}

void session::do_write() {
  write_in_flight_ = true;
  asio::async_write(socket_, asio::buffer(writing_),
                    [self = shared_from_this()](const error_code& ec, std::size_t n) {
                      self->on_write(ec, n);
                    });
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
  writing_.clear();
  if (writing_.capacity() > (64u << 10)) writing_.shrink_to_fit();
  flush();
}

void session::close(bool graceful) {
  if (closed_) return;
  auto self = shared_from_this();  // the server drops its reference in on_closed
  closed_ = true;
  host_.dispatch().disconnect(info_, host_.now());
  host_.on_closed(*this, graceful);
  if (!graceful) {
    out_.clear();
    finish_close();
    return;
  }
  shutdown_pending_ = true;
  if (!write_in_flight_) flush();
}

void session::do_drain() {
  draining_ = true;
  drain_deadline_ = host_.now() + drain_time;
  socket_.async_wait(tcp::socket::wait_read,
                     [self = shared_from_this()](const error_code& ec) { self->on_drain(ec); });
}

void session::on_drain(const error_code& ec) {
  if (ec || !socket_.is_open()) return finish_close();
  std::vector<char>& buf = host_.scratch();
  for (;;) {
    error_code rec;
    std::size_t n = socket_.read_some(asio::buffer(buf), rec);
    if (would_block(rec)) break;
    if (rec) return finish_close();  // EOF: the peer has everything
    drained_ += n;
    if (drained_ > drain_bytes) return finish_close();
  }
  socket_.async_wait(tcp::socket::wait_read,
                     [self = shared_from_this()](const error_code& e) { self->on_drain(e); });
}

void session::abort() { finish_close(); }

void session::finish_close() {
  draining_ = false;
  if (!socket_.is_open()) return;
  error_code ignored;
  socket_.close(ignored);
}

}  // namespace keylock
