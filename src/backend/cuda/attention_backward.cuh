// Varlen rotary attention backward, recomputing the probabilities from qkv and the saved lse.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "backend/backend.h"

namespace esm2::cuda {

size_t attention_backward_scratch_floats(const AttentionShape& a, DType dt);
// dqkv[T,3C] (=) from dout[T,C]; semantics of Backend::attention_backward. scratch: Δ[H,T], rotated q
// and k, and for a padded head dim (see launch_attention_forward) the padded copies.
void launch_attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out, const float* lse,
                               const AttentionShape& a, DType dt, float* scratch, cudaStream_t s);

}  // namespace esm2::cuda
