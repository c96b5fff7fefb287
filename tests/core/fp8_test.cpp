// The FP8 oracle (core/fp8.h) against values worked out by hand from the format definitions: the
// largest finite values, saturation, subnormals, NaN/inf, ties to even, and a round trip of every code.
#include "core/fp8.h"

#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <limits>

using namespace esm2;

namespace {
constexpr auto E4 = Fp8Format::E4M3;
constexpr auto E5 = Fp8Format::E5M2;
const float kInf = std::numeric_limits<float>::infinity();
const float kNan = std::numeric_limits<float>::quiet_NaN();
}  // namespace

TEST(Fp8Oracle, LargestFiniteAndSaturation) {
  EXPECT_EQ(fp8_max(E4), 448.0f);
  EXPECT_EQ(fp8_max(E5), 57344.0f);
  // E4M3 448 = 1.75 · 2^8: exponent field 8+7 = 1111, mantissa 110 → 0x7E (0x7F is NaN).
  EXPECT_EQ(f32_to_fp8(448.0f, E4), 0x7E);
  EXPECT_EQ(fp8_to_f32(0x7E, E4), 448.0f);
  EXPECT_EQ(f32_to_fp8(463.9f, E4), 0x7E);  // below the 448/480 midpoint
  EXPECT_EQ(f32_to_fp8(500.0f, E4), 0x7E);  // beyond the range: saturates, never NaN
  EXPECT_EQ(f32_to_fp8(kInf, E4), 0x7E);
  EXPECT_EQ(f32_to_fp8(-kInf, E4), 0xFE);
  EXPECT_EQ(f32_to_fp8(-1e30f, E4), 0xFE);
  // E5M2 57344 = 1.75 · 2^15: field 15+15 = 11110, mantissa 11 → 0x7B.
  EXPECT_EQ(f32_to_fp8(57344.0f, E5), 0x7B);
  EXPECT_EQ(fp8_to_f32(0x7B, E5), 57344.0f);
  EXPECT_EQ(f32_to_fp8(60000.0f, E5), 0x7B);
  EXPECT_EQ(f32_to_fp8(kInf, E5), 0x7B);  // satfinite: inf saturates too
  EXPECT_EQ(f32_to_fp8(-kInf, E5), 0xFB);
}

TEST(Fp8Oracle, NanAndInfinityCodes) {
  EXPECT_TRUE(std::isnan(fp8_to_f32(f32_to_fp8(kNan, E4), E4)));
  EXPECT_TRUE(std::isnan(fp8_to_f32(f32_to_fp8(kNan, E5), E5)));
  EXPECT_TRUE(std::isnan(fp8_to_f32(0x7F, E4)));
  EXPECT_TRUE(std::isnan(fp8_to_f32(0xFF, E4)));
  EXPECT_EQ(fp8_to_f32(0x7C, E5), kInf);  // E5M2 keeps IEEE infinities
  EXPECT_EQ(fp8_to_f32(0xFC, E5), -kInf);
  EXPECT_TRUE(std::isnan(fp8_to_f32(0x7D, E5)));
  EXPECT_TRUE(std::isnan(fp8_to_f32(0x7E, E5)));
  EXPECT_EQ(fp8_to_f32(0x78, E4), 256.0f);  // 1111.000 is finite in E4M3 (no infinities)
}

TEST(Fp8Oracle, NormalsSubnormalsAndZero) {
  EXPECT_EQ(f32_to_fp8(1.0f, E4), 0x38);  // field 7 = 0111
  EXPECT_EQ(f32_to_fp8(1.0f, E5), 0x3C);  // field 15 = 01111
  EXPECT_EQ(f32_to_fp8(-2.5f, E4), 0xC2);  // 1.25 · 2^1: field 1000, mantissa 010
  EXPECT_EQ(f32_to_fp8(0.015625f, E4), 0x08);            // 2^-6, smallest normal
  EXPECT_EQ(f32_to_fp8(std::ldexp(1.0f, -9), E4), 0x01);  // smallest subnormal
  EXPECT_EQ(fp8_to_f32(0x07, E4), 7.0f * std::ldexp(1.0f, -9));  // largest subnormal
  EXPECT_EQ(f32_to_fp8(std::ldexp(1.0f, -14), E5), 0x04);
  EXPECT_EQ(f32_to_fp8(std::ldexp(1.0f, -16), E5), 0x01);
  EXPECT_EQ(fp8_to_f32(0x03, E5), 3.0f * std::ldexp(1.0f, -16));
  EXPECT_EQ(f32_to_fp8(0.0f, E4), 0x00);
  EXPECT_EQ(f32_to_fp8(-0.0f, E4), 0x80);
  EXPECT_EQ(f32_to_fp8(-1e-10f, E5), 0x80);  // underflows to a zero that keeps the sign
  EXPECT_EQ(f32_to_fp8(std::ldexp(1.0f, -11), E4), 0x00);  // a quarter step rounds down
}

