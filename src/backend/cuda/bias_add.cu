#include "backend/cuda/bias_add.cuh"
#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda {

namespace {
// A thread owns one column (its bias read once) and walks rows: no per-element index division.
template <class T>
__global__ void bias_add_kernel(T* C, const float* bias, float beta, int64_t M, int64_t N, int64_t ldc) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c >= N) return;
  const float b = bias ? bias[c] : 0.0f;
  for (int64_t r = blockIdx.y; r < M; r += gridDim.y) {
    T* p = C + r * ldc + c;
    const float old = beta == 0.0f ? 0.0f : beta * to_f(*p);
    *p = from_f<T>(old + b);
  }
}
}  // namespace

void launch_bias_add(void* C, DType c_dtype, const float* bias, float beta, int64_t M, int64_t N, int64_t ldc,
                     cudaStream_t s) {
  if (M == 0 || N == 0) return;
  dispatch_act(c_dtype, [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(static_cast<unsigned>((N + 255) / 256), static_cast<unsigned>(M < 4096 ? M : 4096));
    bias_add_kernel<T><<<grid, 256, 0, s>>>(static_cast<T*>(C), bias, beta, M, N, ldc);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace esm2::cuda
