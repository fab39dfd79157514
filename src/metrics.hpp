// Metrics: plain counters and fixed-bucket histograms kept by the single event-loop thread
// (no locks, no allocation when observed), and their rendering in the Prometheus text
// exposition format 0.0.4.
//
// Runs on the io_context thread only.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <string>

#include "keylock/protocol.hpp"

namespace keylock {

// A histogram of durations with fixed buckets from 10 µs to 60 s (upper bounds, inclusive, as
// Prometheus `le`), plus +Inf. observe() is a short scan over 21 integers.
struct duration_histogram {
  static constexpr std::array<std::int64_t, 21> bounds_ns = {
      10'000,        25'000,        50'000,         100'000,        250'000,
      500'000,       1'000'000,     2'500'000,      5'000'000,      10'000'000,
      25'000'000,    50'000'000,    100'000'000,    250'000'000,    500'000'000,
      1'000'000'000, 2'500'000'000, 5'000'000'000,  10'000'000'000, 30'000'000'000,
      60'000'000'000};
  std::array<std::uint64_t, bounds_ns.size() + 1> buckets{};  // not cumulative; last = +Inf
  std::uint64_t count = 0;
  std::uint64_t sum_ns = 0;

  void observe(std::chrono::nanoseconds d) noexcept {
    std::int64_t ns = d.count() < 0 ? 0 : d.count();
    std::size_t i = 0;
    while (i < bounds_ns.size() && ns > bounds_ns[i]) ++i;
    ++buckets[i];
    ++count;
    sum_ns += static_cast<std::uint64_t>(ns);
  }
};

// Everything /metrics exposes, gathered by the server when scraped.
struct metrics_snapshot {
  // gauges
  std::uint64_t connections = 0;
  std::uint64_t keys = 0;
  std::uint64_t held = 0;
  std::uint64_t waiting = 0;
  // counters
  std::uint64_t acquires = 0;
  std::uint64_t grants = 0;
  std::uint64_t grants_shared = 0;  // of `grants`
  std::uint64_t releases = 0;
  std::uint64_t extends = 0;
  std::uint64_t timeouts = 0;
  std::uint64_t cancels = 0;
  std::uint64_t expirations = 0;
  std::uint64_t disconnect_releases = 0;
  std::uint64_t connections_accepted = 0;
  std::uint64_t connections_refused = 0;
  std::array<std::uint64_t, errc_count> errors{};  // by errc value; label is to_string(errc)
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  duration_histogram wait;  // acquire -> grant (immediate grants observe 0)
  duration_histogram hold;  // grant -> end of the lease (release, expiry or disconnect)
  // cluster mode (rendered only when `cluster`)
  bool cluster = false;
  bool cluster_up = false;                  // the etcd lease is proven alive
  std::uint64_t rights_held = 0;            // keys whose global right this daemon holds
  std::uint64_t global_acquisitions = 0;    // rights won in etcd
  std::uint64_t local_handoffs = 0;         // grants after the first of a tenure of a right
  std::uint64_t remote_handoffs = 0;        // rights passed on to a waiting daemon
  std::uint64_t idle_releases = 0;          // rights given up after idle_keep_ms
  std::uint64_t sessions_lost = 0;          // etcd leases that could not be kept proven
  duration_histogram etcd_round_trip;       // one create/delete request to etcd
  // process
  double start_time_seconds = 0;  // Unix time of start
  std::string version;
};

// Renders `m` as Prometheus text exposition format 0.0.4: every family with # HELP and
// # TYPE, names prefixed keylock_, histograms with cumulative _bucket{le=...}, _sum (seconds)
// and _count. Ends with a newline.
std::string render_prometheus(const metrics_snapshot& m);

}  // namespace keylock
