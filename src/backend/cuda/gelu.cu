#include "backend/cuda/bias_backward.cuh"
#include "backend/cuda/col_reduce.cuh"
#include "backend/cuda/cuda_types.cuh"
#include "backend/cuda/gelu.cuh"

namespace esm2::cuda {

namespace {
constexpr float kSqrt1_2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
constexpr float kBeta = 0.79788456080286535588f;  // sqrt(2/pi)
constexpr float kKappa = 0.044715f;

template <bool kTanh>
__device__ __forceinline__ float gelu_f(float v) {
  if constexpr (kTanh)
    return 0.5f * v * (1.0f + tanhf(kBeta * (v + kKappa * v * v * v)));
  else
    return v * 0.5f * (1.0f + erff(v * kSqrt1_2));
}

template <bool kTanh>
__device__ __forceinline__ float gelu_grad(float v) {
  if constexpr (kTanh) {
    const float th = tanhf(kBeta * (v + kKappa * v * v * v));
    return 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * kBeta * (1.0f + 3.0f * kKappa * v * v);
  } else {
    const float cdf = 0.5f * (1.0f + erff(v * kSqrt1_2));
    const float pdf = kInvSqrt2Pi * expf(-0.5f * v * v);
    return cdf + v * pdf;
  }
}

// Element-wise over n elements: whole 16-byte packs when all pointers are aligned (kVec), then the
// remaining n % Pack16::kN elements one per thread. out may alias the inputs (same index read, then written).
template <class T, bool kTanh, bool kVec>
__global__ void gelu_forward_kernel(T* out, const T* x, size_t n) {
  using P = Pack16<T>;
  const size_t tid = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t done = 0;
  if constexpr (kVec) {
    const size_t np = n / P::kN;
    for (size_t i = tid; i < np; i += stride) {
      P a = reinterpret_cast<const P*>(x)[i];
#pragma unroll
      for (int k = 0; k < P::kN; ++k) a.v[k] = from_f<T>(gelu_f<kTanh>(to_f(a.v[k])));
      reinterpret_cast<P*>(out)[i] = a;
    }
    done = np * P::kN;
  }
  for (size_t i = done + tid; i < n; i += stride) out[i] = from_f<T>(gelu_f<kTanh>(to_f(x[i])));
}

template <class T, bool kTanh, bool kVec>
__global__ void gelu_backward_kernel(T* dx, const T* dout, const T* x, size_t n) {
  using P = Pack16<T>;
  const size_t tid = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t done = 0;
  if constexpr (kVec) {
    const size_t np = n / P::kN;
    for (size_t i = tid; i < np; i += stride) {
      const P a = reinterpret_cast<const P*>(x)[i];
      P d = reinterpret_cast<const P*>(dout)[i];
#pragma unroll
      for (int k = 0; k < P::kN; ++k) d.v[k] = from_f<T>(gelu_grad<kTanh>(to_f(a.v[k])) * to_f(d.v[k]));
      reinterpret_cast<P*>(dx)[i] = d;
    }
    done = np * P::kN;
  }
  for (size_t i = done + tid; i < n; i += stride) dx[i] = from_f<T>(gelu_grad<kTanh>(to_f(x[i])) * to_f(dout[i]));
}

// gelu_backward_kernel and bias_partials_vec_kernel in one pass: dx is written and its stored (rounded)
// values summed per column over the same partition and in the same order as bias_partials_vec_kernel
// (block: 32 packs of columns × kColRows rows, thread row y takes rows r0 + y, r0 + y + 8, ...), so the
// partials are bitwise those of the two separate kernels. Requires N % Pack16<T>::kN == 0 and aligned
// rows. dx may alias dout (each element is read, then written, by one thread).
template <class T, bool kTanh>
__global__ void __launch_bounds__(256) gelu_backward_bias_kernel(T* dx, float* __restrict__ partial, const T* dout,
                                                                 const T* __restrict__ x, int64_t M, int64_t N) {
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
      const P a = *reinterpret_cast<const P*>(x + r * N + c0);
      P d = *reinterpret_cast<const P*>(dout + r * N + c0);
#pragma unroll
      for (int k = 0; k < kN; ++k) {
        d.v[k] = from_f<T>(gelu_grad<kTanh>(to_f(a.v[k])) * to_f(d.v[k]));
        acc[k] += to_f(d.v[k]);
      }
      *reinterpret_cast<P*>(dx + r * N + c0) = d;
    }
#pragma unroll
  for (int k = 0; k < kN; ++k) sm[threadIdx.y][threadIdx.x * kN + k] = acc[k];
  __syncthreads();
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

size_t gelu_backward_bias_scratch_floats(int64_t M, int64_t N) { return bias_backward_scratch_floats(M, N); }

void launch_gelu_backward_bias(void* dx, float* db, const void* dout, const void* x, int64_t M, int64_t N,
                               bool tanh_approx, DType dt, float* scratch, cudaStream_t s) {
  if (M == 0 || N == 0) return;
  const int64_t chunks = col_chunks(M);
  bool fused = false;
  dispatch_act(dt, [&](auto tag) {
    using T = decltype(tag);
    constexpr int kN = Pack16<T>::kN;
    if (N % kN != 0 || !aligned16(dx, dout, x)) return;
    const dim3 grid((N + 32 * kN - 1) / (32 * kN), chunks);
    auto* d = static_cast<T*>(dx);
    const auto* g = static_cast<const T*>(dout);
    const auto* xi = static_cast<const T*>(x);
    if (tanh_approx) gelu_backward_bias_kernel<T, true><<<grid, dim3(32, 8), 0, s>>>(d, scratch, g, xi, M, N);
    else gelu_backward_bias_kernel<T, false><<<grid, dim3(32, 8), 0, s>>>(d, scratch, g, xi, M, N);
    ESM2_CUDA_CHECK_LAUNCH();
    fused = true;
  });
  if (!fused) {  // ragged or unaligned rows: the two separate ops (the same result)
    launch_gelu_backward(dx, dout, x, static_cast<size_t>(M) * static_cast<size_t>(N), tanh_approx, dt, s);
    launch_bias_backward(db, dx, dt, M, N, scratch, s);
    return;
  }
  finish_col_partials<<<(N + 255) / 256, 256, 0, s>>>(db, scratch, chunks, N);
  ESM2_CUDA_CHECK_LAUNCH();
}

void launch_gelu_forward(void* out, const void* x, size_t n, bool tanh_approx, DType dt, cudaStream_t s) {
  if (n == 0) return;
  const bool vec = aligned16(out, x);
  dispatch_act(dt, [&](auto tag) {
    using T = decltype(tag);
    const unsigned grid = grid_for(vec ? (n + Pack16<T>::kN - 1) / Pack16<T>::kN : n, 256);
    auto* o = static_cast<T*>(out);
    const auto* xi = static_cast<const T*>(x);
    if (tanh_approx) {
      if (vec) gelu_forward_kernel<T, true, true><<<grid, 256, 0, s>>>(o, xi, n);
      else gelu_forward_kernel<T, true, false><<<grid, 256, 0, s>>>(o, xi, n);
    } else {
      if (vec) gelu_forward_kernel<T, false, true><<<grid, 256, 0, s>>>(o, xi, n);
      else gelu_forward_kernel<T, false, false><<<grid, 256, 0, s>>>(o, xi, n);
    }
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

void launch_gelu_backward(void* dx, const void* dout, const void* x, size_t n, bool tanh_approx, DType dt,
                          cudaStream_t s) {
  if (n == 0) return;
  const bool vec = aligned16(dx, dout, x);
  dispatch_act(dt, [&](auto tag) {
    using T = decltype(tag);
    const unsigned grid = grid_for(vec ? (n + Pack16<T>::kN - 1) / Pack16<T>::kN : n, 256);
    auto* d = static_cast<T*>(dx);
    const auto* g = static_cast<const T*>(dout);
    const auto* xi = static_cast<const T*>(x);
    if (tanh_approx) {
      if (vec) gelu_backward_kernel<T, true, true><<<grid, 256, 0, s>>>(d, g, xi, n);
      else gelu_backward_kernel<T, true, false><<<grid, 256, 0, s>>>(d, g, xi, n);
    } else {
      if (vec) gelu_backward_kernel<T, false, true><<<grid, 256, 0, s>>>(d, g, xi, n);
      else gelu_backward_kernel<T, false, false><<<grid, 256, 0, s>>>(d, g, xi, n);
    }
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace esm2::cuda
