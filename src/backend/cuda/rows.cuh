// Row gather / scatter-add between the T token rows and the R rows that reach the LM head.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace esm2::cuda {

// out[R,C] (=) = x[idx[r], :]
void launch_gather_rows(void* out, const void* x, const int32_t* idx, int64_t R, int64_t C, DType dt, cudaStream_t s);
// dx[idx[r], :] += dout[r, :]; idx entries distinct, so no two threads write one element.
void launch_scatter_add_rows(void* dx, const void* dout, const int32_t* idx, int64_t R, int64_t C, DType dt,
                             cudaStream_t s);

}  // namespace esm2::cuda
