#include "stats.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <vector>

using namespace keylock::bench;

TEST_CASE("histogram buckets tile the value range without gaps", "[bench][stats]") {
  for (std::size_t i = 0; i + 1 < latency_histogram::bucket_count; ++i) {
    INFO("bucket " << i);
    REQUIRE(latency_histogram::bucket_low(i) <= latency_histogram::bucket_high(i));
    REQUIRE(latency_histogram::bucket_high(i) + 1 == latency_histogram::bucket_low(i + 1));
    REQUIRE(latency_histogram::bucket_of(latency_histogram::bucket_low(i)) == i);
    REQUIRE(latency_histogram::bucket_of(latency_histogram::bucket_high(i)) == i);
  }
  const std::size_t last = latency_histogram::bucket_count - 1;
  CHECK(latency_histogram::bucket_high(last) == ~std::uint64_t{0});
  CHECK(latency_histogram::bucket_of(~std::uint64_t{0}) == last);
}

TEST_CASE("histogram buckets are never wider than 1/128 of their values", "[bench][stats]") {
  for (std::size_t i = 256; i < latency_histogram::bucket_count; ++i) {
    const std::uint64_t lo = latency_histogram::bucket_low(i);
    const std::uint64_t width = latency_histogram::bucket_high(i) - lo + 1;
    REQUIRE(width <= lo / 128);
  }
  for (std::uint64_t v = 0; v < 256; ++v) CHECK(latency_histogram::bucket_of(v) == v);
}

TEST_CASE("percentile ranks are nearest-rank and computed without rounding errors",
          "[bench][stats]") {
  CHECK(percentile_rank(50, 0) == 0);
  CHECK(percentile_rank(50, 1) == 1);
  CHECK(percentile_rank(0, 10) == 1);
  CHECK(percentile_rank(50, 10) == 5);
  CHECK(percentile_rank(90, 10) == 9);
  CHECK(percentile_rank(91, 10) == 10);
  CHECK(percentile_rank(99, 100) == 99);
  CHECK(percentile_rank(99.9, 1000) == 999);
  CHECK(percentile_rank(99.9, 1001) == 1000);
  CHECK(percentile_rank(100, 7) == 7);
  CHECK(percentile_rank(150, 7) == 7);
  CHECK(percentile_rank(-3, 7) == 1);
  CHECK(percentile_rank(50, 3'000'000'000'000ULL) == 1'500'000'000'000ULL);
}

TEST_CASE("exact percentiles of a sorted sample", "[bench][stats]") {
  std::vector<std::uint64_t> v{10, 20, 30, 40, 50, 60, 70, 80, 90, 100};
  CHECK(exact_percentile(v, 0) == 10);
  CHECK(exact_percentile(v, 50) == 50);
  CHECK(exact_percentile(v, 90) == 90);
  CHECK(exact_percentile(v, 99) == 100);
  CHECK(exact_percentile(v, 100) == 100);
  CHECK(exact_percentile(std::vector<std::uint64_t>{}, 50) == 0);
}

TEST_CASE("histogram percentiles are exact below 256 ns", "[bench][stats]") {
  latency_histogram h;
  for (std::uint64_t v = 1; v <= 200; ++v) h.record(v);
  CHECK(h.count() == 200);
  CHECK(h.min() == 1);
  CHECK(h.max() == 200);
  CHECK(h.percentile(50) == 100);
  CHECK(h.percentile(99) == 198);
  CHECK(h.percentile(100) == 200);
  CHECK(h.percentile(0) == 1);
  CHECK(h.mean() == Approx(100.5));
}

