#include "harness.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>

#ifndef KEYLOCKD_PATH
#error "KEYLOCKD_PATH must name the keylockd binary under test"
#endif

namespace keylock::test {

namespace {

using clock = std::chrono::steady_clock;

int remaining_ms(clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
  return left.count() < 0 ? 0 : static_cast<int>(left.count());
}

}  // namespace

struct daemon::state {
  std::vector<std::string> args;
  pid_t pid = -1;
  int err_fd = -1;
  std::uint16_t port = 0;
  std::uint16_t metrics_port = 0;
  std::thread reader;
  mutable std::mutex mu;
  mutable std::condition_variable cv;
  std::string log;
  bool eof = false;

  void start() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
    std::vector<std::string> argv_s = {KEYLOCKD_PATH};
    bool has_listen = false;
    bool has_metrics = false;
    for (const auto& a : args) {
      has_listen = has_listen || a == "--listen" || a.rfind("--listen=", 0) == 0;
      has_metrics = has_metrics || a.rfind("--metrics-listen", 0) == 0;
    }
    if (!has_listen) {
      argv_s.push_back("--listen");
      argv_s.push_back("127.0.0.1:0");
    }
    if (!has_metrics) {
      argv_s.push_back("--metrics-listen");
      argv_s.push_back("127.0.0.1:0");
    }
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    {
      std::lock_guard<std::mutex> lk(mu);
      log.clear();
      eof = false;
    }
    const pid_t parent = ::getpid();
    pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
      // Stopped with the test process even when that one dies without running ~daemon (a
      // crash, a sanitizer's abort): an orphan would keep ctest's output pipe open, and ctest
      // would wait for it until its timeout. The signal comes when the forking thread ends:
      // that is the test's main thread, which lives as long as the test process.
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(1);
      ::dup2(fds[1], 2);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    err_fd = fds[0];
    reader = std::thread([this] {
      char buf[4096];
      for (;;) {
        ssize_t n = ::read(err_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        std::lock_guard<std::mutex> lk(mu);
        if (n <= 0) {
          eof = true;
          cv.notify_all();
          return;
        }
        log.append(buf, static_cast<std::size_t>(n));
        cv.notify_all();
      }
    });
    const std::string marker = "listening on 127.0.0.1:";
    std::unique_lock<std::mutex> lk(mu);
    bool ok = cv.wait_for(lk, event_bound, [&] {
      auto at = log.find(marker);
      return eof || (at != std::string::npos && log.find(' ', at + marker.size()) != std::string::npos);
    });
    auto at = log.find(marker);
    if (!ok || at == std::string::npos) {
      std::string text = log;
      lk.unlock();
      stop_process(SIGKILL);
      throw std::runtime_error("keylockd did not start; its log:\n" + text);
    }
    port = static_cast<std::uint16_t>(std::stoi(log.substr(at + marker.size())));
    const std::string metrics_marker = "metrics on http://127.0.0.1:";
    auto m = log.find(metrics_marker);
    metrics_port = m == std::string::npos
                       ? 0
                       : static_cast<std::uint16_t>(std::stoi(log.substr(m + metrics_marker.size())));
  }

  int stop_process(int sig) {
    if (pid <= 0) return -1;
    ::kill(pid, sig);
    int status = 0;
    auto deadline = clock::now() + event_bound;
    bool exited = false;
    while (clock::now() < deadline) {
      pid_t r = ::waitpid(pid, &status, WNOHANG);
      if (r == pid) {
        exited = true;
        break;
      }
      std::this_thread::sleep_for(2ms);  // polling a process exit: no event to wait on
    }
    if (!exited) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      status = -1;
    }
    pid = -1;
    if (reader.joinable()) reader.join();
    if (err_fd >= 0) ::close(err_fd);
    err_fd = -1;
    return status;
  }
};

daemon::daemon(std::vector<std::string> args) : state_(std::make_unique<state>()) {
  state_->args = std::move(args);
  state_->start();
}

