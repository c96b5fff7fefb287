// The FP8 quantisers' device code run on the CPU (backend/cuda/fp8_tiles.cuh is host+device): the scale,
// its inverse, and the wide transposed quantiser executed thread by thread and phase by phase as a block
// would, against the oracle core/fp8.h — every code, the zero padding of the rows, nothing written past
// the output. Needs CUDA's headers only (no GPU); skips in a build without CUDA.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "core/fp8.h"
#ifdef ESM2_HAVE_CUDA
#include "backend/cuda/fp8_tiles.cuh"
#endif

using namespace esm2;

#ifdef ESM2_HAVE_CUDA

namespace {

template <class T>
T from_float(float x);
template <>
float from_float<float>(float x) {
  return x;
}
template <>
__nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// x[rows, cols] quantised and transposed into qt[cols, ldq] by a simulated grid of wide blocks; with `q`,
// also row-wise into q[rows, cols] by the same blocks (the "both" kernel, wide_store_rows).
template <class T>
void run_wide(std::vector<uint8_t>& qt, int64_t ldq, const std::vector<T>& x, int64_t rows, int64_t cols, float scale,
              bool e5m2, std::vector<uint8_t>* q = nullptr) {
  using namespace esm2::cuda::fp8;
  static float tile[kWide][kWide + 1];
  for (int64_t r0 = 0; r0 < ldq; r0 += kWide)
    for (int64_t c0 = 0; c0 < cols; c0 += kWide) {
      for (int t = 0; t < kWideThreads; ++t) wide_load(tile, x.data(), rows, cols, scale, r0, c0, t);
      for (int t = 0; t < kWideThreads; ++t) wide_store(qt.data(), ldq, tile, cols, e5m2, r0, c0, t);
      if (q)
        for (int t = 0; t < kWideThreads; ++t) wide_store_rows(q->data(), tile, rows, cols, e5m2, r0, c0, t);
    }
}

template <class T>
void check_wide(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  const int64_t ldq = (rows + 15) / 16 * 16;  // the GEMM's token padding
  std::vector<T> x(static_cast<size_t>(rows * cols));
  std::vector<float> xf(x.size());
  float amax = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = from_float<T>(nd(g));
    xf[i] = cuda::fp8::to_float(x[i]);
    amax = std::max(amax, std::fabs(xf[i]));
  }
  for (Fp8Format f : {Fp8Format::E4M3, Fp8Format::E5M2}) {
    const bool e5m2 = f == Fp8Format::E5M2;
    const float scale = cuda::fp8::scale_for(amax, cuda::fp8::max_of(e5m2));
    ASSERT_EQ(scale, fp8_scale_for_amax(amax, f));
    constexpr size_t kGuard = 64;
    std::vector<uint8_t> qt(static_cast<size_t>(cols * ldq) + kGuard, 0xA5);
    // The row-wise copy (cols a multiple of 4 only, as the kernel requires): every code, nothing past it.
    const bool both = cols % 4 == 0;
    std::vector<uint8_t> q(both ? static_cast<size_t>(rows * cols) + kGuard : 0, 0xA5);
    run_wide(qt, ldq, x, rows, cols, scale, e5m2, both ? &q : nullptr);
    int bad = 0;
    for (int64_t c = 0; c < cols; ++c)
      for (int64_t r = 0; r < ldq; ++r) {
        const uint8_t want = r < rows ? f32_to_fp8(xf[r * cols + c] * scale, f) : 0;
        const uint8_t got = qt[c * ldq + r];
        if (got != want && bad++ < 5)
          ADD_FAILURE() << rows << "x" << cols << (e5m2 ? " E5M2" : " E4M3") << ": qt[" << c << "," << r << "] = "
                        << int(got) << ", oracle " << int(want);
      }
    for (size_t i = static_cast<size_t>(cols * ldq); i < qt.size(); ++i) ASSERT_EQ(qt[i], 0xA5) << "written past qt";
    if (both) {
      for (int64_t i = 0; i < rows * cols; ++i) {
        const uint8_t want = f32_to_fp8(xf[i] * scale, f);
        if (q[i] != want && bad++ < 10)
          ADD_FAILURE() << rows << "x" << cols << (e5m2 ? " E5M2" : " E4M3") << ": q[" << i / cols << "," << i % cols
                        << "] = " << int(q[i]) << ", oracle " << int(want);
      }
      for (size_t i = static_cast<size_t>(rows * cols); i < q.size(); ++i) ASSERT_EQ(q[i], 0xA5) << "written past q";
    }
    EXPECT_EQ(bad, 0);
  }
}

}  // namespace

TEST(Fp8Tiles, ScaleAndInverseAreTheOracles) {
  for (float amax : {0.0f, 1e-30f, 1e-40f, 0.37f, 1.0f, 448.0f, 3e5f, std::numeric_limits<float>::infinity(),
                     std::numeric_limits<float>::quiet_NaN()})
    for (Fp8Format f : {Fp8Format::E4M3, Fp8Format::E5M2}) {
      const float s = cuda::fp8::scale_for(amax, cuda::fp8::max_of(f == Fp8Format::E5M2));
      EXPECT_EQ(s, fp8_scale_for_amax(amax, f)) << amax;
      EXPECT_EQ(cuda::fp8::inverse(s), 1.0f / s);
    }
  EXPECT_EQ(cuda::fp8::max_of(false), fp8_max(Fp8Format::E4M3));
  EXPECT_EQ(cuda::fp8::max_of(true), fp8_max(Fp8Format::E5M2));
}

TEST(Fp8Tiles, Cvt2PacksTheFirstValueLow) {
  const unsigned w = cuda::fp8::cvt2(1.0f, -2.5f, false);
  EXPECT_EQ(w & 0xFFu, f32_to_fp8(1.0f, Fp8Format::E4M3));
  EXPECT_EQ(w >> 8, f32_to_fp8(-2.5f, Fp8Format::E4M3));
  EXPECT_EQ(cuda::fp8::cvt1(1e9f, true), f32_to_fp8(1e9f, Fp8Format::E5M2));  // saturates
}

// Also the row-wise copy the same blocks write for the output gradient (quantised once for dgrad and wgrad).
TEST(Fp8Tiles, WideTransposeMatchesOracleAndPadsWithZeros) {
  // Token counts below, at and across tile and padding boundaries; widths with partial tiles.
  check_wide<__nv_bfloat16>(200, 96, 1);
  check_wide<__nv_bfloat16>(37, 130, 2);
  check_wide<__nv_bfloat16>(64, 64, 3);
  check_wide<__nv_bfloat16>(1, 2, 4);
  check_wide<float>(192, 128, 5);  // weights: fp32 masters, rows already a multiple of 16
  check_wide<float>(129, 66, 6);
  check_wide<__nv_bfloat16>(37, 132, 7);  // row-wise too: a partial tile in both directions
  check_wide<__nv_bfloat16>(100, 20, 8);
}

#else

TEST(Fp8Tiles, NeedCudaHeaders) { GTEST_SKIP() << "built without CUDA: skipped"; }

#endif
