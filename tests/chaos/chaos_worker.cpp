// Chaos worker: one client process doing randomized with_lock work on a few keys, logging every
// step with a CLOCK_MONOTONIC timestamp (comparable across processes on one machine) to its own
// log file, one line per event, written with write(2) so that a SIGKILL loses nothing logged.
//
//   chaos_worker SERVER LOGFILE SEED DURATION_MS KEYS
//
// Two families of keys, K of each:
// - "c<i>", always with limit 1 + i % 3 (a live key's limit is fixed), taken exclusively through
//   the C++ client's with_lock (auto-renewal, reconnects);
// - "m<i>", limit 1, read-write locks: taken shared or exclusive, one key or a set of 2-3 keys
//   in one request (PROTOCOL.md, Modes and Several keys at once). The C++ client of this tree
//   has no `mode` or `keys` yet, so these go over a second connection of this process that
//   speaks the wire protocol directly (blocking, one request at a time, no renewal).
// About half of the operations are of each family.
//
// Log lines (t = monotonic nanoseconds; KEYS = a key, or the keys of a set joined with '+'):
//   REQ t KEYS limit wait_ms ttl_ms auto mode  before acquire (wait_ms -1: wait until granted;
//                                            auto 1: renewed at ttl/3, 0: not renewed;
//                                            mode X exclusive, S shared)
//   W t KEYS token [ttl_ms]                  a write to the fenced resource of every key: right
//                                            after the grant and again at the end of the
//                                            critical section (the first W of an m-key lease
//                                            also gives the ttl granted, which cluster mode
//                                            may cap below the one asked)
//   SEEN t KEYS token FLAGS                  a set, right after its first W: `inspect` of each
//                                            key (pipelined, one batch), FLAGS one digit per key
//                                            in KEYS order: 1 = the key lists a holder with this
//                                            token, 0 = it does not
//   REL t KEYS token ok|lost                 released (ok), or the lease was found lost: NotHeld,
//                                            or the daemon answered the release not_held
//   TIMEOUT t KEYS                           acquire not granted within wait_ms
//   ERR t KEYS what                          any other failure of the operation
//   START t pid / STOP t                     process start, normal end
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/time.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "keylock/client.hpp"

namespace {

std::int64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

int log_fd = -1;

void log_line(const std::string& rest, std::int64_t t = now_ns()) {
  std::string line = rest.substr(0, rest.find(' '));
  line += ' ';
  line += std::to_string(t);
  const auto sp = rest.find(' ');
  if (sp != std::string::npos) line += rest.substr(sp);
  line += '\n';
  // One write per line, O_APPEND: whole lines even when the process dies.
  [[maybe_unused]] ssize_t n = ::write(log_fd, line.data(), line.size());
}

// A blocking connection speaking the wire protocol directly (PROTOCOL.md), for the acquires the
// C++ client cannot make yet. One request at a time; pushed events are skipped. Any failure
// closes it, and the next call connects again.
class raw_conn {
 public:
  explicit raw_conn(std::string server) : server_(std::move(server)) {}
  ~raw_conn() { close(); }
  raw_conn(const raw_conn&) = delete;
  raw_conn& operator=(const raw_conn&) = delete;

  void close() {
    if (ssl_ != nullptr) SSL_free(ssl_);
    ssl_ = nullptr;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    buf_.clear();
  }

  // Sends `requests` (each gets a fresh id) in one write and returns their replies in order, or
  // an empty vector after `error_` is set (connect/send failed, EOF, or no reply by `until`).
  std::vector<nlohmann::json> call(std::vector<nlohmann::json> requests,
                                   std::chrono::steady_clock::time_point until) {
    error_.clear();
    if (fd_ < 0 && !connect()) return {};
    std::string out;
    std::vector<std::uint64_t> ids;
    for (auto& r : requests) {
      r["id"] = next_id_;
      ids.push_back(next_id_++);
      out += r.dump();
      out += '\n';
    }
    if (!send_all(out)) return {};
    std::vector<nlohmann::json> replies;
    while (replies.size() < ids.size()) {
      const auto nl = buf_.find('\n');
      if (nl == std::string::npos) {
        if (!fill(until)) return {};
        continue;
      }
      auto frame = nlohmann::json::parse(buf_.substr(0, nl), nullptr, false);
      buf_.erase(0, nl + 1);
      if (frame.is_discarded() || !frame.is_object()) return fail("undecodable frame");
      if (frame.contains("event")) continue;
      if (!frame.contains("id") || frame["id"] != ids[replies.size()]) {
        return fail("reply id out of order");
      }
      replies.push_back(std::move(frame));
    }
    return replies;
  }

