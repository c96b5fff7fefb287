// FP8 (OCP / NVIDIA "E4M3" and "E5M2") as the fp8-mixed precision uses it, written as a plain-C++
// reference: the CPU oracle that the CUDA quantisers and FP8 GEMMs are tested against (docs/fp8.md).
//
// Formats (1 sign bit; bias 2^(E-1)-1):
//   E4M3: 4 exponent, 3 mantissa bits, no infinities, NaN = S.1111.111, largest finite 448,
//         smallest normal 2^-6, subnormal step 2^-9.
//   E5M2: 5 exponent, 2 mantissa bits, IEEE-like (inf = S.11111.00, NaN = S.11111.xx, xx != 0),
//         largest finite 57344, smallest normal 2^-14, subnormal step 2^-16.
// Conversion from fp32 rounds to nearest, ties to even, and saturates: any finite or infinite value
// beyond the largest finite one becomes ±max ("satfinite", what cvt.rn.satfinite does on the GPU);
// NaN stays NaN. Zero keeps its sign.
//
// Per-tensor current scaling: scale = max / amax of the tensor being quantised (1 when amax is 0 or
// not finite), q = fp8(x · scale) with the product rounded to fp32 first, and x ≈ q · (1 / scale).
#pragma once
#include <cstdint>

namespace esm2 {

enum class Fp8Format : uint8_t { E4M3, E5M2 };

// Largest finite value: 448 (E4M3) or 57344 (E5M2).
float fp8_max(Fp8Format f);
uint8_t f32_to_fp8(float x, Fp8Format f);
float fp8_to_f32(uint8_t bits, Fp8Format f);
// Quantise then dequantise one value: what survives an FP8 round trip.
inline float fp8_round(float x, Fp8Format f) { return fp8_to_f32(f32_to_fp8(x, f), f); }

// The current-scaling factor for a tensor whose largest magnitude is amax: fp32 max / amax, or 1 when
// amax is 0, negative, NaN or infinite; a quotient that overflows fp32 is clamped to FLT_MAX.
float fp8_scale_for_amax(float amax, Fp8Format f);

}  // namespace esm2
