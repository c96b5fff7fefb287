#include "backend/cuda/cuda_types.cuh"
#include "backend/cuda/gelu.cuh"

namespace esm2::cuda {

namespace {
constexpr float kSqrt1_2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
constexpr float kBeta = 0.79788456080286535588f;  // sqrt(2/pi)
constexpr float kKappa = 0.044715f;

template <class T, bool kTanh>
__global__ void gelu_forward_kernel(T* out, const T* x, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float v = to_f(x[i]);
    float y;
    if constexpr (kTanh)
      y = 0.5f * v * (1.0f + tanhf(kBeta * (v + kKappa * v * v * v)));
    else
      y = v * 0.5f * (1.0f + erff(v * kSqrt1_2));
    out[i] = from_f<T>(y);
  }
}

template <class T, bool kTanh>
__global__ void gelu_backward_kernel(T* dx, const T* dout, const T* x, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float v = to_f(x[i]);
    float d;
    if constexpr (kTanh) {
      const float th = tanhf(kBeta * (v + kKappa * v * v * v));
      d = 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * kBeta * (1.0f + 3.0f * kKappa * v * v);
    } else {
      const float cdf = 0.5f * (1.0f + erff(v * kSqrt1_2));
      const float pdf = kInvSqrt2Pi * expf(-0.5f * v * v);
      d = cdf + v * pdf;
    }
    dx[i] = from_f<T>(d * to_f(dout[i]));
  }
}
}  // namespace

void launch_gelu_forward(void* out, const void* x, size_t n, bool tanh_approx, DType dt, cudaStream_t s) {
  if (n == 0) return;
  dispatch_act(dt, [&](auto tag) {
    using T = decltype(tag);
    if (tanh_approx)
      gelu_forward_kernel<T, true><<<grid_for(n, 256), 256, 0, s>>>(static_cast<T*>(out), static_cast<const T*>(x), n);
    else
      gelu_forward_kernel<T, false><<<grid_for(n, 256), 256, 0, s>>>(static_cast<T*>(out), static_cast<const T*>(x), n);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

void launch_gelu_backward(void* dx, const void* dout, const void* x, size_t n, bool tanh_approx, DType dt,
                          cudaStream_t s) {
  if (n == 0) return;
  dispatch_act(dt, [&](auto tag) {
    using T = decltype(tag);
    if (tanh_approx)
      gelu_backward_kernel<T, true><<<grid_for(n, 256), 256, 0, s>>>(
          static_cast<T*>(dx), static_cast<const T*>(dout), static_cast<const T*>(x), n);
    else
      gelu_backward_kernel<T, false><<<grid_for(n, 256), 256, 0, s>>>(
          static_cast<T*>(dx), static_cast<const T*>(dout), static_cast<const T*>(x), n);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace esm2::cuda
