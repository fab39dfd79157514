// keylock: the command-line client of keylockd.
//
//   keylock run KEY [KEY...] [--shared] [--ttl D] [--wait D] [--limit N]
//               [--conflict-exit-code N] [--grace D] -- COMMAND [ARGS...]
//   keylock ping [--count N]
//   keylock inspect KEY [--json]
//   keylock stats [--json]
//   keylock top [-n N] [--interval S] [--once]
//
// Global: --server HOST:PORT[,HOST:PORT...] ($KEYLOCK_SERVER, else 127.0.0.1:7400), --auth
// SECRET ($KEYLOCK_AUTH), --user NAME ($KEYLOCK_USER: --auth is then that user's secret), and
// TLS: --tls ($KEYLOCK_TLS=1), --tls-ca FILE ($KEYLOCK_TLS_CA; implies --tls), --tls-cert FILE
// and --tls-key FILE ($KEYLOCK_TLS_CERT, $KEYLOCK_TLS_KEY: a client certificate for mutual
// TLS), --tls-server-name NAME ($KEYLOCK_TLS_SERVER_NAME; default: the host of --server).
// With several servers (a cluster) every subcommand uses the first that answers and fails over
// to the others as the library does (include/keylock/client.hpp).
// Exit codes follow sysexits.h; `run` passes its command's status through. 77 is a refused
// user or secret, 78 an operation that the daemon's ACL denies the user (see exit_denied).
//
// `run` is flock(1) across hosts: it holds the lock while COMMAND runs (renewing it at ttl/3),
// forwards SIGINT/SIGTERM/SIGHUP, and never lets the command go on once the lock is lost.
// Several keys before `--` are acquired all at once (one lease); --shared takes them shared.
#include "keylock/client.hpp"
#include "keylock/codec.hpp"
#include "keylock_version.hpp"

#include <CLI/CLI.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

extern char** environ;  // NOLINT: POSIX

namespace {

using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

// Exit codes (sysexits.h), documented in the README's "Command line: keylock" section.
constexpr int exit_failure = 1;       // the daemon refused (conflict, limit, ...), other errors
constexpr int exit_usage = 64;        // EX_USAGE: bad arguments
constexpr int exit_unavailable = 69;  // EX_UNAVAILABLE: daemon unreachable
constexpr int exit_lost = 70;         // EX_SOFTWARE: the lease was lost while COMMAND ran
constexpr int exit_tempfail = 75;     // EX_TEMPFAIL: not acquired within --wait (default)
constexpr int exit_noperm = 77;       // EX_NOPERM: authentication refused
// EX_CONFIG: authenticated, but the daemon's ACL does not grant this user the operation on
// this key (Denied): a matter of the users file, not of the secret (77) or of the key (1).
constexpr int exit_denied = 78;
constexpr int exit_cannot_exec = 126;
constexpr int exit_not_found = 127;

// Parses "250ms", "30s", "1.5s", "2m", "1h"; a bare number is seconds. nullopt when malformed.
std::optional<milliseconds> parse_duration(const std::string& text) {
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  const std::string unit = text.substr(used);
  double scale = 0;
  if (unit.empty() || unit == "s") {
    scale = 1000;
  } else if (unit == "ms") {
    scale = 1;
  } else if (unit == "m") {
    scale = 60'000;
  } else if (unit == "h") {
    scale = 3'600'000;
  } else {
    return std::nullopt;
  }
  const double ms = value * scale;
  if (!(ms >= 0) || ms > 1e12) return std::nullopt;  // also rejects NaN
  return milliseconds(std::llround(ms));
}

const CLI::Validator duration_check(
    [](std::string& text) {
      return parse_duration(text) ? std::string() : "not a duration (e.g. 500ms, 30s, 2m): " + text;
    },
    "DURATION");

std::string format_ms(std::uint64_t ms) {
  char buf[64];
  if (ms < 1000) {
    std::snprintf(buf, sizeof buf, "%llums", static_cast<unsigned long long>(ms));
  } else if (ms < 60'000) {
    std::snprintf(buf, sizeof buf, "%.3fs", static_cast<double>(ms) / 1000.0);
  } else {
    const auto total_s = ms / 1000;
    std::snprintf(buf, sizeof buf, "%lluh%02llum%02llus",
                  static_cast<unsigned long long>(total_s / 3600),
                  static_cast<unsigned long long>(total_s / 60 % 60),
                  static_cast<unsigned long long>(total_s % 60));
  }
  return buf;
}

// Every message starts with "keylock: " once.
void complain(const std::string& message) {
  if (message.rfind("keylock: ", 0) == 0) {
    std::cerr << message << '\n';
  } else {
    std::cerr << "keylock: " << message << '\n';
  }
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "?";
  return buf;
}

// ---- keylock run --------------------------------------------------------------------------

// The self-pipe: signal handlers and the on_lost callback (on the client's I/O thread) write
// one byte each; the main thread polls it. Byte 0 = lease lost; otherwise a signal number, with
// 0x80 set when the terminal sent it (the child, in our process group, got it too).
int wake_fd = -1;
constexpr unsigned char lost_byte = 0;
constexpr unsigned char from_tty_bit = 0x80;

std::mutex lost_mutex;
std::string lost_message;  // guarded by lost_mutex

void wake(unsigned char byte) {
  const int saved = errno;
  // Non-blocking: a full pipe already holds a wake-up.
  [[maybe_unused]] const ssize_t n = ::write(wake_fd, &byte, 1);
  errno = saved;
}

void on_signal(int sig, siginfo_t* info, void*) {
  auto byte = static_cast<unsigned char>(sig);
  if (info != nullptr && info->si_code == SI_KERNEL) byte |= from_tty_bit;
  wake(byte);
}

constexpr std::array<int, 3> forwarded_signals = {SIGINT, SIGTERM, SIGHUP};

// Installs the handlers (once the lock is held). A signal ignored when we started (e.g. SIGINT of a
// background job) stays ignored, for us and for the command.
void install_handlers() {
  struct sigaction action {};
  action.sa_sigaction = on_signal;
  action.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&action.sa_mask);
  for (const int sig : forwarded_signals) {
    struct sigaction old {};
    sigaction(sig, nullptr, &old);
    if (old.sa_handler == SIG_IGN) continue;
    sigaction(sig, &action, nullptr);
  }
  sigaction(SIGCHLD, &action, nullptr);
}

