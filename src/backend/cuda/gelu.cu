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
}  // namespace

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
