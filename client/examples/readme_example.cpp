// The example of the README's "Client library (C++)" section, kept compiling by the build.
// Needs keylockd at $KEYLOCK_SERVER (default 127.0.0.1:7400).
#include "keylock/client.hpp"

#include <chrono>
#include <cstdint>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>

using namespace std::chrono_literals;

namespace {

// Storage that refuses writes from a holder older than the last one it saw: the fencing token
// makes a paused or partitioned old holder harmless.
struct report_store {
  std::uint64_t last_token = 0;
  void write(std::uint64_t token, const std::string& text) {
    if (token < last_token) throw std::runtime_error("stale lock holder");
    last_token = token;
    std::cout << "stored: " << text << '\n';
  }
};

std::string fetch_remote_thing(const std::string& name) { return "value of " + name; }

int render_dashboard(int width) { return width * 2; }

}  // namespace

int main() {
  keylock::Client client;  // $KEYLOCK_SERVER or 127.0.0.1:7400; secret from $KEYLOCK_AUTH
  report_store store;

  // 1. Run a function under a lock. It runs one call at a time across every process and host
  //    using the daemon; the lease is renewed while it runs and released when it returns or
  //    throws. A function taking `const keylock::Lease&` gets the fencing token.
  const int rows = client.with_lock("report:monthly", [&](const keylock::Lease& lease) {
    store.write(lease.token(), "monthly report");
    return 42;
  });
  std::cout << "rows: " << rows << '\n';

  // 2. Options: give up after 2 s; a 10 s lease, renewed every ~3.3 s while held.
  keylock::AcquireOptions options;
  options.ttl = 10s;
  options.wait = 2s;
  try {
    client.with_lock(
        "report:monthly", [] { std::cout << "second run\n"; }, options);
  } catch (const keylock::Timeout& e) {
    std::cout << "busy: " << e.what() << '\n';
  }

  // 3. Decorators. The named form locks "fetch_remote_thing:<name>": concurrent fetches of
  //    one name run once at a time, different names in parallel.
  auto fetch = keylock::lock_decorator(client, "fetch_remote_thing", fetch_remote_thing);
  std::cout << fetch("alpha") << '\n';  // under the lock "fetch_remote_thing:alpha"

  //    A key_maker that maps every call to one key runs the function one call at a time.
  auto render = keylock::lock_decorator(client, render_dashboard,
                                        [](int) { return std::string("view:dashboard"); });
  std::cout << "rendered: " << render(80) << '\n';

  // 4. A lease by hand: move-only RAII, released by its destructor at the latest.
  if (std::optional<keylock::Lease> lease = client.try_acquire("cron:cleanup")) {
    std::cout << "cleanup holds token " << lease->token() << '\n';
    lease->release();
  } else {
    std::cout << "cleanup runs elsewhere\n";
  }

  // 5. A read-write lock: readers share the key; a writer (with_lock) holds it alone.
  const int price = client.with_shared_lock("config:prices", [] { return 7; });
  std::cout << "price: " << price << '\n';

  // 6. Several keys at once, or none: one lease, one token, over the whole set. Two transfers
  //    over overlapping sets never deadlock, whatever order they name the keys in.
  client.with_lock_all({"acct:17", "acct:42"}, [](const keylock::Lease& lease) {
    std::cout << "transfer holds " << lease.keys().size() << " keys\n";
  });

  // 7. Reentrancy is opt-in: with it, a decorated function that calls another decorated on the
  //    same key (same Client, same thread) runs the inner call under the outer call's lease
  //    instead of queueing behind itself.
  keylock::AcquireOptions nested;
  nested.reentrant = true;
  auto orders_table = [](auto&&...) { return std::string("table:orders"); };
  auto save_row = keylock::lock_decorator(
      client, [](int row) { return row; }, orders_table, nested);
  auto save_all = keylock::lock_decorator(
      client,
      [&](int count) {
        int saved = 0;
        for (int row = 0; row < count; ++row) saved += save_row(row) == row ? 1 : 0;
        return saved;
      },
      orders_table, nested);
  std::cout << "saved " << save_all(3) << " rows under one lease\n";
  return 0;
}
