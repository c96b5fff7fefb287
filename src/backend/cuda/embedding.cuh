// Token embedding lookup (fp32 table → activation dtype) and its deterministic gradient.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace esm2::cuda {

// out[T,C] (=) = wte[ids[t], :]
void launch_embedding_forward(void* out, const int32_t* ids, const float* wte, int64_t T, int64_t C, DType dt,
                              cudaStream_t s);

size_t embedding_backward_scratch_floats(int64_t T, int64_t C, int V);
// dwte[V,C] += Σ_{t: ids[t]=v} dout[t,:], summed in a fixed order (ids in [0, V)).
void launch_embedding_backward(float* dwte, const void* dout, const int32_t* ids, int64_t T, int64_t C, int V,
                               DType dt, float* scratch, cudaStream_t s);

// *out = max(ids[0..T)) (device int32), for sizing V when the caller does not know it.
void launch_max_id(int32_t* out, const int32_t* ids, int64_t T, cudaStream_t s);

}  // namespace esm2::cuda
