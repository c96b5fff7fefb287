// Fused AdamW (torch.optim.AdamW semantics, fp32 master weights and moments) that also refreshes the
// bf16 copy of the weights used by the GEMMs, so no separate cast pass follows the optimizer step.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backend/backend.h"

namespace esm2::cuda {

// p, g, m, v: [n] fp32. p_bf16: [n] or null.
void launch_adamw(float* p, const float* g, float* m, float* v, __nv_bfloat16* p_bf16, size_t n, const AdamWStep& st,
                  cudaStream_t s);

}  // namespace esm2::cuda
