#include "core/frame_reader.hpp"

namespace keylock::detail {

std::optional<std::string_view> frame_reader::next() {
  for (;;) {
    const std::size_t nl = buf_.find('\n', start_);
    if (nl == std::string::npos) {
      buf_.erase(0, start_);
      start_ = 0;
      return std::nullopt;
    }
    std::string_view frame(buf_.data() + start_, nl - start_);
    start_ = nl + 1;
    if (!frame.empty() && frame.back() == '\r') frame.remove_suffix(1);
    if (!frame.empty()) return frame;
  }
}

}  // namespace keylock::detail
