// The client library against the real keylockd on an ephemeral loopback port.
//
// Catch2 v2 assertions are not thread-safe: worker threads only count and record; the test's
// own thread asserts.
#include "harness.hpp"
#include "keylock/client.hpp"
#include "support.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <functional>
#include <locale>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using keylock::test::child_process;
using keylock_daemon = keylock::test::daemon;
using keylock::test::temp_dir;
using keylock::test::lost_log;
using keylock::test::options_for;
using keylock::test::wait_until;

namespace {

void raise_max(std::atomic<int>& max, int value) {
  int seen = max.load();
  while (value > seen && !max.compare_exchange_weak(seen, value)) {
  }
}

// Resumes a SIGSTOPped daemon however the test ends, so that the harness can stop it.
struct resume_on_exit {
  pid_t pid;
  ~resume_on_exit() { ::kill(pid, SIGCONT); }
};

}  // namespace

TEST_CASE("with_lock from 8 threads x 200 calls on one key never overlaps and tokens increase",
          "[client]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  std::atomic<int> inside{0};
  std::atomic<int> max_inside{0};
  std::atomic<int> failures{0};
  std::mutex tokens_mutex;
  std::vector<std::uint64_t> tokens;  // in critical-section order
  keylock::AcquireOptions options;
  options.wait = keylock::test::event_bound;  // a dead daemon fails the test, not hangs it
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&] {
        for (int i = 0; i < 200 && failures == 0; ++i) {
          try {
            client.with_lock(
                "counter",
                [&](const keylock::Lease& lease) {
                  raise_max(max_inside, ++inside);
                  {
                    std::lock_guard lock(tokens_mutex);
                    tokens.push_back(lease.token());
                  }
                  std::this_thread::yield();
                  --inside;
                },
                options);
          } catch (const std::exception&) {
            ++failures;
          }
        }
      });
    }
  }
  INFO("keylockd log:\n" << d.log());
  CHECK(failures == 0);
  CHECK(max_inside == 1);
  REQUIRE(tokens.size() == 1600);
  CHECK(std::adjacent_find(tokens.begin(), tokens.end(), [](auto a, auto b) { return a >= b; }) ==
        tokens.end());
}

TEST_CASE("limit 3 admits at most three holders at once", "[client]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::AcquireOptions three;
  three.limit = 3;
  three.wait = keylock::test::event_bound;

  SECTION("a fourth try fails until one of three leases is released") {
    auto a = client.try_acquire("pool", three);
    auto b = client.try_acquire("pool", three);
    auto c = client.try_acquire("pool", three);
    REQUIRE(a);
    REQUIRE(b);
    REQUIRE(c);
    CHECK_FALSE(client.try_acquire("pool", three));
    b->release();
    auto d4 = client.try_acquire("pool", three);
    CHECK(d4);
  }

  SECTION("six threads never have more than three inside") {
    std::atomic<int> inside{0};
    std::atomic<int> max_inside{0};
    std::atomic<int> failures{0};
    {
      std::vector<std::jthread> threads;
      for (int t = 0; t < 6; ++t) {
        threads.emplace_back([&] {
          for (int i = 0; i < 40 && failures == 0; ++i) {
            try {
              client.with_lock(
                  "pool",
                  [&] {
                    raise_max(max_inside, ++inside);
                    std::this_thread::sleep_for(1ms);  // the work: keep the slot a moment
                    --inside;
                  },
                  three);
            } catch (const std::exception&) {
              ++failures;
            }
          }
        });
      }
    }
    CHECK(failures == 0);
    CHECK(max_inside <= 3);
    CHECK(max_inside >= 1);
  }
}

TEST_CASE("a fn that runs four times its ttl keeps its lease through auto-extend", "[client]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::Client observer(options_for(d.port(), "observer"));
  lost_log lost;
  keylock::AcquireOptions options;
  options.ttl = 500ms;
  options.on_lost = lost.callback();

  bool valid_at_end = false;
  std::uint64_t token = 0;
  keylock::key_info seen;
  std::optional<keylock::Lease> stolen;
  const int result = client.with_lock(
      "long-job",
      [&](const keylock::Lease& lease) {
        std::this_thread::sleep_for(2000ms);  // the work itself: four ttls
        valid_at_end = lease.valid();
        token = lease.token();
        seen = observer.inspect("long-job");
        stolen = observer.try_acquire("long-job");
        return 7;
      },
      options);
  CHECK(result == 7);
  CHECK(valid_at_end);
  CHECK(seen.held);
  REQUIRE(seen.holders.size() == 1);
  CHECK(seen.holders[0].token == token);
  CHECK(seen.holders[0].client == "client-test");
  CHECK_FALSE(stolen);
  CHECK(lost.count() == 0);
  // Released on return (noreply: another connection sees it a moment later).
  CHECK(wait_until([&] { return !observer.inspect("long-job").held; }));
}

