// One client connection: its transport (the socket), its framer (line_framer: the partial
// frame) and its output queue. `session` is everything above the bytes; a transport derives
// from it (tcp_session, made by make_tcp_session).
//
// Reading (plain TCP): the session waits for readability, then reads into the server's shared
// scratch buffer until the socket is drained (bounded per wake-up), handling every complete
// frame in place; only an unfinished frame is copied into the framer. An idle connection
// therefore holds no read buffer at all. Under load the next read starts after the server's
// next batch (session_host::defer_read), when the client has mostly sent its next request.
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
  // after_batch once the reads of this wake-up are all handled: replies to every ready
  // session go out together.
  virtual void after_reads() = 0;
  // A session has read what it was sent and would wait for more: true when the server takes
  // it to resume_reading() later (after the next batch of reads), false to read again now.
  virtual bool defer_read(session& s) = 0;
  virtual void on_closed(session& s, bool draining) = 0;
  virtual void on_socket_closed(session& s) = 0;  // its descriptor is released
  virtual void on_authenticated(session& s) = 0;  // its hello passed auth
  // A TLS peer presented a verified certificate with this subject (RFC 2253): the server may
  // log the connection in as the user who claims it.
  virtual void on_peer_certificate(session& s, std::string_view subject) = 0;
  virtual void count_bytes(std::size_t received, std::size_t sent) = 0;  // for metrics
};

// The transport-independent half of a connection: frames in (line_framer), requests handled
// (dispatcher), replies queued and written, deadlines, and the close. A transport (tcp_session
// below; a TLS one beside it) supplies the byte I/O through the protected virtual functions.
// The two read differently: plain TCP waits for readability and reads into the server's shared
// scratch buffer (an idle connection holds no buffer), a TLS stream must be read through its
// engine with completion handlers. So the seam is this interface rather than a template: what
// the transports share is everything above the bytes.
class session : public std::enable_shared_from_this<session> {
 public:
  virtual ~session() = default;
  session(const session&) = delete;
  session& operator=(const session&) = delete;

  // Starts reading (and, for TLS, the handshake).
  virtual void start() = 0;
  // Waits for input again after the host deferred it (session_host::defer_read).
  virtual void resume_reading() {}
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
  bool finished() const { return !transport_open(); }  // closed and its socket released
  tick connected_at() const { return connected_at_; }
  tick last_active() const { return last_active_; }   // last complete frame (or the connect)
  tick close_deadline() const { return close_deadline_; }  // 0 unless closing gracefully
  // When the write in flight last made progress, or nullopt when no write is pending.
  std::optional<tick> write_stalled_since() const {
    return write_in_flight_ ? std::optional<tick>(write_progress_at_) : std::nullopt;
  }

 protected:
  session(session_host& host, owner_id owner, std::string peer);

  // ---- for transports
  session_host& host() { return host_; }
  // A batch of reads begins: every frame of it is handled at this time.
  void begin_batch() { wake_time_ = host_.now(); }
  // Bytes read: splits them into frames and handles each.
  void consume(const char* data, std::size_t n);
  // The peer half-closed (EOF).
  void on_peer_finished();
  // The transport is up (TLS: handshake done): the idle clock starts.
  void mark_connected() { connected_at_ = last_active_ = host_.now(); }
  // An async write (write_async) completed.
  void on_write(const error_code& ec, std::size_t n);
  // Ends the graceful close (drain done, or failed): releases the socket.
  void finish_close();

  // ---- what a transport provides
  // Writes what the transport takes at once without blocking; 0 with no error when nothing
  // (a TLS stream returns 0: it writes only through write_async).
  virtual std::size_t write_now(const char* data, std::size_t n, error_code& ec) = 0;
  // Writes writing_[write_offset_...] (part of it is enough), then calls on_write.
  virtual void write_async() = 0;
  // All output is written: ends the sending side, then drains input until EOF, the drain
  // bound or an error, then calls finish_close().
  virtual void shut_down_sending() = 0;
  virtual bool transport_open() const = 0;
  virtual void close_transport() = 0;

  std::string writing_;  // bytes handed to async writes, from write_offset_ on not yet sent
  std::size_t write_offset_ = 0;
  std::size_t drained_ = 0;  // bytes drained since the graceful close began

 private:
  void handle_frame(std::string_view frame);
  void start_async_write();
  std::size_t unsent() const;
  bool too_much_unsent();

  session_host& host_;
  connection_info info_;
  line_framer framer_;   // keeps an unfinished frame between reads
  std::string out_;      // replies not yet handed to the kernel or to an async write
  bool write_in_flight_ = false;
  bool closed_ = false;           // released from the table; no more requests handled
  bool shutdown_pending_ = false;  // graceful close waits for queued output to be written
  tick wake_time_{0};  // when the current batch of reads began
  tick connected_at_{0};
  tick last_active_{0};
  tick write_progress_at_{0};
  tick close_deadline_{0};
};

// A connection over plain TCP.
std::shared_ptr<session> make_tcp_session(tcp::socket socket, session_host& host, owner_id owner,
                                          std::string peer);

// Non-blocking, no Nagle, keepalive as `settings` say: every accepted socket.
void set_socket_options(tcp::socket& socket, const config& settings);

// The first byte of a TLS record of type handshake (a ClientHello): never the start of a JSON
// frame. The plain port closes a connection that starts with it; the TLS port expects it.
inline constexpr char tls_handshake_byte = 0x16;

// Input drained at most by a graceful close (after the last reply), before the socket closes.
inline constexpr std::size_t drain_bytes = 1u << 20;

}  // namespace keylock
