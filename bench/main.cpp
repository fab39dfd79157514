// keylock-bench: load-tests keylockd and Redis as lock servers, side by side. What each workload
// does and how the Redis lock works: bench/README.md.
//
// The only TU that includes CLI11. It parses options, pins the process, runs every workload
// against every target (in that order: one table per workload), and prints the results.
#include "drivers.hpp"
#include "keylock_version.hpp"
#include "procinfo.hpp"
#include "report.hpp"
#include "workloads.hpp"

#include <CLI/CLI.hpp>

#include <sched.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace {

using namespace keylock::bench;

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.starts_with("127.") || host == "::1";
}

// Each idle connection and each client is a file descriptor: take all the kernel allows.
void raise_open_files_limit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
  if (lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
}

std::string command_line(int argc, char** argv) {
  std::string out;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (i == 0) {
      std::size_t slash = a.rfind('/');
      if (slash != std::string::npos) a = a.substr(slash + 1);
    }
    if (!out.empty()) out += ' ';
    if (a.find_first_of(" '\"\\$") != std::string::npos) {
      std::string q = "'";
      for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
      out += q + "'";
    } else {
      out += a;
    }
  }
  return out;
}

int run(int argc, char** argv) {
  CLI::App app{
      "keylock-bench: load-test keylockd and Redis as lock servers, side by side.\n"
      "Workloads: rtt, uncontended, contended, zipf, overhead, hold-many, connections, rw, multi, "
      "handshakes (see bench/README.md)."};
  app.get_formatter()->column_width(34);
  // A flag given twice takes its last value, so that scripts can append overrides.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);

  std::vector<std::string> target_urls;
  std::vector<std::string> workload_names;
  std::vector<int> server_pids;
  bench_options o;
  bool json = false, markdown = false, compare = false, quiet = false, version = false;
  std::uint32_t io_timeout_ms = 10000;
  std::string tsv_path, label;

  app.add_option("-t,--target", target_urls,
                 "keylock://HOST:PORT[,HOST:PORT...] (a cluster: clients spread over its daemons), "
                 "redis://HOST:PORT or etcd://HOST:PORT[,...] (etcd's own Lock); keylocks:// and "
                 "rediss:// over TLS; give several to compare")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("-w,--workload", workload_names,
                 "Workloads to run, in order (repeat or comma-separate); default rtt")
      ->delimiter(',')
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("-s,--seconds", o.seconds, "Measured seconds per workload and target")
      ->check(CLI::Range(0.05, 3600.0))
      ->capture_default_str();
  auto* clients_opt =
      app.add_option("-c,--clients", o.clients,
                     "Client threads, one connection each (rw and multi: 32 unless given)")
          ->check(CLI::Range(1u, 4096u))
          ->capture_default_str();
  app.add_option("-p,--pipeline", o.pipeline,
                 "Requests in flight per connection (rtt, uncontended, hold-many)")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  app.add_option("--cpu", o.cpu, "Pin the load generator to this CPU (sched_setaffinity)")
      ->check(CLI::Range(0, 4095));
  app.add_option("--hold-us", o.hold_us, "contended, zipf: microseconds the lock is held")
      ->capture_default_str();
  app.add_option("--think-us", o.think_us, "contended, zipf: microseconds of pause after release")
      ->capture_default_str();
  app.add_option("--poll-ms", o.poll_ms,
                 "redis: sleep between SET NX tries of a waiting acquire (redis-py: 100)")
      ->check(CLI::Range(1u, 10000u))
      ->capture_default_str();
  app.add_option("--ttl-ms", o.ttl_ms, "ttl of every lease")
      ->check(CLI::Range(1u, 3600000u))
      ->capture_default_str();
  app.add_flag("--try-once", o.try_once,
               "contended, zipf: acquire once (keylock wait_ms 0, one SET NX) instead of waiting");
  std::string keylock_release = "noreply";
  app.add_option("--keylock-release", keylock_release,
                 "keylock: release with \"noreply\":true (no round trip), or wait for the reply")
      ->check(CLI::IsMember({"noreply", "reply"}))
      ->capture_default_str();
  app.add_option("--keys", o.keys, "zipf, multi: number of keys")
      ->check(CLI::Range(std::uint64_t{1}, zipf_sampler::max_n))
      ->capture_default_str();
  app.add_option("--zipf-s", o.zipf_s, "zipf: skew exponent s (0 = uniform)")
      ->check(CLI::Range(0.0, 10.0))
      ->capture_default_str();
  app.add_option("--limit", o.limit, "zipf: the limit N of semaphore keys")
      ->check(CLI::Range(2u, 1024u))
      ->capture_default_str();
  app.add_option("--semaphore-pct", o.semaphore_pct, "zipf: percent of keys with limit N")
      ->check(CLI::Range(0u, 100u))
      ->capture_default_str();
  app.add_option("--shared-pct", o.shared_pct, "rw: percent of acquires in shared mode")
      ->check(CLI::Range(0u, 100u))
      ->capture_default_str();
  app.add_option("--set-size", o.set_size, "multi: distinct keys locked per cycle")
      ->check(CLI::Range(1u, 64u))
      ->capture_default_str();
  std::string multi_keylock = "both";
  app.add_option("--multi-keylock", multi_keylock,
                 "multi on keylock: one acquire with keys (keys), one acquire per key in sorted "
                 "order (one-at-a-time), or both, as two rows")
      ->check(CLI::IsMember({"keys", "one-at-a-time", "both"}))
      ->capture_default_str();
  app.add_option("--leases", o.leases, "hold-many: leases to hold at once")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{100'000'000}))
      ->capture_default_str();
  app.add_option("--connections", o.connections, "connections: idle connections to open")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1'000'000}))
      ->capture_default_str();
  app.add_option("--handshakes", o.handshakes,
                 "handshakes: most connections in all (the window ends the run too)")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{100'000'000}))
      ->capture_default_str();
  tls_options tls;
  app.add_option("--tls-ca", tls.ca_file,
                 "TLS targets: CA bundle (PEM) the server's certificate must chain to (required)");
  app.add_option("--tls-cert", tls.cert_file, "TLS targets: client certificate (PEM)");
  app.add_option("--tls-key", tls.key_file, "TLS targets: the client certificate's key (PEM)");
  app.add_option("--tls-ciphers", tls.ciphers,
                 "TLS targets: TLS 1.2 cipher list (OpenSSL syntax); default: OpenSSL's");
  app.add_option("--tls-ciphersuites", tls.ciphersuites,
                 "TLS targets: TLS 1.3 cipher suites, e.g. TLS_AES_128_GCM_SHA256; default: "
                 "OpenSSL's");
  app.add_option("--server-pid", server_pids,
                 "Server process of each target, in --target order (0: find the process "
                 "listening on the port); for RSS, CPU time and placement")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--io-timeout-ms", io_timeout_ms, "A reply slower than this is an error")
      ->check(CLI::Range(100u, 600000u))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "Seed of tokens and Zipf draws")->capture_default_str();
  auto* json_flag = app.add_flag("--json", json, "Print JSON instead of tables");
  app.add_flag("--markdown", markdown, "Print the tables as Markdown")->excludes(json_flag);
  app.add_flag("--compare", compare,
               "Needs one keylock(s) and one redis(s) target: print the keylock/redis ratios");
  app.add_flag("-q,--quiet", quiet, "No progress lines on stderr");
  app.add_option("--tsv", tsv_path, "Append tab-separated metrics to this file (for scripts)");
  app.add_option("--label", label, "Label of this run in --tsv lines")->needs("--tsv");
  app.add_flag("--version", version, "Print the version and exit");

  CLI11_PARSE(app, argc, argv);

  if (version) {
    std::printf("keylock-bench %s\n", KEYLOCK_VERSION);
    return 0;
  }
  if (target_urls.empty()) {
    std::fprintf(stderr, "keylock-bench: give at least one --target (see --help)\n");
    return 2;
  }
  std::vector<target> targets;
  for (const auto& url : target_urls) {
    std::string err;
    auto t = parse_target(url, err);
    if (!t) {
      std::fprintf(stderr, "keylock-bench: %s\n", err.c_str());
      return 2;
    }
    targets.push_back(*t);
  }
  if (compare) {
    int keylock_count = 0, redis_count = 0;
    for (const auto& t : targets) {
      if (t.kind == target_kind::keylock) ++keylock_count;
      if (t.kind == target_kind::redis) ++redis_count;
    }
    if (keylock_count != 1 || redis_count != 1) {
      std::fprintf(stderr,
                   "keylock-bench: --compare needs exactly one keylock:// (or keylocks://) and "
                   "one redis:// (or rediss://) target\n");
      return 2;
    }
  }
  if (workload_names.empty()) workload_names.emplace_back("rtt");
  std::vector<workload> workloads;
  for (const auto& name : workload_names) {
    auto w = workload_from_string(name);
    if (!w) {
      std::fprintf(stderr,
                   "keylock-bench: unknown workload '%s' (rtt, uncontended, contended, zipf, "
                   "overhead, hold-many, connections, rw, multi, handshakes)\n",
                   name.substr(0, 64).c_str());
      return 2;
    }
    workloads.push_back(*w);
  }
  // One TLS context per TLS target, so that each reports its own negotiated session.
  std::vector<std::unique_ptr<tls_client>> tls_contexts(targets.size());
  for (std::size_t i = 0; i < targets.size(); ++i) {
    if (!targets[i].tls) continue;
    if (targets[i].kind == target_kind::etcd) {
      std::fprintf(stderr, "keylock-bench: no TLS for etcd targets\n");
      return 2;
    }
    tls_contexts[i] = std::make_unique<tls_client>();
    if (std::string err = tls_contexts[i]->init(tls); !err.empty()) {
      std::fprintf(stderr, "keylock-bench: %s: %s\n", targets[i].url.c_str(), err.c_str());
      return 2;
    }
  }
  if (server_pids.size() > targets.size()) {
    std::fprintf(stderr, "keylock-bench: more --server-pid than --target\n");
    return 2;
  }
  o.io_timeout = std::chrono::milliseconds(io_timeout_ms);
  o.keylock_noreply = keylock_release == "noreply";
  o.progress = !quiet;
  o.clients_given = clients_opt->count() > 0;

  if (o.cpu >= 0) {
    // Pinned before any thread starts, so every client thread inherits the mask.
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(static_cast<std::size_t>(o.cpu), &set);
    if (::sched_setaffinity(0, sizeof set, &set) != 0) {
      std::fprintf(stderr, "keylock-bench: cannot pin to CPU %d: %s\n", o.cpu,
                   std::strerror(errno));
      return 2;
    }
  }
  raise_open_files_limit();

  std::vector<int> pids;
  for (std::size_t i = 0; i < targets.size(); ++i) {
    int pid = i < server_pids.size() ? server_pids[i] : 0;
    if (pid <= 0 && is_loopback(targets[i].host)) pid = find_listening_pid(targets[i].port);
    pids.push_back(pid);
  }

  const output_style style = markdown ? output_style::markdown : output_style::text;
  std::vector<run_result> results;
  for (workload w : workloads) {
    const std::size_t first = results.size();
    std::string note;
    for (std::size_t i = 0; i < targets.size(); ++i) {
      bench_options ot = o;  // this target's TLS context
      ot.tls = tls_contexts[i].get();
      if (!supports(w, targets[i].kind)) {
        note = "note: " + std::string(to_string(w)) + " skips " + targets[i].url +
               ": redis-py's Lock has no shared mode, so Redis has no read-write lock to compare\n";
        continue;
      }
      if (w == workload::multi && targets[i].kind == target_kind::keylock) {
        // One row per way of taking the set, the (keys) first.
        for (multi_variant v : {multi_variant::keys, multi_variant::one_at_a_time}) {
          if (multi_keylock != "both" && multi_keylock != to_string(v)) continue;
          bench_options ov = ot;
          ov.multi = v;
          results.push_back(run_workload(w, ov, targets[i], pids[i]));
        }
        continue;
      }
      results.push_back(run_workload(w, ot, targets[i], pids[i]));
    }
    if (!note.empty()) std::fputs(note.c_str(), stderr);
    if (!json) {
      std::span<const run_result> rows(results.data() + first, results.size() - first);
      // The note is a paragraph of its own (in Markdown, not part of the placement list).
      std::string table = format_table(rows, style, compare) + (note.empty() ? "" : "\n" + note);
      std::fwrite(table.data(), 1, table.size(), stdout);
      std::fputc('\n', stdout);
      std::fflush(stdout);
    }
  }

  run_meta meta;
  meta.version = KEYLOCK_VERSION;
  meta.command = command_line(argc, argv);
  meta.generator = o.cpu >= 0 ? "pinned to CPU " + std::to_string(o.cpu)
                              : "not pinned (CPUs " + self_cpus_allowed() + ")";
  if (json) {
    std::string text = format_json(results, meta, compare);
    std::fwrite(text.data(), 1, text.size(), stdout);
  }
  if (!tsv_path.empty()) {
    std::ofstream tsv(tsv_path, std::ios::app);
    tsv << format_tsv(results, label.empty() ? std::string("run") : label);
    if (!tsv) {
      std::fprintf(stderr, "keylock-bench: cannot append to %s\n", tsv_path.c_str());
      return 2;
    }
  }

  // Exit 1 when the lock was seen violated or a run got nothing done; errors in a run that
  // did work are reported in its table.
  int rc = 0;
  for (const auto& r : results) {
    if (r.violations > 0) {
      std::fprintf(stderr, "keylock-bench: %s on %s: %llu mutual-exclusion violations\n",
                   r.workload.c_str(), r.target_url.c_str(),
                   static_cast<unsigned long long>(r.violations));
      rc = 1;
    }
    if (r.ops == 0 && r.errors > 0) {
      std::fprintf(stderr, "keylock-bench: %s on %s failed: %s\n", r.workload.c_str(),
                   r.target_url.c_str(), r.first_error.c_str());
      rc = 1;
    }
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    // Only start-up can throw (allocation, thread creation): runs report faults as values.
    std::fprintf(stderr, "keylock-bench: fatal: %s\n", e.what());
    return 1;
  }
}
