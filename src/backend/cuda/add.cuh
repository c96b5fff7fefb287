// Residual add and in-place scaling of fp32 buffers.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "core/dtype.h"

namespace esm2::cuda {

// out[n] (=) = a[n] + b[n], activation dtype, fp32 sum rounded once; out may alias a or b.
void launch_add(void* out, const void* a, const void* b, size_t n, DType dt, cudaStream_t s);
// x[n] *= a (fp32).
void launch_scale(float* x, float a, size_t n, cudaStream_t s);

}  // namespace esm2::cuda