TEST_CASE("a holder whose lease is cut off loses it and on_lost runs once", "[client]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  lost_log lost;
  keylock::AcquireOptions options;
  options.ttl = 300ms;
  options.on_lost = lost.callback();

  SECTION("the daemon dies: the connection drops") {
    options.ttl = 30s;  // nothing but the drop can end it
    keylock::Lease lease = client.acquire("cut", options);
    REQUIRE(lease.valid());
    d.stop(SIGKILL);
    REQUIRE(wait_until([&] { return lost.count() > 0; }));
    CHECK_FALSE(lease.valid());
    CHECK(lost.first().reason == keylock::lost_reason::connection_lost);
    CHECK(lost.first().key == "cut");
    CHECK(lost.first().token == lease.token());
    CHECK_THROWS_AS(lease.release(), keylock::NotHeld);
    CHECK(lost.count() == 1);
  }

  SECTION("the daemon hangs (SIGSTOP): no renewal is confirmed within the ttl") {
    keylock::Lease lease = client.acquire("cut", options);
    REQUIRE(lease.valid());
    REQUIRE(::kill(d.pid(), SIGSTOP) == 0);
    resume_on_exit resume{d.pid()};
    REQUIRE(wait_until([&] { return lost.count() > 0; }));
    CHECK_FALSE(lease.valid());
    CHECK(lost.first().reason == keylock::lost_reason::expired);
    CHECK_THROWS_AS(lease.release(), keylock::NotHeld);
    CHECK(lost.count() == 1);
  }

  SECTION("without auto_extend the daemon expires the lease") {
    options.auto_extend = false;
    keylock::Lease lease = client.acquire("cut", options);
    REQUIRE(wait_until([&] { return lost.count() > 0; }));
    CHECK_FALSE(lease.valid());
    CHECK(lost.first().reason == keylock::lost_reason::expired);
    CHECK_THROWS_AS(lease.release(), keylock::NotHeld);
    CHECK(lost.count() == 1);
  }

  SECTION("someone else releases it: the next renewal is refused") {
    options.ttl = 600ms;  // renewed every 200 ms
    keylock::Lease lease = client.acquire("cut", options);
    keylock::test::conn raw(d.port());
    const std::string answer = raw.call(R"({"op":"release","id":1,"key":"cut","token":)" +
                                        std::to_string(lease.token()) + "}");
    CHECK(answer.find(R"("ok":true)") != std::string::npos);
    REQUIRE(wait_until([&] { return lost.count() > 0; }));
    CHECK_FALSE(lease.valid());
    CHECK(lost.first().reason == keylock::lost_reason::not_held);
    CHECK_THROWS_AS(lease.release(), keylock::NotHeld);
    CHECK(lost.count() == 1);
  }

  SECTION("with_lock reports the loss with NotHeld after fn returns") {
    options.ttl = 600ms;
    keylock::test::conn raw(d.port());
    CHECK_THROWS_AS(client.with_lock(
                        "cut",
                        [&](const keylock::Lease& lease) {
                          raw.call(R"({"op":"release","id":1,"key":"cut","token":)" +
                                   std::to_string(lease.token()) + "}");
                          wait_until([&] { return !lease.valid(); });
                        },
                        options),
                    keylock::NotHeld);
    CHECK(lost.count() == 1);
  }
}

TEST_CASE("after a daemon restart the client reconnects and later calls succeed", "[client]") {
  const std::uint16_t port = keylock::test::free_port();
  keylock_daemon d({"--listen", "127.0.0.1:" + std::to_string(port)});
  keylock::Client client(options_for(port));
  std::atomic<int> successes{0};
  std::atomic<int> errors{0};
  keylock::AcquireOptions options;
  options.wait = 5s;  // bounds the worker should the daemon never come back
  std::jthread worker([&](const std::stop_token& stop) {
    while (!stop.stop_requested()) {
      try {
        client.with_lock(
            "restart", [] {}, options);
        ++successes;
      } catch (const keylock::Error&) {
        ++errors;  // expected around the restart: NotHeld, ConnectionError
      }
    }
  });
  REQUIRE(wait_until([&] { return successes >= 20; }));
  d.restart();
  const int before = successes.load();
  CHECK(wait_until([&] { return successes >= before + 20; }));
  CHECK_NOTHROW(client.ping());
  CHECK(client.inspect("nothing").limit == 0);
}

