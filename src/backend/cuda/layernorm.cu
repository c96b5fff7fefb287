// One warp per row for the row-wise parts (statistics, dx); the weight/bias gradients are column sums
// over fixed row chunks (col_reduce.cuh) so that they are deterministic.
#include "backend/cuda/col_reduce.cuh"
#include "backend/cuda/cuda_types.cuh"
#include "backend/cuda/layernorm.cuh"

namespace esm2::cuda {

namespace {

template <class T>
__global__ void layernorm_forward_kernel(T* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                                         const T* __restrict__ x, const float* __restrict__ w,
                                         const float* __restrict__ b, int64_t T_, int64_t C, float eps) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.y) + threadIdx.y;
  if (t >= T_) return;
  const int lane = threadIdx.x;
  const T* xr = x + t * C;
  float s = 0;
  for (int64_t j = lane; j < C; j += 32) s += to_f(xr[j]);
  const float m = warp_sum(s) / static_cast<float>(C);
  float v = 0;
  for (int64_t j = lane; j < C; j += 32) {
    const float d = to_f(xr[j]) - m;
    v += d * d;
  }
  const float r = rsqrtf(warp_sum(v) / static_cast<float>(C) + eps);
  T* o = out + t * C;
  for (int64_t j = lane; j < C; j += 32) o[j] = from_f<T>((to_f(xr[j]) - m) * r * w[j] + b[j]);
  if (lane == 0) {
    mean[t] = m;
    rstd[t] = r;
  }
}

template <class T>
__global__ void layernorm_dx_kernel(T* __restrict__ dx, const T* __restrict__ dout, const T* __restrict__ x,
                                    const float* __restrict__ w, const float* __restrict__ mean,
                                    const float* __restrict__ rstd, int64_t T_, int64_t C) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.y) + threadIdx.y;
  if (t >= T_) return;
  const int lane = threadIdx.x;
  const T* xr = x + t * C;
  const T* dr = dout + t * C;
  const float m = mean[t], r = rstd[t];
  float sdn = 0, sdnx = 0;
  for (int64_t j = lane; j < C; j += 32) {
    const float dn = to_f(dr[j]) * w[j];
    sdn += dn;
    sdnx += dn * (to_f(xr[j]) - m) * r;
  }
  const float mdn = warp_sum(sdn) / static_cast<float>(C), mdnx = warp_sum(sdnx) / static_cast<float>(C);
  T* dxr = dx + t * C;
  for (int64_t j = lane; j < C; j += 32) {
    const float xhat = (to_f(xr[j]) - m) * r;
    dxr[j] = from_f<T>(to_f(dxr[j]) + r * (to_f(dr[j]) * w[j] - mdn - xhat * mdnx));
  }
}

// partial[2][chunks][C]: Σ dout·xhat and Σ dout over each chunk of rows.
template <class T>
__global__ void layernorm_dwdb_partials(float* __restrict__ pw, float* __restrict__ pb, const T* __restrict__ dout,
                                        const T* __restrict__ x, const float* __restrict__ mean,
                                        const float* __restrict__ rstd, int64_t T_, int64_t C) {
  __shared__ float sw[8][33], sb[8][33];
  const int64_t c = blockIdx.x * 32 + threadIdx.x;
  const int64_t r0 = blockIdx.y * static_cast<int64_t>(kColRows);
  const int64_t r1 = min(T_, r0 + kColRows);
  float aw = 0, ab = 0;
  if (c < C)
    for (int64_t t = r0 + threadIdx.y; t < r1; t += 8) {
      const float d = to_f(dout[t * C + c]);
      aw += d * (to_f(x[t * C + c]) - mean[t]) * rstd[t];
      ab += d;
    }
  sw[threadIdx.y][threadIdx.x] = aw;
  sb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float a = 0, bb = 0;
    for (int k = 0; k < 8; ++k) {
      a += sw[k][threadIdx.x];
      bb += sb[k][threadIdx.x];
    }
    pw[blockIdx.y * C + c] = a;
    pb[blockIdx.y * C + c] = bb;
  }
}

}  // namespace

void launch_layernorm_forward(void* out, float* mean, float* rstd, const void* x, const float* w, const float* b,
                              int64_t T, int64_t C, float eps, DType dt, cudaStream_t s) {
  if (T == 0) return;
  dispatch_act(dt, [&](auto tag) {
    using E = decltype(tag);
    layernorm_forward_kernel<E><<<(T + 7) / 8, dim3(32, 8), 0, s>>>(static_cast<E*>(out), mean, rstd,
                                                                    static_cast<const E*>(x), w, b, T, C, eps);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

size_t layernorm_backward_scratch_floats(int64_t T, int64_t C) { return 2 * static_cast<size_t>(col_chunks(T)) * C; }

void launch_layernorm_backward(void* dx, float* dw, float* db, const void* dout, const void* x, const float* w,
                               const float* mean, const float* rstd, int64_t T, int64_t C, DType dt, float* scratch,
                               cudaStream_t s) {
  if (T == 0) return;
  const int64_t chunks = col_chunks(T);
  float* pw = scratch;
  float* pb = scratch + chunks * C;
  dispatch_act(dt, [&](auto tag) {
    using E = decltype(tag);
    layernorm_dx_kernel<E><<<(T + 7) / 8, dim3(32, 8), 0, s>>>(static_cast<E*>(dx), static_cast<const E*>(dout),
                                                               static_cast<const E*>(x), w, mean, rstd, T, C);
    ESM2_CUDA_CHECK_LAUNCH();
    layernorm_dwdb_partials<E><<<dim3((C + 31) / 32, chunks), dim3(32, 8), 0, s>>>(
        pw, pb, static_cast<const E*>(dout), static_cast<const E*>(x), mean, rstd, T, C);
    ESM2_CUDA_CHECK_LAUNCH();
  });
  finish_col_partials<<<(C + 255) / 256, 256, 0, s>>>(dw, pw, chunks, C);
  ESM2_CUDA_CHECK_LAUNCH();
  finish_col_partials<<<(C + 255) / 256, 256, 0, s>>>(db, pb, chunks, C);
  ESM2_CUDA_CHECK_LAUNCH();
}

}  // namespace esm2::cuda
