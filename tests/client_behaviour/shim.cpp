// The C++ client behind a line protocol on stdin/stdout, so that the one behaviour list in
// test_behaviour.py drives it exactly as it drives the Python client (issue 14).
//
//   keylock_client_shim SERVER CONNECT_TIMEOUT_MS REQUEST_TIMEOUT_MS HEALTH_CHECK_MS
//
// Commands, one per line, each with an id the answer repeats; each runs on its own thread,
// so a waiting acquire does not hold up the next command:
//   ID acquire KEY TTL_MS WAIT_MS|- [noextend]   -> ID granted TOKEN | ID error KIND MESSAGE
//   ID interrupt TARGET_ID                      -> ID ok (the acquire TARGET_ID is cancelled
//                                                  through its std::stop_token)
//   ID release LEASE_ID                         -> ID ok | ID error KIND MESSAGE
//   ID extend LEASE_ID TTL_MS                   -> ID ok | ID error KIND MESSAGE
//   ID valid LEASE_ID                           -> ID true | ID false
//   ID reenter KEY                              -> ID depth D1 D2 SAME (two reentrant acquires
//                                                  of KEY on one thread: depths, same token)
// Unprompted: "lost LEASE_ID REASON" when a lease is lost (on_lost). KIND is the exception's
// class name (Timeout, ConnectionError, Cancelled, NotHeld, ProtocolError, Error). EOF ends it.
#include "keylock/client.hpp"

#include <cstdio>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

namespace {

std::mutex out_mutex;

void say(const std::string& line) {
  std::lock_guard lock(out_mutex);
  std::cout << line << '\n' << std::flush;
}

std::string kind_of(const std::exception& e) {
  if (dynamic_cast<const keylock::Timeout*>(&e) != nullptr) return "Timeout";
  if (dynamic_cast<const keylock::ConnectionError*>(&e) != nullptr) return "ConnectionError";
  if (dynamic_cast<const keylock::Cancelled*>(&e) != nullptr) return "Cancelled";
  if (dynamic_cast<const keylock::NotHeld*>(&e) != nullptr) return "NotHeld";
  if (dynamic_cast<const keylock::ProtocolError*>(&e) != nullptr) return "ProtocolError";
  return "Error";
}

std::string one_line(std::string text) {
  for (char& c : text) {
    if (c == '\n') c = ' ';
  }
  return text;
}

struct shim {
  explicit shim(keylock::Client& c) : client(c) {}

  keylock::Client& client;
  std::mutex mutex;
  std::mutex lease_mutex;  // held while a command uses a Lease
  std::map<std::string, keylock::Lease> leases;
  std::map<std::string, std::stop_source> stops;
  std::vector<std::jthread> threads;

  void acquire(const std::string& id, const std::string& key, long ttl, const std::string& wait,
               bool noextend) {
    keylock::AcquireOptions options;
    options.ttl = std::chrono::milliseconds(ttl);
    if (wait != "-") options.wait = std::chrono::milliseconds(std::stol(wait));
    options.auto_extend = !noextend;
    options.on_lost = [id](const keylock::lease_lost& lost) {
      say("lost " + id + " " + std::string(keylock::to_string(lost.reason)));
    };
    std::stop_source stop;
    options.stop = stop.get_token();
    {
      std::lock_guard lock(mutex);
      stops.emplace(id, stop);
    }
    try {
      keylock::Lease lease = client.acquire(key, options);
      const std::uint64_t token = lease.token();
      {
        std::lock_guard lock(mutex);
        leases.emplace(id, std::move(lease));
      }
      say(id + " granted " + std::to_string(token));
    } catch (const std::exception& e) {
      say(id + " error " + kind_of(e) + " " + one_line(e.what()));
    }
  }

  template <class Fn>
  void with_lease(const std::string& id, const std::string& lease_id, Fn fn) {
    try {
      std::unique_lock lock(mutex);
      auto it = leases.find(lease_id);
      if (it == leases.end()) {
        say(id + " error Error no lease " + lease_id);
        return;
      }
      keylock::Lease& lease = it->second;
      lock.unlock();  // the map node stays put
      // A Lease is used by one thread at a time: commands on leases take turns.
      std::lock_guard one_at_a_time(lease_mutex);
      fn(lease);
      say(id + " ok");
    } catch (const std::exception& e) {
      say(id + " error " + kind_of(e) + " " + one_line(e.what()));
    }
  }

  void run(const std::string& line) {
    std::istringstream in(line);
    std::string id;
    std::string cmd;
    in >> id >> cmd;
    if (cmd == "acquire") {
      std::string key;
      long ttl = 0;
      std::string wait;
      std::string flag;
      in >> key >> ttl >> wait >> flag;
      threads.emplace_back([this, id, key, ttl, wait, flag] {
        acquire(id, key, ttl, wait, flag == "noextend");
      });
    } else if (cmd == "interrupt") {
      std::string target;
      in >> target;
      std::lock_guard lock(mutex);
      auto it = stops.find(target);
      if (it != stops.end()) it->second.request_stop();
      say(id + " ok");
    } else if (cmd == "release") {
      std::string lease_id;
      in >> lease_id;
      threads.emplace_back([this, id, lease_id] {
        with_lease(id, lease_id, [](keylock::Lease& lease) { lease.release(); });
      });
    } else if (cmd == "extend") {
      std::string lease_id;
      long ttl = 0;
      in >> lease_id >> ttl;
      threads.emplace_back([this, id, lease_id, ttl] {
        with_lease(id, lease_id, [ttl](keylock::Lease& lease) {
          lease.extend(std::chrono::milliseconds(ttl));
        });
      });
    } else if (cmd == "valid") {
      std::string lease_id;
      in >> lease_id;
      std::lock_guard lock(mutex);
      auto it = leases.find(lease_id);
      say(id + (it != leases.end() && it->second.valid() ? " true" : " false"));
    } else if (cmd == "reenter") {
      std::string key;
      in >> key;
      threads.emplace_back([this, id, key] {
        try {
          keylock::AcquireOptions options;
          options.reentrant = true;
          keylock::Lease outer = client.acquire(key, options);
          keylock::Lease inner = client.acquire(key, options);
          say(id + " depth " + std::to_string(outer.depth()) + " " +
              std::to_string(inner.depth()) + " " +
              (outer.token() == inner.token() ? "same" : "different"));
        } catch (const std::exception& e) {
          say(id + " error " + kind_of(e) + " " + one_line(e.what()));
        }
      });
    } else {
      say(id + " error Error unknown command " + cmd);
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr,
                 "usage: keylock_client_shim SERVER CONNECT_TIMEOUT_MS REQUEST_TIMEOUT_MS "
                 "HEALTH_CHECK_MS\n");
    return 64;
  }
  try {
    keylock::client_options options;
    options.server = argv[1];
    options.auth = "";
    options.name = "behaviour-cpp";
    options.connect_timeout = std::chrono::milliseconds(std::stol(argv[2]));
    options.request_timeout = std::chrono::milliseconds(std::stol(argv[3]));
    options.health_check_interval = std::chrono::milliseconds(std::stol(argv[4]));
    keylock::Client client(options);
    say("ready");
    {
      shim s(client);
      std::string line;
      while (std::getline(std::cin, line)) {
        if (!line.empty()) s.run(line);
      }
      // EOF: cancel what still waits, so that the threads can be joined.
      std::lock_guard lock(s.mutex);
      for (auto& [id, stop] : s.stops) stop.request_stop();
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "keylock_client_shim: %s\n", e.what());
    return 1;
  }
}
