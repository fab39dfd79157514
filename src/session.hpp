// One client connection: owns its socket, its partial-frame buffer and its output queue.
//
// Reading: the session waits for readability, then reads into the server's shared scratch
// buffer until the socket is drained (bounded per wake-up), handling every complete frame in
// place; only an unfinished frame is copied into the session's own buffer. An idle connection
// therefore holds no read buffer at all.
//
// Writing: replies and pushed events are appended to `out_`. Once per wake-up the server asks
// every session with new output to flush: the session writes what the kernel takes at once
// and hands only the rest to an async write. Unsent output beyond max_output_bytes (a client
// that does not read) closes the connection.
//
// Closing releases the connection's leases and drops its waiters at once. After a reply that
// closes (frame_too_large, unauthenticated) the session shuts down its sending side and
// drains input for a short while, so the peer's kernel delivers the reply rather than a reset.
//
// Runs on the io_context thread only.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "asio_common.hpp"
#include "dispatch.hpp"

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
  // Force-closes a draining session (its drain deadline passed).
  void abort();

  connection_info& info() { return info_; }
  bool closed() const { return closed_; }
  bool finished() const { return !socket_.is_open(); }  // closed and its socket released
  tick last_active() const { return last_active_; }
  tick drain_deadline() const { return drain_deadline_; }

 private:
  void do_read();
  void on_readable(const error_code& ec);
  void consume(const char* data, std::size_t n);
  void handle_frame(std::string_view frame);
  void do_write();
  void on_write(const error_code& ec, std::size_t n);
  void do_drain();
  void on_drain(const error_code& ec);
  void finish_close();

  tcp::socket socket_;
  session_host& host_;
  connection_info info_;
  std::string partial_;  // an unfinished frame carried over between reads
  std::string out_;      // replies not yet handed to the kernel or to an async write
  std::string writing_;  // the bytes of the async write in flight
  bool write_in_flight_ = false;
  bool closed_ = false;           // released from the table; no more requests handled
  bool shutdown_pending_ = false; // graceful close waits for queued output to be written
  bool draining_ = false;
  std::size_t drained_ = 0;
  tick last_active_{0};
  tick drain_deadline_{0};
};

}  // namespace keylock
