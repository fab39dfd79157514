// keylock-bench's connections: a lean blocking driver of the keylock protocol and a thin
// wrapper of a hiredis context. One per client thread; neither is thread-safe.
//
// Both block with a receive timeout (io_timeout), so a server that stops answering ends the
// client's run with an error instead of hanging the bench.
#pragma once

#include "wire.hpp"

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

struct redisContext;
struct redisReply;

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

class keylock_conn {
 public:
  keylock_conn() = default;
  ~keylock_conn();
  keylock_conn(const keylock_conn&) = delete;
  keylock_conn& operator=(const keylock_conn&) = delete;

  // Empty on success, else what failed.
  std::string connect(const target& t, std::chrono::milliseconds io_timeout);
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

  int fd_ = -1;
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

  std::string connect(const target& t, std::chrono::milliseconds io_timeout);

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
  redisContext* ctx_ = nullptr;
  std::string error_;
};

}  // namespace keylock::bench
