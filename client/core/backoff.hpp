// Reconnect backoff: full jitter over the upper half of an exponentially growing delay.
//
// Pure: the caller supplies the random engine (seeded in tests). The first delay after reset()
// lies in [initial/2, initial]; each later one doubles the ceiling, up to `max` (a `max`
// below `initial` caps every delay after the first).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>

namespace keylock::detail {

class backoff {
 public:
  using milliseconds = std::chrono::milliseconds;

  backoff(milliseconds initial, milliseconds max) : initial_(initial), max_(max), ceiling_(initial) {}

  void reset() { ceiling_ = initial_; }

  template <class Engine>
  milliseconds next(Engine& engine) {
    const std::int64_t high = ceiling_.count();
    std::uniform_int_distribution<std::int64_t> jitter(high / 2, high);
    const milliseconds delay(jitter(engine));
    ceiling_ = std::min(ceiling_ * 2, max_);
    return delay;
  }

 private:
  milliseconds initial_;
  milliseconds max_;
  milliseconds ceiling_;
};

}  // namespace keylock::detail