struct run_args {
  std::vector<std::string> keys;  // one, or several acquired at once (before `--`)
  bool shared = false;
  std::string ttl = "30s";
  std::string wait;  // empty: forever
  std::uint32_t limit = 1;
  int conflict_exit_code = exit_tempfail;
  std::string grace = "5s";
  std::vector<std::string> command;
};

// The environment of the command: ours, with KEYLOCK_KEY (the first key), KEYLOCK_KEYS (every
// key, one per line), KEYLOCK_MODE and KEYLOCK_TOKEN set.
std::vector<std::string> child_environment(const keylock::Lease& lease) {
  std::vector<std::string> env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string_view var(*entry);
    if (var.rfind("KEYLOCK_KEY=", 0) == 0 || var.rfind("KEYLOCK_KEYS=", 0) == 0 ||
        var.rfind("KEYLOCK_MODE=", 0) == 0 || var.rfind("KEYLOCK_TOKEN=", 0) == 0) {
      continue;
    }
    env.emplace_back(var);
  }
  std::string keys;
  for (const auto& key : lease.keys()) {
    if (!keys.empty()) keys += '\n';
    keys += key;
  }
  env.push_back("KEYLOCK_KEY=" + lease.key());
  env.push_back("KEYLOCK_KEYS=" + keys);
  env.push_back("KEYLOCK_MODE=" + std::string(keylock::to_string(lease.mode())));
  env.push_back("KEYLOCK_TOKEN=" + std::to_string(lease.token()));
  return env;
}

