#include "backend/cuda/bias_backward.cuh"
#include "backend/cuda/col_reduce.cuh"
#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda {

__global__ void finish_col_partials(float* __restrict__ out, const float* __restrict__ partial, int64_t chunks,
                                    int64_t N) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= N) return;
  float s = 0;
  for (int64_t k = 0; k < chunks; ++k) s += partial[k * N + c];
  out[c] += s;
}

namespace {
template <class T>
__global__ void bias_partials_kernel(float* __restrict__ partial, const T* __restrict__ dy, int64_t M, int64_t N) {
  __shared__ float sm[8][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  const int64_t r0 = blockIdx.y * static_cast<int64_t>(kColRows);
  const int64_t r1 = min(M, r0 + kColRows);
  float acc = 0;
  if (c < N)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) acc += to_f(dy[r * N + c]);
  sm[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < N) {
    float s = 0;
    for (int w = 0; w < 8; ++w) s += sm[w][threadIdx.x];
    partial[blockIdx.y * N + c] = s;
  }
}
}  // namespace

size_t bias_backward_scratch_floats(int64_t M, int64_t N) { return static_cast<size_t>(col_chunks(M)) * N; }

void launch_bias_backward(float* db, const void* dy, DType dt, int64_t M, int64_t N, float* scratch,
                          cudaStream_t s) {
  if (M == 0 || N == 0) return;
  const int64_t chunks = col_chunks(M);
  dispatch_act(dt, [&](auto tag) {
    using T = decltype(tag);
    bias_partials_kernel<T><<<dim3((N + 31) / 32, chunks), dim3(32, 8), 0, s>>>(scratch, static_cast<const T*>(dy),
                                                                                M, N);
    ESM2_CUDA_CHECK_LAUNCH();
  });
  finish_col_partials<<<(N + 255) / 256, 256, 0, s>>>(db, scratch, chunks, N);
  ESM2_CUDA_CHECK_LAUNCH();
}

}  // namespace esm2::cuda
