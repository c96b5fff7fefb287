// Zero padding of odd head dims up to the next tensor-core tile (16/32/64/128) around the attention
// kernels (attention_forward.cu / attention_backward.cu), so every even head dim up to 128 the CPU
// backend accepts also runs on the GPU.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/backend.h"

namespace esm2::cuda {

// Head-dim padding D → Dp (Dp > D, both even): a head's rotary halves [0, D/2) and [D/2, D) move to
// [0, D/2) and [Dp/2, Dp/2 + D/2), so the kernels' rotary pairs (d, d + Dp/2) stay the model's pairs;
// padded lanes are zero. `parts` heads blocks of H·D per row (3 for qkv, 1 for out).
void launch_pad_heads(void* dst, const void* src, int64_t T, int parts, int H, int D, int Dp, DType dt, cudaStream_t s);
void launch_unpad_heads(void* dst, const void* src, int64_t T, int parts, int H, int D, int Dp, DType dt,
                        cudaStream_t s);
// inv_p[Dp/2] = inv_freq[d] for d < D/2, 0 beyond (the padded lanes do not rotate).
void launch_pad_inv_freq(float* inv_p, const float* inv_freq, int D, int Dp, cudaStream_t s);

}  // namespace esm2::cuda
