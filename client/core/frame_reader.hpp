// Splits the daemon's byte stream into newline-delimited frames (PROTOCOL.md "Framing").
//
// Pure: bytes in, frames out. A frame is returned without its "\n" (or "\r\n"); empty lines
// are skipped. A partial frame longer than the limit is a broken stream, which the caller
// learns from overflowed() and answers by dropping the connection.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace keylock::detail {

class frame_reader {
 public:
  explicit frame_reader(std::size_t max_frame_bytes) : max_(max_frame_bytes) {}

  void append(const char* data, std::size_t n) { buf_.append(data, n); }

  // The next complete frame. The view stays valid until the next append() or clear(). When
  // none is complete, the consumed bytes are dropped and nothing is returned.
  std::optional<std::string_view> next();

  // The bytes after the last complete frame exceed the limit.
  bool overflowed() const { return buf_.size() - start_ > max_; }

  std::size_t buffered() const { return buf_.size() - start_; }
  void clear() {
    buf_.clear();
    start_ = 0;
  }

 private:
  std::size_t max_;
  std::string buf_;
  std::size_t start_ = 0;  // where the first unconsumed frame begins
};

}  // namespace keylock::detail
