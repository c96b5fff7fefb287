// The gradient is a scatter-add into few rows (V = 33 for ESM-2), so atomics would serialise on the same
// addresses and be non-deterministic. Instead each block owns 32 columns × a chunk of rows and keeps a
// per-warp [V][32] accumulator in shared memory (each lane owns its column: no conflicts); warps are
// combined in order, then chunks in order.
#include "backend/cuda/cuda_types.cuh"
#include "backend/cuda/embedding.cuh"

namespace esm2::cuda {

namespace {

constexpr int kEmbRows = 1024;   // rows per chunk
constexpr int kMaxSmemV = 48;    // 8 warps × V × 32 floats must fit in 48 KiB

template <class T>
__global__ void embedding_forward_kernel(T* out, const int32_t* ids, const float* wte, int64_t T_, int64_t C) {
  const size_t total = static_cast<size_t>(T_) * C;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / C, c = i % C;
    out[i] = from_f<T>(wte[static_cast<int64_t>(ids[t]) * C + c]);
  }
}

// partial[chunk][V][C]
template <class T>
__global__ void embedding_partials_kernel(float* __restrict__ partial, const T* __restrict__ dout,
                                          const int32_t* __restrict__ ids, int64_t T_, int64_t C, int V) {
  extern __shared__ float acc[];  // [8][V][32]
  const int lane = threadIdx.x, warp = threadIdx.y;
  float* mine = acc + warp * V * 32;
  for (int v = 0; v < V; ++v) mine[v * 32 + lane] = 0.0f;
  const int64_t c = blockIdx.x * 32 + lane;
  const int64_t r0 = blockIdx.y * static_cast<int64_t>(kEmbRows);
  const int64_t r1 = min(T_, r0 + kEmbRows);
  if (c < C)
    for (int64_t t = r0 + warp; t < r1; t += 8) mine[ids[t] * 32 + lane] += to_f(dout[t * C + c]);
  __syncthreads();
  for (int v = warp; v < V; v += 8) {
    float s = 0;
    for (int w = 0; w < 8; ++w) s += acc[(w * V + v) * 32 + lane];
    if (c < C) partial[(blockIdx.y * static_cast<int64_t>(V) + v) * C + c] = s;
  }
}

__global__ void embedding_finish_kernel(float* dwte, const float* partial, int64_t chunks, int64_t C, int V) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<int64_t>(V) * C) return;
  float s = 0;
  for (int64_t k = 0; k < chunks; ++k) s += partial[k * V * C + i];
  dwte[i] += s;
}

// Large vocabularies: one thread per (v, c) walks all rows in order.
template <class T>
__global__ void embedding_backward_simple(float* dwte, const T* dout, const int32_t* ids, int64_t T_, int64_t C,
                                          int V) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<int64_t>(V) * C) return;
  const int v = static_cast<int>(i / C);
  const int64_t c = i % C;
  float s = 0;
  for (int64_t t = 0; t < T_; ++t)
    if (ids[t] == v) s += to_f(dout[t * C + c]);
  dwte[i] += s;
}

__global__ void max_id_kernel(int32_t* out, const int32_t* ids, int64_t T_) {
  __shared__ int32_t sm[32];
  int32_t m = 0;
  for (int64_t t = threadIdx.x; t < T_; t += blockDim.x) m = max(m, ids[t]);
  for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) sm[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t r = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) r = max(r, sm[w]);
    *out = r;
  }
}

}  // namespace

void launch_embedding_forward(void* out, const int32_t* ids, const float* wte, int64_t T, int64_t C, DType dt,
                              cudaStream_t s) {
  if (T == 0) return;
  dispatch_act(dt, [&](auto tag) {
    using E = decltype(tag);
    embedding_forward_kernel<E><<<grid_for(static_cast<size_t>(T) * C, 256), 256, 0, s>>>(static_cast<E*>(out), ids,
                                                                                         wte, T, C);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

size_t embedding_backward_scratch_floats(int64_t T, int64_t C, int V) {
  if (V > kMaxSmemV) return 1;
  return static_cast<size_t>((T + kEmbRows - 1) / kEmbRows) * V * C;
}

void launch_embedding_backward(float* dwte, const void* dout, const int32_t* ids, int64_t T, int64_t C, int V,
                               DType dt, float* scratch, cudaStream_t s) {
  if (T == 0 || V == 0) return;
  const int64_t n = static_cast<int64_t>(V) * C;
  dispatch_act(dt, [&](auto tag) {
    using E = decltype(tag);
    if (V > kMaxSmemV) {
      embedding_backward_simple<E><<<(n + 255) / 256, 256, 0, s>>>(dwte, static_cast<const E*>(dout), ids, T, C, V);
      ESM2_CUDA_CHECK_LAUNCH();
      return;
    }
    const int64_t chunks = (T + kEmbRows - 1) / kEmbRows;
    const size_t smem = 8 * static_cast<size_t>(V) * 32 * sizeof(float);
    embedding_partials_kernel<E><<<dim3((C + 31) / 32, chunks), dim3(32, 8), smem, s>>>(
        scratch, static_cast<const E*>(dout), ids, T, C, V);
    ESM2_CUDA_CHECK_LAUNCH();
    embedding_finish_kernel<<<(n + 255) / 256, 256, 0, s>>>(dwte, scratch, chunks, C, V);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

void launch_max_id(int32_t* out, const int32_t* ids, int64_t T, cudaStream_t s) {
  max_id_kernel<<<1, 1024, 0, s>>>(out, ids, T);
  ESM2_CUDA_CHECK_LAUNCH();
}

}  // namespace esm2::cuda
