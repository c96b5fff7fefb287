// The per-element and per-tile pieces of the FP8 quantisers (fp8_quantize.cu), compiled for the host
// too: tests/backend/fp8_tiles_test.cpp runs them on the CPU, thread by thread and phase by phase,
// against the oracle core/fp8.h, so the indexing of the kernels is checked without a GPU.
// Needs only CUDA's headers (cuda_fp8.h and cuda_bf16.h convert on the host as on the device).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cfloat>
#include <cmath>
#include <cstdint>

namespace esm2::cuda::fp8 {

#define ESM2_FP8_HD __host__ __device__ __forceinline__

ESM2_FP8_HD float to_float(float x) { return x; }
ESM2_FP8_HD float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

ESM2_FP8_HD float max_of(bool e5m2) { return e5m2 ? 57344.0f : 448.0f; }

// core/fp8.h's fp8_scale_for_amax: an IEEE quotient on both sides (the build never uses fast math).
ESM2_FP8_HD float scale_for(float amax, float fmax) {
#ifdef __CUDA_ARCH__
  if (!(amax > 0.0f) || !isfinite(amax)) return 1.0f;
  const float s = __fdiv_rn(fmax, amax);
  return isfinite(s) ? s : FLT_MAX;
#else
  if (!(amax > 0.0f) || !std::isfinite(amax)) return 1.0f;
  const float s = fmax / amax;
  return std::isfinite(s) ? s : FLT_MAX;
#endif
}

ESM2_FP8_HD float inverse(float scale) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(1.0f, scale);
#else
  return 1.0f / scale;
#endif
}

// Two fp32 values → two FP8 codes (the first in the low byte), rounded to nearest even, saturating.
ESM2_FP8_HD unsigned cvt2(float a, float b, bool e5m2) {
  return static_cast<unsigned>(
      __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, e5m2 ? __NV_E5M2 : __NV_E4M3));
}
ESM2_FP8_HD uint8_t cvt1(float a, bool e5m2) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(a, __NV_SATFINITE, e5m2 ? __NV_E5M2 : __NV_E4M3));
}

// ---- the wide transposed quantiser: 64×64 tiles, 256 threads ----
// A warp reads one row of the tile as 32 pairs (128 B of bf16); a half-warp writes one row of qt as 16
// words of 4 codes (64 B). Preconditions: `cols` even, ldq a multiple of 4, x aligned to a pair, qt to a
// word.
constexpr int kWide = 64;
constexpr int kWideThreads = 256;

template <class T>
struct alignas(2 * sizeof(T)) Pair {
  T v[2];
};

// Phase 1 of thread t of the block at (r0, c0): tile[j][i] (=) = x[r0 + j, c0 + i] · scale, 0 outside x
// (rows at or beyond `rows` become the zero padding).
template <class T>
ESM2_FP8_HD void wide_load(float (*tile)[kWide + 1], const T* x, int64_t rows, int64_t cols, float scale,
                           int64_t r0, int64_t c0, int t) {
  const int pc = t % 32;
  for (int j = t / 32; j < kWide; j += kWideThreads / 32) {
    const int64_t r = r0 + j, c = c0 + 2 * pc;
    float a = 0.0f, b = 0.0f;
    if (r < rows && c < cols) {  // cols is even: c + 1 < cols too
      const Pair<T> p = *reinterpret_cast<const Pair<T>*>(x + r * cols + c);
      a = to_float(p.v[0]) * scale;
      b = to_float(p.v[1]) * scale;
    }
    tile[j][2 * pc] = a;
    tile[j][2 * pc + 1] = b;
  }
}

// Phase 2 (after the block's phase 1): qt[c0 + j, r0 + 4g .. r0 + 4g + 3] (=) = fp8(tile[4g .. 4g+3][j]),
// one 32-bit word per (j, g).
ESM2_FP8_HD void wide_store(uint8_t* qt, int64_t ldq, const float (*tile)[kWide + 1], int64_t cols, bool e5m2,
                            int64_t r0, int64_t c0, int t) {
  const int g = t % 16;
  for (int j = t / 16; j < kWide; j += kWideThreads / 16) {
    const int64_t c = c0 + j, r = r0 + 4 * g;
    if (c < cols && r < ldq) {  // ldq is a multiple of 4: the word lies wholly inside the row
      const unsigned lo = cvt2(tile[4 * g][j], tile[4 * g + 1][j], e5m2);
      const unsigned hi = cvt2(tile[4 * g + 2][j], tile[4 * g + 3][j], e5m2);
      *reinterpret_cast<unsigned*>(qt + c * ldq + r) = lo | (hi << 16);
    }
  }
}

// Phase 2' (after phase 1, beside wide_store; the "both" quantiser): the same tile row-wise,
// q[r0 + j, c0 + 4g .. c0 + 4g + 3] (=) = fp8(tile[j][4g .. 4g+3]) for r0 + j < rows, one 32-bit word per
// (j, g). Preconditions besides wide_load's: `cols` a multiple of 4, q aligned to a word.
ESM2_FP8_HD void wide_store_rows(uint8_t* q, const float (*tile)[kWide + 1], int64_t rows, int64_t cols, bool e5m2,
                                 int64_t r0, int64_t c0, int t) {
  const int g = t % 16;
  for (int j = t / 16; j < kWide; j += kWideThreads / 16) {
    const int64_t r = r0 + j, c = c0 + 4 * g;
    if (r < rows && c < cols) {  // cols is a multiple of 4: the word lies wholly inside the row
      const unsigned lo = cvt2(tile[j][4 * g], tile[j][4 * g + 1], e5m2);
      const unsigned hi = cvt2(tile[j][4 * g + 2], tile[j][4 * g + 3], e5m2);
      *reinterpret_cast<unsigned*>(q + r * cols + c) = lo | (hi << 16);
    }
  }
}

#undef ESM2_FP8_HD

}  // namespace esm2::cuda::fp8
