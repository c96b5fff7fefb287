// Value-level arithmetic (exponent by frexp, rounding by nearbyint in double) rather than bit tricks,
// so that it shares no method with the GPU conversion it checks.
#include "core/fp8.h"

#include <cfloat>
#include <cmath>

namespace esm2 {

namespace {

struct Spec {
  int mant_bits;    // stored mantissa bits
  int bias;         // exponent bias
  int min_exp;      // exponent of the smallest normal (1 - bias)
  double max;       // largest finite value
  uint8_t nan;      // canonical NaN code (sign bit clear)
  bool has_inf;     // exponent all ones with mantissa 0 is ±inf (E5M2) rather than a finite value
};

Spec spec(Fp8Format f) {
  if (f == Fp8Format::E4M3) return {3, 7, -6, 448.0, 0x7F, false};
  return {2, 15, -14, 57344.0, 0x7F, true};
}

}  // namespace

float fp8_max(Fp8Format f) { return static_cast<float>(spec(f).max); }

uint8_t f32_to_fp8(float x, Fp8Format f) {
  const Spec s = spec(f);
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  if (std::isnan(x)) return static_cast<uint8_t>(sign | s.nan);
  double a = std::fabs(static_cast<double>(x));
  if (a >= s.max) a = s.max;  // saturate (also ±inf)
  // The grid step at a's binade: 2^(e - mant_bits), where 2^e <= a < 2^(e+1), and e >= min_exp
  // (below the smallest normal the step stays that of the subnormals).
  int e = s.min_exp;
  if (a > 0) {
    int fe = 0;
    std::frexp(a, &fe);  // a = m · 2^fe, m in [0.5, 1)
    e = fe - 1 > s.min_exp ? fe - 1 : s.min_exp;
  }
  const double step = std::ldexp(1.0, e - s.mant_bits);
  double q = std::nearbyint(a / step) * step;  // a/step is exact (power-of-two divisor); ties to even
  if (q > s.max) q = s.max;  // only reachable by rounding up from just below max's binade top
  // Encode q: subnormal (field 0) or normal (field e + bias) with the implicit leading one removed.
  if (q < std::ldexp(1.0, s.min_exp)) {
    const int m = static_cast<int>(q / std::ldexp(1.0, s.min_exp - s.mant_bits));
    return static_cast<uint8_t>(sign | m);
  }
  int qe = 0;
  std::frexp(q, &qe);
  qe -= 1;
  const int m = static_cast<int>(q / std::ldexp(1.0, qe - s.mant_bits)) - (1 << s.mant_bits);
  return static_cast<uint8_t>(sign | ((qe + s.bias) << s.mant_bits) | m);
}

float fp8_to_f32(uint8_t bits, Fp8Format f) {
  const Spec s = spec(f);
  const bool neg = (bits & 0x80) != 0;
  const int field = (bits & 0x7F) >> s.mant_bits;
  const int m = bits & ((1 << s.mant_bits) - 1);
  const int top = (1 << (7 - s.mant_bits)) - 1;  // all-ones exponent field
  double v = 0;
  if (field == top && s.has_inf) {
    v = m == 0 ? INFINITY : NAN;
  } else if (field == top && m == (1 << s.mant_bits) - 1) {
    v = NAN;  // E4M3: only S.1111.111 is NaN; the rest of its top binade is finite
  } else if (field == 0) {
    v = std::ldexp(static_cast<double>(m), s.min_exp - s.mant_bits);
  } else {
    v = std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -s.mant_bits), field - s.bias);
  }
  return static_cast<float>(neg ? -v : v);
}

float fp8_scale_for_amax(float amax, Fp8Format f) {
  if (!(amax > 0.0f) || !std::isfinite(amax)) return 1.0f;
  const float scale = fp8_max(f) / amax;
  return std::isfinite(scale) ? scale : FLT_MAX;
}

}  // namespace esm2
