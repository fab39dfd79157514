// Example: a slow fetch that must run once, however many callers want its result at once.
//
// Two processes (this one and a fork) each start four threads that call
// fetch_remote_thing("alpha") together. The function is wrapped with keylock::lock_decorator,
// so every call runs under the lock "fetch_remote_thing:alpha" (the name plus the arguments):
// the first caller does the slow fetch and caches the result; the seven others wait for the
// lock, then find the cache filled and read it.
//
//   keylockd &
//   keylock_example_fetch [NAME] [FETCH_MS]
//
// Connects to $KEYLOCK_SERVER (default 127.0.0.1:7400). Prints one line per call, then
// "slow fetch ran 1 time(s) for 8 calls", and exits 0 when it ran exactly once.
#include "keylock/client.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;

constexpr int processes = 2;
constexpr int threads_per_process = 4;

fs::path cache_dir;  // shared by both processes (made before the fork)
std::chrono::milliseconds fetch_time{500};

// The expensive call, e.g. an HTTP request to a slow service. Runs under the lock.
std::string fetch_remote_thing(const std::string& name) {
  const fs::path cached = cache_dir / name;
  if (std::ifstream in(cached); in) {
    std::stringstream text;
    text << in.rdbuf();
    return text.str() + " (from cache)";
  }
  std::this_thread::sleep_for(fetch_time);  // the slow part
  const std::string value = "value of " + name;
  const fs::path tmp = cache_dir / (name + ".tmp");
  std::ofstream(tmp) << value;
  fs::rename(tmp, cached);
  std::ofstream(cache_dir / "fetch.log", std::ios::app) << name << '\n';
  return value + " (fetched)";
}

int run_callers(const std::string& name) {
  keylock::Client client;  // $KEYLOCK_SERVER, $KEYLOCK_AUTH
  auto fetch = keylock::lock_decorator(client, "fetch_remote_thing", fetch_remote_thing);
  std::vector<std::thread> threads;
  for (int i = 0; i < threads_per_process; ++i) {
    threads.emplace_back([&fetch, &name] {
      const std::string result = fetch(name);
      std::printf("pid %d: %s\n", static_cast<int>(getpid()), result.c_str());
    });
  }
  for (auto& t : threads) t.join();
  return 0;
}

int count_fetches() {
  std::ifstream log(cache_dir / "fetch.log");
  int lines = 0;
  for (std::string line; std::getline(log, line);) ++lines;
  return lines;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string name = argc > 1 ? argv[1] : "alpha";
  if (argc > 2) fetch_time = std::chrono::milliseconds(std::atoi(argv[2]));

  char dir_template[] = "/tmp/keylock-example-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  cache_dir = dir_template;

  // Fork before any Client exists: a Client owns a thread, and threads do not survive fork.
  std::cout.flush();
  const pid_t child = fork();
  if (child < 0) {
    std::perror("fork");
    return 1;
  }
  int status = 0;
  try {
    status = run_callers(name);
  } catch (const keylock::Error& e) {
    std::fprintf(stderr, "pid %d: %s\n", static_cast<int>(getpid()), e.what());
    status = 1;
  }
  std::fflush(stdout);
  if (child == 0) std::_Exit(status);

  int child_status = 0;
  waitpid(child, &child_status, 0);
  const int fetches = count_fetches();
  fs::remove_all(cache_dir);
  std::printf("slow fetch ran %d time(s) for %d calls\n", fetches, processes * threads_per_process);
  const bool ok =
      status == 0 && WIFEXITED(child_status) && WEXITSTATUS(child_status) == 0 && fetches == 1;
  return ok ? 0 : 1;
}