// 'k' for one key, 'a', 'b' for several: how messages name the lock.
std::string quote_keys(const std::vector<std::string>& keys) {
  std::string out;
  for (const auto& key : keys) {
    if (!out.empty()) out += ", ";
    out += "'" + key + "'";
  }
  return out;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Finds `name` on $PATH as execvp would (a name with a '/' is used as is). Resolved before the
// fork, because the child of a threaded process may only make async-signal-safe calls.
// Returns the path, or the errno to report: ENOENT (not found) or EACCES (not executable).
std::pair<std::string, int> find_program(const std::string& name) {
  if (name.find('/') != std::string::npos) return {name, 0};
  const char* path_env = std::getenv("PATH");
  const std::string path = path_env != nullptr ? path_env : "/bin:/usr/bin";
  int error = ENOENT;
  std::size_t start = 0;
  for (;;) {
    const std::size_t end = path.find(':', start);
    std::string dir = path.substr(start, end == std::string::npos ? end : end - start);
    if (dir.empty()) dir = ".";
    const std::string candidate = dir + "/" + name;
    struct stat info {};
    if (::stat(candidate.c_str(), &info) == 0 && S_ISREG(info.st_mode)) {
      if (::access(candidate.c_str(), X_OK) == 0) return {candidate, 0};
      error = EACCES;
    }
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return {std::string(), error};
}

// Starts the command. The child gets SIGTERM should keylock die (PR_SET_PDEATHSIG): the lock
// goes with keylock's connection, so the command must not run on unnoticed. Returns the pid,
// or -1 with `error` set to the errno of the failed exec.
pid_t spawn_command(const std::string& program, std::vector<char*>& argv, std::vector<char*>& envp,
                    int& error) {
  int status_pipe[2];
  if (pipe2(status_pipe, O_CLOEXEC) != 0) {
    error = errno;
    return -1;
  }
  // No handler may run in the child before exec resets them: block everything across fork.
  sigset_t all;
  sigset_t old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  const pid_t parent = getpid();
  const pid_t child = fork();
  if (child == 0) {
    // Async-signal-safe calls only from here: the parent has other threads.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (const int sig : forwarded_signals) {
      struct sigaction current {};
      sigaction(sig, nullptr, &current);
      if (current.sa_handler != SIG_IGN) sigaction(sig, &dfl, nullptr);
    }
    sigaction(SIGCHLD, &dfl, nullptr);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(exit_lost);  // keylock died before prctl took effect
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    execve(program.c_str(), argv.data(), envp.data());
    const int exec_error = errno;
    [[maybe_unused]] const ssize_t n = ::write(status_pipe[1], &exec_error, sizeof exec_error);
    _exit(exit_cannot_exec);
  }
  const int fork_error = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  ::close(status_pipe[1]);
  if (child < 0) {
    ::close(status_pipe[0]);
    error = fork_error;
    return -1;
  }
  // EOF (the pipe closed on exec) means the command runs; an errno means exec failed.
  int exec_error = 0;
  ssize_t n = 0;
  do {
    n = ::read(status_pipe[0], &exec_error, sizeof exec_error);
  } while (n < 0 && errno == EINTR);
  ::close(status_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof exec_error)) {
    int status = 0;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    error = exec_error;
    return -1;
  }
  return child;
}

