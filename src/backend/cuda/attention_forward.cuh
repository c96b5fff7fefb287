// Varlen (packed, cu_seqlens) rotary attention forward, flash-style: scores never reach device memory.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "backend/backend.h"

namespace esm2::cuda {

// Floats of scratch the forward needs (rotated q and k in bf16 for the tensor-core path; the padded
// copies for an odd head dim).
size_t attention_forward_scratch_floats(const AttentionShape& a, DType dt);
// out[T,C] (=), lse[H,T] (=) from qkv[T,3C]; semantics of Backend::attention_forward.
// bf16 with head dim 16/32/64/128: tensor cores (mma.sync); otherwise the fp32 CUDA-core kernel.
// Any other even head dim up to 128 runs at the next of those (attention_kernel_head_dim), its heads
// zero-padded on the way in and cut on the way out.
void launch_attention_forward(void* out, float* lse, const void* qkv, const AttentionShape& a, DType dt,
                              float* scratch, cudaStream_t s);
// True when launch_attention_forward/backward take the tensor-core path for this dtype and head dim.
bool attention_uses_mma(DType dt, int D);
// The head dim the kernels run at for head dim D: D itself where a kernel exists (16, 24, 32, 64, 128),
// else the next of 16/32/64/128 (zero padding). Throws for odd D or D > 128.
int attention_kernel_head_dim(DType dt, int D);

namespace attn_pad {
// Scratch of a padded call, in floats, rounded to 64 (256 bytes): n activations of dtype dt.
inline size_t act_floats(size_t n, DType dt) { return ((n * (dt == DType::BF16 ? 2 : 4) + 3) / 4 + 63) / 64 * 64; }
}  // namespace attn_pad

}  // namespace esm2::cuda
