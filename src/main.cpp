// keylockd: parse the configuration, raise the open-files limit, serve until a signal (or, with
// --hash-secret, print a users_file hash and exit).
#include <sys/resource.h>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <exception>
#include <iostream>
#include <string>

#include "config.hpp"
#include "log_format.hpp"
#include "server.hpp"
#include "users.hpp"

namespace {

// Each connection is a file descriptor: make room for max_connections plus the daemon's own.
void raise_open_files_limit(std::uint32_t max_connections) {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
  rlim_t want = static_cast<rlim_t>(max_connections) + 64;
  rlim_t target = lim.rlim_max == RLIM_INFINITY ? want : std::min(want, lim.rlim_max);
  if (target > lim.rlim_cur) {
    lim.rlim_cur = target;
    ::setrlimit(RLIMIT_NOFILE, &lim);
    ::getrlimit(RLIMIT_NOFILE, &lim);
  }
  if (lim.rlim_cur < want) {
    spdlog::warn("open files limit is {} (hard {}), below max_connections + 64 = {}: "
                 "connections beyond it will fail to be accepted",
                 lim.rlim_cur, lim.rlim_max, want);
  }
}

// --hash-secret: the secret is read from stdin (one line), never from the command line, where
// `ps` and shell history would show it.
int print_secret_hash(std::uint32_t iterations) {
  std::string secret;
  std::getline(std::cin, secret);
  while (!secret.empty() && (secret.back() == '\r' || secret.back() == '\n')) secret.pop_back();
  if (secret.empty()) {
    std::fputs("keylockd: --hash-secret reads the secret from stdin; it was empty\n", stderr);
    return 2;
  }
  const std::string hash = keylock::hash_secret(
      secret, iterations == 0 ? keylock::default_hash_iterations : iterations);
  if (hash.empty()) {
    std::fputs("keylockd: no random bytes for the salt\n", stderr);
    return 1;
  }
  std::printf("%s\n", hash.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    auto parsed = keylock::parse_command_line(argc, argv);
    if (parsed.hash_secret) return print_secret_hash(parsed.hash_iterations);
    if (parsed.what == keylock::parse_outcome::action::exit) {
      std::fputs(parsed.output.c_str(), parsed.exit_code == 0 ? stdout : stderr);
      return parsed.exit_code;
    }
    const keylock::config& cfg = parsed.settings;
    auto logger = spdlog::stderr_color_st("keylockd");
    spdlog::set_default_logger(logger);
    keylock::set_log_format(*logger, cfg.log_format);
    spdlog::set_level(spdlog::level::from_str(cfg.log_level));
    raise_open_files_limit(cfg.max_connections);

    keylock::server srv(cfg);
    if (auto err = srv.open()) {
      spdlog::critical("{}", *err);
      return 1;
    }
    return srv.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "keylockd: fatal: %s\n", e.what());
    return 1;
  }
}
