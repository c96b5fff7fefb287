// Σ x² in fp64 over a fixed partition of blocks (independent of the GPU), for the global gradient norm.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

namespace esm2::cuda {

constexpr int kSumSquaresBlocks = 512;
// *out (device double) = Σ x[i]²; partial: kSumSquaresBlocks doubles of scratch.
void launch_sum_squares(double* out, const float* x, size_t n, double* partial, cudaStream_t s);

}  // namespace esm2::cuda
