#include "stats.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

namespace keylock::bench {

namespace {
// -Wpedantic frowns on __int128 unless marked as the extension it is.
__extension__ using u128 = unsigned __int128;
}  // namespace

// ---------------------------------------------------------------------------------------------
// latency_histogram

latency_histogram::latency_histogram() : counts_(bucket_count, 0) {}

std::size_t latency_histogram::bucket_of(std::uint64_t v) noexcept {
  if (v < 2 * sub_count) return static_cast<std::size_t>(v);
  // v has its top bit at position msb >= 8; keep the top 8 bits (the mantissa, 128..255) and
  // count how far they were shifted (e >= 1). Buckets of exponent e start at 128 * (e + 1).
  const unsigned msb = static_cast<unsigned>(std::bit_width(v)) - 1;
  const unsigned e = msb - sub_bits;
  const std::uint64_t mantissa = v >> e;
  return static_cast<std::size_t>(sub_count * e + mantissa);
}

std::uint64_t latency_histogram::bucket_low(std::size_t i) noexcept {
  if (i < 2 * sub_count) return i;
  const std::uint64_t e = i / sub_count - 1;
  const std::uint64_t mantissa = i - sub_count * e;
  return mantissa << e;
}

std::uint64_t latency_histogram::bucket_high(std::size_t i) noexcept {
  if (i < 2 * sub_count) return i;
  const std::uint64_t e = i / sub_count - 1;
  return bucket_low(i) + ((std::uint64_t{1} << e) - 1);
}

void latency_histogram::record_n(std::uint64_t ns, std::uint64_t n) noexcept {
  if (n == 0) return;
  counts_[bucket_of(ns)] += n;
  count_ += n;
  min_ = std::min(min_, ns);
  max_ = std::max(max_, ns);
  sum_ += static_cast<long double>(ns) * static_cast<long double>(n);
}

void latency_histogram::merge(const latency_histogram& other) noexcept {
  if (other.count_ == 0) return;
  for (std::size_t i = 0; i < bucket_count; ++i) counts_[i] += other.counts_[i];
  count_ += other.count_;
  min_ = std::min(min_, other.min_);
  max_ = std::max(max_, other.max_);
  sum_ += other.sum_;
}

void latency_histogram::clear() noexcept {
  std::fill(counts_.begin(), counts_.end(), 0);
  count_ = 0;
  min_ = ~std::uint64_t{0};
  max_ = 0;
  sum_ = 0;
}

double latency_histogram::mean() const noexcept {
  return count_ == 0 ? 0.0 : static_cast<double>(sum_ / static_cast<long double>(count_));
}

std::uint64_t latency_histogram::percentile(double p) const noexcept {
  if (count_ == 0) return 0;
  const std::uint64_t rank = percentile_rank(p, count_);
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < bucket_count; ++i) {
    seen += counts_[i];
    if (seen >= rank) return std::clamp(bucket_high(i), min_, max_);
  }
  return max_;
}