int run_command(keylock::client_options options, const run_args& args) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    complain(std::string("pipe: ") + std::strerror(errno));
    return exit_failure;
  }
  wake_fd = fds[1];

  if (options.name.empty()) {
    options.name = ("keylock run " + args.command.front()).substr(0, 200) + " (pid " +
                   std::to_string(getpid()) + " on " + host_name() + ")";
  }
  keylock::Client client(options);

  keylock::AcquireOptions acquire;
  acquire.ttl = *parse_duration(args.ttl);
  if (!args.wait.empty()) acquire.wait = *parse_duration(args.wait);
  acquire.limit = args.limit;
  if (args.shared) acquire.mode = keylock::lock_mode::shared;
  acquire.on_lost = [](const keylock::lease_lost& lost) {
    {
      std::lock_guard lock(lost_mutex);
      lost_message = lost.message;
    }
    wake(lost_byte);
  };

  const std::string label = quote_keys(args.keys);
  keylock::Lease lease;
  try {
    lease = args.keys.size() == 1 ? client.acquire(args.keys.front(), acquire)
                                  : client.acquire_all(args.keys, acquire);
  } catch (const keylock::Timeout&) {
    complain(label + (args.keys.size() == 1 ? " is" : " are") +
             " held elsewhere; not acquired within " +
             format_ms(static_cast<std::uint64_t>(acquire.wait.value_or(milliseconds(0)).count())));
    return args.conflict_exit_code;
  }

  if (!lease.valid()) {
    complain("lost the lock on " + label + " before the command started");
    return exit_lost;
  }
  // Handlers only now: while keylock waits for the lock, ^C simply ends it (and the daemon
  // drops the waiting acquire with the connection).
  install_handlers();
  std::vector<std::string> env = child_environment(lease);
  std::vector<std::string> argv_strings = args.command;
  std::vector<char*> child_argv = c_strings(argv_strings);
  std::vector<char*> child_env = c_strings(env);
  auto [program, spawn_error] = find_program(args.command.front());
  pid_t child = -1;
  if (spawn_error == 0) child = spawn_command(program, child_argv, child_env, spawn_error);
  if (child < 0) {
    complain("cannot run '" + args.command.front() + "': " + std::strerror(spawn_error));
    try {
      lease.release();                 // confirmed: once keylock exits, the lock is free
    } catch (const keylock::Error&) {  // lost or unconfirmed: nothing left to do about it
    }
    return spawn_error == ENOENT ? exit_not_found : exit_cannot_exec;
  }

  const milliseconds grace = *parse_duration(args.grace);
  bool lost = false;
  // When to SIGKILL the command; never = not scheduled. (Not an optional: GCC 12 -O2 warns
  // maybe-uninitialized through std::optional<time_point>.)
  constexpr steady::time_point never = steady::time_point::max();
  steady::time_point kill_at = never;
  int status = 0;
  for (;;) {
    const pid_t done = waitpid(child, &status, WNOHANG);
    if (done == child) break;
    if (done < 0 && errno != EINTR) {
      complain(std::string("waitpid: ") + std::strerror(errno));
      return exit_failure;
    }
    int timeout_ms = -1;
    if (kill_at != never) {
      const auto left = std::chrono::ceil<milliseconds>(kill_at - steady::now()).count();
      timeout_ms = static_cast<int>(std::max<std::int64_t>(left, 0));
    }
    pollfd pfd{fds[0], POLLIN, 0};
    const int ready = poll(&pfd, 1, timeout_ms);
    if (ready < 0 && errno != EINTR) {
      complain(std::string("poll: ") + std::strerror(errno));
      return exit_failure;
    }
    std::array<unsigned char, 64> bytes{};
    ssize_t n = 0;
    while ((n = ::read(fds[0], bytes.data(), bytes.size())) > 0) {
      for (ssize_t i = 0; i < n; ++i) {
        const unsigned char byte = bytes[static_cast<std::size_t>(i)];
        if (byte == lost_byte) {
          if (lost) continue;
          lost = true;
          std::string why;
          {
            std::lock_guard lock(lost_mutex);
            why = lost_message;
          }
          complain("lost the lock on " + label + " while the command ran (" + why +
                   "); sending SIGTERM to the command");
          kill(child, SIGTERM);
          kill_at = steady::now() + grace;
          continue;
        }
        const int sig = byte & ~from_tty_bit;
        if (sig == SIGCHLD) continue;  // checked at the top of the loop
        // A terminal's signal reached the command already (same process group).
        if ((byte & from_tty_bit) == 0) kill(child, sig);
      }
    }
    if (kill_at != never && steady::now() >= kill_at) {
      complain("the command did not exit within " +
               format_ms(static_cast<std::uint64_t>(grace.count())) + " of SIGTERM; SIGKILL");
      kill(child, SIGKILL);
      kill_at = never;
    }
  }

  const int child_code = WIFEXITED(status)     ? WEXITSTATUS(status)
                         : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                               : exit_failure;
  if (lost) {
    complain("the command was stopped because the lock on " + label + " was lost");
    return exit_lost;
  }
  try {
    lease.release();
  } catch (const keylock::NotHeld& e) {
    complain("lost the lock on " + label + " before the command finished: " + e.what());
    return exit_lost;
  } catch (const keylock::ConnectionError& e) {
    // Every renewal was confirmed while the command ran (else the lease would be lost); the
    // release is unconfirmed and the lease runs out by its ttl.
    complain(std::string("warning: release not confirmed: ") + e.what());
  }
  return child_code;
}

// ---- ping, inspect, stats -----------------------------------------------------------------

int ping(keylock::Client& client, int count) {
  for (int i = 0; i < count; ++i) {
    const auto rtt = client.ping();
    std::printf("pong from %s (keylockd %s): time=%.3f ms\n", client.server().c_str(),
                client.server_version().c_str(),
                std::chrono::duration<double, std::milli>(rtt).count());
  }
  return 0;
}

std::string raw_json(keylock::reply rep) {
  rep.type = keylock::reply::kind::ok;
  std::string out;
  keylock::append_reply(out, rep);
  return out;
}