TEST(Fp8Oracle, TiesRoundToEven) {
  // E4M3 near 1: step 1/8. 1 + 1/16 is halfway between 1 (mantissa 000) and 1.125 (001): even → 1.
  EXPECT_EQ(fp8_round(1.0625f, E4), 1.0f);
  // 1.1875 is halfway between 1.125 (001) and 1.25 (010): even → 1.25.
  EXPECT_EQ(fp8_round(1.1875f, E4), 1.25f);
  EXPECT_EQ(fp8_round(1.19f, E4), 1.25f);  // not a tie: nearest
  EXPECT_EQ(fp8_round(1.06f, E4), 1.0f);
  EXPECT_EQ(fp8_round(17.0f, E4), 16.0f);  // step 2 in [16, 32): 17 ties to 16 (000), 19 to 20 (010)
  EXPECT_EQ(fp8_round(19.0f, E4), 20.0f);
  // Subnormal ties: half the smallest subnormal goes to 0, one and a half to 2 steps.
  EXPECT_EQ(fp8_round(std::ldexp(1.0f, -10), E4), 0.0f);
  EXPECT_EQ(fp8_round(3.0f * std::ldexp(1.0f, -10), E4), std::ldexp(1.0f, -8));
  // E5M2 near 1: step 1/4. 1.125 ties to 1 (00); 1.375 ties to 1.5 (10); 3.5 (step 1/2 in [2,4)) to 4.
  EXPECT_EQ(fp8_round(1.125f, E5), 1.0f);
  EXPECT_EQ(fp8_round(1.375f, E5), 1.5f);
  EXPECT_EQ(fp8_round(3.75f, E5), 4.0f);
  EXPECT_EQ(fp8_round(3.25f, E5), 3.0f);
  // E4M3 step 32 in [256, 448]: 272 ties to 256 (000), 304 to 320 (010).
  EXPECT_EQ(fp8_round(272.0f, E4), 256.0f);
  EXPECT_EQ(fp8_round(304.0f, E4), 320.0f);
  // Just below the top: 440 is nearer 448 than 416.
  EXPECT_EQ(fp8_round(440.0f, E4), 448.0f);
}

TEST(Fp8Oracle, EveryCodeRoundTripsAndValuesIncrease) {
  for (Fp8Format f : {E4, E5}) {
    float prev = -1.0f;
    for (int c = 0; c < 256; ++c) {
      const auto code = static_cast<uint8_t>(c);
      const float v = fp8_to_f32(code, f);
      if (std::isnan(v) || std::isinf(v)) continue;
      if (c == 0x80) {
        EXPECT_EQ(f32_to_fp8(v, f), 0x80);
        continue;
      }
      EXPECT_EQ(f32_to_fp8(v, f), code) << "code " << c;
      if (c < 0x80) {
        EXPECT_GT(v, prev) << "code " << c;
        prev = v;
        EXPECT_EQ(fp8_to_f32(static_cast<uint8_t>(c | 0x80), f), -v);
      }
    }
    EXPECT_EQ(prev, fp8_max(f));
  }
}

TEST(Fp8Oracle, CurrentScalingFactor) {
  EXPECT_EQ(fp8_scale_for_amax(2.0f, E4), 224.0f);
  EXPECT_EQ(fp8_scale_for_amax(448.0f, E4), 1.0f);
  EXPECT_EQ(fp8_scale_for_amax(0.5f, E5), 114688.0f);
  EXPECT_EQ(fp8_scale_for_amax(0.0f, E4), 1.0f);
  EXPECT_EQ(fp8_scale_for_amax(kNan, E4), 1.0f);
  EXPECT_EQ(fp8_scale_for_amax(kInf, E5), 1.0f);
  EXPECT_EQ(fp8_scale_for_amax(1e-40f, E5), FLT_MAX);  // the quotient overflows fp32
  // With the scale, the tensor's largest value lands exactly on the format's largest finite value.
  const float amax = 3.7f;
  EXPECT_EQ(fp8_round(amax * fp8_scale_for_amax(amax, E4), E4), 448.0f);
}
