// Varlen (packed, cu_seqlens) rotary attention forward, flash-style: scores never reach device memory.
#pragma once
#include <cuda_runtime.h>

#include "backend/backend.h"

namespace esm2::cuda {

// out[T,C] (=), lse[H,T] (=) from qkv[T,3C]; semantics of Backend::attention_forward.
void launch_attention_forward(void* out, float* lse, const void* qkv, const AttentionShape& a, DType dt,
                              cudaStream_t s);

}  // namespace esm2::cuda
