// SipHash-2-4 (Aumasson and Bernstein, 2012): a keyed 64-bit hash for hash tables whose keys
// come from clients. Without the 128-bit key an attacker cannot compute which keys collide, so
// crafted keys cannot pile up in one probe run (hash flooding).
//
// Header-only and allocation-free: the lock table hashes a key on every request.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace keylock {

namespace siphash_detail {

constexpr std::uint64_t rotl(std::uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

inline std::uint64_t load_le64(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];  // compilers fold this into one load
  return v;
}

struct state {
  std::uint64_t v0, v1, v2, v3;
  void round() {
    v0 += v1;
    v1 = rotl(v1, 13);
    v1 ^= v0;
    v0 = rotl(v0, 32);
    v2 += v3;
    v3 = rotl(v3, 16);
    v3 ^= v2;
    v0 += v3;
    v3 = rotl(v3, 21);
    v3 ^= v0;
    v2 += v1;
    v1 = rotl(v1, 17);
    v1 ^= v2;
    v2 = rotl(v2, 32);
  }
};

}  // namespace siphash_detail

// SipHash-2-4 of `data[0..len)` under the key (k0, k1); k0 is the key's first 8 bytes read
// little-endian, k1 the next 8.
inline std::uint64_t siphash24(std::uint64_t k0, std::uint64_t k1, const void* data,
                               std::size_t len) {
  using namespace siphash_detail;
  state s{k0 ^ 0x736f6d6570736575ull, k1 ^ 0x646f72616e646f6dull, k0 ^ 0x6c7967656e657261ull,
          k1 ^ 0x7465646279746573ull};
  const auto* p = static_cast<const unsigned char*>(data);
  const std::size_t full = len & ~std::size_t{7};
  for (std::size_t i = 0; i < full; i += 8) {
    std::uint64_t m = load_le64(p + i);
    s.v3 ^= m;
    s.round();
    s.round();
    s.v0 ^= m;
  }
  // The last block: the remaining 0..7 bytes, and the length's low byte at the top.
  unsigned char tail[8] = {};
  if (len > full) std::memcpy(tail, p + full, len - full);
  std::uint64_t b = load_le64(tail) | (static_cast<std::uint64_t>(len & 0xff) << 56);
  s.v3 ^= b;
  s.round();
  s.round();
  s.v0 ^= b;
  s.v2 ^= 0xff;
  s.round();
  s.round();
  s.round();
  s.round();
  return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}

}  // namespace keylock