TEST_CASE("an acquire waiting across a daemon restart is sent again and granted", "[client]") {
  const std::uint16_t port = keylock::test::free_port();
  keylock_daemon d({"--listen", "127.0.0.1:" + std::to_string(port)});
  keylock::Client holder(options_for(port, "holder"));
  keylock::Client waiter(options_for(port, "waiter"));
  lost_log lost;
  keylock::AcquireOptions hold;
  hold.on_lost = lost.callback();
  keylock::Lease held = holder.acquire("contended", hold);

  std::atomic<bool> done{false};
  std::optional<keylock::Lease> granted;
  std::string error;
  std::jthread acquirer([&] {
    try {
      keylock::AcquireOptions options;
      options.wait = 8s;
      granted = waiter.acquire("contended", options);
    } catch (const std::exception& e) {
      error = e.what();
    }
    done = true;
  });
  REQUIRE(wait_until([&] { return holder.inspect("contended").waiters == 1; }));
  d.restart();
  REQUIRE(wait_until([&] { return done.load(); }));
  acquirer.join();
  CHECK(error.empty());
  REQUIRE(granted);
  CHECK(granted->valid());
  CHECK_FALSE(held.valid());
  CHECK(lost.count() == 1);
  CHECK(lost.first().reason == keylock::lost_reason::connection_lost);
}

TEST_CASE("an extend the daemon refuses for its ttl leaves the lease held, here and there",
          "[client]") {
  keylock::test::daemon d({"--max-ttl-ms", "10000", "--default-ttl-ms", "5000"});
  keylock::Client client(options_for(d.port()));
  keylock::AcquireOptions options;
  options.ttl = std::chrono::milliseconds(5000);
  keylock::Lease lease = client.acquire("report", options);
  CHECK_THROWS_AS(lease.extend(std::chrono::milliseconds(60000)), keylock::ProtocolError);
  // Not forgotten while held: still valid here, still the daemon's holder, and released by us.
  CHECK(lease.valid());
  CHECK(lease.owned());
  lease.extend(std::chrono::milliseconds(8000));  // a ttl within bounds still works
  lease.release();
  CHECK_FALSE(client.locked("report"));
}

TEST_CASE("default_key formats the name and the arguments in order", "[client]") {
  CHECK(keylock::default_key("fetch_remote_thing", std::string("alpha")) ==
        "fetch_remote_thing:alpha");
  CHECK(keylock::default_key("render", "alpha", 42, true) == "render:alpha:42:true");
  CHECK(keylock::default_key("nightly") == "nightly");
}

namespace {
// A locale that groups thousands, as de_DE or en_US.UTF-8 do (which may not be installed).
struct grouping_punct : std::numpunct<char> {
  char do_thousands_sep() const override { return ','; }
  std::string do_grouping() const override { return "\3"; }
};
}  // namespace

TEST_CASE("default_key is exact and does not follow the global locale", "[client]") {
  const std::locale before = std::locale::global(std::locale(std::locale(), new grouping_punct));
  struct restore {
    std::locale locale;
    ~restore() { std::locale::global(locale); }
  } restore_locale{before};
  CHECK(keylock::default_key("f", 3000, 1234567890123LL) == "f:3000:1234567890123");
  // Floating point round-trips: two different doubles never share a key.
  CHECK(keylock::default_key("f", 0.1 + 0.2) == "f:0.30000000000000004");
  CHECK(keylock::default_key("f", 0.1 + 0.2) != keylock::default_key("f", 0.3));
  CHECK(keylock::default_key("f", 1.0 / 3) == "f:0.3333333333333333");
  CHECK(keylock::default_key("f", 'x', false, -7) == "f:x:false:-7");
}

TEST_CASE("a named lock_decorator runs fn under the lock name:args and returns its result",
          "[client]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::Client observer(options_for(d.port(), "observer"));

  auto fetch = keylock::lock_decorator(client, "fetch_remote_thing", [&](const std::string& name) {
    return observer.inspect("fetch_remote_thing:" + name).held ? "locked " + name : "unlocked";
  });
  CHECK(fetch("alpha") == "locked alpha");
  CHECK(fetch(std::string("beta")) == "locked beta");
  CHECK(wait_until([&] { return !observer.inspect("fetch_remote_thing:alpha").held; }));

  auto report = keylock::lock_decorator(client, "report", [&](int year, const char* month) {
    return observer.inspect("report:" + std::to_string(year) + ":" + month).held;
  });
  CHECK(report(2024, "may"));
}

