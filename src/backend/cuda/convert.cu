#include "backend/cuda/convert.cuh"
#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda {

namespace {
template <class To, class From>
__global__ void convert_kernel(To* __restrict__ dst, const From* __restrict__ src, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    dst[i] = from_f<To>(to_f(src[i]));
}
}  // namespace

void launch_convert(void* dst, DType dst_dtype, const void* src, DType src_dtype, size_t n, cudaStream_t s) {
  if (n == 0) return;
  dispatch_act(dst_dtype, [&](auto to) {
    using To = decltype(to);
    dispatch_act(src_dtype, [&](auto from) {
      using From = decltype(from);
      convert_kernel<To, From><<<grid_for(n, 256), 256, 0, s>>>(static_cast<To*>(dst),
                                                               static_cast<const From*>(src), n);
      ESM2_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace esm2::cuda