  const std::string& error() const { return error_; }

 private:
  std::vector<nlohmann::json> fail(std::string what) {
    error_ = std::move(what);
    close();
    return {};
  }

  bool connect() {
    const auto colon = server_.rfind(':');
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(std::atoi(server_.c_str() + colon + 1)));
    if (colon == std::string::npos ||
        ::inet_pton(AF_INET, server_.substr(0, colon).c_str(), &addr.sin_addr) != 1) {
      fail("bad server address " + server_);
      return false;
    }
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      fail(std::string("connect: ") + std::strerror(errno));
      return false;
    }
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return tls_context() == nullptr || start_tls(server_.substr(0, colon));
  }

  // With $KEYLOCK_TLS_CA (chaos.py --tls) this connection speaks TLS too, like the client's:
  // the server verified against that CA and its IP address. One context per process.
  static SSL_CTX* tls_context() {
    static SSL_CTX* ctx = [] {
      const char* ca = std::getenv("KEYLOCK_TLS_CA");
      if (ca == nullptr || *ca == '\0') return static_cast<SSL_CTX*>(nullptr);
      SSL_CTX* c = SSL_CTX_new(TLS_client_method());
      SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
      SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
      if (SSL_CTX_load_verify_locations(c, ca, nullptr) != 1) {
        std::fprintf(stderr, "chaos_worker: cannot load KEYLOCK_TLS_CA %s\n", ca);
        std::exit(2);
      }
      return c;
    }();
    return ctx;
  }

  // The handshake, blocking, bounded by a receive and send timeout on the socket.
  bool start_tls(const std::string& ip) {
    timeval bound{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof bound);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &bound, sizeof bound);
    ssl_ = SSL_new(tls_context());
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), ip.c_str());
    SSL_set_fd(ssl_, fd_);
    if (SSL_connect(ssl_) != 1) {
      fail("TLS handshake failed: " + tls_reason());
      return false;
    }
    return true;
  }

  static std::string tls_reason() {
    char text[256];
    ERR_error_string_n(ERR_get_error(), text, sizeof text);
    return text;
  }

  // One send or receive, through TLS when it is on.
  ssize_t put(const char* data, std::size_t n) {
    if (ssl_ == nullptr) return ::send(fd_, data, n, MSG_NOSIGNAL);
    const int r = SSL_write(ssl_, data, static_cast<int>(n));
    return r > 0 ? r : -1;
  }
  ssize_t get(char* data, std::size_t n) {
    if (ssl_ == nullptr) return ::recv(fd_, data, n, 0);
    const int r = SSL_read(ssl_, data, static_cast<int>(n));
    if (r > 0) return r;
    return SSL_get_error(ssl_, r) == SSL_ERROR_ZERO_RETURN ? 0 : -1;
  }

  bool send_all(const std::string& data) {
    std::size_t sent = 0;
    while (sent < data.size()) {
      const ssize_t n = put(data.data() + sent, data.size() - sent);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        fail(std::string("send: ") + std::strerror(errno));
        return false;
      }
      sent += static_cast<std::size_t>(n);
    }
    return true;
  }

  bool fill(std::chrono::steady_clock::time_point until) {
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        fail("no reply in time");
        return false;
      }
      // Bytes OpenSSL has decrypted already would never wake poll.
      pollfd p{fd_, POLLIN, 0};
      const int r = ssl_ != nullptr && SSL_pending(ssl_) > 0
                        ? 1
                        : ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
      if (r < 0 && errno != EINTR) {
        fail(std::string("poll: ") + std::strerror(errno));
        return false;
      }
      if (r <= 0) continue;
      char chunk[16384];
      const ssize_t n = get(chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        fail(n == 0 ? "connection closed" : std::string("recv: ") + std::strerror(errno));
        return false;
      }
      buf_.append(chunk, static_cast<std::size_t>(n));
      return true;
    }
  }

  std::string server_;
  int fd_ = -1;
  SSL* ssl_ = nullptr;
  std::string buf_;
  std::string error_;
  std::uint64_t next_id_ = 1;
};

