// The keylock CLI against the real keylockd: `run` exclusion, status passthrough, --wait,
// signal forwarding, lost leases, and the plain commands. Commands are `sh -c` scripts that
// leave marks in files the test waits for.
#include "harness.hpp"
#include "keylock/client.hpp"
#include "support.hpp"

#include <catch2/catch.hpp>

#include <csignal>
#include <thread>
#include <filesystem>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using keylock::test::child_process;
using keylock_daemon = keylock::test::daemon;
using keylock::test::lines_of;
using keylock::test::options_for;
using keylock::test::read_file;
using keylock::test::temp_dir;
using keylock::test::wait_until;

namespace {

std::vector<std::string> server_env(std::uint16_t port) {
  return {"KEYLOCK_SERVER=127.0.0.1:" + std::to_string(port)};
}

// `keylock ARGS...`
std::vector<std::string> cli(std::vector<std::string> args) {
  args.insert(args.begin(), KEYLOCK_CLI_PATH);
  return args;
}

bool contains(const std::string& text, const std::string& needle) {
  return text.find(needle) != std::string::npos;
}

}  // namespace

TEST_CASE("keylock run: two concurrent runs of a sleeping command never overlap", "[cli]") {
  keylock_daemon d;
  temp_dir dir;
  const std::string marks = dir.file("marks");
  const std::string script = "echo \"start $KEYLOCK_TOKEN\" >> '" + marks +
                             "'; sleep 0.3; echo \"end $KEYLOCK_TOKEN\" >> '" + marks + "'";
  child_process a(dir, cli({"run", "shared", "--", "sh", "-c", script}), server_env(d.port()));
  child_process b(dir, cli({"run", "shared", "--", "sh", "-c", script}), server_env(d.port()));
  CHECK(a.wait() == 0);
  CHECK(b.wait() == 0);
  INFO(a.err() << b.err());

  const auto lines = lines_of(read_file(marks));
  REQUIRE(lines.size() == 4);
  const std::string first = lines[0].substr(lines[0].find(' ') + 1);
  const std::string second = lines[2].substr(lines[2].find(' ') + 1);
  CHECK(lines[0] == "start " + first);
  CHECK(lines[1] == "end " + first);
  CHECK(lines[2] == "start " + second);
  CHECK(lines[3] == "end " + second);
  REQUIRE_FALSE(first.empty());
  REQUIRE_FALSE(second.empty());
  CHECK(std::stoull(first) < std::stoull(second));  // fencing tokens increase
}

TEST_CASE("keylock run exits with its command's status and releases the lock", "[cli]") {
  keylock_daemon d;
  temp_dir dir;
  keylock::Client observer(options_for(d.port()));

  SECTION("an exit status") {
    child_process run(dir, cli({"run", "pass", "--", "sh", "-c", "exit 7"}), server_env(d.port()));
    CHECK(run.wait() == 7);
  }
  SECTION("death by a signal is 128 + the signal") {
    child_process run(dir, cli({"run", "pass", "--", "sh", "-c", "kill -KILL $$"}),
                      server_env(d.port()));
    CHECK(run.wait() == 128 + SIGKILL);
  }
  SECTION("the command sees KEYLOCK_KEY and KEYLOCK_TOKEN") {
    child_process run(
        dir,
        cli({"run", "pass", "--ttl", "10s", "--", "sh", "-c",
             R"(test "$KEYLOCK_KEY" = pass && test "$KEYLOCK_TOKEN" -gt 0 && echo "$KEYLOCK_TOKEN")"}),
        server_env(d.port()));
    CHECK(run.wait() == 0);
    CHECK_FALSE(run.out().empty());
  }
  SECTION("a command that cannot be found is 127") {
    child_process run(dir, cli({"run", "pass", "--", "/nonexistent/keylock-test-command"}),
                      server_env(d.port()));
    CHECK(run.wait() == 127);
    CHECK(contains(run.err(), "cannot run"));
  }
  CHECK(observer.try_acquire("pass"));
}

TEST_CASE("keylock run exits 75 when the lock is not acquired within --wait", "[cli]") {
  keylock_daemon d;
  temp_dir dir;
  keylock::Client holder(options_for(d.port()));
  keylock::Lease lease = holder.acquire("busy");

  SECTION("a bounded wait") {
    child_process run(dir, cli({"run", "busy", "--wait", "200ms", "--", "true"}),
                      server_env(d.port()));
    CHECK(run.wait() == 75);
    CHECK(contains(run.err(), "not acquired within"));
  }
  SECTION("--wait 0 tries once") {
    child_process run(dir, cli({"run", "busy", "--wait", "0", "--", "true"}), server_env(d.port()));
    CHECK(run.wait() == 75);
  }
  SECTION("--conflict-exit-code sets the status") {
    child_process run(
        dir, cli({"run", "busy", "--wait", "0", "--conflict-exit-code", "3", "--", "true"}),
        server_env(d.port()));
    CHECK(run.wait() == 3);
  }
  CHECK(lease.valid());
}