TEST_CASE("a key_maker mapping every call to one key runs fn one call at a time", "[client]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  std::atomic<int> inside{0};
  std::atomic<int> max_inside{0};
  std::atomic<long> sum{0};
  std::atomic<int> failures{0};
  keylock::AcquireOptions options;
  options.wait = keylock::test::event_bound;
  auto view = keylock::lock_decorator(
      client,
      [&](int n) {
        raise_max(max_inside, ++inside);
        std::this_thread::yield();
        --inside;
        return n * 2;
      },
      [](int) { return std::string("view:dashboard"); }, options);
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&] {
        for (int i = 1; i <= 25 && failures == 0; ++i) {
          try {
            sum += view(i);
          } catch (const std::exception&) {
            ++failures;
          }
        }
      });
    }
  }
  CHECK(failures == 0);
  CHECK(max_inside == 1);
  CHECK(sum == 4L * 25 * 26);
}

TEST_CASE("an exception from fn propagates and the lock is released", "[client]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::Client other(options_for(d.port(), "other"));
  struct boom : std::runtime_error {
    using std::runtime_error::runtime_error;
  };

  SECTION("fn without a lease") {
    CHECK_THROWS_AS(client.with_lock("fragile", []() -> int { throw boom("boom"); }), boom);
  }
  SECTION("fn with a lease") {
    CHECK_THROWS_WITH(
        client.with_lock("fragile", [](const keylock::Lease&) { throw boom("boom with lease"); }),
        "boom with lease");
  }
  SECTION("a decorated fn") {
    auto fragile = keylock::lock_decorator(client, "fragile", [](int) { throw boom("boom"); });
    CHECK_THROWS_AS(fragile(1), boom);
    CHECK(wait_until([&] { return other.try_acquire("fragile:1").has_value(); }));
  }
  // Released as the exception left. This client's own next request is ordered after the release
  // on its connection: free at once. (Its lease, a temporary, is released here too.)
  CHECK(client.try_acquire("fragile"));
  // Another connection sees it free a moment later (both releases were noreply).
  CHECK(wait_until([&] { return other.try_acquire("fragile").has_value(); }));
}

TEST_CASE("with_lock returns fn's result, references and move-only values included", "[client]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  auto owned = client.with_lock("results", [] { return std::make_unique<int>(5); });
  REQUIRE(owned);
  CHECK(*owned == 5);
  int target = 1;
  int& ref = client.with_lock("results", [&]() -> int& { return target; });
  CHECK(&ref == &target);
  const std::uint64_t token =
      client.with_lock("results", [](const keylock::Lease& lease) { return lease.token(); });
  CHECK(token > 0);
}

TEST_CASE("a Lease is move-only RAII and its destructor releases", "[client]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::Client other(options_for(d.port(), "other"));
  {
    keylock::Lease first = client.acquire("raii");
    const std::uint64_t token = first.token();
    keylock::Lease second = std::move(first);
    CHECK_FALSE(first.valid());  // NOLINT(bugprone-use-after-move): moved-from is empty
    CHECK(first.token() == 0);   // NOLINT(bugprone-use-after-move)
    CHECK(second.valid());
    CHECK(second.token() == token);
    CHECK(second.key() == "raii");
    CHECK_FALSE(other.try_acquire("raii"));
  }
  CHECK(client.try_acquire("raii"));  // ordered after the destructor's release
  keylock::AcquireOptions wait;
  wait.wait = 5s;
  auto again = other.try_acquire("raii", wait);
  REQUIRE(again);
  again->extend(2s);
  CHECK(other.inspect("raii").holders.at(0).ttl_ms_left > 1000);
  again->release();
  CHECK_FALSE(again->valid());
  CHECK_NOTHROW(again->release());  // releasing an empty Lease does nothing
}