std::string one_line(std::string what) {
  for (char& c : what) {
    if (c == '\n') c = ' ';
  }
  return what;
}

}  // namespace

int main(int argc, char** argv) {
  // SSL_write on a connection the daemon (or a fault) closed would raise SIGPIPE: the raw
  // connection must see EPIPE instead, as its plain send does through MSG_NOSIGNAL.
  std::signal(SIGPIPE, SIG_IGN);
  if (argc != 6) {
    std::fprintf(stderr, "usage: chaos_worker SERVER LOGFILE SEED DURATION_MS KEYS\n");
    return 2;
  }
  log_fd = ::open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    std::perror("open log");
    return 2;
  }
  const std::uint64_t seed = std::strtoull(argv[3], nullptr, 10);
  const auto duration = std::chrono::milliseconds(std::strtoll(argv[4], nullptr, 10));
  const int keys = std::atoi(argv[5]);
  std::mt19937_64 rng(seed);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };

  log_line("START " + std::to_string(::getpid()));
  keylock::client_options opts;
  opts.server = argv[1];
  opts.name = "chaos-" + std::to_string(::getpid());
  opts.request_timeout = std::chrono::milliseconds(3000);
  opts.backoff_max = std::chrono::milliseconds(200);
  raw_conn raw(argv[1]);
  std::optional<keylock::Client> client;
  const auto end = std::chrono::steady_clock::now() + duration;
  while (!client && std::chrono::steady_clock::now() < end) {
    try {
      client.emplace(opts);
    } catch (const std::exception& e) {
      log_line(std::string("ERR - connect ") + e.what());
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  while (client && std::chrono::steady_clock::now() < end) {
    if (uniform(0, 1) == 0) {
      // A read-write lock op on the m keys, over the raw connection: shared (1 in 2) or
      // exclusive, of one key or (2 in 5) of a set of 2-3 distinct keys (sorted, as a client
      // would; the daemon does not care), no renewal.
      std::vector<std::string> set;
      const int size = uniform(0, 4) < 2 ? std::min(keys, uniform(2, 3)) : 1;
      while (static_cast<int>(set.size()) < size) {
        std::string k = std::to_string(uniform(0, keys - 1));
        k.insert(k.begin(), 'm');
        if (std::find(set.begin(), set.end(), k) == set.end()) set.push_back(std::move(k));
      }
      std::sort(set.begin(), set.end());
      std::string spec;
      for (const auto& k : set) {
        if (!spec.empty()) spec += '+';
        spec += k;
      }
      const bool shared = uniform(0, 1) == 0;
      const int ttl = uniform(300, 800);
      long wait_ms = -1;
      switch (uniform(0, 3)) {
        case 0: wait_ms = 0; break;
        case 1: wait_ms = uniform(10, 200); break;
        case 2: wait_ms = uniform(200, 1500); break;
        default: break;
      }
      const int work_ms = uniform(0, 9) == 0 ? uniform(0, 1000) : uniform(0, 30);
      nlohmann::json acq{{"op", "acquire"}, {"ttl_ms", ttl}, {"limit", 1}};
      if (set.size() == 1) {
        acq["key"] = set[0];
      } else {
        acq["keys"] = set;
      }
      if (shared) acq["mode"] = "shared";
      if (wait_ms >= 0) acq["wait_ms"] = wait_ms;
      // A reply overdue by 5 s past its wait means the connection is stuck (a partition
      // longer than that, which the driver never makes): give up on it. Unbounded waits are
      // given up 15 s after the end of the run (nobody starts new work then: the waiters left
      // must be served well before; a cluster's daemons may need a few handoffs for a set).
      const auto until = wait_ms >= 0 ? std::chrono::steady_clock::now() +
                                            std::chrono::milliseconds(wait_ms + 5000)
                                      : end + std::chrono::seconds(15);
      log_line("REQ " + spec + " 1 " + std::to_string(wait_ms) + " " + std::to_string(ttl) +
               " 0 " + (shared ? "S" : "X"));
      auto rep = raw.call({acq}, until);
      if (rep.empty()) {
        log_line("ERR " + spec + " " + one_line(raw.error()));
      } else if (!rep[0].value("ok", false)) {
        const std::string code = rep[0].value("error", std::string("?"));
        log_line(code == "timeout" ? "TIMEOUT " + spec : "ERR " + spec + " " + code);
      } else {
        const std::uint64_t token = rep[0].value("token", std::uint64_t{0});
        const std::string tok = std::to_string(token);
        // The ttl granted: in cluster mode the daemon may cap it below the one asked.
        log_line("W " + spec + " " + tok + " " +
                 std::to_string(rep[0].value("ttl_ms", static_cast<std::int64_t>(ttl))));
        if (set.size() > 1) {
          // The daemon's own view: every key of the set lists this lease, or none does.
          std::vector<nlohmann::json> inspects;
          for (const auto& k : set) inspects.push_back({{"op", "inspect"}, {"key", k}});
          auto seen = raw.call(inspects, std::chrono::steady_clock::now() +
                                             std::chrono::seconds(5));
          if (!seen.empty()) {
            std::string flags;
            for (const auto& r : seen) {
              bool held = false;
              for (const auto& h : r.value("holders", nlohmann::json::array())) {
                held = held || h.value("token", std::uint64_t{0}) == token;
              }
              flags += held ? '1' : '0';
            }
            log_line("SEEN " + spec + " " + tok + " " + flags);
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(work_ms));
        log_line("W " + spec + " " + tok);
        // A set is released by its keys in another order than acquired (any order is valid).
        nlohmann::json rel{{"op", "release"}, {"token", token}};
        if (set.size() == 1) {
          rel["key"] = set[0];
        } else {
          rel["keys"] = std::vector<std::string>(set.rbegin(), set.rend());
        }
        auto done = raw.call({rel}, std::chrono::steady_clock::now() + std::chrono::seconds(5));
        if (done.empty()) {
          // The connection is gone: the daemon drops its leases; whether this one was still
          // held is unknown, so it counts as lost.
          log_line("REL " + spec + " " + tok + " lost");
        } else {
          log_line("REL " + spec + " " + tok + (done[0].value("ok", false) ? " ok" : " lost"));
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(uniform(0, 5)));
      continue;
    }
    const int k = uniform(0, keys - 1);
    const std::string key = "c" + std::to_string(k);
    keylock::AcquireOptions ao;
    ao.limit = 1 + static_cast<std::uint32_t>(k % 3);
    ao.ttl = std::chrono::milliseconds(uniform(300, 800));
    ao.auto_extend = uniform(0, 3) != 0;
    long wait_ms = -1;
    switch (uniform(0, 3)) {
      case 0: wait_ms = 0; break;
      case 1: wait_ms = uniform(10, 200); break;
      case 2: wait_ms = uniform(200, 1500); break;
      default: break;  // wait until granted
    }
    if (wait_ms >= 0) ao.wait = std::chrono::milliseconds(wait_ms);
    // Work mostly well inside the ttl; sometimes past it without renewal (the lease runs out).
    const int work_ms = uniform(0, 9) == 0 ? uniform(0, 1000) : uniform(0, 30);
    log_line("REQ " + key + " " + std::to_string(ao.limit) + " " + std::to_string(wait_ms) + " " +
             std::to_string(ao.ttl.count()) + (ao.auto_extend ? " 1" : " 0") + " X");
    std::uint64_t token = 0;
    try {
      client->with_lock(
          key,
          [&](const keylock::Lease& lease) {
            token = lease.token();
            log_line("W " + key + " " + std::to_string(token));
            std::this_thread::sleep_for(std::chrono::milliseconds(work_ms));
            log_line("W " + key + " " + std::to_string(token));
          },
          ao);
      log_line("REL " + key + " " + std::to_string(token) + " ok");
    } catch (const keylock::NotHeld&) {
      log_line("REL " + key + " " + std::to_string(token) + " lost");
    } catch (const keylock::Timeout&) {
      log_line("TIMEOUT " + key);
    } catch (const keylock::Error& e) {
      // The wire code first when there is one (e.g. `unavailable` from a daemon that cannot
      // prove its etcd lease alive), as the raw path logs it.
      log_line("ERR " + key + " " +
               (e.code() ? std::string(keylock::to_string(*e.code())) + " " : std::string()) +
               one_line(e.what()));
    } catch (const std::exception& e) {
      log_line("ERR " + key + " " + one_line(e.what()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(uniform(0, 5)));
  }
  client.reset();
  log_line("STOP");
  return 0;
}
