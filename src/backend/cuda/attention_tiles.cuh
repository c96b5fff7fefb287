// Device building blocks shared by the attention forward and backward kernels (included by the two .cu
// files only): tile configuration per head dim, rotary applied while loading, and group reductions.
//
// A row (query or key) of D dims is owned by G consecutive threads; thread g holds dims g + G·k,
// k < DG. Interleaving keeps the G threads of a row on different shared-memory banks when they read the
// same tile row, and puts each rotary pair (d, d + D/2) in the same thread (local k and k + DG/2).
#pragma once
#include <type_traits>

#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda::attn {

template <int D>
struct Cfg {
  static_assert(D % 2 == 0, "rotary needs an even head dim");
  static constexpr int G = D <= 32 ? 1 : D / 32;  // threads per row
  static constexpr int DG = D / G;                // dims per thread
  static constexpr int RB = 64;                   // rows per block
  static constexpr int NT = RB * G;               // threads per block
  static constexpr int BK = D <= 64 ? 64 : 32;    // rows per shared tile (2 tiles ≤ 32 KiB)
  static_assert(DG % 2 == 0, "each thread must hold whole rotary pairs");
};

template <int G>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// r[DG] = this thread's slice of rot(row · scale), position pos.
template <int D, class T>
__device__ __forceinline__ void load_rot_slice(float* r, const T* row, int g, int pos, const float* inv_freq,
                                               float scale) {
  using C = Cfg<D>;
  constexpr int h2 = D / 2, half = C::DG / 2;
#pragma unroll
  for (int k = 0; k < half; ++k) {
    const int d = g + C::G * k;
    float sn, cs;
    sincosf(static_cast<float>(pos) * inv_freq[d], &sn, &cs);
    const float x1 = to_f(row[d]) * scale, x2 = to_f(row[d + h2]) * scale;
    r[k] = x1 * cs - x2 * sn;
    r[k + half] = x2 * cs + x1 * sn;
  }
}

template <int D, class T>
__device__ __forceinline__ void load_slice(float* r, const T* row, int g) {
  using C = Cfg<D>;
#pragma unroll
  for (int k = 0; k < C::DG; ++k) r[k] = to_f(row[g + C::G * k]);
}

// row (dims of this thread) = rotᵀ(y) · scale: the adjoint of load_rot_slice.
template <int D, class T>
__device__ __forceinline__ void store_unrot_slice(T* row, const float* y, int g, int pos, const float* inv_freq,
                                                  float scale) {
  using C = Cfg<D>;
  constexpr int h2 = D / 2, half = C::DG / 2;
#pragma unroll
  for (int k = 0; k < half; ++k) {
    const int d = g + C::G * k;
    float sn, cs;
    sincosf(static_cast<float>(pos) * inv_freq[d], &sn, &cs);
    row[d] = from_f<T>((y[k] * cs + y[k + half] * sn) * scale);
    row[d + h2] = from_f<T>((y[k + half] * cs - y[k] * sn) * scale);
  }
}

// tile[BK][D] (shared) = rot(rows · scale) for rows r0 .. r0+n-1 of the sequence (stride ld, column
// offset already applied to base); rows ≥ n are zero.
template <int D, int NT, int BK, class T>
__device__ __forceinline__ void load_rot_tile(float* tile, const T* base, int64_t ld, int r0, int n,
                                              const float* inv_freq, float scale) {
  constexpr int h2 = D / 2;
  for (int idx = threadIdx.x; idx < BK * h2; idx += NT) {
    const int j = idx / h2, d = idx % h2;
    float y1 = 0.0f, y2 = 0.0f;
    if (j < n) {
      const T* row = base + static_cast<int64_t>(r0 + j) * ld;
      float sn, cs;
      sincosf(static_cast<float>(r0 + j) * inv_freq[d], &sn, &cs);
      const float x1 = to_f(row[d]) * scale, x2 = to_f(row[d + h2]) * scale;
      y1 = x1 * cs - x2 * sn;
      y2 = x2 * cs + x1 * sn;
    }
    tile[j * D + d] = y1;
    tile[j * D + d + h2] = y2;
  }
}

template <int D, int NT, int BK, class T>
__device__ __forceinline__ void load_tile(float* tile, const T* base, int64_t ld, int r0, int n) {
  for (int idx = threadIdx.x; idx < BK * D; idx += NT) {
    const int j = idx / D, d = idx % D;
    tile[idx] = j < n ? to_f(base[static_cast<int64_t>(r0 + j) * ld + d]) : 0.0f;
  }
}

// Dot product of this thread's slice with tile row j, summed over the row's G threads.
template <int D>
__device__ __forceinline__ float dot_row(const float* x, const float* tile, int j, int g) {
  using C = Cfg<D>;
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < C::DG; ++k) s += x[k] * tile[j * D + g + C::G * k];
  return group_sum<C::G>(s);
}

template <int D>
__device__ __forceinline__ void axpy_row(float* acc, float a, const float* tile, int j, int g) {
  using C = Cfg<D>;
#pragma unroll
  for (int k = 0; k < C::DG; ++k) acc[k] += a * tile[j * D + g + C::G * k];
}

// Calls f(std::integral_constant<int, D>{}) for the supported head dims (the ESM-2 family's).
template <class F>
void dispatch_head_dim(int D, F&& f) {
  switch (D) {
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 24: f(std::integral_constant<int, 24>{}); break;
    case 32: f(std::integral_constant<int, 32>{}); break;
    case 64: f(std::integral_constant<int, 64>{}); break;
    case 128: f(std::integral_constant<int, 128>{}); break;
    default: throw_unsupported("attention: head dim must be 16, 24, 32, 64 or 128", __FILE__, __LINE__);
  }
}

}  // namespace esm2::cuda::attn
