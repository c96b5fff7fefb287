#include "backend/cuda/add.cuh"
#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda {

namespace {
template <class T>
__global__ void add_kernel(T* out, const T* a, const T* b, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = from_f<T>(to_f(a[i]) + to_f(b[i]));
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
    add_kernel<T><<<grid_for(n, 256), 256, 0, s>>>(static_cast<T*>(out), static_cast<const T*>(a),
                                                   static_cast<const T*>(b), n);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

void launch_scale(float* x, float a, size_t n, cudaStream_t s) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n, 256), 256, 0, s>>>(x, a, n);
  ESM2_CUDA_CHECK_LAUNCH();
}

}  // namespace esm2::cuda
