// LayerNorm over the last dim of x[T,C], fp32 statistics whatever the activation dtype.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace esm2::cuda {

// out[T,C] (=) = (x - mean)·rstd·w + b; mean[T], rstd[T] saved.
void launch_layernorm_forward(void* out, float* mean, float* rstd, const void* x, const float* w, const float* b,
                              int64_t T, int64_t C, float eps, DType dt, cudaStream_t s);

size_t layernorm_backward_scratch_floats(int64_t T, int64_t C);
// dx[T,C] += ; dw[C] += ; db[C] += (deterministic column sums through scratch).
void launch_layernorm_backward(void* dx, float* dw, float* db, const void* dout, const void* x, const float* w,
                               const float* mean, const float* rstd, int64_t T, int64_t C, DType dt, float* scratch,
                               cudaStream_t s);

}  // namespace esm2::cuda
