// A plain (CUDA-core, fp32-accumulating) GEMM for the shapes cuBLASLt declines, e.g. rows of 33 bf16
// elements (66-byte strides) in the LM head: correct for any stride, and only ever used on small shapes.
#pragma once
#include <cuda_runtime.h>

#include "backend/cuda/gemm_lt.h"

namespace esm2::cuda {

// Same contract as LtRunner::run (row-major, C = alpha·op(A)·op(B) + beta·C + bias).
void launch_gemm_fallback(const LtGemm& g, cudaStream_t s);

}  // namespace esm2::cuda