// `keylock release KEY TOKEN`: 0 when the lease ended, 1 (with why) when KEY had no live lease
// with that token.
int force_release(keylock::Client& client, const std::string& key, std::uint64_t token) {
  try {
    client.release(key, token);
  } catch (const keylock::NotHeld&) {
    complain("release: " + key + " has no live lease with token " + std::to_string(token) +
             " (released, expired, or another key's)");
    return exit_failure;
  }
  std::printf("released %s token %llu\n", key.c_str(), static_cast<unsigned long long>(token));
  return 0;
}

int inspect(keylock::Client& client, const std::string& key, bool json) {
  const keylock::key_info info = client.inspect(key);
  if (json) {
    keylock::reply rep;
    rep.held = info.held;
    rep.holders = info.holders;
    rep.waiters = info.waiters;
    rep.limit = info.limit;
    rep.cluster = info.cluster;
    std::cout << raw_json(rep);
    return 0;
  }
  std::printf("key      %s\n", key.c_str());
  if (info.cluster) {
    std::printf("right    %s (%llu other daemons waiting)\n",
                info.cluster->holder.empty() ? "no daemon" : info.cluster->holder.c_str(),
                static_cast<unsigned long long>(info.cluster->daemons_waiting));
  }
  if (info.held) {
    std::printf("held     yes, %zu of limit %llu\n", info.holders.size(),
                static_cast<unsigned long long>(info.limit));
  } else {
    std::printf("held     no\n");
  }
  std::printf("waiters  %llu\n", static_cast<unsigned long long>(info.waiters));
  if (!info.holders.empty()) {
    // SET lists every key of a lease over several keys (acquired at once), "-" for one key.
    std::printf("\n%-18s %-9s %-10s %-32s %-21s %s\n", "TOKEN", "MODE", "TTL LEFT", "CLIENT",
                "PEER", "SET");
    for (const auto& h : info.holders) {
      std::string set;
      for (const auto& k : h.keys) {
        if (!set.empty()) set += ' ';
        set += k;
      }
      std::printf("%-18llu %-9s %-10s %-32s %-21s %s\n", static_cast<unsigned long long>(h.token),
                  std::string(keylock::to_string(h.mode)).c_str(), format_ms(h.ttl_ms_left).c_str(),
                  h.client.empty() ? "-" : h.client.c_str(), h.peer.empty() ? "-" : h.peer.c_str(),
                  set.empty() ? "-" : set.c_str());
    }
  }
  return 0;
}

int stats(keylock::Client& client, bool json) {
  const keylock::stats_info s = client.stats();
  if (json) {
    keylock::reply rep;
    rep.stats = s;
    std::cout << raw_json(rep);
    return 0;
  }
  const auto row = [](const char* name, std::uint64_t value, const char* what) {
    std::printf("%-12s %12llu  %s\n", name, static_cast<unsigned long long>(value), what);
  };
  row("connections", s.connections, "open connections");
  row("keys", s.keys, "live keys (held or waited on)");
  row("held", s.held, "leases held");
  row("waiting", s.waiting, "acquires waiting");
  row("acquires", s.acquires, "acquire requests since start");
  row("grants", s.grants, "grants since start");
  row("shared", s.grants_shared, "of which in shared mode");
  row("releases", s.releases, "releases since start");
  row("timeouts", s.timeouts, "acquires that timed out");
  row("expirations", s.expirations, "leases that ran out");
  std::printf("%-12s %12s  %s\n", "uptime", format_ms(s.uptime_ms).c_str(), "since start");
  return 0;
}

// ---- top -------------------------------------------------------------------------------------

struct top_args {
  std::size_t n = 10;
  double interval_s = 1.0;
  bool once = false;
  int iterations = 0;  // 0 = until interrupted
};

volatile std::sig_atomic_t top_stop = 0;
extern "C" void on_top_signal(int) { top_stop = 1; }

