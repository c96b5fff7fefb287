#include "backend/cuda/bias_add.cuh"
#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda {

namespace {
template <class T>
__global__ void bias_add_kernel(T* C, const float* bias, float beta, int64_t M, int64_t N, int64_t ldc) {
  const size_t total = static_cast<size_t>(M) * N;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / N, c = i % N;
    T* p = C + r * ldc + c;
    const float old = beta == 0.0f ? 0.0f : beta * to_f(*p);
    *p = from_f<T>(old + (bias ? bias[c] : 0.0f));
  }
}
}  // namespace

void launch_bias_add(void* C, DType c_dtype, const float* bias, float beta, int64_t M, int64_t N, int64_t ldc,
                     cudaStream_t s) {
  if (M == 0 || N == 0) return;
  dispatch_act(c_dtype, [&](auto tag) {
    using T = decltype(tag);
    bias_add_kernel<T><<<grid_for(static_cast<size_t>(M) * N, 256), 256, 0, s>>>(static_cast<T*>(C), bias, beta, M,
                                                                                  N, ldc);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace esm2::cuda
