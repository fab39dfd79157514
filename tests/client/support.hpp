// Helpers of the client tests: temporary directories, child processes with captured output
// and bounded waits, and waiting for a condition. No Asio and no Catch here.
//
// Every process a child_process starts is killed (SIGKILL) and reaped by its destructor if it
// is still running, so a failing test never leaves one behind.
#pragma once

#include "harness.hpp"

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "keylock/client.hpp"

namespace keylock::test {

// A fresh directory under /tmp, removed with its contents by the destructor.
class temp_dir {
 public:
  temp_dir();
  ~temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// A process started with posix_spawnp. stdout and stderr go to files in `dir`; the environment
// is the test's, minus every KEYLOCK_* variable, plus `env` ("NAME=value" entries).
class child_process {
 public:
  child_process(const temp_dir& dir, std::vector<std::string> argv,
                std::vector<std::string> env = {});
  ~child_process();
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  pid_t pid() const { return pid_; }
  // Sends `sig` to the process (not to its children).
  void signal(int sig) const;
  // Waits for the exit; returns the exit status, or 128+N for death by signal N; nullopt when
  // it did not exit within `timeout`.
  std::optional<int> wait(std::chrono::milliseconds timeout = event_bound);
  std::string out() const;  // what it wrote to stdout so far
  std::string err() const;  // what it wrote to stderr so far

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
  std::string out_path_;
  std::string err_path_;
};

// Checks `condition` every few milliseconds until it holds (true) or `timeout` passes (false).
bool wait_until(const std::function<bool()>& condition,
                std::chrono::milliseconds timeout = event_bound);

// The whole content of `path`; empty when it does not exist.
std::string read_file(const std::string& path);

// The lines of `text`, without their '\n'.
std::vector<std::string> lines_of(const std::string& text);

// A TCP port on 127.0.0.1 that was free a moment ago (for a daemon that must restart on the
// same port).
std::uint16_t free_port();

// Client options for the daemon on `port` on loopback, with no secret, user or TLS from the
// environment.
inline keylock::client_options options_for(std::uint16_t port, std::string name = "client-test") {
  keylock::client_options options;
  options.server = "127.0.0.1:" + std::to_string(port);
  options.auth = "";  // not from the environment
  options.user = "";
  options.tls.enabled = false;
  options.name = std::move(name);
  return options;
}

// Records on_lost calls from the client's I/O thread, for the test's thread to assert on.
class lost_log {
 public:
  std::function<void(const keylock::lease_lost&)> callback() {
    return [this](const keylock::lease_lost& lost) {
      std::lock_guard lock(mutex_);
      calls_.push_back(lost);
    };
  }
  std::size_t count() const {
    std::lock_guard lock(mutex_);
    return calls_.size();
  }
  keylock::lease_lost first() const {
    std::lock_guard lock(mutex_);
    return calls_.at(0);
  }

 private:
  mutable std::mutex mutex_;
  std::vector<keylock::lease_lost> calls_;
};

}  // namespace keylock::test
