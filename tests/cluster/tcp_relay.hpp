// A TCP relay on a free loopback port to one upstream port, for cutting a daemon off from etcd
// in tests: cut(true) ends every relayed connection and refuses new ones (as a broken network
// would, fast), cut(false) relays again. hold(true) keeps every connection open but forwards
// nothing (a peer whose host died, or a NAT that dropped the flow: half-open, silent), and
// hold(false) forwards again. Header-only; threads are joined by the destructor.
#pragma once

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace keylock::test {

class tcp_relay {
 public:
  explicit tcp_relay(std::uint16_t upstream) : upstream_(upstream) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr = loopback(0);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(listen_fd_, 64) != 0) {
      throw std::runtime_error("tcp_relay: cannot listen");
    }
    socklen_t len = sizeof addr;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~tcp_relay() {
    stop_ = true;
    acceptor_.join();
    cut_links();
    std::lock_guard lock(mutex_);
    for (auto& t : pumps_) t.join();
    for (auto& l : links_) {
      ::close(l->a);
      ::close(l->b);
    }
    ::close(listen_fd_);
  }
  tcp_relay(const tcp_relay&) = delete;
  tcp_relay& operator=(const tcp_relay&) = delete;

  std::uint16_t port() const { return port_; }

  void cut(bool on) {
    cut_ = on;
    if (on) cut_links();
  }
  void hold(bool on) { hold_ = on; }

 private:
  struct link {
    int a = -1, b = -1;
  };

  static sockaddr_in loopback(std::uint16_t port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    return addr;
  }

  void cut_links() {
    std::lock_guard lock(mutex_);
    for (auto& l : links_) {
      ::shutdown(l->a, SHUT_RDWR);
      ::shutdown(l->b, SHUT_RDWR);
    }
  }

  void accept_loop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int client = ::accept(listen_fd_, nullptr, nullptr);
      if (client < 0) continue;
      if (cut_) {
        ::close(client);
        continue;
      }
      int up = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr = loopback(upstream_);
      if (::connect(up, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(up);
        ::close(client);
        continue;
      }
      auto l = std::make_shared<link>();
      l->a = client;
      l->b = up;
      std::lock_guard lock(mutex_);
      links_.push_back(l);
      pumps_.emplace_back([this, l] { pump(l->a, l->b); });
      pumps_.emplace_back([this, l] { pump(l->b, l->a); });
    }
  }

  // Copies from -> to until either side ends, the relay is cut or stopped.
  void pump(int from, int to) {
    char buf[16384];
    while (!stop_) {
      if (hold_ && !cut_) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      pollfd p{from, POLLIN, 0};
      int r = ::poll(&p, 1, 50);
      if (r == 0) continue;
      if (r < 0) break;
      ssize_t n = ::recv(from, buf, sizeof buf, 0);
      if (n <= 0 || cut_) break;
      ssize_t off = 0;
      while (off < n) {
        ssize_t w = ::send(to, buf + off, static_cast<std::size_t>(n - off), MSG_NOSIGNAL);
        if (w <= 0) break;
        off += w;
      }
      if (off < n) break;
    }
    ::shutdown(from, SHUT_RDWR);
    ::shutdown(to, SHUT_RDWR);
  }

  std::uint16_t upstream_;
  std::uint16_t port_ = 0;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<bool> cut_{false};
  std::atomic<bool> hold_{false};
  std::mutex mutex_;
  std::vector<std::shared_ptr<link>> links_;
  std::vector<std::thread> pumps_;
  std::thread acceptor_;
};

}  // namespace keylock::test
