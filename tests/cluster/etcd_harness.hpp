// A real etcd for tests: members of Debian's etcd-server 3.4 on free loopback ports, data
// under /dev/shm (fsync on disk costs milliseconds here), every process stopped by PID when the
// object goes. Header-only: shared by the etcd client's tests and the cluster daemons' tests.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace keylock::test {

// "http://127.0.0.1:PORT". Appended piecewise: GCC 12 warns falsely (-Wrestrict) on
// "literal" + std::to_string(n).
inline std::string url(std::uint16_t port) {
  std::string u = "http://127.0.0.1:";
  u += std::to_string(port);
  return u;
}

inline std::uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    throw std::runtime_error("bind failed");
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// A cluster of `members` etcd processes on loopback. Data dirs under /dev/shm (fsync on disk
// costs milliseconds here). Every process is stopped by PID in the destructor.
class etcd_cluster {
 public:
  // `client_tls`: flags that make etcd serve clients over TLS (--cert-file ... ), whose client
  // URLs are then https://.
  explicit etcd_cluster(int members, std::vector<std::string> client_tls = {})
      : client_tls_(std::move(client_tls)) {
    char templ[] = "/dev/shm/keylock-etcd-XXXXXX";
    if (::mkdtemp(templ) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir_ = templ;
    std::string initial;
    for (int i = 0; i < members; ++i) {
      member m;
      m.name = "m";
      m.name += std::to_string(i);
      m.client_port = free_port();
      m.peer_port = free_port();
      if (!initial.empty()) initial += ',';
      initial += m.name;
      initial += '=';
      initial += url(m.peer_port);
      members_.push_back(m);
    }
    for (member& m : members_) start(m, initial);
  }
  ~etcd_cluster() {
    for (member& m : members_) kill(m, SIGKILL);
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  etcd_cluster(const etcd_cluster&) = delete;
  etcd_cluster& operator=(const etcd_cluster&) = delete;

  // "http://127.0.0.1:P1,http://127.0.0.1:P2,..." as keylockd's --etcd-endpoints takes it.
  std::string endpoint_list() const {
    std::string out;
    for (const std::string& e : endpoints()) {
      if (!out.empty()) out += ',';
      out += e;
    }
    return out;
  }
  std::uint16_t client_port(std::size_t i) const { return members_.at(i).client_port; }
  std::vector<std::string> endpoints() const {
    std::vector<std::string> out;
    for (const member& m : members_) {
      out.push_back(client_url(m.client_port));
    }
    return out;
  }
  void kill_member(std::size_t i) { kill(members_.at(i), SIGKILL); }
  void stop_member(std::size_t i, int sig) { ::kill(members_.at(i).pid, sig); }

 private:
  struct member {
    std::string name;
    std::uint16_t client_port = 0;
    std::uint16_t peer_port = 0;
    pid_t pid = -1;
  };

  void start(member& m, const std::string& initial) {
    const std::string client = client_url(m.client_port);
    const std::string peer = url(m.peer_port);
    std::vector<std::string> args = {"etcd",
                                     "--name",
                                     m.name,
                                     "--data-dir",
                                     (dir_ / m.name).string(),
                                     "--listen-client-urls",
                                     client,
                                     "--advertise-client-urls",
                                     client,
                                     "--listen-peer-urls",
                                     peer,
                                     "--initial-advertise-peer-urls",
                                     peer,
                                     "--initial-cluster",
                                     initial,
                                     "--initial-cluster-state",
                                     "new",
                                     "--initial-cluster-token",
                                     dir_.filename().string(),
                                     "--log-level",
                                     "error"};
    args.insert(args.end(), client_tls_.begin(), client_tls_.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string log = (dir_ / (m.name + ".log")).string();
    m.pid = ::fork();
    if (m.pid < 0) throw std::runtime_error("fork failed");
    if (m.pid == 0) {
      std::FILE* f = std::fopen(log.c_str(), "w");
      if (f != nullptr) {
        ::dup2(::fileno(f), 1);
        ::dup2(::fileno(f), 2);
      }
      ::execvp("etcd", argv.data());
      ::_exit(127);
    }
  }

  static void kill(member& m, int sig) {
    if (m.pid <= 0) return;
    ::kill(m.pid, sig);
    ::waitpid(m.pid, nullptr, 0);
    m.pid = -1;
  }

  std::string client_url(std::uint16_t port) const {
    std::string u = client_tls_.empty() ? "http://127.0.0.1:" : "https://127.0.0.1:";
    u += std::to_string(port);
    return u;
  }

  std::vector<std::string> client_tls_;
  std::filesystem::path dir_;
  std::vector<member> members_;
};

}  // namespace keylock::test
