// Layout helpers around the attention kernels: the per-sequence metadata cuDNN's ragged (THD) attention
// reads, the conversion between its padded softmax statistics and the backend's lse[H,T], the rotary
// adjoint applied in place to dQ/dK, and the zero padding of odd head dims up to a tensor-core tile.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/backend.h"

namespace esm2::cuda {

// seqlen[b] = length of sequence b (0 for b >= S); off_c[b] = cu[min(b,S)]·C, off_3c[b] = cu[min(b,S)]·3C
// for b in [0, B] (element offsets of each sequence's first row in [T,C] and [T,3C] tensors).
void launch_varlen_meta(int32_t* seqlen, int32_t* off_c, int32_t* off_3c, const int32_t* cu, int S, int B, int64_t C,
                        cudaStream_t s);
// lse[h·T + cu[b] + i] = stats[(b·H + h)·sp + i] for i < len(b).
void launch_stats_to_lse(float* lse, const float* stats, const int32_t* cu, int S, int64_t T, int H, int sp,
                         cudaStream_t s);
// stats[(b·H + h)·sp + i] = lse[h·T + cu[b] + i] for i < len(b), 0 elsewhere (b < B, i < sp).
void launch_lse_to_stats(float* stats, const float* lse, const int32_t* cu, int S, int B, int64_t T, int H, int sp,
                         cudaStream_t s);
// dq, dk (bf16, the first two thirds of each dqkv[T,3C] row) ← rotᵀ(dq), rotᵀ(dk): turns gradients with
// respect to the rotated q, k into gradients with respect to the projections.
void launch_unrotate_dqk(void* dqkv, const AttentionShape& a, cudaStream_t s);

// Head-dim padding D → Dp (Dp > D, both even): a head's rotary halves [0, D/2) and [D/2, D) move to
// [0, D/2) and [Dp/2, Dp/2 + D/2), so the kernels' rotary pairs (d, d + Dp/2) stay the model's pairs;
// padded lanes are zero. `parts` heads blocks of H·D per row (3 for qkv, 1 for out).
void launch_pad_heads(void* dst, const void* src, int64_t T, int parts, int H, int D, int Dp, DType dt, cudaStream_t s);
void launch_unpad_heads(void* dst, const void* src, int64_t T, int parts, int H, int D, int Dp, DType dt,
                        cudaStream_t s);
// inv_p[Dp/2] = inv_freq[d] for d < D/2, 0 beyond (the padded lanes do not rotate).
void launch_pad_inv_freq(float* inv_p, const float* inv_freq, int D, int Dp, cudaStream_t s);

}  // namespace esm2::cuda
