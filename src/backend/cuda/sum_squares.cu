#include "backend/cuda/cuda_types.cuh"
#include "backend/cuda/sum_squares.cuh"

namespace esm2::cuda {

namespace {
__device__ double block_sum_d(double v, double* sm) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) sm[threadIdx.x >> 5] = v;
  __syncthreads();
  double r = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) r += sm[w];
  return r;
}

__global__ void __launch_bounds__(kSumSquaresThreads)
    sum_squares_partial(double* __restrict__ partial, const float* __restrict__ x,
                        const SumSquaresRangeDesc* __restrict__ ranges, int count) {
  __shared__ double sm[32];
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (ranges[mid].first_block <= blockIdx.x) lo = mid;
    else hi = mid - 1;
  }
  const SumSquaresRangeDesc r = ranges[lo];
  const size_t b = blockIdx.x - r.first_block;
  const float* xr = x + r.offset;
  double s = 0;
  for (size_t i = b * kSumSquaresThreads + threadIdx.x; i < r.n;
       i += static_cast<size_t>(kSumSquaresBlocks) * kSumSquaresThreads) {
    const double v = xr[i];
    s = fma(v, v, s);
  }
  const double t = block_sum_d(s, sm);
  if (threadIdx.x == 0) partial[static_cast<size_t>(lo) * kSumSquaresBlocks + b] = t;
}

// One block per tensor: its kSumSquaresBlocks partials (zeros past `blocks`) in a fixed tree.
__global__ void __launch_bounds__(kSumSquaresThreads)
    sum_squares_final(double* __restrict__ out, const double* __restrict__ partial,
                      const SumSquaresRangeDesc* __restrict__ ranges) {
  __shared__ double sm[32];
  const uint32_t nb = ranges[blockIdx.x].blocks;
  const double* pr = partial + static_cast<size_t>(blockIdx.x) * kSumSquaresBlocks;
  double s = 0;
  for (int i = threadIdx.x; i < kSumSquaresBlocks; i += blockDim.x) s += i < static_cast<int>(nb) ? pr[i] : 0.0;
  const double t = block_sum_d(s, sm);
  if (threadIdx.x == 0) out[blockIdx.x] = t;
}
}  // namespace

void launch_sum_squares_ranges(double* out, const float* x, const SumSquaresRangeDesc* ranges, int count,
                               uint32_t total_blocks, double* partial, cudaStream_t s) {
  if (count == 0) return;
  if (total_blocks > 0) {
    sum_squares_partial<<<total_blocks, kSumSquaresThreads, 0, s>>>(partial, x, ranges, count);
    ESM2_CUDA_CHECK_LAUNCH();
  }
  sum_squares_final<<<count, kSumSquaresThreads, 0, s>>>(out, partial, ranges);
  ESM2_CUDA_CHECK_LAUNCH();
}

}  // namespace esm2::cuda