// Prints one screen: the gauges, the rates since `prev` (when given) and both lists.
void print_top(const keylock::top_info& t, const keylock::top_info* prev, double seconds,
               const std::string& server) {
  const keylock::stats_info& s = t.stats;
  auto rate = [&](std::uint64_t now_v, std::uint64_t before) {
    if (prev == nullptr || seconds <= 0 || now_v < before) return std::string("-");
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", static_cast<double>(now_v - before) / seconds);
    return std::string(buf);
  };
  std::printf("keylockd %s  up %s\n", server.c_str(), format_ms(s.uptime_ms).c_str());
  std::printf("connections %llu  keys %llu  held %llu  waiting %llu\n",
              static_cast<unsigned long long>(s.connections),
              static_cast<unsigned long long>(s.keys), static_cast<unsigned long long>(s.held),
              static_cast<unsigned long long>(s.waiting));
  std::printf("grants/s %s  timeouts/s %s  expirations/s %s\n",
              rate(s.grants, prev ? prev->stats.grants : 0).c_str(),
              rate(s.timeouts, prev ? prev->stats.timeouts : 0).c_str(),
              rate(s.expirations, prev ? prev->stats.expirations : 0).c_str());
  std::printf("\nLONGEST QUEUES\n%-40s %8s %6s %6s\n", "KEY", "WAITERS", "HELD", "LIMIT");
  if (t.queues.empty()) std::printf("(none)\n");
  for (const auto& q : t.queues) {
    std::printf("%-40.40s %8llu %6llu %6llu", q.key.c_str(),
                static_cast<unsigned long long>(q.waiters), static_cast<unsigned long long>(q.held),
                static_cast<unsigned long long>(q.limit));
    if (q.cluster) {  // cluster mode: where the key's global right is
      std::printf("  right: %s, %llu daemons waiting",
                  q.cluster->holder.empty() ? "-" : q.cluster->holder.c_str(),
                  static_cast<unsigned long long>(q.cluster->daemons_waiting));
    }
    std::printf("\n");
  }
  std::printf("\nOLDEST HOLDERS\n%-32s %-10s %-10s %-24s %s\n", "KEY", "HELD", "TTL LEFT",
              "CLIENT", "PEER");
  if (t.oldest.empty()) std::printf("(none)\n");
  for (const auto& l : t.oldest) {
    std::printf("%-32.32s %-10s %-10s %-24.24s %s\n", l.key.c_str(), format_ms(l.held_ms).c_str(),
                format_ms(l.ttl_ms_left).c_str(), l.client.empty() ? "-" : l.client.c_str(),
                l.peer.empty() ? "-" : l.peer.c_str());
  }
  std::fflush(stdout);
}

// A live view refreshed every interval (plain ANSI: clear screen, cursor home), or one
// snapshot with --once for scripts.
int top(keylock::Client& client, const top_args& args) {
  if (args.once) {
    print_top(client.top(args.n), nullptr, 0, client.server());
    return 0;
  }
  std::signal(SIGINT, on_top_signal);
  std::signal(SIGTERM, on_top_signal);
  std::optional<keylock::top_info> prev;
  auto prev_at = std::chrono::steady_clock::now();
  for (int i = 0; top_stop == 0 && (args.iterations == 0 || i < args.iterations); ++i) {
    std::optional<keylock::top_info> fetched;
    try {
      fetched = client.top(args.n);
    } catch (const keylock::ConnectionError& e) {
      // With a cluster's list the client is failing over: show why and try again next
      // refresh; the rates restart on the daemon that answers. With one daemon, give up.
      if (client.servers().size() == 1) throw;
      std::printf("\x1b[H\x1b[2J%s\n", e.what());
      std::fflush(stdout);
    }
    auto at = std::chrono::steady_clock::now();
    if (fetched) {
      std::printf("\x1b[H\x1b[2J");
      print_top(*fetched, prev ? &*prev : nullptr,
                std::chrono::duration<double>(at - prev_at).count(), client.server());
    }
    prev = std::move(fetched);
    prev_at = at;
    auto until = at + std::chrono::duration<double>(args.interval_s);
    while (top_stop == 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // a UI refresh period
    }
  }
  return 0;
}

// Moves the words after the first `--` that follows `run` into `command`; true when there was
// one.
bool split_command(std::vector<std::string>& args, std::vector<std::string>& command) {
  const auto run = std::find(args.begin(), args.end(), "run");
  if (run == args.end()) return false;
  const auto dashes = std::find(run, args.end(), "--");
  if (dashes == args.end()) return false;
  command.assign(dashes + 1, args.end());
  args.erase(dashes, args.end());
  return true;
}