TEST_CASE("keylock run forwards SIGTERM and SIGINT to its command", "[cli]") {
  keylock_daemon d;
  temp_dir dir;
  keylock::Client observer(options_for(d.port()));
  const std::string marks = dir.file("marks");
  const auto script_for = [&](const std::string& sig) {
    return "trap 'echo got-" + sig + " >> " + marks + "; exit 3' " + sig + "; echo ready >> " +
           marks + "; while :; do sleep 0.05; done";
  };
  const auto check_forwarded = [&](int sig, const std::string& name) {
    child_process run(dir, cli({"run", "signals", "--", "sh", "-c", script_for(name)}),
                      server_env(d.port()));
    REQUIRE(wait_until([&] { return contains(read_file(marks), "ready"); }));
    run.signal(sig);
    CHECK(run.wait() == 3);
    CHECK(contains(read_file(marks), "got-" + name));
    CHECK(observer.try_acquire("signals"));  // released
  };

  SECTION("SIGTERM") { check_forwarded(SIGTERM, "TERM"); }
  SECTION("SIGINT") { check_forwarded(SIGINT, "INT"); }
}

TEST_CASE("keylock run still waiting for the lock ends on SIGTERM and leaves the queue", "[cli]") {
  keylock_daemon d;
  temp_dir dir;
  keylock::Client holder(options_for(d.port()));
  keylock::Lease lease = holder.acquire("queue");
  child_process run(dir, cli({"run", "queue", "--", "true"}), server_env(d.port()));
  REQUIRE(wait_until([&] { return holder.inspect("queue").waiters == 1; }));
  run.signal(SIGTERM);
  CHECK(run.wait() == 128 + SIGTERM);
  CHECK(wait_until([&] { return holder.inspect("queue").waiters == 0; }));
  CHECK(lease.valid());
}

TEST_CASE("a command whose keylock run is killed gets SIGTERM", "[cli]") {
  keylock_daemon d;
  temp_dir dir;
  keylock::Client observer(options_for(d.port()));
  const std::string marks = dir.file("marks");
  const std::string script = "trap 'echo got-TERM >> " + marks + "; exit 0' TERM; echo ready >> " +
                             marks + "; while :; do sleep 0.05; done";
  child_process run(dir, cli({"run", "orphan", "--", "sh", "-c", script}), server_env(d.port()));
  REQUIRE(wait_until([&] { return contains(read_file(marks), "ready"); }));
  run.signal(SIGKILL);
  CHECK(run.wait() == 128 + SIGKILL);
  // The daemon released the lock with keylock's connection; the command must not run on.
  CHECK(wait_until([&] { return contains(read_file(marks), "got-TERM"); }));
  keylock::AcquireOptions options;
  options.wait = 5s;
  CHECK_NOTHROW(observer.acquire("orphan", options));
}

TEST_CASE("keylock run stops its command when the lease is lost", "[cli]") {
  keylock_daemon d;
  temp_dir dir;
  const std::string marks = dir.file("marks");
  const auto lose_lease = [&] {
    std::string token;
    REQUIRE(wait_until([&] {
      for (const auto& line : lines_of(read_file(marks))) {
        if (line.rfind("ready ", 0) == 0) token = line.substr(6);
      }
      return !token.empty();
    }));
    // Anyone who knows key and token may release: the next renewal is refused.
    keylock::test::conn raw(d.port());
    const std::string answer =
        raw.call(R"({"op":"release","id":1,"key":"doomed","token":)" + token + "}");
    REQUIRE(contains(answer, R"("ok":true)"));
  };

  SECTION("the command exits on SIGTERM") {
    const std::string script = "trap 'echo got-TERM >> " + marks + "; exit 0' TERM; " +
                               "echo \"ready $KEYLOCK_TOKEN\" >> " + marks +
                               "; while :; do sleep 0.05; done";
    child_process run(dir, cli({"run", "doomed", "--ttl", "300ms", "--", "sh", "-c", script}),
                      server_env(d.port()));
    lose_lease();
    CHECK(run.wait() == 70);
    CHECK(contains(run.err(), "lost the lock on 'doomed'"));
    CHECK(contains(read_file(marks), "got-TERM"));
  }
  SECTION("a command ignoring SIGTERM is killed after the grace period") {
    const std::string script = "trap '' TERM; echo \"ready $KEYLOCK_TOKEN\" >> " + marks +
                               "; while :; do sleep 0.05; done";
    child_process run(
        dir, cli({"run", "doomed", "--ttl", "300ms", "--grace", "300ms", "--", "sh", "-c", script}),
        server_env(d.port()));
    lose_lease();
    CHECK(run.wait() == 70);
    CHECK(contains(run.err(), "SIGKILL"));
  }
}

