// keylock-bench's workloads: each runs for a while against one target, with one thread and
// one connection per client, and returns a run_result. README.md beside this file describes
// each workload and the Redis lock algorithm.
#pragma once

#include "report.hpp"
#include "wire.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace keylock::bench {

class tls_client;

enum class workload : std::uint8_t {
  rtt,          // ping round trips (pipelined with --pipeline)
  uncontended,  // acquire + release of the client's own key(s) (pipelined with --pipeline)
  contended,    // every client: acquire (waiting), hold, release, think on one shared key
  zipf,         // keys drawn with a Zipf skew; a mix of limit 1 and limit N
  overhead,     // a trivial function called directly vs under the lock
  hold_many,    // N leases held at once on distinct keys; server RSS
  connections,  // N idle connections; server RSS
  rw,           // one key as a read-write lock: a share of acquires shared (keylock only)
  multi,        // each cycle locks a set of distinct keys: all in one request, or one at a time
  handshakes,   // connect, TLS handshake (TLS targets), one ping, close; again
};

// How the multi workload takes its set of keys on a keylock target.
enum class multi_variant : std::uint8_t {
  keys,           // one acquire with "keys": [...], all or nothing (one round trip)
  one_at_a_time,  // one acquire per key, in sorted order (as with Redis)
};

std::string_view to_string(multi_variant v) noexcept;  // "keys", "one-at-a-time"

std::string_view to_string(workload w) noexcept;  // "rtt", ..., "hold-many", "connections"
std::optional<workload> workload_from_string(std::string_view name) noexcept;

struct bench_options {
  double seconds = 5;                       // measured window of each run
  std::uint32_t clients = 1;                // threads, one connection each
  std::uint32_t pipeline = 1;               // requests in flight per connection (rtt, uncontended,
                                            // hold-many); 1 elsewhere
  int cpu = -1;                             // the CPU the generator was pinned to; -1: not pinned
  std::uint32_t hold_us = 0;                // contended, zipf: time the lock is held
  std::uint32_t think_us = 0;               // contended, zipf: pause after each release
  std::uint32_t poll_ms = 100;              // redis: sleep between SET NX tries (redis-py default)
  std::uint32_t ttl_ms = 10000;             // every acquire's ttl
  bool try_once = false;                    // contended, zipf: one try (wait_ms 0 / one SET NX)
  bool keylock_noreply = true;              // keylock releases with "noreply":true (no round trip)
  std::uint64_t keys = 1000;                // zipf: key space
  double zipf_s = 0.99;                     // zipf: skew
  std::uint32_t limit = 4;                  // zipf: the limit N of semaphore keys
  unsigned semaphore_pct = 25;              // zipf: share of keys with limit N
  std::uint64_t leases = 100000;            // hold-many: leases to hold
  std::uint32_t hold_many_ttl_ms = 600000;  // hold-many: ttl (long enough to measure)
  std::uint64_t connections = 1000;         // connections: idle connections to open
  std::chrono::milliseconds io_timeout{10000};  // a reply slower than this is an error
  std::chrono::seconds fill_cap{300};  // hold-many, connections: give up filling after this
  bool progress = true;                // a progress line on stderr each second
  std::uint64_t seed = 42;             // tokens, zipf draws
  bool clients_given = false;          // --clients was given; else rw and multi use 32 clients
  unsigned shared_pct = 90;            // rw: share of acquires in shared mode
  std::uint32_t set_size = 4;          // multi: keys per cycle (drawn from `keys`)
  multi_variant multi = multi_variant::keys;  // multi on keylock: how the set is taken
  std::uint64_t handshakes = 1'000'000;       // handshakes: most connections in all
  const tls_client* tls = nullptr;  // the TLS context of the target being run (TLS targets)
};

// Clients of rw and multi when --clients is not given (the figure).
inline constexpr std::uint32_t default_set_clients = 32;

// Whether workload `w` can run against a target of `kind`: rw needs keylock (redis-py's Lock has
// no shared mode, so there is nothing to compare).
bool supports(workload w, target_kind kind) noexcept;

// Runs workload `w` against `t`. `server_pid` (0: unknown) is the server's process, for its
// RSS, CPU time and CPU placement. Never throws for server faults: they count as errors, and
// the first one is kept in the result.
run_result run_workload(workload w, const bench_options& options, const target& t, int server_pid);

// The `params` text of a run of `w` with these options (also the table title).
std::string describe_params(workload w, const bench_options& options);

}  // namespace keylock::bench
