#include "backend/cuda/add.cuh"
#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda {

namespace {
// 16-byte packs when every pointer is aligned (kVec), then the tail one element per thread; out may
// alias a or b (each index is read before it is written, by the same thread).
template <class T, bool kVec>
__global__ void add_kernel(T* out, const T* a, const T* b, size_t n) {
  using P = Pack16<T>;
  const size_t tid = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t done = 0;
  if constexpr (kVec) {
    const size_t np = n / P::kN;
    for (size_t i = tid; i < np; i += stride) {
      P x = reinterpret_cast<const P*>(a)[i];
      const P y = reinterpret_cast<const P*>(b)[i];
#pragma unroll
      for (int k = 0; k < P::kN; ++k) x.v[k] = from_f<T>(to_f(x.v[k]) + to_f(y.v[k]));
      reinterpret_cast<P*>(out)[i] = x;
    }
    done = np * P::kN;
  }
  for (size_t i = done + tid; i < n; i += stride) out[i] = from_f<T>(to_f(a[i]) + to_f(b[i]));
}
__global__ void scale_kernel(float* x, float a, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    x[i] *= a;
}
}  // namespace

void launch_add(void* out, const void* a, const void* b, size_t n, DType dt, cudaStream_t s) {
  if (n == 0) return;
  dispatch_act(dt, [&](auto tag) {
    using T = decltype(tag);
    auto* o = static_cast<T*>(out);
    const auto *x = static_cast<const T*>(a), *y = static_cast<const T*>(b);
    if (aligned16(out, a, b))
      add_kernel<T, true><<<grid_for((n + Pack16<T>::kN - 1) / Pack16<T>::kN, 256), 256, 0, s>>>(o, x, y, n);
    else
      add_kernel<T, false><<<grid_for(n, 256), 256, 0, s>>>(o, x, y, n);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

void launch_scale(float* x, float a, size_t n, cudaStream_t s) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n, 256), 256, 0, s>>>(x, a, n);
  ESM2_CUDA_CHECK_LAUNCH();
}

}  // namespace esm2::cuda
