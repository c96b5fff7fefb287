// GELU (erf form or torch's tanh approximation) forward and backward, fp32 arithmetic.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace esm2::cuda {

// out[n] (=) = gelu(x); out may alias x.
void launch_gelu_forward(void* out, const void* x, size_t n, bool tanh_approx, DType dt, cudaStream_t s);
// dx[n] (=) = gelu'(x)·dout; dx may alias dout.
void launch_gelu_backward(void* dx, const void* dout, const void* x, size_t n, bool tanh_approx, DType dt,
                          cudaStream_t s);

size_t gelu_backward_bias_scratch_floats(int64_t M, int64_t N);
// dx[M,N] (=) = gelu'(x)·dout and db[N] += Σ_rows dx in one pass: bitwise launch_gelu_backward followed by
// launch_bias_backward (deterministic column sums through scratch). dx may alias dout.
void launch_gelu_backward_bias(void* dx, float* db, const void* dout, const void* x, int64_t M, int64_t N,
                               bool tanh_approx, DType dt, float* scratch, cudaStream_t s);

}  // namespace esm2::cuda
