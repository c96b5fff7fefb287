// Element type conversions between fp32 and the activation dtype (fp32 → bf16 rounds to nearest even).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "core/dtype.h"

namespace esm2::cuda {

// dst[n] (dst_dtype) = src[n] (src_dtype); F32 and BF16 in any combination.
void launch_convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t n, cudaStream_t s);

}  // namespace esm2::cuda
