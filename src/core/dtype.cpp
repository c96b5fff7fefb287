#include "core/dtype.h"

#include <bit>
#include <cmath>

#include "core/error.h"

namespace esm2 {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: return 2;
    case DType::I8: case DType::U8: case DType::BOOL: return 1;
  }
  ESM2_ASSERT(false);
}

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
  }
  ESM2_ASSERT(false);
}

std::optional<DType> parse_dtype(std::string_view name) {
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I64, DType::I32, DType::I16,
                  DType::I8, DType::U8, DType::BOOL})
    if (dtype_name(t) == name) return t;
  return std::nullopt;
}

uint16_t f32_to_bf16(float x) {
  uint32_t u = std::bit_cast<uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to the even bf16 mantissa
  return static_cast<uint16_t>(u >> 16);
}

float bf16_to_f32(uint16_t x) { return std::bit_cast<float>(static_cast<uint32_t>(x) << 16); }

uint16_t f32_to_f16(float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;   // NaN → quiet NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // ≥ 65520 (halfway past 65504, ties up) → inf
  if (a < 0x38800000u) {
    // Below the smallest normal half (2^-14): the result is a multiple of 2^-24. Scaling by 2^24 is
    // exact and nearbyint rounds ties to even; 1024 lands exactly on the smallest normal's bits.
    const float scaled = std::bit_cast<float>(a) * 16777216.0f;
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  uint32_t r = a + 0x0fffu + ((a >> 13) & 1u);  // round the 23-bit mantissa to 10 bits, ties to even
  r -= 112u << 23;                              // exponent bias 127 → 15
  return sign | static_cast<uint16_t>(r >> 13);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float v = std::ldexp(static_cast<float>(m), -24);
    return sign ? -v : v;
  }
  if (e == 31) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));
  return std::bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
}

}  // namespace esm2
