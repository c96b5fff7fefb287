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

__global__ void sum_squares_partial(double* partial, const float* x, size_t n) {
  __shared__ double sm[32];
  double s = 0;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const double v = x[i];
    s += v * v;
  }
  const double r = block_sum_d(s, sm);
  if (threadIdx.x == 0) partial[blockIdx.x] = r;
}

__global__ void sum_squares_final(double* out, const double* partial, int nparts) {
  __shared__ double sm[32];
  double s = 0;
  for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += partial[i];
  const double r = block_sum_d(s, sm);
  if (threadIdx.x == 0) *out = r;
}
}  // namespace

void launch_sum_squares(double* out, const float* x, size_t n, double* partial, cudaStream_t s) {
  sum_squares_partial<<<kSumSquaresBlocks, 256, 0, s>>>(partial, x, n);
  ESM2_CUDA_CHECK_LAUNCH();
  sum_squares_final<<<1, 256, 0, s>>>(out, partial, kSumSquaresBlocks);
  ESM2_CUDA_CHECK_LAUNCH();
}

}  // namespace esm2::cuda
