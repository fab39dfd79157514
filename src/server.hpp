// keylockd's server: the listening socket, signal handling, the one deadline timer, and the
// sessions. Thin glue between sockets and the dispatcher; all lock semantics live in the
// lock table and the dispatcher. Asio stays behind the pimpl.
//
// One io_context on one thread owns everything: no locks anywhere.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "config.hpp"

namespace keylock {

class server {
 public:
  explicit server(config settings);
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  // Opens the state (fencing tokens) and binds the listening socket. Returns a message saying
  // what failed, or nullopt. Logs the start line with the bound address and the limits.
  std::optional<std::string> open();

  // Serves until SIGINT or SIGTERM, then stops accepting, answers waiting acquires
  // shutting_down, flushes and closes every connection within shutdown_grace_ms. Returns the
  // process exit code (0).
  int run();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace keylock
