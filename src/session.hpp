// One client connection: owns its socket, its partial-frame buffer and its output queue.
//
// Reading: the session waits for readability, then reads into the server's shared scratch
// buffer until the socket is drained (bounded per wake-up), handling every complete frame in
// place; only an unfinished frame is copied into the session's own buffer. An idle connection
// therefore holds no read buffer at all.
//
// Writing: replies and pushed events are appended to `out_`. Once per wake-up the server asks
// every session with new output to flush: the session writes what the kernel takes at once
// and hands only the rest to async writes. Unsent output beyond max_output_bytes (a client
// that does not read) closes the connection, and so do writes that make no progress for
// write_timeout_ms (the server checks write_stalled_since()).
//
// Deadlines: the idle clock (last_active) moves only when a complete frame is handled, never
// for bytes of an unfinished one. A connection that has not authenticated is closed by the
// server after auth_timeout_ms (connected_at).
//
// Closing releases the connection's leases and drops its waiters at once. After a reply that
// closes (frame_too_large, unauthenticated) or a half-close by the peer, the session shuts
// down its sending side once its queued output is written and drains input, so the peer's
// kernel delivers the replies rather than a reset. The whole graceful close has one bound from
// the moment it begins (close_deadline); the server aborts the session when it passes. Until
// its socket is closed, a closing session still counts as a connection (host.on_socket_closed).
//
// Runs on the io_context thread only.
#pragma once

#include "asio_common.hpp"
#include "dispatch.hpp"
#include "framer.hpp"

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace keylock {

class session;

// What a session needs from the server that owns it.
class session_host {
 public:
  virtual ~session_host() = default;
  virtual const config& settings() const = 0;
  virtual dispatcher& dispatch() = 0;
  virtual tick now() const = 0;
  virtual std::vector<char>& scratch() = 0;    // shared read buffer
  virtual request& scratch_request() = 0;      // shared decode target
  virtual void mark_dirty(owner_id owner) = 0;  // this session has output to flush
  virtual void after_batch() = 0;              // flush dirty sessions, re-arm the deadline timer
  virtual void on_closed(session& s, bool draining) = 0;
  virtual void on_socket_closed(session& s) = 0;  // its descriptor is released
  virtual void on_authenticated(session& s) = 0;  // its hello passed auth
  virtual void count_bytes(std::size_t received, std::size_t sent) = 0;  // for metrics
};

class session : public std::enable_shared_from_this<session> {
 public:
  session(tcp::socket socket, session_host& host, owner_id owner, std::string peer);

  void start();
  // Appends to the output queue (caller marks dirty).
  std::string& output() { return out_; }
  // Writes pending output; called by the server once per batch.
  void flush();
  // Closes now: `graceful` flushes what is queued, shuts down sending and drains input.
  void close(bool graceful);
  // Force-closes the socket (a deadline passed). Closes the session first if it is open.
  void abort();

  connection_info& info() { return info_; }
  bool closed() const { return closed_; }
  bool finished() const { return !socket_.is_open(); }  // closed and its socket released
  tick connected_at() const { return connected_at_; }
  tick last_active() const { return last_active_; }   // last complete frame (or the connect)
  tick close_deadline() const { return close_deadline_; }  // 0 unless closing gracefully
  // When the write in flight last made progress, or nullopt when no write is pending.
  std::optional<tick> write_stalled_since() const {
    return write_in_flight_ ? std::optional<tick>(write_progress_at_) : std::nullopt;
  }

 private:
  void do_read();
  void on_readable(const error_code& ec);
  void consume(const char* data, std::size_t n);
  void handle_frame(std::string_view frame);
  void do_write();
  void on_write(const error_code& ec, std::size_t n);
  void on_peer_finished();
  std::size_t unsent() const;
  void do_drain();
  void on_drain(const error_code& ec);
  void finish_close();

  tcp::socket socket_;
  session_host& host_;
  connection_info info_;
  line_framer framer_;   // keeps an unfinished frame between reads
  std::string out_;      // replies not yet handed to the kernel or to an async write
  std::string writing_;  // bytes handed to async writes, from write_offset_ on not yet sent
  std::size_t write_offset_ = 0;
  bool write_in_flight_ = false;
  bool closed_ = false;           // released from the table; no more requests handled
  bool shutdown_pending_ = false; // graceful close waits for queued output to be written
  bool draining_ = false;
  std::size_t drained_ = 0;
  tick wake_time_{0};  // when the current batch of reads began
  tick connected_at_{0};
  tick last_active_{0};
  tick write_progress_at_{0};
  tick close_deadline_{0};
};

}  // namespace keylock