TEST_CASE("histogram percentiles are never below the exact answer and at most 1/128 above",
          "[bench][stats]") {
  // Microsecond-scale latencies with a long tail, in a fixed pseudo-random order.
  fast_rng rng(7);
  std::vector<std::uint64_t> values;
  latency_histogram h;
  for (int i = 0; i < 100000; ++i) {
    const double u = rng.next_double();
    const auto v = static_cast<std::uint64_t>(50'000 + 10'000'000 * std::pow(u, 8.0));
    values.push_back(v);
    h.record(v);
  }
  std::sort(values.begin(), values.end());
  for (double p : {0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0}) {
    INFO("p" << p);
    const auto exact = static_cast<double>(exact_percentile(values, p));
    const auto approx = static_cast<double>(h.percentile(p));
    CHECK(approx >= exact);
    CHECK(approx <= exact * (1 + 1.0 / 128));
  }
  CHECK(h.min() == values.front());
  CHECK(h.max() == values.back());
}

TEST_CASE("an empty histogram reports zeros", "[bench][stats]") {
  latency_histogram h;
  CHECK(h.count() == 0);
  CHECK(h.min() == 0);
  CHECK(h.max() == 0);
  CHECK(h.mean() == 0);
  CHECK(h.percentile(99) == 0);
}

TEST_CASE("merged histograms equal one histogram of all values", "[bench][stats]") {
  latency_histogram a, b, all;
  for (std::uint64_t v = 1000; v < 50000; v += 7) {
    ((v / 7) % 2 == 0 ? a : b).record(v);
    all.record(v);
  }
  a.merge(b);
  CHECK(a.count() == all.count());
  CHECK(a.min() == all.min());
  CHECK(a.max() == all.max());
  CHECK(a.mean() == Approx(all.mean()));
  for (double p : {50.0, 90.0, 99.0, 99.9}) CHECK(a.percentile(p) == all.percentile(p));
  a.clear();
  CHECK(a.count() == 0);
  CHECK(a.percentile(50) == 0);
}

TEST_CASE("the rng repeats its sequence for a seed and stays in range", "[bench][stats]") {
  fast_rng a(123), b(123), c(124);
  bool differs = false;
  for (int i = 0; i < 1000; ++i) {
    const std::uint64_t x = a.next();
    REQUIRE(x == b.next());
    differs = differs || x != c.next();
    const double d = a.next_double();
    b.next_double();
    REQUIRE(d >= 0.0);
    REQUIRE(d < 1.0);
    REQUIRE(a.below(10) < 10);
    b.below(10);
  }
  CHECK(differs);
}

TEST_CASE("zipf probabilities follow 1/(k+1)^s and sum to one", "[bench][zipf]") {
  zipf_sampler z(1000, 0.99);
  double sum = 0;
  for (std::uint64_t k = 0; k < 1000; ++k) {
    sum += z.probability(k);
    if (k > 0) REQUIRE(z.probability(k) <= z.probability(k - 1));
  }
  CHECK(sum == Approx(1.0));
  CHECK(z.probability(0) / z.probability(9) == Approx(std::pow(10.0, 0.99)));
  CHECK(z.probability(1000) == 0);
}

TEST_CASE("zipf with s = 0 is uniform", "[bench][zipf]") {
  zipf_sampler z(50, 0.0);
  for (std::uint64_t k = 0; k < 50; ++k) CHECK(z.probability(k) == Approx(1.0 / 50));
}

TEST_CASE("zipf draws match the distribution", "[bench][zipf]") {
  zipf_sampler z(100, 1.1);
  fast_rng rng(99);
  std::vector<std::uint64_t> seen(100, 0);
  const int draws = 400000;
  for (int i = 0; i < draws; ++i) {
    const std::uint64_t k = z(rng);
    REQUIRE(k < 100);
    ++seen[k];
  }
  for (std::uint64_t k = 0; k < 10; ++k) {
    INFO("rank " << k);
    const double expected = z.probability(k) * draws;
    // Within 5 standard deviations of a binomial count.
    CHECK(std::fabs(static_cast<double>(seen[k]) - expected) <
          5 * std::sqrt(expected * (1 - z.probability(k))));
  }
}

TEST_CASE("zipf over one key always draws it, and out-of-range settings are clamped",
          "[bench][zipf]") {
  zipf_sampler one(1, 2.0);
  fast_rng rng(1);
  for (int i = 0; i < 100; ++i) CHECK(one(rng) == 0);
  zipf_sampler zero(0, -1.0);
  CHECK(zero.size() == 1);
  CHECK(zero.probability(0) == Approx(1.0));
}

TEST_CASE("semaphore keys are a fixed share of ranks", "[bench][zipf]") {
  int n = 0;
  for (std::uint64_t k = 0; k < 10000; ++k) {
    REQUIRE(is_semaphore_rank(k, 25) == is_semaphore_rank(k, 25));
    n += is_semaphore_rank(k, 25) ? 1 : 0;
    REQUIRE_FALSE(is_semaphore_rank(k, 0));
    REQUIRE(is_semaphore_rank(k, 100));
  }
  CHECK(n > 2200);
  CHECK(n < 2800);
}

TEST_CASE("the exclusion check counts holders beyond the limit as violations",
          "[bench][exclusion]") {
  exclusion_checker c(2);
  SECTION("mutex") {
    CHECK_FALSE(c.enter(0, 1));
    CHECK(c.enter(0, 1));
    CHECK(c.violations() == 1);
    c.leave(0);
    c.leave(0);
    CHECK_FALSE(c.enter(0, 1));
    CHECK(c.violations() == 1);
  }
  SECTION("semaphore") {
    CHECK_FALSE(c.enter(1, 2));
    CHECK_FALSE(c.enter(1, 2));
    CHECK(c.enter(1, 2));
    CHECK(c.violations() == 1);
  }
  SECTION("keys are independent") {
    CHECK_FALSE(c.enter(0, 1));
    CHECK_FALSE(c.enter(1, 1));
    CHECK(c.violations() == 0);
  }
}

TEST_CASE("the exclusion check sees no violation under a real mutex", "[bench][exclusion]") {
  exclusion_checker c(1);
  std::mutex m;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        std::lock_guard<std::mutex> lock(m);
        c.enter(0, 1);
        c.leave(0);
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(c.violations() == 0);
}

TEST_CASE("key sets are distinct, sorted, in range and of the asked size", "[bench][sets]") {
  fast_rng rng(7);
  std::vector<std::uint64_t> set;
  for (int i = 0; i < 5000; ++i) {
    draw_key_set(rng, 1000, 4, set);
    REQUIRE(set.size() == 4);
    CHECK(std::is_sorted(set.begin(), set.end()));
    CHECK(std::adjacent_find(set.begin(), set.end()) == set.end());
    CHECK(set.back() < 1000);
  }
  SECTION("a set as large as the key space takes every key") {
    draw_key_set(rng, 5, 5, set);
    CHECK(set == std::vector<std::uint64_t>{0, 1, 2, 3, 4});
  }
  SECTION("a set larger than the key space is clamped to it") {
    draw_key_set(rng, 3, 4, set);
    CHECK(set == std::vector<std::uint64_t>{0, 1, 2});
    draw_key_set(rng, 0, 4, set);
    CHECK(set.empty());
  }
  SECTION("the same seed draws the same sets") {
    fast_rng a(99), b(99);
    std::vector<std::uint64_t> sa, sb;
    for (int i = 0; i < 100; ++i) {
      draw_key_set(a, 1000, 4, sa);
      draw_key_set(b, 1000, 4, sb);
      CHECK(sa == sb);
    }
  }
}

TEST_CASE("key sets draw every key about equally often", "[bench][sets]") {
  fast_rng rng(11);
  std::vector<std::uint64_t> set;
  std::vector<int> seen(20, 0);
  constexpr int draws = 50000;
  for (int i = 0; i < draws; ++i) {
    draw_key_set(rng, 20, 4, set);
    for (auto k : set) ++seen[k];
  }
  // Each key is in a set with probability 4/20: 10,000 times, ± a few percent.
  for (int n : seen) CHECK(std::abs(n - draws / 5) < draws / 5 / 20);
  // Pairs too (Floyd's draw is uniform over sets, not just over keys): key 0 with key 19 as
  // often as key 0 with key 1.
  int pair_01 = 0, pair_0_19 = 0;
  for (int i = 0; i < draws; ++i) {
    draw_key_set(rng, 20, 4, set);
    const bool has0 = set.front() == 0;
    pair_01 += has0 && std::find(set.begin(), set.end(), 1) != set.end();
    pair_0_19 += has0 && set.back() == 19;
  }
  CHECK(std::abs(pair_01 - pair_0_19) < (pair_01 + pair_0_19) / 8);
}

TEST_CASE("the shared share of acquires follows the percentage", "[bench][sets]") {
  fast_rng rng(3);
  int shared = 0;
  for (int i = 0; i < 100000; ++i) shared += draw_shared(rng, 90);
  CHECK(std::abs(shared - 90000) < 1000);
  for (int i = 0; i < 1000; ++i) {
    CHECK_FALSE(draw_shared(rng, 0));
    CHECK(draw_shared(rng, 100));
  }
}

TEST_CASE("shared holders may overlap; an exclusive holder overlaps nothing",
          "[bench][exclusion]") {
  exclusion_checker c(2);
  SECTION("readers together") {
    CHECK_FALSE(c.enter_shared(0));
    CHECK_FALSE(c.enter_shared(0));
    CHECK_FALSE(c.enter_shared(0));
    CHECK(c.shared_holders(0) == 3);
    CHECK(c.violations() == 0);
  }
  SECTION("a writer beside readers") {
    CHECK_FALSE(c.enter_shared(0));
    CHECK(c.enter(0, 1));
    CHECK(c.violations() == 1);
  }
  SECTION("a reader beside a writer") {
    CHECK_FALSE(c.enter(0, 1));
    CHECK(c.enter_shared(0));
    CHECK(c.violations() == 1);
  }
  SECTION("readers, then a writer once they left") {
    CHECK_FALSE(c.enter_shared(0));
    CHECK_FALSE(c.enter_shared(0));
    c.leave_shared(0);
    c.leave_shared(0);
    CHECK(c.shared_holders(0) == 0);
    CHECK_FALSE(c.enter(0, 1));
    c.leave(0);
    CHECK_FALSE(c.enter_shared(0));
    CHECK(c.violations() == 0);
  }
  SECTION("readers of one key do not affect another") {
    CHECK_FALSE(c.enter_shared(0));
    CHECK_FALSE(c.enter(1, 1));
    CHECK(c.violations() == 0);
  }
}

TEST_CASE("a set enters all its keys at once and is violated by any key held against it",
          "[bench][exclusion]") {
  exclusion_checker c(10);
  const std::vector<std::uint64_t> set{2, 5, 7};
  SECTION("free keys") {
    CHECK(c.enter_all(set, keylock::lock_mode::exclusive, 1) == 0);
    // While the set is held, each of its keys is taken.
    CHECK(c.enter(5, 1));
    c.leave(5);
    c.leave_all(set, keylock::lock_mode::exclusive);
    CHECK(c.enter_all(set, keylock::lock_mode::exclusive, 1) == 0);
    CHECK(c.violations() == 1);
  }
  SECTION("one key of the set held by another") {
    CHECK_FALSE(c.enter(7, 1));
    CHECK(c.enter_all(set, keylock::lock_mode::exclusive, 1) == 1);
    CHECK(c.violations() == 1);
  }
  SECTION("overlapping sets") {
    CHECK(c.enter_all(set, keylock::lock_mode::exclusive, 1) == 0);
    const std::vector<std::uint64_t> other{1, 5, 7, 9};
    CHECK(c.enter_all(other, keylock::lock_mode::exclusive, 1) == 2);
  }
  SECTION("shared sets overlap shared sets, not exclusive ones") {
    CHECK(c.enter_all(set, keylock::lock_mode::shared, 1) == 0);
    CHECK(c.enter_all(set, keylock::lock_mode::shared, 1) == 0);
    const std::vector<std::uint64_t> other{0, 2};
    CHECK(c.enter_all(other, keylock::lock_mode::exclusive, 1) == 1);
  }
}

TEST_CASE("the exclusion check sees no violation under a real read-write lock",
          "[bench][exclusion]") {
  exclusion_checker c(1);
  std::shared_mutex m;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20000; ++i) {
        if ((i + t) % 10 == 0) {
          std::unique_lock<std::shared_mutex> lock(m);
          c.enter(0, 1);
          c.leave(0);
        } else {
          std::shared_lock<std::shared_mutex> lock(m);
          c.enter_shared(0);
          c.leave_shared(0);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(c.violations() == 0);
}
