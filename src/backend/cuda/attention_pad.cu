#include "backend/cuda/attention_pad.cuh"
#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda {

namespace {

// Padded lane jp of a Dp-wide head ↔ lane of the D-wide head (−1: a padding lane).
__device__ __forceinline__ int unpadded_lane(int jp, int D, int Dp) {
  const int h = D / 2, hp = Dp / 2;
  if (jp < hp) return jp < h ? jp : -1;
  return jp - hp < h ? jp - hp + h : -1;
}

template <class E>
__global__ void pad_heads_kernel(E* dst, const E* src, int64_t T, int parts, int H, int D, int Dp) {
  const int64_t wp = static_cast<int64_t>(parts) * H * Dp;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= T * wp) return;
  const int64_t t = i / wp, c = i % wp;
  const int64_t head = c / Dp;  // part·H + h
  const int j = unpadded_lane(static_cast<int>(c % Dp), D, Dp);
  dst[i] = j >= 0 ? src[t * parts * H * D + head * D + j] : from_f<E>(0.0f);
}

template <class E>
__global__ void unpad_heads_kernel(E* dst, const E* src, int64_t T, int parts, int H, int D, int Dp) {
  const int64_t w = static_cast<int64_t>(parts) * H * D;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= T * w) return;
  const int64_t t = i / w, c = i % w;
  const int64_t head = c / D;
  const int j = static_cast<int>(c % D), h = D / 2, hp = Dp / 2;
  const int jp = j < h ? j : j - h + hp;
  dst[i] = src[t * parts * H * Dp + head * Dp + jp];
}

__global__ void pad_inv_freq_kernel(float* inv_p, const float* inv_freq, int D, int Dp) {
  const int d = threadIdx.x + blockIdx.x * blockDim.x;
  if (d < Dp / 2) inv_p[d] = d < D / 2 ? inv_freq[d] : 0.0f;
}

unsigned blocks(int64_t n) { return static_cast<unsigned>((n + 255) / 256); }

}  // namespace

void launch_pad_heads(void* dst, const void* src, int64_t T, int parts, int H, int D, int Dp, DType dt,
                      cudaStream_t s) {
  const int64_t n = T * parts * H * Dp;
  if (n == 0) return;
  dispatch_act(dt, [&](auto tag) {
    using E = decltype(tag);
    pad_heads_kernel<E><<<blocks(n), 256, 0, s>>>(static_cast<E*>(dst), static_cast<const E*>(src), T, parts, H, D,
                                                  Dp);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

void launch_unpad_heads(void* dst, const void* src, int64_t T, int parts, int H, int D, int Dp, DType dt,
                        cudaStream_t s) {
  const int64_t n = T * parts * H * D;
  if (n == 0) return;
  dispatch_act(dt, [&](auto tag) {
    using E = decltype(tag);
    unpad_heads_kernel<E><<<blocks(n), 256, 0, s>>>(static_cast<E*>(dst), static_cast<const E*>(src), T, parts, H, D,
                                                    Dp);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

void launch_pad_inv_freq(float* inv_p, const float* inv_freq, int D, int Dp, cudaStream_t s) {
  pad_inv_freq_kernel<<<1, 128, 0, s>>>(inv_p, inv_freq, D, Dp);
  ESM2_CUDA_CHECK_LAUNCH();
}

}  // namespace esm2::cuda