// What is wrong with `keylock run`'s arguments beyond what CLI11 checks; empty when nothing.
std::string check_run_args(const run_args& run) {
  if (run.command.empty()) return "run: no command given (keylock run KEY... -- COMMAND)";
  if (run.keys.size() > keylock::max_keys_per_request) {
    return "run: at most " + std::to_string(keylock::max_keys_per_request) + " keys";
  }
  std::vector<std::string> sorted = run.keys;
  std::sort(sorted.begin(), sorted.end());
  if (const auto twice = std::adjacent_find(sorted.begin(), sorted.end()); twice != sorted.end()) {
    return "run: key '" + *twice + "' given twice";
  }
  if (run.shared && run.limit != 1) {
    return "run: --shared needs --limit 1 (a shared lock is a read-write lock, not a semaphore)";
  }
  return "";
}

int run_main(int argc, char** argv) {
  CLI::App app{"keylock: run commands under keylockd locks, and look at the daemon"};
  app.set_version_flag("--version", "keylock " KEYLOCK_VERSION);
  app.require_subcommand(1);

  keylock::client_options options;
  std::string auth;
  app.add_option("--server", options.server,
                 "keylockd address HOST:PORT, or a cluster's daemons HOST:PORT,HOST:PORT,... "
                 "tried in order: the first that answers is used, the next ones when it "
                 "becomes unreachable (default: $KEYLOCK_SERVER, else 127.0.0.1:7400)");
  CLI::Option* auth_option =
      app.add_option("--auth", auth, "shared secret of the daemon (default: $KEYLOCK_AUTH)");
  app.add_option("--name", options.name, "client name shown by inspect");
  std::string user;
  CLI::Option* user_option = app.add_option(
      "--user", user,
      "daemon user to authenticate as (its users file); --auth is then that user's secret "
      "(default: $KEYLOCK_USER)");
  bool tls = false;
  app.add_flag("--tls", tls,
               "connect with TLS, verifying the daemon's certificate against the system's CAs "
               "or --tls-ca (default: on when $KEYLOCK_TLS=1 or a CA file is given)");
  app.add_option("--tls-ca", options.tls.ca_file,
                 "PEM file of the CAs that sign the daemon's certificate; implies --tls "
                 "(default: $KEYLOCK_TLS_CA)");
  app.add_option("--tls-cert", options.tls.cert_file,
                 "PEM client certificate, for a daemon that requires one (mutual TLS) "
                 "(default: $KEYLOCK_TLS_CERT)");
  app.add_option("--tls-key", options.tls.key_file,
                 "private key of --tls-cert (default: $KEYLOCK_TLS_KEY, else in --tls-cert)");
  app.add_option("--tls-server-name", options.tls.server_name,
                 "name (or IP address) the daemon's certificate must carry (default: "
                 "$KEYLOCK_TLS_SERVER_NAME, else the host of --server)");
  app.footer(
      "exit status: 64 bad arguments, 69 daemon unreachable (also a failed TLS handshake), 77 "
      "user or secret refused, 78 the daemon's ACL denies this user the operation, 1 another "
      "refusal; run: its command's status, 75 not acquired within --wait, 70 lease lost");

  run_args run;
  CLI::App* run_cmd = app.add_subcommand(
      "run",
      "run COMMAND holding the lock KEY (or every KEY at once); exit with its status:\n"
      "  keylock run KEY [OPTIONS] -- COMMAND [ARGS...]\n"
      "  keylock run KEY1 KEY2... [OPTIONS] -- COMMAND [ARGS...]");
  run_cmd
      ->add_option("keys", run.keys,
                   "the lock(s) to hold; several keys before -- are acquired all at once, as one "
                   "lease")
      ->required();
  run_cmd->add_flag("--shared", run.shared,
                    "hold the lock(s) shared: shared holders run at once, an exclusive holder "
                    "excludes them (a read-write lock)");
  run_cmd->add_option("--ttl", run.ttl, "lease ttl, renewed at a third of it (default 30s)")
      ->check(duration_check);
  run_cmd
      ->add_option("--wait", run.wait,
                   "give up when not acquired within this long (default: wait forever; "
                   "0 = try once)")
      ->check(duration_check);
  run_cmd->add_option("--limit", run.limit, "holders allowed at once (default 1)")
      ->check(CLI::Range(1u, 1u << 20));
  run_cmd
      ->add_option("--conflict-exit-code", run.conflict_exit_code,
                   "exit status when not acquired within --wait (default 75)")
      ->check(CLI::Range(0, 255));
  run_cmd
      ->add_option("--grace", run.grace,
                   "after a lost lock, SIGKILL the command this long after SIGTERM (default "
                   "5s)")
      ->check(duration_check);
  // Filled by split_command below, not by CLI11 (which cannot end a list of keys at `--`);
  // declared so that --help shows it.
  std::vector<std::string> command_for_help;
  run_cmd->add_option("command", command_for_help, "the command and its arguments, after --");

  int ping_count = 1;
  CLI::App* ping_cmd = app.add_subcommand("ping", "measure the round trip to the daemon");
  ping_cmd->add_option("--count,-c", ping_count, "pings to send (default 1)")
      ->check(CLI::Range(1, 1000000));

  std::string inspect_key;
  bool json = false;
  CLI::App* inspect_cmd = app.add_subcommand("inspect", "show the holders and waiters of KEY");
  inspect_cmd->add_option("key", inspect_key, "the lock")->required();
  inspect_cmd->add_flag("--json", json, "print the daemon's reply as JSON");

  std::string release_key;
  std::uint64_t release_token = 0;
  CLI::App* release_cmd = app.add_subcommand(
      "release",
      "end the lease TOKEN on KEY, whoever holds it (an operator's force release; the token is "
      "in `keylock inspect KEY`)");
  release_cmd->add_option("key", release_key, "the lock")->required();
  release_cmd->add_option("token", release_token, "the lease's fencing token")->required();

  CLI::App* stats_cmd = app.add_subcommand("stats", "show the daemon's gauges and counters");
  stats_cmd->add_flag("--json", json, "print the daemon's reply as JSON");

  top_args top_opts;
  CLI::App* top_cmd = app.add_subcommand(
      "top", "live view: rates, the longest queues and the oldest holders (Ctrl-C to quit)");
  top_cmd->add_option("-n", top_opts.n, "keys and leases to list (default 10)")
      ->check(CLI::Range(1, 100));
  top_cmd->add_option("--interval", top_opts.interval_s, "seconds between refreshes (default 1)")
      ->check(CLI::Range(0.1, 3600.0));
  top_cmd->add_option("--iterations", top_opts.iterations, "stop after this many screens")
      ->check(CLI::Range(0, 1000000));
  top_cmd->add_flag("--once", top_opts.once, "print one snapshot without clearing the screen");

  // `run KEY... -- COMMAND...`: CLI11 2.1 gives every positional after `--` to the first list
  // option, so the command is cut off at the first `--` after `run` before parsing.
  app.name(argc > 0 ? argv[0] : "keylock");  // what parse(argc, argv) would have set
  std::vector<std::string> args(argv + 1, argv + argc);
  const bool split = split_command(args, run.command);
  try {
    std::reverse(args.begin(), args.end());  // CLI11 takes its vector reversed
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : exit_usage;
  }
  if (auth_option->count() > 0) options.auth = auth;
  if (user_option->count() > 0) options.user = user;
  if (tls) options.tls.enabled = true;
  if (run_cmd->parsed()) {
    if (!split) {
      // Without `--` (as before several keys): the first word is the key, the rest the command.
      run.command.assign(run.keys.begin() + 1, run.keys.end());
      run.keys.resize(1);
    }
    if (const std::string problem = check_run_args(run); !problem.empty()) {
      complain(problem);
      return exit_usage;
    }
  }

  try {
    if (run_cmd->parsed()) return run_command(options, run);
    keylock::Client client(options);
    if (ping_cmd->parsed()) return ping(client, ping_count);
    if (inspect_cmd->parsed()) return inspect(client, inspect_key, json);
    if (release_cmd->parsed()) return force_release(client, release_key, release_token);
    if (stats_cmd->parsed()) return stats(client, json);
    if (top_cmd->parsed()) return top(client, top_opts);
  } catch (const std::invalid_argument& e) {
    complain(e.what());
    return exit_usage;
  } catch (const keylock::AuthError& e) {
    complain(e.what());
    return exit_noperm;
  } catch (const keylock::Denied& e) {
    complain(std::string("permission denied: ") + e.what());
    return exit_denied;
  } catch (const keylock::ConnectionError& e) {
    complain(e.what());
    return exit_unavailable;
  } catch (const std::exception& e) {
    complain(e.what());
    return exit_failure;
  }
  return exit_usage;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run_main(argc, argv);
  } catch (const std::exception& e) {  // a failure while setting up the parser
    complain(e.what());
    return exit_failure;
  }
}
