#include "fencing.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

namespace keylock {

namespace {

std::string errno_text() { return std::strerror(errno); }

}  // namespace

fencing_tokens::fencing_tokens(std::string state_dir, std::uint64_t now_us,
                               std::function<void(const std::string&)> on_error)
    : state_dir_(std::move(state_dir)), next_(now_us == 0 ? 1 : now_us),
      on_error_(std::move(on_error)) {}

std::optional<std::string> fencing_tokens::open() {
  if (state_dir_.empty()) return std::nullopt;
  if (::mkdir(state_dir_.c_str(), 0700) != 0 && errno != EEXIST) {
    return "cannot create state dir " + state_dir_ + ": " + errno_text();
  }
  std::string path = state_dir_ + "/fencing";
  std::ifstream in(path);
  if (in) {
    std::stringstream text;
    text << in.rdbuf();
    std::string s = text.str();
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    std::uint64_t stored = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), stored);
    if (ec != std::errc{} || end != s.data() + s.size() || s.empty()) {
      return "corrupt fencing state in " + path + " (expected one decimal number); "
             "refusing to start, since tokens could go backwards";
    }
    if (stored > next_) next_ = stored;
  } else if (errno != ENOENT) {
    return "cannot read " + path + ": " + errno_text();
  }
  if (auto err = store_mark(next_ + block)) return err;
  return std::nullopt;
}

std::uint64_t fencing_tokens::next() {
  if (!state_dir_.empty() && next_ >= mark_) {
    // Reserve before handing out: a crash after this point restarts above the new mark.
    if (auto err = store_mark(next_ + block)) {
      mark_ = next_ + block;  // report once per block, not on every grant
      if (on_error_) on_error_(*err);
    }
  }
  return next_++;
}

std::optional<std::string> fencing_tokens::store_mark(std::uint64_t mark) {
  std::string path = state_dir_ + "/fencing";
  std::string tmp = path + ".tmp";
  std::string text = std::to_string(mark) + "\n";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return "cannot write " + tmp + ": " + errno_text();
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            ::fsync(fd) == 0;
  std::string err = ok ? std::string() : errno_text();
  ::close(fd);
  if (!ok) return "cannot write " + tmp + ": " + err;
  if (::rename(tmp.c_str(), path.c_str()) != 0) return "cannot rename " + tmp + ": " + errno_text();
  int dir = ::open(state_dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  mark_ = mark;
  return std::nullopt;
}

}  // namespace keylock
