// GELU (erf form or torch's tanh approximation) forward and backward, fp32 arithmetic.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "core/dtype.h"

namespace esm2::cuda {

// out[n] (=) = gelu(x); out may alias x.
void launch_gelu_forward(void* out, const void* x, size_t n, bool tanh_approx, DType dt, cudaStream_t s);
// dx[n] (=) = gelu'(x)·dout; dx may alias dout.
void launch_gelu_backward(void* dx, const void* dout, const void* x, size_t n, bool tanh_approx, DType dt,
                          cudaStream_t s);

}  // namespace esm2::cuda
