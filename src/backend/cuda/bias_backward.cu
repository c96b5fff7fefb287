#include "backend/cuda/bias_backward.cuh"
#include "backend/cuda/col_reduce.cuh"
#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda {

__global__ void finish_col_partials(float* __restrict__ out, const float* __restrict__ partial, int64_t chunks,
                                    int64_t N) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= N) return;
  // Eight chunks' loads in flight at a time (one thread per column has no other parallelism), still
  // added in chunk order.
  float s = 0;
  int64_t k = 0;
  for (; k + 8 <= chunks; k += 8) {
    float v[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) v[u] = partial[(k + u) * N + c];
#pragma unroll
    for (int u = 0; u < 8; ++u) s += v[u];
  }
  for (; k < chunks; ++k) s += partial[k * N + c];
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
// The same partition and summation order as bias_partials_kernel (bitwise the same sums), but each lane
// owns a 16-byte pack of consecutive columns, so a warp reads 512 contiguous bytes of a row per load.
// Requires N % Pack16<T>::kN == 0 and an aligned dy.
template <class T>
__global__ void __launch_bounds__(256) bias_partials_vec_kernel(float* __restrict__ partial, const T* __restrict__ dy,
                                                                int64_t M, int64_t N) {
  using P = Pack16<T>;
  constexpr int kN = P::kN;
  __shared__ float sm[8][32 * kN + 1];
  const int64_t c0 = (blockIdx.x * 32 + static_cast<int64_t>(threadIdx.x)) * kN;
  const int64_t r0 = blockIdx.y * static_cast<int64_t>(kColRows);
  const int64_t r1 = min(M, r0 + kColRows);
  float acc[kN];
#pragma unroll
  for (int k = 0; k < kN; ++k) acc[k] = 0;
  if (c0 < N)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
      const P p = *reinterpret_cast<const P*>(dy + r * N + c0);
#pragma unroll
      for (int k = 0; k < kN; ++k) acc[k] += to_f(p.v[k]);
    }
#pragma unroll
  for (int k = 0; k < kN; ++k) sm[threadIdx.y][threadIdx.x * kN + k] = acc[k];
  __syncthreads();
  // 256 threads finish 32·kN columns: thread j sums column j (and j + 256) over the 8 warps in order.
  const int tid = threadIdx.y * 32 + threadIdx.x;
  for (int j = tid; j < 32 * kN; j += 256) {
    const int64_t c = blockIdx.x * 32 * kN + j;
    if (c >= N) continue;
    float sum = 0;
    for (int w = 0; w < 8; ++w) sum += sm[w][j];
    partial[blockIdx.y * N + c] = sum;
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
    constexpr int kN = Pack16<T>::kN;
    if (N % kN == 0 && aligned16(dy))
      bias_partials_vec_kernel<T><<<dim3((N + 32 * kN - 1) / (32 * kN), chunks), dim3(32, 8), 0, s>>>(
          scratch, static_cast<const T*>(dy), M, N);
    else
      bias_partials_kernel<T><<<dim3((N + 31) / 32, chunks), dim3(32, 8), 0, s>>>(scratch, static_cast<const T*>(dy),
                                                                                  M, N);
    ESM2_CUDA_CHECK_LAUNCH();
  });
  finish_col_partials<<<(N + 255) / 256, 256, 0, s>>>(db, scratch, chunks, N);
  ESM2_CUDA_CHECK_LAUNCH();
}

}  // namespace esm2::cuda
