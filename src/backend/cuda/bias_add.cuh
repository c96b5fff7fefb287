// C[M,N] (row stride ldc) = beta·C + bias[N]: the bias of a GEMM when cuBLASLt's bias epilogue is not
// available for a dtype combination, and the whole result of a GEMM with K = 0.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace esm2::cuda {

// bias may be null (then C = beta·C; beta == 0 writes zeros without reading C).
void launch_bias_add(void* C, DType c_dtype, const float* bias, float beta, int64_t M, int64_t N, int64_t ldc,
                     cudaStream_t s);

}  // namespace esm2::cuda