TEST_CASE("keylock reports an unreachable daemon, bad arguments and refused auth", "[cli]") {
  temp_dir dir;

  SECTION("unreachable daemon: 69") {
    const std::uint16_t closed = keylock::test::free_port();
    child_process ping(dir, cli({"--server", "127.0.0.1:" + std::to_string(closed), "ping"}));
    CHECK(ping.wait() == 69);
    CHECK(contains(ping.err(), "cannot connect to keylockd at 127.0.0.1:"));
    child_process run(dir, cli({"run", "k", "--", "true"}),
                      {"KEYLOCK_SERVER=127.0.0.1:" + std::to_string(closed)});
    CHECK(run.wait() == 69);
  }
  SECTION("bad arguments: 64") {
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"run"},
             {"run", "k"},
             {"frobnicate"},
             {"run", "k", "--ttl", "banana", "--", "true"},
             {"--server", "127.0.0.1:notaport", "ping"},
         }) {
      child_process bad(dir, cli(args));
      CHECK(bad.wait() == 64);
      CHECK_FALSE(bad.err().empty());
    }
  }
  SECTION("refused auth: 77") {
    keylock_daemon d({"--auth", "s3cret"});
    const std::string server = "127.0.0.1:" + std::to_string(d.port());
    child_process wrong(dir, cli({"--server", server, "--auth", "guess", "ping"}));
    CHECK(wrong.wait() == 77);
    CHECK(contains(wrong.err(), "authentication refused"));
    child_process right(dir, cli({"--server", server, "ping"}), {"KEYLOCK_AUTH=s3cret"});
    CHECK(right.wait() == 0);
  }
}

TEST_CASE("keylock ping, inspect and stats print the daemon's view", "[cli]") {
  keylock_daemon d;
  temp_dir dir;
  keylock::Client holder(options_for(d.port()));
  keylock::Lease lease = holder.acquire("report:monthly");
  const auto env = server_env(d.port());

  child_process ping(dir, cli({"ping"}), env);
  CHECK(ping.wait() == 0);
  CHECK(contains(ping.out(), "pong from 127.0.0.1:"));

  child_process inspect(dir, cli({"inspect", "report:monthly"}), env);
  CHECK(inspect.wait() == 0);
  CHECK(contains(inspect.out(), "held     yes, 1 of limit 1"));
  CHECK(contains(inspect.out(), std::to_string(lease.token())));

  child_process inspect_json(dir, cli({"inspect", "report:monthly", "--json"}), env);
  CHECK(inspect_json.wait() == 0);
  CHECK(contains(inspect_json.out(), R"("held":true)"));

  child_process stats(dir, cli({"stats"}), env);
  CHECK(stats.wait() == 0);
  CHECK(contains(stats.out(), "connections"));
  CHECK(contains(stats.out(), "grants"));

  child_process stats_json(dir, cli({"stats", "--json"}), env);
  CHECK(stats_json.wait() == 0);
  CHECK(contains(stats_json.out(), R"("grants":)"));
}

TEST_CASE("keylock release KEY TOKEN ends another process's lease, and says when none is held",
          "[cli]") {
  keylock_daemon d;
  temp_dir dir;
  keylock::Client holder(options_for(d.port()));
  keylock::Lease lease = holder.acquire("report:monthly");
  const auto env = server_env(d.port());
  CHECK(lease.owned());

  child_process wrong(dir, cli({"release", "report:monthly", std::to_string(lease.token() + 1)}),
                      env);
  CHECK(wrong.wait() == 1);
  CHECK(contains(wrong.err(), "has no live lease with token"));
  CHECK(holder.locked("report:monthly"));

  child_process release(dir, cli({"release", "report:monthly", std::to_string(lease.token())}),
                        env);
  CHECK(release.wait() == 0);
  CHECK(contains(release.out(), "released report:monthly"));
  CHECK_FALSE(holder.locked("report:monthly"));
  // The holder's process still believes it holds the lease until it asks the daemon.
  CHECK(lease.valid());
  CHECK_FALSE(lease.owned());
  CHECK_THROWS_AS(lease.extend(std::chrono::seconds(30)), keylock::NotHeld);
  CHECK_FALSE(lease.valid());

  child_process usage(dir, cli({"release", "report:monthly"}), env);
  CHECK(usage.wait() == 64);
}

