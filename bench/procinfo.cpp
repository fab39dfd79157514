#include "procinfo.hpp"

#include <dirent.h>
#include <unistd.h>

#include <array>
#include <charconv>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace keylock::bench {

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return {};
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The value of "Name:\t..." in a /proc status text, trimmed.
std::string_view status_field(std::string_view status, std::string_view name) {
  std::size_t pos = 0;
  while (pos < status.size()) {
    std::size_t eol = status.find('\n', pos);
    if (eol == std::string_view::npos) eol = status.size();
    std::string_view line = status.substr(pos, eol - pos);
    if (line.starts_with(name) && line.size() > name.size() && line[name.size()] == ':') {
      line.remove_prefix(name.size() + 1);
      while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
      while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.remove_suffix(1);
      return line;
    }
    pos = eol + 1;
  }
  return {};
}

template <class T>
bool parse_number(std::string_view s, T& v, int base = 10) {
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
  return ec == std::errc{} && ptr == s.data() + s.size();
}

}  // namespace

std::optional<std::uint64_t> parse_listening_inode(std::string_view text, std::uint16_t port) {
  // Lines: "  sl  local_address rem_address   st tx_queue:rx_queue tr tm->when retrnsmt   uid
  // timeout inode", local_address = HEXADDR:HEXPORT.
  std::size_t pos = text.find('\n');  // skip the header
  while (pos != std::string_view::npos && pos < text.size()) {
    std::size_t eol = text.find('\n', pos + 1);
    std::string_view line = text.substr(
        pos + 1, eol == std::string_view::npos ? std::string_view::npos : eol - pos - 1);
    pos = eol;
    std::array<std::string_view, 10> fields{};
    std::size_t n = 0, i = 0;
    while (n < 10 && i < line.size()) {
      while (i < line.size() && line[i] == ' ') ++i;
      std::size_t start = i;
      while (i < line.size() && line[i] != ' ') ++i;
      if (i > start) fields[n++] = line.substr(start, i - start);
    }
    if (n < 10 || fields[3] != "0A") continue;
    std::string_view local = fields[1];
    std::size_t colon = local.rfind(':');
    unsigned p = 0;
    if (colon == std::string_view::npos || !parse_number(local.substr(colon + 1), p, 16)) continue;
    if (p != port) continue;
    std::uint64_t inode = 0;
    if (parse_number(fields[9], inode) && inode != 0) return inode;
  }
  return std::nullopt;
}

std::optional<std::uint64_t> parse_vmrss_bytes(std::string_view status) {
  std::string_view v = status_field(status, "VmRSS");
  if (!v.ends_with(" kB")) return std::nullopt;
  v.remove_suffix(3);
  while (!v.empty() && v.back() == ' ') v.remove_suffix(1);
  std::uint64_t kib = 0;
  if (!parse_number(v, kib)) return std::nullopt;
  return kib * 1024;
}

std::string parse_cpus_allowed(std::string_view status) {
  return std::string(status_field(status, "Cpus_allowed_list"));
}

std::optional<std::uint64_t> parse_stat_cpu_ticks(std::string_view stat) {
  // "pid (comm) state ppid ..." : utime and stime are fields 14 and 15; comm may hold anything,
  // so count from the last ')'.
  std::size_t close = stat.rfind(')');
  if (close == std::string_view::npos) return std::nullopt;
  std::string_view rest = stat.substr(close + 1);
  std::array<std::uint64_t, 2> values{};
  int field = 2;  // the field after comm is number 3
  std::size_t i = 0;
  int got = 0;
  while (i < rest.size() && got < 2) {
    while (i < rest.size() && rest[i] == ' ') ++i;
    std::size_t start = i;
    while (i < rest.size() && rest[i] != ' ' && rest[i] != '\n') ++i;
    if (i == start) break;
    ++field;
    if (field == 14 || field == 15) {
      if (!parse_number(rest.substr(start, i - start), values[got])) return std::nullopt;
      ++got;
    }
  }
  if (got != 2) return std::nullopt;
  return values[0] + values[1];
}

std::optional<machine_cpu> parse_machine_cpu(std::string_view text) {
  if (!text.starts_with("cpu ")) return std::nullopt;
  std::string_view line = text.substr(
      4, text.find('\n') == std::string_view::npos ? std::string_view::npos : text.find('\n') - 4);
  std::array<std::uint64_t, 8> v{};
  std::size_t n = 0, i = 0;
  while (n < 8 && i < line.size()) {
    while (i < line.size() && line[i] == ' ') ++i;
    std::size_t start = i;
    while (i < line.size() && line[i] != ' ') ++i;
    if (i == start) break;
    if (!parse_number(line.substr(start, i - start), v[n])) return std::nullopt;
    ++n;
  }
  if (n < 8) return std::nullopt;
  // user nice system idle iowait irq softirq steal
  machine_cpu m;
  m.busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
  m.total = m.busy + v[3] + v[4];
  return m;
}

std::optional<machine_cpu> read_machine_cpu() { return parse_machine_cpu(read_file("/proc/stat")); }

double seconds_per_tick() {
  const long hz = ::sysconf(_SC_CLK_TCK);
  return 1.0 / static_cast<double>(hz > 0 ? hz : 100);
}

int find_listening_pid(std::uint16_t port) {
  std::optional<std::uint64_t> inode = parse_listening_inode(read_file("/proc/net/tcp"), port);
  if (!inode) inode = parse_listening_inode(read_file("/proc/net/tcp6"), port);
  if (!inode) return 0;
  const std::string wanted = "socket:[" + std::to_string(*inode) + "]";
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return 0;
  int found = 0;
  while (dirent* d = ::readdir(proc)) {
    int pid = 0;
    if (!parse_number(std::string_view(d->d_name), pid) || pid <= 0) continue;
    const std::string fd_dir = "/proc/" + std::string(d->d_name) + "/fd";
    DIR* fds = ::opendir(fd_dir.c_str());
    if (fds == nullptr) continue;
    while (dirent* f = ::readdir(fds)) {
      if (f->d_name[0] == '.') continue;
      std::array<char, 128> target{};
      const std::string link = fd_dir + "/" + f->d_name;
      ssize_t n = ::readlink(link.c_str(), target.data(), target.size() - 1);
      if (n <= 0) continue;
      if (std::string_view(target.data(), static_cast<std::size_t>(n)) == wanted) {
        found = pid;
        break;
      }
    }
    ::closedir(fds);
    if (found != 0) break;
  }
  ::closedir(proc);
  return found;
}

std::optional<std::uint64_t> read_rss_bytes(int pid) {
  if (pid <= 0) return std::nullopt;
  return parse_vmrss_bytes(read_file("/proc/" + std::to_string(pid) + "/status"));
}

std::string read_cpus_allowed(int pid) {
  if (pid <= 0) return {};
  return parse_cpus_allowed(read_file("/proc/" + std::to_string(pid) + "/status"));
}

std::optional<double> read_cpu_seconds(int pid) {
  if (pid <= 0) return std::nullopt;
  auto ticks = parse_stat_cpu_ticks(read_file("/proc/" + std::to_string(pid) + "/stat"));
  if (!ticks) return std::nullopt;
  return static_cast<double>(*ticks) * seconds_per_tick();
}

std::string read_process_name(int pid) {
  if (pid <= 0) return {};
  std::string name = read_file("/proc/" + std::to_string(pid) + "/comm");
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  return name;
}

std::string self_cpus_allowed() { return parse_cpus_allowed(read_file("/proc/self/status")); }

}  // namespace keylock::bench
