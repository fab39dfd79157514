// libFuzzer target: the daemon's frame splitter (src/framer.hpp).
//
// Input: byte 0 picks the frame limit (1..64), byte 1 seeds how the stream is cut into reads
// (1..16 bytes each), byte 2 picks after how many frames on_frame asks to stop (0: never);
// the rest is the stream. The framer, fed read by read, must agree with a reference that
// splits the whole stream at once:
//  - the same frames, in order, each exactly the bytes between two newlines;
//  - `oversized` exactly when some line (or the unfinished tail) is longer than the limit,
//    with every frame before it handed over and none after it, and nothing kept;
//  - `stopped` right after the chosen frame, with nothing kept;
//  - otherwise, the unfinished tail kept byte for byte (buffered()).
// A failed check calls abort(), which libFuzzer reports as a crash with the input saved.
#include "framer.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace {

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_framer: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  const std::size_t limit = 1 + data[0] % 64;
  std::uint32_t cut = data[1] | 1u;
  const std::size_t stop_after = data[2] % 8;  // 0: never stop
  const std::string_view stream(reinterpret_cast<const char*>(data + 3), size - 3);

  // The reference: every line, and whether (and where) the stream is oversized or stopped.
  std::vector<std::string_view> lines;
  std::size_t at = 0;
  bool ref_oversized = false;
  bool ref_stopped = false;
  std::string_view tail;
  for (;;) {
    const std::size_t nl = stream.find('\n', at);
    const std::string_view line =
        stream.substr(at, nl == std::string_view::npos ? std::string_view::npos : nl - at);
    if (line.size() > limit) {
      ref_oversized = true;
      break;
    }
    if (nl == std::string_view::npos) {
      tail = line;
      break;
    }
    lines.push_back(line);
    at = nl + 1;
    if (stop_after != 0 && lines.size() == stop_after) {
      ref_stopped = true;
      break;
    }
  }

  keylock::line_framer framer(limit);
  std::vector<std::string> frames;
  auto result = keylock::line_framer::result::more;
  for (std::size_t pos = 0; pos < stream.size() && result == keylock::line_framer::result::more;) {
    cut = cut * 1103515245u + 12345u;  // a small LCG: the cuts vary along the stream
    const std::size_t n = std::min<std::size_t>(1 + (cut >> 16) % 16, stream.size() - pos);
    result = framer.feed(stream.data() + pos, n, [&](std::string_view frame) {
      check(frame.find('\n') == std::string_view::npos, "a frame holds a newline");
      frames.emplace_back(frame);
      return stop_after == 0 || frames.size() < stop_after;
    });
    pos += n;
  }

  check(frames.size() == lines.size(), "a different number of frames");
  for (std::size_t i = 0; i < frames.size(); ++i) check(frames[i] == lines[i], "a different frame");
  using result_t = keylock::line_framer::result;
  if (ref_oversized) {
    check(result == result_t::oversized, "an oversized line was not reported");
    check(framer.buffered() == 0, "bytes kept after oversized");
  } else if (ref_stopped) {
    check(result == result_t::stopped, "the stop was not reported");
    check(framer.buffered() == 0, "bytes kept after a stop");
  } else {
    check(result == result_t::more, "an unexpected end");
    check(framer.buffered() == tail.size(), "the unfinished tail was not kept whole");
  }
  return 0;
}