TEST_CASE("keylock top --once shows the longest queue and the oldest holder", "[cli]") {
  keylock_daemon d;
  temp_dir dir;
  keylock::client_options holder_options = options_for(d.port());
  holder_options.name = "report-writer";
  keylock::Client holder(holder_options);
  keylock::Lease lease = holder.acquire("report:monthly");
  keylock::Client waiter(options_for(d.port()));
  keylock::AcquireOptions wait_briefly;
  wait_briefly.wait = std::chrono::milliseconds(30000);
  std::thread queued([&] {
    try {
      waiter.acquire("report:monthly", wait_briefly);
    } catch (const keylock::Error&) {
    }
  });
  REQUIRE(wait_until([&] { return holder.inspect("report:monthly").waiters == 1; }));

  child_process top(dir, cli({"top", "--once", "-n", "5"}), server_env(d.port()));
  CHECK(top.wait() == 0);
  CHECK(contains(top.out(), "LONGEST QUEUES"));
  CHECK(contains(top.out(), "OLDEST HOLDERS"));
  CHECK(contains(top.out(), "waiting 1"));
  // The queue line and the holder line both name the key; the holder line names its client.
  CHECK(contains(top.out(), "report:monthly"));
  CHECK(contains(top.out(), "report-writer"));
  CHECK(contains(top.out(), "127.0.0.1:"));

  lease.release();
  queued.join();
}

// ---- issue 12: --shared and several keys ------------------------------------------------------

TEST_CASE("keylock run --shared: two shared runs hold the key at the same time", "[cli][modes]") {
  keylock_daemon d;
  temp_dir dir;
  keylock::Client writer(options_for(d.port()));
  const std::string go = dir.file("go");
  // Each command marks that it runs, then holds on (bounded) until the test says go; it exits
  // 0 only if the other's mark was there by then, i.e. both held the key at once.
  const auto script_for = [&](const std::string& mine, const std::string& theirs) {
    return "echo \"$KEYLOCK_MODE\" > '" + dir.file(mine) + "'; i=0; while [ ! -e '" + go +
           "' ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done; [ -e '" + dir.file(theirs) +
           "' ]";
  };
  child_process a(dir, cli({"run", "prices", "--shared", "--", "sh", "-c", script_for("a", "b")}),
                  server_env(d.port()));
  child_process b(dir, cli({"run", "--shared", "prices", "--", "sh", "-c", script_for("b", "a")}),
                  server_env(d.port()));
  const bool both = wait_until([&] { return writer.inspect("prices").holders.size() == 2; });
  INFO(a.err() << b.err());
  CHECK(both);
  // Meanwhile an exclusive holder is refused.
  keylock::AcquireOptions once;
  once.wait = 0ms;
  CHECK_FALSE(writer.try_acquire("prices", once));
  // Both leases are held; wait until both commands have started (left their mark) too, else a
  // slow start of one (under a sanitizer) would make the other's check fail.
  CHECK(wait_until([&] {
    return std::filesystem::exists(dir.file("a")) && std::filesystem::exists(dir.file("b"));
  }));
  child_process touch(dir, {"/bin/sh", "-c", "touch '" + go + "'"});
  CHECK(touch.wait() == 0);
  CHECK(a.wait() == 0);
  CHECK(b.wait() == 0);
  CHECK(read_file(dir.file("a")) == "shared\n");
}

