#include "backend/cuda/cuda_types.cuh"
#include "backend/cuda/rows.cuh"

namespace esm2::cuda {

namespace {
template <class T, bool kScatter>
__global__ void rows_kernel(T* dst, const T* src, const int32_t* idx, int64_t R, int64_t C) {
  const size_t total = static_cast<size_t>(R) * C;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / C, c = i % C;
    const int64_t row = idx[r];
    if constexpr (kScatter) {
      T* p = dst + row * C + c;
      *p = from_f<T>(to_f(*p) + to_f(src[i]));
    } else {
      dst[i] = src[row * C + c];
    }
  }
}
}  // namespace

void launch_gather_rows(void* out, const void* x, const int32_t* idx, int64_t R, int64_t C, DType dt,
                        cudaStream_t s) {
  if (R == 0 || C == 0) return;
  dispatch_act(dt, [&](auto tag) {
    using T = decltype(tag);
    rows_kernel<T, false><<<grid_for(static_cast<size_t>(R) * C, 256), 256, 0, s>>>(
        static_cast<T*>(out), static_cast<const T*>(x), idx, R, C);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

void launch_scatter_add_rows(void* dx, const void* dout, const int32_t* idx, int64_t R, int64_t C, DType dt,
                             cudaStream_t s) {
  if (R == 0 || C == 0) return;
  dispatch_act(dt, [&](auto tag) {
    using T = decltype(tag);
    rows_kernel<T, true><<<grid_for(static_cast<size_t>(R) * C, 256), 256, 0, s>>>(
        static_cast<T*>(dx), static_cast<const T*>(dout), idx, R, C);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace esm2::cuda