TEST_CASE("errors are typed and carry the daemon's code", "[client]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  keylock::Client other(options_for(d.port(), "other"));

  SECTION("Timeout when not granted within the wait") {
    keylock::Lease lease = client.acquire("busy");
    keylock::AcquireOptions options;
    options.wait = 100ms;
    try {
      other.acquire("busy", options);
      FAIL("acquire of a held key returned");
    } catch (const keylock::Timeout& e) {
      CHECK(e.code() == keylock::errc::timeout);
    }
    CHECK_FALSE(other.try_acquire("busy"));
  }
  SECTION("Conflict for another limit on a live key") {
    keylock::Lease lease = client.acquire("limited");
    keylock::AcquireOptions options;
    options.limit = 2;
    CHECK_THROWS_AS(other.acquire("limited", options), keylock::Conflict);
  }
  SECTION("ProtocolError for a key the daemon refuses") {
    CHECK_THROWS_AS(client.acquire(std::string(5000, 'k')), keylock::ProtocolError);
    CHECK_THROWS_AS(client.acquire(""), keylock::ProtocolError);
    CHECK_NOTHROW(client.ping());  // the connection stays usable
  }
  SECTION("NotHeld for an extend after the daemon let the lease go") {
    keylock::AcquireOptions options;
    options.ttl = 100ms;
    options.auto_extend = false;
    keylock::Lease lease = client.acquire("short", options);
    REQUIRE(wait_until([&] { return !lease.valid(); }));
    CHECK_THROWS_AS(lease.extend(1s), keylock::NotHeld);
  }
  SECTION("ConnectionError when nothing listens") {
    const std::uint16_t closed = keylock::test::free_port();
    CHECK_THROWS_AS(keylock::Client(options_for(closed)), keylock::ConnectionError);
  }
  SECTION("std::invalid_argument for a malformed address") {
    keylock::client_options options;
    options.server = "127.0.0.1:notaport";
    CHECK_THROWS_AS(keylock::Client(options), std::invalid_argument);
  }
}

TEST_CASE("a daemon with a secret admits only clients that send it", "[client]") {
  keylock_daemon d({"--auth", "s3cret"});
  keylock::client_options options = options_for(d.port());

  SECTION("no secret") { CHECK_THROWS_AS(keylock::Client(options), keylock::AuthError); }
  SECTION("a wrong secret") {
    options.auth = "guess";
    CHECK_THROWS_AS(keylock::Client(options), keylock::AuthError);
  }
  SECTION("the right secret") {
    options.auth = "s3cret";
    keylock::Client client(options);
    CHECK(client.with_lock("guarded", [] { return 1; }) == 1);
  }
}

TEST_CASE("ping, inspect and stats report the daemon's view", "[client]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  CHECK(client.ping().count() > 0);
  CHECK_FALSE(client.server_version().empty());
  keylock::Lease lease = client.acquire("seen");
  const keylock::key_info info = client.inspect("seen");
  CHECK(info.held);
  CHECK(info.limit == 1);
  REQUIRE(info.holders.size() == 1);
  CHECK(info.holders[0].token == lease.token());
  const keylock::stats_info stats = client.stats();
  CHECK(stats.held == 1);
  CHECK(stats.grants >= 1);
  CHECK(stats.connections >= 1);
}

TEST_CASE("the fetch_remote_thing example runs the slow fetch once for all callers",
          "[client][example]") {
  keylock_daemon d;
  temp_dir dir;
  const std::vector<std::string> env = {"KEYLOCK_SERVER=127.0.0.1:" + std::to_string(d.port())};
  child_process example(dir, {KEYLOCK_EXAMPLE_FETCH_PATH, "alpha", "300"}, env);
  const auto status = example.wait();
  INFO(example.out() << example.err());
  CHECK(status == 0);
  CHECK(example.out().find("slow fetch ran 1 time(s) for 8 calls") != std::string::npos);

  child_process readme(dir, {KEYLOCK_EXAMPLE_README_PATH}, env);
  const auto readme_status = readme.wait();
  INFO(readme.out() << readme.err());
  CHECK(readme_status == 0);
  CHECK(readme.out().find("stored: monthly report") != std::string::npos);
}

TEST_CASE("the README's client example is the example the build compiles", "[client][example]") {
  const std::string doc = keylock::test::read_file(KEYLOCK_SOURCE_DIR "/README.md");
  const std::string example =
      keylock::test::read_file(KEYLOCK_SOURCE_DIR "/client/examples/readme_example.cpp");
  const auto start = doc.find("```cpp\n");
  REQUIRE(start != std::string::npos);
  const auto end = doc.find("\n```", start + 7);
  REQUIRE(end != std::string::npos);
  const std::string block = doc.substr(start + 7, end - start - 7);
  CHECK(example.find(block) != std::string::npos);
}