TEST_CASE("keylock run with several keys holds every key as one lease while the command runs",
          "[cli][sets]") {
  keylock_daemon d;
  temp_dir dir;
  keylock::Client observer(options_for(d.port()));
  const std::string go = dir.file("go");
  const std::string script = "printf '%s|%s' \"$KEYLOCK_KEY\" \"$KEYLOCK_KEYS\" > '" +
                             dir.file("env") + "'; i=0; while [ ! -e '" + go +
                             "' ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done";
  child_process run(dir,
                    cli({"run", "acct:17", "acct:42", "--ttl", "5s", "--", "sh", "-c", script}),
                    server_env(d.port()));
  REQUIRE(wait_until([&] { return !read_file(dir.file("env")).empty(); }));
  const keylock::key_info first = observer.inspect("acct:17");
  const keylock::key_info second = observer.inspect("acct:42");
  REQUIRE(first.holders.size() == 1);
  REQUIRE(second.holders.size() == 1);
  CHECK(first.holders[0].token == second.holders[0].token);
  CHECK(first.holders[0].keys.size() == 2);
  CHECK(read_file(dir.file("env")) == "acct:17|acct:17\nacct:42");

  // A second run over an overlapping set waits until the first is done.
  child_process overlap(dir, cli({"run", "acct:42", "acct:99", "--wait", "0", "--", "true"}),
                        server_env(d.port()));
  CHECK(overlap.wait() == 75);

  child_process touch(dir, {"/bin/sh", "-c", "touch '" + go + "'"});
  CHECK(touch.wait() == 0);
  CHECK(run.wait() == 0);
  INFO(run.err());
  CHECK(wait_until([&] { return !observer.inspect("acct:17").held; }));
}

TEST_CASE("keylock inspect prints each holder's mode and set", "[cli][sets]") {
  keylock_daemon d;
  temp_dir dir;
  keylock::Client holder(options_for(d.port()));
  keylock::AcquireOptions shared;
  shared.mode = keylock::lock_mode::shared;
  keylock::Lease lease = holder.acquire_all({"cfg:a", "cfg:b"}, shared);

  child_process inspect(dir, cli({"inspect", "cfg:b"}), server_env(d.port()));
  CHECK(inspect.wait() == 0);
  INFO(inspect.out());
  CHECK(contains(inspect.out(), "MODE"));
  CHECK(contains(inspect.out(), "SET"));
  CHECK(contains(inspect.out(), "shared"));
  CHECK((contains(inspect.out(), "cfg:a cfg:b") || contains(inspect.out(), "cfg:b cfg:a")));

  child_process json(dir, cli({"inspect", "cfg:b", "--json"}), server_env(d.port()));
  CHECK(json.wait() == 0);
  CHECK(contains(json.out(), R"("mode":"shared")"));
}

TEST_CASE("keylock run refuses a key given twice, --shared with --limit, and too many keys",
          "[cli][sets]") {
  temp_dir dir;
  std::vector<std::string> many = {"run"};
  for (int i = 0; i < 65; ++i) many.push_back(std::to_string(1000 + i));
  many.insert(many.end(), {"--", "true"});
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"run", "a", "b", "a", "--", "true"},
           {"run", "a", "--shared", "--limit", "2", "--", "true"},
           many,
           {"run", "a", "b", "--"},
       }) {
    child_process bad(dir, cli(args), {"KEYLOCK_SERVER=127.0.0.1:1"});
    CHECK(bad.wait() == 64);
    CHECK(contains(bad.err(), "keylock: run:"));
  }
}

TEST_CASE("keylock run --help shows several keys and --shared", "[cli]") {
  temp_dir dir;
  child_process help(dir, cli({"run", "--help"}));
  CHECK(help.wait() == 0);
  CHECK(contains(help.out(), "--shared"));
  CHECK(contains(help.out(), "KEY1 KEY2"));
}

TEST_CASE("keylock --server with a list skips a dead daemon, in every subcommand",
          "[cli][failover]") {
  keylock_daemon d;
  temp_dir dir;
  const std::string dead = "127.0.0.1:" + std::to_string(keylock::test::free_port());
  const std::string live = "127.0.0.1:" + std::to_string(d.port());
  const std::string list = dead + "," + live;

  SECTION("--server") {
    child_process ping(dir, cli({"--server", list, "ping"}));
    CHECK(ping.wait() == 0);
    INFO(ping.err());
    CHECK(contains(ping.out(), "pong from " + live));
    child_process run(dir, cli({"--server", list, "run", "failover", "--", "sh", "-c",
                                "echo \"$KEYLOCK_TOKEN\""}));
    CHECK(run.wait() == 0);
    INFO(run.err());
    CHECK_FALSE(run.out().empty());
  }
  SECTION("KEYLOCK_SERVER") {
    child_process stats(dir, cli({"stats"}), {"KEYLOCK_SERVER=" + list});
    CHECK(stats.wait() == 0);
    INFO(stats.err());
    CHECK(contains(stats.out(), "grants"));
  }
  SECTION("a malformed list: 64") {
    child_process bad(dir, cli({"--server", live + ",", "ping"}));
    CHECK(bad.wait() == 64);
    CHECK(contains(bad.err(), "invalid server"));
  }
}
