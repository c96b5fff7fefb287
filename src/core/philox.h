// Philox4x32-10 counter-based RNG (Salmon et al., SC'11). Counter-based so that any random
// draw of the run (a cluster member, a crop offset, a mask decision) is a pure function of
// (seed, stream, indices): data of any step on any rank is recomputable without saved state.
#pragma once
#include <array>
#include <cstdint>

namespace esm2 {

using Philox4 = std::array<uint32_t, 4>;

inline Philox4 philox4x32(Philox4 ctr, uint64_t key64) {
  uint32_t k0 = static_cast<uint32_t>(key64), k1 = static_cast<uint32_t>(key64 >> 32);
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    uint64_t p0 = static_cast<uint64_t>(M0) * ctr[0];
    uint64_t p1 = static_cast<uint64_t>(M1) * ctr[2];
    uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    ctr = {hi1 ^ ctr[1] ^ k0, lo1, hi0 ^ ctr[3] ^ k1, lo0};
    k0 += W0;
    k1 += W1;
  }
  return ctr;
}

// Uniform float in [0,1) from 24 random bits (exactly representable, never 1.0).
inline float philox_uniform(uint32_t bits) { return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f); }

// Unbiased-enough integer in [0, n) for n << 2^32 (Lemire's multiply-shift; bias < n/2^32).
inline uint32_t philox_below(uint32_t bits, uint32_t n) {
  return static_cast<uint32_t>((static_cast<uint64_t>(bits) * n) >> 32);
}

// Streams separate the purposes of draws so they never share counters.
enum class RngStream : uint32_t {
  ClusterPermutation = 1,
  MemberChoice = 2,
  Crop = 3,
  Masking = 4,
  PackingOrder = 5,
  Init = 6,
  Dropout = 7,
};

// A stateless generator over (seed, stream, a, b): draw(i) gives the i-th block of 4 words.
struct PhiloxStream {
  uint64_t seed;
  RngStream stream;
  uint64_t a = 0;  // e.g. epoch or sample index
  Philox4 draw(uint64_t i) const {
    Philox4 ctr{static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), static_cast<uint32_t>(a),
                static_cast<uint32_t>(a >> 32) ^ (static_cast<uint32_t>(stream) << 24)};
    return philox4x32(ctr, seed);
  }
  uint32_t word(uint64_t j) const { return draw(j >> 2)[j & 3]; }
};

}  // namespace esm2
