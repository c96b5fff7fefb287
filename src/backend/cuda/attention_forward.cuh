// Varlen (packed, cu_seqlens) rotary attention forward, flash-style: scores never reach device memory.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "backend/backend.h"

namespace esm2::cuda {

// Floats of scratch the forward needs (rotated q and k in bf16 for the tensor-core path).
size_t attention_forward_scratch_floats(const AttentionShape& a);
// out[T,C] (=), lse[H,T] (=) from qkv[T,3C]; semantics of Backend::attention_forward.
// bf16 with head dim 16/32/64/128: tensor cores (mma.sync); otherwise the fp32 CUDA-core kernel.
void launch_attention_forward(void* out, float* lse, const void* qkv, const AttentionShape& a, DType dt,
                              float* scratch, cudaStream_t s);
// True when launch_attention_forward/backward take the tensor-core path for this dtype and head dim.
bool attention_uses_mma(DType dt, int D);

}  // namespace esm2::cuda
