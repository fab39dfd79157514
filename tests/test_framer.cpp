// line_framer: the daemon's frame splitter (src/framer.hpp), without sockets.
#include "framer.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <string_view>
#include <vector>

using keylock::line_framer;

namespace {

struct fed {
  line_framer::result last = line_framer::result::more;
  std::vector<std::string> frames;
};

// Feeds `stream` in pieces of `piece` bytes (the last may be shorter), stopping at the first
// result other than `more`.
fed feed_in_pieces(line_framer& framer, std::string_view stream, std::size_t piece) {
  fed out;
  for (std::size_t at = 0; at < stream.size(); at += piece) {
    const std::string_view chunk = stream.substr(at, piece);
    out.last = framer.feed(chunk.data(), chunk.size(), [&](std::string_view frame) {
      out.frames.emplace_back(frame);
      return true;
    });
    if (out.last != line_framer::result::more) break;
  }
  return out;
}

}  // namespace

TEST_CASE("frames come out whole however the stream is cut", "[framer]") {
  const std::string stream = "{\"op\":\"ping\"}\n\n{\"op\":\"stats\",\"id\":7}\r\nx\n{\"tail\"";
  for (std::size_t piece = 1; piece <= stream.size(); ++piece) {
    line_framer framer(64);
    const fed out = feed_in_pieces(framer, stream, piece);
    INFO("piece " << piece);
    CHECK(out.last == line_framer::result::more);
    // Empty frames and the '\r' are handed over as they are: the session's business.
    CHECK(out.frames ==
          std::vector<std::string>{"{\"op\":\"ping\"}", "", "{\"op\":\"stats\",\"id\":7}\r", "x"});
    CHECK(framer.buffered() == std::string_view("{\"tail\"").size());
  }
}

TEST_CASE("a frame of exactly the limit passes; one byte more is oversized", "[framer]") {
  const std::string at_limit(16, 'a');
  const std::string over(17, 'b');

  SECTION("whole in one read") {
    line_framer framer(16);
    const fed ok = feed_in_pieces(framer, at_limit + "\n", 100);
    CHECK(ok.last == line_framer::result::more);
    CHECK(ok.frames == std::vector<std::string>{at_limit});
    const fed bad = feed_in_pieces(framer, "first\n" + over + "\nnever\n", 100);
    CHECK(bad.last == line_framer::result::oversized);
    CHECK(bad.frames == std::vector<std::string>{"first"});  // what came before it counts
  }
  SECTION("an unfinished frame is oversized as soon as the limit is passed") {
    line_framer framer(16);
    const fed out = feed_in_pieces(framer, over, 100);  // no newline yet
    CHECK(out.last == line_framer::result::oversized);
    CHECK(framer.buffered() == 0);
  }
  SECTION("a frame assembled across reads") {
    for (std::size_t piece = 1; piece <= 17; ++piece) {
      line_framer ok_framer(16);
      CHECK(feed_in_pieces(ok_framer, at_limit + "\n", piece).frames.size() == 1);
      line_framer bad_framer(16);
      const fed bad = feed_in_pieces(bad_framer, over + "\n", piece);
      INFO("piece " << piece);
      CHECK(bad.last == line_framer::result::oversized);
      CHECK(bad.frames.empty());
      CHECK(bad_framer.buffered() == 0);  // its memory is given back
    }
  }
}

TEST_CASE("on_frame stops the stream: nothing after it is handed over or kept", "[framer]") {
  line_framer framer(64);
  const std::string stream = "a\nb\nc\nunfinished";
  std::vector<std::string> seen;
  const auto result = framer.feed(stream.data(), stream.size(), [&](std::string_view frame) {
    seen.emplace_back(frame);
    return frame != "b";
  });
  CHECK(result == line_framer::result::stopped);
  CHECK(seen == std::vector<std::string>{"a", "b"});
  CHECK(framer.buffered() == 0);

  SECTION("also when the stopping frame was assembled across reads") {
    line_framer parts(64);
    std::vector<std::string> got;
    auto stop_at_ab = [&](std::string_view frame) {
      got.emplace_back(frame);
      return frame != "ab";
    };
    CHECK(parts.feed("a", 1, stop_at_ab) == line_framer::result::more);
    CHECK(parts.feed("b\nc\n", 4, stop_at_ab) == line_framer::result::stopped);
    CHECK(got == std::vector<std::string>{"ab"});
    CHECK(parts.buffered() == 0);
  }
}
