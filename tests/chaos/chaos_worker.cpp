// Chaos worker: one client process doing randomized with_lock work on a few keys, logging every
// step with a CLOCK_MONOTONIC timestamp (comparable across processes on one machine) to its own
// log file, one line per event, written with write(2) so that a SIGKILL loses nothing logged.
//
//   chaos_worker SERVER LOGFILE SEED DURATION_MS KEYS
//
// Key i is named "c<i>" and always used with limit 1 + i % 3 (a live key's limit is fixed).
// Log lines (t = monotonic nanoseconds):
//   REQ t key limit wait_ms ttl_ms auto      before acquire (wait_ms -1: wait until granted;
//                                            auto 1: renewed at ttl/3, 0: not renewed)
//   W t key token                            a write to the fenced resource: right after the
//                                            grant and again at the end of the critical section
//   REL t key token ok|lost                  with_lock returned (ok) or threw NotHeld (lost)
//   TIMEOUT t key                            acquire not granted within wait_ms
//   ERR t key what                           any other failure of the operation
//   START t pid / STOP t                     process start, normal end
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>

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

}  // namespace

int main(int argc, char** argv) {
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
             std::to_string(ao.ttl.count()) + (ao.auto_extend ? " 1" : " 0"));
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
    } catch (const std::exception& e) {
      std::string what = e.what();
      for (char& c : what) {
        if (c == '\n') c = ' ';
      }
      log_line("ERR " + key + " " + what);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(uniform(0, 5)));
  }
  client.reset();
  log_line("STOP");
  return 0;
}
