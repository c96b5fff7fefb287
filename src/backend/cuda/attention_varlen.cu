#include "backend/cuda/attention_varlen.cuh"
#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda {

namespace {

__device__ __forceinline__ int seq_of(const int32_t* cu, int S, int64_t t) {  // last s with cu[s] <= t
  int lo = 0, hi = S - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu[mid] <= t)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

__global__ void varlen_meta_kernel(int32_t* seqlen, int32_t* off_c, int32_t* off_3c, const int32_t* cu, int S, int B,
                                   int64_t C) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b > B) return;
  const int64_t start = cu[min(b, S)];
  off_c[b] = static_cast<int32_t>(start * C);
  off_3c[b] = static_cast<int32_t>(start * 3 * C);
  if (b < B) seqlen[b] = b < S ? cu[b + 1] - cu[b] : 0;
}

__global__ void stats_to_lse_kernel(float* lse, const float* stats, const int32_t* cu, int S, int64_t T, int H,
                                    int sp) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= T * H) return;
  const int64_t t = i % T;
  const int h = static_cast<int>(i / T);
  const int b = seq_of(cu, S, t);
  lse[i] = stats[(static_cast<int64_t>(b) * H + h) * sp + (t - cu[b])];
}

__global__ void lse_to_stats_kernel(float* stats, const float* lse, const int32_t* cu, int S, int B, int64_t T, int H,
                                    int sp) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<int64_t>(B) * H * sp) return;
  const int pos = static_cast<int>(i % sp);
  const int h = static_cast<int>((i / sp) % H);
  const int b = static_cast<int>(i / (static_cast<int64_t>(sp) * H));
  const int len = b < S ? cu[b + 1] - cu[b] : 0;
  stats[i] = pos < len ? lse[static_cast<int64_t>(h) * T + cu[b] + pos] : 0.0f;
}

// One thread per (token, head, rotary pair), q and k both: g = (y1, y2) ← (y1·c + y2·s, y2·c − y1·s).
__global__ void unrotate_dqk_kernel(bf16* dqkv, const int32_t* cu, int S, int64_t T, int H, int D,
                                    const float* inv_freq) {
  const int h2 = D / 2;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= T * H * h2) return;
  const int d = static_cast<int>(i % h2);
  const int h = static_cast<int>((i / h2) % H);
  const int64_t t = i / (static_cast<int64_t>(h2) * H);
  const int pos = static_cast<int>(t - cu[seq_of(cu, S, t)]);
  float sn, cs;
  sincosf(static_cast<float>(pos) * inv_freq[d], &sn, &cs);
  const int64_t C = static_cast<int64_t>(H) * D;
#pragma unroll
  for (int part = 0; part < 2; ++part) {
    bf16* g = dqkv + t * 3 * C + part * C + h * D;
    const float y1 = __bfloat162float(g[d]), y2 = __bfloat162float(g[d + h2]);
    g[d] = __float2bfloat16_rn(y1 * cs + y2 * sn);
    g[d + h2] = __float2bfloat16_rn(y2 * cs - y1 * sn);
  }
}

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

void launch_varlen_meta(int32_t* seqlen, int32_t* off_c, int32_t* off_3c, const int32_t* cu, int S, int B, int64_t C,
                        cudaStream_t s) {
  varlen_meta_kernel<<<blocks(B + 1), 256, 0, s>>>(seqlen, off_c, off_3c, cu, S, B, C);
  ESM2_CUDA_CHECK_LAUNCH();
}

void launch_stats_to_lse(float* lse, const float* stats, const int32_t* cu, int S, int64_t T, int H, int sp,
                         cudaStream_t s) {
  if (T * H == 0) return;
  stats_to_lse_kernel<<<blocks(T * H), 256, 0, s>>>(lse, stats, cu, S, T, H, sp);
  ESM2_CUDA_CHECK_LAUNCH();
}

void launch_lse_to_stats(float* stats, const float* lse, const int32_t* cu, int S, int B, int64_t T, int H, int sp,
                         cudaStream_t s) {
  const int64_t n = static_cast<int64_t>(B) * H * sp;
  if (n == 0) return;
  lse_to_stats_kernel<<<blocks(n), 256, 0, s>>>(stats, lse, cu, S, B, T, H, sp);
  ESM2_CUDA_CHECK_LAUNCH();
}

void launch_unrotate_dqk(void* dqkv, const AttentionShape& a, cudaStream_t s) {
  const int64_t n = a.T * a.H * (a.D / 2);
  if (n == 0) return;
  unrotate_dqk_kernel<<<blocks(n), 256, 0, s>>>(static_cast<bf16*>(dqkv), a.cu_seqlens, a.S, a.T, a.H, a.D,
                                                a.inv_freq);
  ESM2_CUDA_CHECK_LAUNCH();
}

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
