// Device helper of the GEMM algorithm pick (gemm_lt.cpp): whether two candidate outputs are bitwise equal.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

namespace esm2::cuda {

// *flag (=) 1 when the first `bytes` bytes of a and b differ anywhere, else left as it was (the caller
// zeroes it first).
void launch_bytes_differ(const void* a, const void* b, size_t bytes, unsigned* flag, cudaStream_t s);

}  // namespace esm2::cuda
