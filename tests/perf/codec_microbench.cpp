// Microbenchmark of request decoding: ns and heap allocations per decode, for the fast path
// (decode_request) and the full parser alone (decode_request_full). Prints numbers; asserts
// nothing. Run: build/release/tests/codec_microbench
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string_view>

#include "codec_internal.hpp"

namespace {
std::size_t allocations = 0;
}

void* operator new(std::size_t n) {
  ++allocations;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

template <class Decode>
void run(const char* label, std::string_view frame, Decode decode) {
  keylock::request req;
  for (int i = 0; i < 1000; ++i) {
    if (decode(frame, req)) std::abort();  // warm-up; grows req's strings once
  }
  const std::size_t before = allocations;
  constexpr int calls = 1'000'000;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) {
    if (decode(frame, req)) std::abort();
  }
  const auto t1 = std::chrono::steady_clock::now();
  std::printf("%-28s %3zu bytes: %7.1f ns/decode, %.2f allocations/decode\n", label,
              frame.size(), std::chrono::duration<double, std::nano>(t1 - t0).count() / calls,
              static_cast<double>(allocations - before) / calls);
}

}  // namespace

int main() {
  constexpr std::string_view acquire =
      R"({"op":"acquire","id":12345,"key":"user:42:report","ttl_ms":30000})";
  constexpr std::string_view ping = R"({"op":"ping","id":1})";
  auto fast = [](std::string_view f, keylock::request& r) { return keylock::decode_request(f, r); };
  auto full = [](std::string_view f, keylock::request& r) {
    return keylock::decode_request_full(f, r);
  };
  for (int round = 0; round < 2; ++round) {
    run("acquire decode_request", acquire, fast);
    run("acquire decode_request_full", acquire, full);
    run("ping decode_request", ping, fast);
    run("ping decode_request_full", ping, full);
  }
}