std::uint64_t percentile_rank(double p, std::uint64_t n) noexcept {
  if (n == 0) return 0;
  if (!(p > 0)) return 1;  // also NaN
  if (p >= 100) return n;
  // p in units of 1e-4 %, so p/100 = pm / 1e6. n * pm fits in 128 bits for any n.
  const auto pm = static_cast<u128>(std::llround(p * 10000.0));
  const u128 scaled = pm * n;
  auto rank = static_cast<std::uint64_t>((scaled + 999'999) / 1'000'000);
  return std::clamp<std::uint64_t>(rank, 1, n);
}

std::uint64_t exact_percentile(std::span<const std::uint64_t> sorted, double p) noexcept {
  if (sorted.empty()) return 0;
  return sorted[percentile_rank(p, sorted.size()) - 1];
}

// ---------------------------------------------------------------------------------------------
// fast_rng

namespace {

std::uint64_t splitmix64(std::uint64_t& x) noexcept {
  std::uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

fast_rng::fast_rng(std::uint64_t seed) noexcept {
  for (auto& s : s_) s = splitmix64(seed);
}

std::uint64_t fast_rng::next() noexcept {
  const std::uint64_t result = std::rotl(s_[1] * 5, 7) * 9;
  const std::uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = std::rotl(s_[3], 45);
  return result;
}

double fast_rng::next_double() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

std::uint64_t fast_rng::below(std::uint64_t n) noexcept {
  // Lemire's multiply-shift; the tiny bias (< n / 2^64) does not matter for load generation.
  return static_cast<std::uint64_t>((static_cast<u128>(next()) * n) >> 64);
}

// ---------------------------------------------------------------------------------------------
// zipf_sampler

zipf_sampler::zipf_sampler(std::uint64_t n, double s) {
  n = std::clamp<std::uint64_t>(n, 1, max_n);
  if (!(s >= 0)) s = 0;
  s = std::min(s, 10.0);
  cdf_.resize(n);
  // Sum from the smallest terms up, for accuracy; then normalise.
  std::vector<double> weight(n);
  for (std::uint64_t k = 0; k < n; ++k) weight[k] = std::pow(static_cast<double>(k + 1), -s);
  double total = 0;
  for (std::uint64_t k = n; k-- > 0;) total += weight[k];
  double running = 0;
  for (std::uint64_t k = 0; k < n; ++k) {
    running += weight[k];
    cdf_[k] = running / total;
  }
  cdf_.back() = 1.0;  // a draw of u < 1 always lands on a rank
}

std::uint64_t zipf_sampler::operator()(fast_rng& rng) const noexcept {
  const double u = rng.next_double();
  // The first rank whose cumulative probability exceeds u.
  auto it = std::upper_bound(cdf_.begin(), cdf_.end(), u);
  if (it == cdf_.end()) --it;
  return static_cast<std::uint64_t>(it - cdf_.begin());
}

double zipf_sampler::probability(std::uint64_t k) const noexcept {
  if (k >= cdf_.size()) return 0;
  return k == 0 ? cdf_[0] : cdf_[k] - cdf_[k - 1];
}

bool is_semaphore_rank(std::uint64_t rank, unsigned percent) noexcept {
  std::uint64_t x = rank;
  return splitmix64(x) % 100 < std::min(percent, 100u);
}

void draw_key_set(fast_rng& rng, std::uint64_t n, std::uint32_t count,
                  std::vector<std::uint64_t>& out) {
  out.clear();
  const std::uint64_t k = std::min<std::uint64_t>(count, n);
  // Floyd: for j = n-k .. n-1 take a uniform t in [0, j]; if t is taken already, take j (which
  // cannot be). Every k-subset comes out with the same probability. Sets are small (a few keys),
  // so a linear membership test beats a hash set.
  for (std::uint64_t j = n - k; j < n; ++j) {
    const std::uint64_t t = rng.below(j + 1);
    out.push_back(std::find(out.begin(), out.end(), t) == out.end() ? t : j);
  }
  std::sort(out.begin(), out.end());
}

bool draw_shared(fast_rng& rng, unsigned percent) noexcept {
  return rng.below(100) < std::min(percent, 100u);
}

// ---------------------------------------------------------------------------------------------
// exclusion_checker

exclusion_checker::exclusion_checker(std::size_t keys) : keys_(keys), holders_(keys) {}

bool exclusion_checker::enter(std::size_t key, std::uint32_t limit) noexcept {
  const std::uint64_t now = holders_[key].fetch_add(1, std::memory_order_acq_rel) + 1;
  if ((now & exclusive_mask) > limit || (now >> 32) != 0) {
    violations_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  return false;
}

void exclusion_checker::leave(std::size_t key) noexcept {
  holders_[key].fetch_sub(1, std::memory_order_acq_rel);
}

bool exclusion_checker::enter_shared(std::size_t key) noexcept {
  const std::uint64_t now = holders_[key].fetch_add(one_shared, std::memory_order_acq_rel);
  if ((now & exclusive_mask) != 0) {
    violations_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  return false;
}

void exclusion_checker::leave_shared(std::size_t key) noexcept {
  holders_[key].fetch_sub(one_shared, std::memory_order_acq_rel);
}

std::size_t exclusion_checker::enter_all(std::span<const std::uint64_t> keys, keylock::lock_mode mode,
                                         std::uint32_t limit) noexcept {
  std::size_t violated = 0;
  for (std::uint64_t k : keys) {
    violated += mode == keylock::lock_mode::shared ? enter_shared(k) : enter(k, limit);
  }
  return violated;
}

void exclusion_checker::leave_all(std::span<const std::uint64_t> keys, keylock::lock_mode mode) noexcept {
  for (std::uint64_t k : keys) {
    if (mode == keylock::lock_mode::shared) {
      leave_shared(k);
    } else {
      leave(k);
    }
  }
}

std::uint32_t exclusion_checker::shared_holders(std::size_t key) const noexcept {
  return static_cast<std::uint32_t>(holders_[key].load(std::memory_order_relaxed) >> 32);
}

}  // namespace keylock::bench
