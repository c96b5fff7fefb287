// Bias gradient db[N] += Σ_rows dy[M,N], deterministic: fixed row chunks give partial sums that a second
// kernel adds in chunk order (no atomics).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace esm2::cuda {

// Floats of scratch launch_bias_backward needs for these shapes.
size_t bias_backward_scratch_floats(int64_t M, int64_t N);
void launch_bias_backward(float* db, const void* dy, DType dy_dtype, int64_t M, int64_t N, float* scratch,
                          cudaStream_t s);

}  // namespace esm2::cuda
