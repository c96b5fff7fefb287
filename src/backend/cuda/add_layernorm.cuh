// The pre-LN block's residual add fused with the LayerNorm that reads its result.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace esm2::cuda {

// sum[T,C] (=) = a + b rounded to the activation dtype; out (=) = LayerNorm(sum) with w, bias; mean[T],
// rstd[T] saved. Bitwise launch_add followed by launch_layernorm_forward. sum may alias a or b.
void launch_add_layernorm_forward(void* sum, void* out, float* mean, float* rstd, const void* a, const void* b,
                                  const float* w, const float* bias, int64_t T, int64_t C, float eps, DType dt,
                                  cudaStream_t s);

}  // namespace esm2::cuda
