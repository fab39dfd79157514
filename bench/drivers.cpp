#include "drivers.hpp"

#include <hiredis/hiredis.h>

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

namespace keylock::bench {

namespace {

timeval to_timeval(std::chrono::milliseconds ms) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

}  // namespace

std::int64_t mono_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::string tcp_connect(const std::string& host, std::uint16_t port,
                        std::chrono::milliseconds io_timeout, int& fd_out) {
  fd_out = -1;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res); rc != 0) {
    return "cannot resolve " + host + ": " + ::gai_strerror(rc);
  }
  std::string err = "no address for " + host;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      err = errno_text("socket");
      continue;
    }
    const timeval tv = to_timeval(io_timeout);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      std::string what = "connect to ";
      what += host;
      what += ':';
      what += service;
      err = errno_text(what.c_str());
      ::close(fd);
      continue;
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fd_out = fd;
    err.clear();
    break;
  }
  ::freeaddrinfo(res);
  return err;
}

bool send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// keylock_conn

keylock_conn::~keylock_conn() { close(); }

void keylock_conn::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

std::string keylock_conn::connect(const target& t, std::chrono::milliseconds io_timeout) {
  close();
  head_ = tail_ = 0;
  return tcp_connect(t.host, t.port, io_timeout, fd_);
}

bool keylock_conn::send(std::string_view bytes) {
  if (send_all(fd_, bytes)) return true;
  error_ = errno_text("send");
  return false;
}

bool keylock_conn::has_buffered_frame() const noexcept {
  return std::memchr(buf_.data() + head_, '\n', tail_ - head_) != nullptr;
}

bool keylock_conn::fill() {
  if (head_ > 0) {
    // Move the unfinished frame to the front; frames are small, so this is rare and short.
    std::memmove(buf_.data(), buf_.data() + head_, tail_ - head_);
    tail_ -= head_;
    head_ = 0;
  }
  if (tail_ == buf_.size()) buf_.resize(buf_.size() * 2);
  for (;;) {
    ssize_t n = ::recv(fd_, buf_.data() + tail_, buf_.size() - tail_, 0);
    if (n > 0) {
      tail_ += static_cast<std::size_t>(n);
      received_ns_ = mono_ns();
      return true;
    }
    if (n == 0) {
      error_ = "server closed the connection";
      return false;
    }
    if (errno == EINTR) continue;
    error_ = (errno == EAGAIN || errno == EWOULDBLOCK) ? "no reply within the i/o timeout"
                                                       : errno_text("recv");
    return false;
  }
}

bool keylock_conn::next_reply(reply_view& out) {
  for (;;) {
    const char* begin = buf_.data() + head_;
    const void* nl = std::memchr(begin, '\n', tail_ - head_);
    if (nl == nullptr) {
      if (!fill()) return false;
      continue;
    }
    const auto len = static_cast<std::size_t>(static_cast<const char*>(nl) - begin);
    std::string_view frame(begin, len);
    head_ += len + 1;
    if (!frame.empty() && frame.back() == '\r') frame.remove_suffix(1);
    if (frame.empty()) continue;
    if (!scan_reply(frame, out)) {
      error_ = "unreadable frame from server: " + std::string(frame.substr(0, 128));
      return false;
    }
    if (out.is_event) continue;
    return true;
  }
}

// ---------------------------------------------------------------------------------------------
// redis_conn

void redis_reply_deleter::operator()(redisReply* r) const noexcept { freeReplyObject(r); }

redis_conn::~redis_conn() {
  if (ctx_ != nullptr) redisFree(ctx_);
}

std::string redis_conn::connect(const target& t, std::chrono::milliseconds io_timeout) {
  if (ctx_ != nullptr) redisFree(ctx_);
  ctx_ = redisConnectWithTimeout(t.host.c_str(), t.port, to_timeval(io_timeout));
  if (ctx_ == nullptr) return "cannot allocate a redis context";
  if (ctx_->err != 0) return "connect to " + t.url + ": " + ctx_->errstr;
  if (redisSetTimeout(ctx_, to_timeval(io_timeout)) != REDIS_OK) return "cannot set timeout";
  return {};
}

bool redis_conn::append(std::string_view resp) {
  if (redisAppendFormattedCommand(ctx_, resp.data(), resp.size()) == REDIS_OK) return true;
  error_ = ctx_->errstr;
  return false;
}

redis_reply_ptr redis_conn::next_reply() {
  void* r = nullptr;
  if (redisGetReply(ctx_, &r) != REDIS_OK || r == nullptr) {
    error_ = ctx_->err != 0 ? std::string(ctx_->errstr) : std::string("no reply");
    if (error_.find("Resource temporarily unavailable") != std::string::npos) {
      error_ = "no reply within the i/o timeout";
    }
    return nullptr;
  }
  return redis_reply_ptr(static_cast<redisReply*>(r));
}

redis_reply_ptr redis_conn::call(std::string_view resp) {
  if (!append(resp)) return nullptr;
  return next_reply();
}

redis_outcome redis_conn::outcome_of(const redisReply& r, long long& integer, std::string& text) {
  switch (r.type) {
    case REDIS_REPLY_NIL:
      return redis_outcome::nil;
    case REDIS_REPLY_INTEGER:
      integer = r.integer;
      return redis_outcome::integer;
    case REDIS_REPLY_ERROR:
      text.assign(r.str, r.len);
      return redis_outcome::error;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
      text.assign(r.str, r.len);
      return redis_outcome::ok;
    default:
      return redis_outcome::ok;
  }
}

}  // namespace keylock::bench
