// Σ x² in fp64 over many tensors of a flat buffer in one pass, for the global gradient norm. Each tensor
// is summed over a fixed partition (kSumSquaresBlocks blocks of 256 threads, grid-stride; the blocks past
// the tensor's end contribute exact zeros and are not launched), so a tensor's sum does not depend on
// the GPU nor on which other tensors share the launch; no atomics.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace esm2::cuda {

constexpr int kSumSquaresBlocks = 512;
constexpr int kSumSquaresThreads = 256;

// One tensor, in device memory: blocks first_block .. first_block + blocks - 1 of the launch sum it.
struct SumSquaresRangeDesc {
  size_t offset = 0, n = 0;
  uint32_t first_block = 0;
  uint32_t blocks = 0;  // sum_squares_blocks(n)
};

inline uint32_t sum_squares_blocks(size_t n) {
  const size_t b = (n + kSumSquaresThreads - 1) / kSumSquaresThreads;
  return static_cast<uint32_t>(b < kSumSquaresBlocks ? b : kSumSquaresBlocks);
}

// out[r] (device doubles) = Σ x[offset_r + i]², i < n_r. partial: count · kSumSquaresBlocks doubles.
void launch_sum_squares_ranges(double* out, const float* x, const SumSquaresRangeDesc* ranges, int count,
                               uint32_t total_blocks, double* partial, cudaStream_t s);

}  // namespace esm2::cuda