// A blocking call reads its own reply when nobody else reads the socket (client.cpp, "leader").
// What it reads may be another call's answer or an event: the user code that follows from
// those must still run on the client's I/O thread, never in the reading caller's thread.
TEST_CASE("callbacks run on the I/O thread even when a caller read their frame", "[client]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  const auto caller = std::this_thread::get_id();

  SECTION("on_lost, for an expired event read by a caller's ping") {
    std::mutex m;
    std::optional<std::thread::id> ran_on;
    keylock::AcquireOptions options;
    options.ttl = 200ms;
    options.auto_extend = false;
    options.on_lost = [&](const keylock::lease_lost&) {
      std::lock_guard lock(m);
      ran_on = std::this_thread::get_id();
    };
    keylock::Lease lease = client.acquire("lead:lost", options);
    // The caller keeps reading, ping after ping with no pause (so the I/O thread never takes
    // the socket back), until the daemon's expired event is handled.
    const auto until = std::chrono::steady_clock::now() + keylock::test::event_bound;
    while (lease.valid() && std::chrono::steady_clock::now() < until) client.ping();
    REQUIRE_FALSE(lease.valid());
    REQUIRE(wait_until([&] {
      std::lock_guard lock(m);
      return ran_on.has_value();
    }));
    std::lock_guard lock(m);
    CHECK(*ran_on != caller);
  }

  SECTION("start_acquire's done, for a grant read by the releasing caller") {
    for (int round = 0; round < 20; ++round) {
      keylock::Lease held = client.acquire("lead:grant", {});
      std::mutex m;
      std::optional<std::thread::id> ran_on;
      std::optional<keylock::Lease> granted;
      keylock::AcquireOptions wait_for_it;
      wait_for_it.wait = 10s;
      client.start_acquire({"lead:grant"}, false, wait_for_it,
                           [&](std::exception_ptr error, keylock::Lease lease) {
                             std::lock_guard lock(m);
                             ran_on = std::this_thread::get_id();
                             if (!error) granted = std::move(lease);
                           });
      // Queued at the daemon behind `held` once inspect shows a waiter.
      REQUIRE(wait_until([&] { return client.inspect("lead:grant").waiters == 1; }));
      // The release's answer and the grant come back together: this caller reads both.
      held.release(keylock::release_mode::confirmed);
      REQUIRE(wait_until([&] {
        std::lock_guard lock(m);
        return ran_on.has_value();
      }));
      std::lock_guard lock(m);
      REQUIRE(granted.has_value());
      CHECK(*ran_on != caller);
      granted->release();
    }
  }
}

// Threads that block, threads that do not, renewals and expiries, all on one connection: every
// call completes exactly once (and, under ThreadSanitizer, without a data race).
TEST_CASE("blocking calls from many threads and asynchronous ones all complete", "[client]") {
  keylock_daemon d;
  keylock::Client client(options_for(d.port()));
  constexpr int threads = 4;
  constexpr int calls = 150;
  std::atomic<int> blocking_done{0};
  std::atomic<int> async_done{0};
  std::atomic<int> failures{0};
  std::atomic<int> inside{0};
  std::atomic<int> max_inside{0};

  // Asynchronous acquires, chained: each completion starts the next from the I/O thread.
  std::function<void(int)> next = [&](int left) {
    keylock::AcquireOptions options;
    options.wait = 10s;
    options.ttl = 300ms;  // renewed every 100 ms while held
    client.start_acquire({"mix:async"}, false, options,
                         [&, left](std::exception_ptr error, keylock::Lease lease) {
                           if (error) ++failures;
                           lease = keylock::Lease();  // released here, on the I/O thread
                           ++async_done;
                           if (left > 1) next(left - 1);
                         });
  };
  next(calls);

  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < calls; ++i) {
        try {
          keylock::AcquireOptions options;
          options.wait = 10s;
          const std::string key = (i + t) % 2 == 0 ? "mix:shared" : "mix:own" + std::to_string(t);
          keylock::Lease lease = client.acquire(key, options);
          if (key == "mix:shared") {
            raise_max(max_inside, ++inside);
            --inside;
          }
          if (i % 10 == 0) client.ping();
          lease.release(i % 3 == 0 ? keylock::release_mode::confirmed
                                   : keylock::release_mode::no_reply);
          ++blocking_done;
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  }
  for (auto& worker : workers) worker.join();
  REQUIRE(wait_until([&] { return async_done.load() == calls; }));
  CHECK(blocking_done.load() == threads * calls);
  CHECK(failures.load() == 0);
  CHECK(max_inside.load() == 1);
}
