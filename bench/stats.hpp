// keylock-bench's measuring pieces: a latency histogram with percentiles, a small fast RNG, a
// Zipf sampler, and the in-process mutual-exclusion check.
//
// Pure logic, no sockets or clocks: the workloads feed these durations they measured, and the
// unit tests in tests/bench feed them known values.
#pragma once

#include "keylock/protocol.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace keylock::bench {

// Counts durations in nanoseconds in log-linear buckets (the HdrHistogram layout): values
// below 256 ns have a bucket each; above, every power of two is split into 128 buckets, so a
// bucket is never wider than 1/128 (0.8 %) of the values in it. The full uint64 range fits in
// 7424 buckets (58 KiB); record() is a few instructions and never allocates after construction.
//
// Not thread-safe: each client thread records into its own and the results are merged.
class latency_histogram {
 public:
  static constexpr unsigned sub_bits = 7;
  static constexpr std::uint64_t sub_count = std::uint64_t{1} << sub_bits;      // 128
  static constexpr std::size_t bucket_count = sub_count * (64 - sub_bits + 1);  // 7424

  latency_histogram();

  void record(std::uint64_t ns) noexcept { record_n(ns, 1); }
  void record_n(std::uint64_t ns, std::uint64_t n) noexcept;
  void merge(const latency_histogram& other) noexcept;
  void clear() noexcept;

  std::uint64_t count() const noexcept { return count_; }
  std::uint64_t min() const noexcept { return count_ == 0 ? 0 : min_; }  // exact
  std::uint64_t max() const noexcept { return max_; }                    // exact
  double mean() const noexcept;  // exact (from the running sum)

  // The nearest-rank percentile: the smallest recorded value v such that at least p % of the
  // values are <= v, for p in [0, 100] (p = 0 gives the minimum, p = 100 the maximum). Reported
  // as the upper edge of v's bucket, clamped to [min, max]: never below the exact answer, and
  // at most 1/128 above it. 0 for an empty histogram. p outside [0, 100] is clamped.
  std::uint64_t percentile(double p) const noexcept;

  // Bucket arithmetic, exposed for tests.
  static std::size_t bucket_of(std::uint64_t v) noexcept;
  static std::uint64_t bucket_low(std::size_t i) noexcept;
  static std::uint64_t bucket_high(std::size_t i) noexcept;  // inclusive

 private:
  std::vector<std::uint64_t> counts_;
  std::uint64_t count_ = 0;
  std::uint64_t min_ = ~std::uint64_t{0};
  std::uint64_t max_ = 0;
  long double sum_ = 0;
};

// The rank (1-based) of the nearest-rank p-th percentile among n values: ceil(p/100 * n),
// at least 1. Computed in integers (p is taken to 1e-4 precision) so that 99.9 % of 1000 is
// rank 999, not 1000 by a rounding error. 0 when n is 0.
std::uint64_t percentile_rank(double p, std::uint64_t n) noexcept;

// The exact nearest-rank percentile of `sorted` (ascending); 0 when empty. For tests and
// small samples.
std::uint64_t exact_percentile(std::span<const std::uint64_t> sorted, double p) noexcept;

// xoshiro256** seeded through splitmix64: fast, good enough for load generation, and the same
// sequence on every platform for a given seed (unlike std:: distributions).
class fast_rng {
 public:
  explicit fast_rng(std::uint64_t seed) noexcept;
  std::uint64_t next() noexcept;
  double next_double() noexcept;                  // uniform in [0, 1), 53 bits
  std::uint64_t below(std::uint64_t n) noexcept;  // uniform in [0, n); n > 0

 private:
  std::uint64_t s_[4];
};

// Draws ranks 0..n-1 with P(k) proportional to 1 / (k + 1)^s (rank 0 is the most popular).
// s = 0 is uniform. Keeps the cumulative distribution (8 bytes per rank) and draws by binary
// search: exact, O(log n) per draw.
class zipf_sampler {
 public:
  static constexpr std::uint64_t max_n = 10'000'000;

  // n in 1..max_n, s in [0, 10]; the caller validates (out-of-range values are clamped).
  zipf_sampler(std::uint64_t n, double s);

  std::uint64_t operator()(fast_rng& rng) const noexcept;
  double probability(std::uint64_t k) const noexcept;  // of rank k; 0 for k >= n
  std::uint64_t size() const noexcept { return cdf_.size(); }

 private:
  std::vector<double> cdf_;  // cdf_[k] = P(rank <= k); cdf_.back() == 1
};

// Whether zipf key `rank` is a semaphore (limit N) rather than a mutex (limit 1): a fixed
// pseudo-random choice per rank, so that every client names the same limit for a key (the
// daemon answers `conflict` otherwise) and popularity is not correlated with the kind.
// `percent` in 0..100 is the share of semaphores.
bool is_semaphore_rank(std::uint64_t rank, unsigned percent) noexcept;

// Draws `count` distinct keys out of 0..n-1, uniformly (every set of `count` keys equally
// likely), into `out` in ascending order: the order in which a client that locks them one at a
// time takes them, so that two such clients never deadlock. `count` above n is clamped to n;
// n = 0 gives an empty set. Floyd's algorithm: `count` draws, no rejection loop.
void draw_key_set(fast_rng& rng, std::uint64_t n, std::uint32_t count,
                  std::vector<std::uint64_t>& out);

// Whether an acquire is shared: true with probability percent / 100 (percent in 0..100).
bool draw_shared(fast_rng& rng, unsigned percent) noexcept;

// The in-process mutual-exclusion check: every client calls enter() after a grant and leave()
// before it sends the release. The lock server promises, per key: at most `limit` exclusive
// holders, or (limit 1 only) any number of shared holders and no exclusive one. Breaking that
// is a violation. A lease over a set of keys enters every key of the set at once, after its one
// grant: a key of the set still held against it is a violation, so a set that was not granted
// whole shows up. Thread-safe; one atomic word per key (shared holders in the high half,
// exclusive ones in the low half, so each enter sees both in one atomic step).
class exclusion_checker {
 public:
  explicit exclusion_checker(std::size_t keys);

  // Counts an exclusive holder of `key`; true (and a violation recorded) when that makes more
  // than `limit` exclusive holders, or any exclusive holder beside shared ones. `key` < keys.
  bool enter(std::size_t key, std::uint32_t limit) noexcept;
  void leave(std::size_t key) noexcept;

  // Counts a shared holder of `key`; true (and a violation recorded) when an exclusive holder
  // is there. Shared holders beside each other are fine.
  bool enter_shared(std::size_t key) noexcept;
  void leave_shared(std::size_t key) noexcept;

  // One holder of `mode` on each of `keys` (a set granted as one lease, or one key); shared
  // implies limit 1. Returns how many of the keys were violated (0: none).
  std::size_t enter_all(std::span<const std::uint64_t> keys, keylock::lock_mode mode,
                        std::uint32_t limit) noexcept;
  void leave_all(std::span<const std::uint64_t> keys, keylock::lock_mode mode) noexcept;

  // The shared holders of `key` right now (for the readers-at-once figure of rw).
  std::uint32_t shared_holders(std::size_t key) const noexcept;

  std::uint64_t violations() const noexcept { return violations_.load(); }
  std::size_t keys() const noexcept { return keys_; }

 private:
  static constexpr std::uint64_t one_shared = std::uint64_t{1} << 32;
  static constexpr std::uint64_t exclusive_mask = one_shared - 1;

  std::size_t keys_;
  std::vector<std::atomic<std::uint64_t>> holders_;
  std::atomic<std::uint64_t> violations_{0};
};

}  // namespace keylock::bench
