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

fencing_tokens::fencing_tokens(std::string state_dir, std::uint64_t now_us, std::uint64_t block,
                               mark_writer writer)
    : state_dir_(std::move(state_dir)),
      next_(now_us == 0 ? 1 : now_us),
      block_(block < 2 ? 2 : block),
      writer_(std::move(writer)) {
  if (!writer_) {
    writer_ = [dir = state_dir_](std::uint64_t mark) { return write_fencing_mark(dir, mark); };
  }
}

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
  std::uint64_t first = next_ + block_;
  if (auto err = writer_(first)) return err;
  mark_ = first;
  return std::nullopt;
}

std::optional<std::uint64_t> fencing_tokens::reservation_due() const {
  if (state_dir_.empty() || in_flight_) return std::nullopt;
  // Reserve when half the block is used, so the write (milliseconds on a disk) finishes long
  // before the block runs out. Marks only grow by whole blocks from the stored one.
  if (next_ + block_ / 2 < mark_) return std::nullopt;
  return mark_ + block_;
}

void fencing_tokens::reservation_done(std::uint64_t mark, const std::optional<std::string>& error) {
  in_flight_ = false;
  if (error) {
    error_ = *error;
    return;
  }
  error_.clear();
  if (mark > mark_) mark_ = mark;
}

std::optional<std::string> write_fencing_mark(const std::string& dir, std::uint64_t mark) {
  std::string path = dir + "/fencing";
  std::string tmp = path + ".tmp";
  std::string text = std::to_string(mark) + "\n";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return "cannot write " + tmp + ": " + errno_text();
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            ::fsync(fd) == 0;
  std::string err = ok ? std::string() : errno_text();
  if (::close(fd) != 0 && ok) {
    ok = false;
    err = errno_text();
  }
  if (!ok) return "cannot write " + tmp + ": " + err;
  if (::rename(tmp.c_str(), path.c_str()) != 0) return "cannot rename " + tmp + ": " + errno_text();
  // Without the directory's fsync the rename may not survive a crash, and the old, lower mark
  // would come back: the reservation is not durable until this succeeds.
  int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d < 0) return "cannot open " + dir + " to fsync it: " + errno_text();
  bool synced = ::fsync(d) == 0;
  std::string derr = synced ? std::string() : errno_text();
  ::close(d);
  if (!synced) return "cannot fsync " + dir + ": " + derr;
  return std::nullopt;
}

}  // namespace keylock
