// Vectorisable fp32 exp for the softmax loops (the scalar libm call was ~10% of a CPU training step).
// Cephes expf: range reduction by ln 2 in two parts, degree-6 polynomial, exponent by bit
// construction. Relative error ~2e-7 (≈ 1–2 ulp) for x in [-87, 88]; below that it returns 0 (no
// denormals), above +inf. Meant for |x| < 1e9 (callers pass x <= 0: shifted softmax scores, -x²/2);
// NaN in, NaN out.
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace esm2::cpu {

inline float exp_approx(float x) {
  // round to nearest by the 1.5·2^23 trick (floor() and float clamps keep GCC from vectorising)
  const float t = x * 1.44269504088896341f + 12582912.0f;
  const float fx = t - 12582912.0f;
  x -= fx * 0.693359375f;
  x -= fx * -2.12194440e-4f;
  const float z = x * x;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x + 1.0f;
  // The exponent is clamped in the integer domain (branch-free, so the loop vectorises):
  // n <= -127 builds +0.0, n >= 128 builds +inf. n = fx read from t's mantissa (t = 1.5·2^23 + fx
  // exactly): the same integer as static_cast<int32_t>(fx), which is undefined for a NaN x (a NaN
  // weight or activation must give NaN, not undefined behaviour; ±inf x gives NaN too).
  int32_t n = std::bit_cast<int32_t>(t) - 0x4B400000;
  n = n < -127 ? -127 : n;
  n = n > 128 ? 128 : n;
  return y * std::bit_cast<float>((n + 127) << 23);
}

// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7 exactly, <= 6e-7 evaluated in fp32), the formula
// PyTorch's own vectorised CPU kernels use for erf/GELU; branch-free so GELU loops vectorise
// (libm erff was ~5% of a CPU training step).
inline float erf_approx(float x) {
  const float ax = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  const float poly =
      ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
  return std::copysign(1.0f - poly * exp_approx(-ax * ax), x);
}

// x[i] = exp(x[i] - shift), in place.
inline void exp_shifted(float* __restrict x, int64_t n, float shift) {
  for (int64_t i = 0; i < n; ++i) x[i] = exp_approx(x[i] - shift);
}

// Max and sum over 8 fixed lanes, then the lanes in order: vectorisable without -ffast-math and the
// same summation order on every run.
inline float row_max(const float* x, int64_t n) {
  float lane[8];
  for (int k = 0; k < 8; ++k) lane[k] = -INFINITY;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) lane[k] = lane[k] < x[i + k] ? x[i + k] : lane[k];
  float m = -INFINITY;
  for (int k = 0; k < 8; ++k) m = m < lane[k] ? lane[k] : m;
  for (; i < n; ++i) m = m < x[i] ? x[i] : m;
  return m;
}

inline float row_sum(const float* x, int64_t n) {
  float lane[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) lane[k] += x[i + k];
  float s = 0;
  for (int k = 0; k < 8; ++k) s += lane[k];
  for (; i < n; ++i) s += x[i];
  return s;
}

}  // namespace esm2::cpu
