// Splits a connection's byte stream into newline-delimited frames (PROTOCOL.md "Framing"). The
// daemon's sessions feed it what each read returned, whatever the transport (plain TCP or TLS).
//
// Pure: no sockets, no clock, no Asio. A frame that arrives whole within one read is handed
// over as a view into the caller's buffer, with no copy and no allocation; only an unfinished
// tail is copied, and kept until its newline comes.
//
// A frame is the bytes before a '\n', without it. A '\r' before it, and empty frames, are the
// caller's business (the decoder strips the '\r'). A frame longer than max_frame_bytes is known
// as soon as more than that many bytes have come without a newline: feed() then returns
// `oversized` and keeps nothing, and the caller closes the connection (nothing after it can be
// framed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace keylock {

class line_framer {
 public:
  enum class result : std::uint8_t {
    more,       // every complete frame was handed over; an unfinished one may be kept
    stopped,    // on_frame asked to stop: the rest of the input was dropped, nothing is kept
    oversized,  // a frame longer than the limit; the frames before it were handed over
  };

  explicit line_framer(std::size_t max_frame_bytes) : max_(max_frame_bytes) {}

  // Hands every frame completed by `data` to on_frame(std::string_view), in order. on_frame
  // returns whether to go on. A view is valid only during its call.
  template <class OnFrame>
  result feed(const char* data, std::size_t n, OnFrame&& on_frame);

  // Bytes of the unfinished frame kept since the last newline.
  std::size_t buffered() const noexcept { return partial_.size(); }

  // Drops the unfinished frame and gives its memory back.
  void clear() {
    partial_.clear();
    partial_.shrink_to_fit();
  }

 private:
  // After a frame was assembled in partial_: keep a small buffer, give a big one back.
  void reuse() {
    partial_.clear();
    if (partial_.capacity() > 4096) partial_.shrink_to_fit();
  }

  std::size_t max_;
  std::string partial_;  // an unfinished frame carried over between reads
};

template <class OnFrame>
line_framer::result line_framer::feed(const char* data, std::size_t n, OnFrame&& on_frame) {
  if (!partial_.empty()) {
    const void* nl = std::memchr(data, '\n', n);
    const std::size_t len =
        nl != nullptr ? static_cast<std::size_t>(static_cast<const char*>(nl) - data) : n;
    if (partial_.size() + len > max_) {
      clear();
      return result::oversized;
    }
    partial_.append(data, len);
    if (nl == nullptr) return result::more;
    const bool go_on = on_frame(std::string_view(partial_));
    reuse();
    if (!go_on) return result::stopped;
    data += len + 1;
    n -= len + 1;
  }
  while (n > 0) {
    const void* nl = std::memchr(data, '\n', n);
    if (nl == nullptr) {
      if (n > max_) return result::oversized;
      partial_.assign(data, n);
      return result::more;
    }
    const auto len = static_cast<std::size_t>(static_cast<const char*>(nl) - data);
    if (len > max_) return result::oversized;
    if (!on_frame(std::string_view(data, len))) return result::stopped;
    data += len + 1;
    n -= len + 1;
  }
  return result::more;
}

}  // namespace keylock