daemon::~daemon() {
  if (state_->pid > 0) state_->stop_process(SIGKILL);
}

std::uint16_t daemon::port() const { return state_->port; }
std::uint16_t daemon::metrics_port() const { return state_->metrics_port; }
pid_t daemon::pid() const { return state_->pid; }
bool daemon::running() const { return state_->pid > 0; }
int daemon::stop(int sig) { return state_->stop_process(sig); }

void daemon::restart() {
  if (state_->pid > 0) state_->stop_process(SIGTERM);
  state_->start();
}

bool daemon::wait_log(std::string_view needle, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lk(state_->mu);
  return state_->cv.wait_for(lk, timeout, [&] {
    return state_->log.find(needle) != std::string::npos;
  });
}

std::string daemon::log() const {
  std::lock_guard<std::mutex> lk(state_->mu);
  return state_->log;
}

conn::conn(std::uint16_t port) : conn(port, 0) {}

conn::conn(std::uint16_t port, int receive_buffer) {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) throw std::runtime_error("socket failed");
  if (receive_buffer > 0 &&
      ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof receive_buffer) != 0) {
    int e = errno;
    ::close(fd_);
    fd_ = -1;
    throw std::runtime_error(std::string("SO_RCVBUF failed: ") + std::strerror(e));
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int e = errno;
    ::close(fd_);
    fd_ = -1;
    throw std::runtime_error(std::string("connect failed: ") + std::strerror(e));
  }
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

conn::~conn() { close(); }

conn::conn(conn&& other) noexcept : fd_(other.fd_), buf_(std::move(other.buf_)) { other.fd_ = -1; }

conn& conn::operator=(conn&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = other.fd_;
    buf_ = std::move(other.buf_);
    other.fd_ = -1;
  }
  return *this;
}

void conn::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool conn::send_raw(std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

bool conn::send_line(std::string_view frame) {
  std::string line(frame);
  line += '\n';
  return send_raw(line);
}

std::optional<std::string> conn::recv_line(std::chrono::milliseconds timeout) {
  auto deadline = clock::now() + timeout;
  for (;;) {
    auto nl = buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      return line;
    }
    pollfd p{fd_, POLLIN, 0};
    int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return std::nullopt;
    char chunk[65536];
    ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    buf_.append(chunk, static_cast<std::size_t>(n));
  }
}

bool conn::wait_closed(std::chrono::milliseconds timeout) {
  auto deadline = clock::now() + timeout;
  for (;;) {
    pollfd p{fd_, POLLIN, 0};
    int r = ::poll(&p, 1, remaining_ms(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    char chunk[65536];
    ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return true;
    buf_.append(chunk, static_cast<std::size_t>(n));
  }
}

std::string conn::call(std::string_view frame) {
  if (!send_line(frame)) throw std::runtime_error("send failed");
  auto line = recv_line();
  if (!line) throw std::runtime_error("no reply to " + std::string(frame));
  return *line;
}

http_response http_exchange(std::uint16_t port, std::string_view raw) {
  conn c(port);
  http_response r;
  if (!c.send_raw(raw)) return r;
  std::string all;
  auto deadline = clock::now() + event_bound;
  for (;;) {
    pollfd p{c.fd(), POLLIN, 0};
    int n = ::poll(&p, 1, remaining_ms(deadline));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    char chunk[65536];
    ssize_t got = ::recv(c.fd(), chunk, sizeof chunk, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    all.append(chunk, static_cast<std::size_t>(got));
  }
  if (all.rfind("HTTP/1.1 ", 0) != 0 && all.rfind("HTTP/1.0 ", 0) != 0) return r;
  r.status = std::stoi(all.substr(9, 3));
  auto end = all.find("\r\n\r\n");
  r.headers = all.substr(0, end);
  if (end != std::string::npos) r.body = all.substr(end + 4);
  return r;
}

http_response http_get(std::uint16_t port, std::string_view path) {
  std::string req = "GET ";
  req += path;
  req += " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  return http_exchange(port, req);
}

}  // namespace keylock::test
