#include "core/philox.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

using namespace esm2;

// Known-answer test from the Random123 distribution (kat_vectors: philox4x32_10).
TEST(Philox, KnownAnswer) {
  Philox4 out = philox4x32({0, 0, 0, 0}, 0);
  EXPECT_EQ(out[0], 0x6627e8d5u);
  EXPECT_EQ(out[1], 0xe169c58du);
  EXPECT_EQ(out[2], 0xbc57ac4cu);
  EXPECT_EQ(out[3], 0x9b00dbd8u);
  out = philox4x32({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, 0xffffffffffffffffull);
  EXPECT_EQ(out[0], 0x408f276du);
  EXPECT_EQ(out[1], 0x41c83b0eu);
  EXPECT_EQ(out[2], 0xa20bc7c6u);
  EXPECT_EQ(out[3], 0x6d5451fdu);
}

TEST(Philox, UniformMomentsAndStreamsDiffer) {
  PhiloxStream s{42, RngStream::Masking, 7};
  double sum = 0, sum2 = 0;
  const int n = 1 << 20;
  for (int i = 0; i < n; ++i) {
    float u = philox_uniform(s.word(i));
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    sum2 += u * u;
  }
  EXPECT_NEAR(sum / n, 0.5, 2e-3);
  EXPECT_NEAR(sum2 / n - (sum / n) * (sum / n), 1.0 / 12, 2e-3);
  PhiloxStream t{42, RngStream::Crop, 7};
  EXPECT_NE(s.word(0), t.word(0));
}
