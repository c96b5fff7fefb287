#include <cuda_bf16.h>

#include <type_traits>

#include "backend/cuda/cuda_types.cuh"
#include "comm/nccl/nccl_rank_sum.cuh"

namespace esm2::nccl_detail {

namespace {

template <class T>
struct Acc {
  using type = float;
  __device__ static float load(T x) { return cuda::to_f(x); }
  __device__ static T store(float x) { return cuda::from_f<T>(x); }
};
template <>
struct Acc<double> {
  using type = double;
  __device__ static double load(double x) { return x; }
  __device__ static double store(double x) { return x; }
};

template <class T, class Out = T>
__global__ void rank_sum_kernel(Out* out, const T* recv, size_t stride, const T* own, int own_rank, int world,
                                size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    // Plain adds in a fixed order (no FMA can form): the same result as the MPI path's host loop.
    typename Acc<T>::type acc = Acc<T>::load(own_rank == 0 ? own[i] : recv[i]);
    for (int p = 1; p < world; ++p) acc += Acc<T>::load(p == own_rank ? own[i] : recv[p * stride + i]);
    if constexpr (std::is_same_v<Out, T>)
      out[i] = Acc<T>::store(acc);
    else
      out[i] = acc;
  }
}

__global__ void round_to_bf16_kernel(__nv_bfloat16* out, const float* in, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    out[i] = __float2bfloat16_rn(in[i]);
}

}  // namespace

template <class T>
void launch_rank_sum(T* out, const T* recv, size_t stride, const T* own, int own_rank, int world, size_t n,
                     cudaStream_t stream) {
  if (n == 0) return;
  rank_sum_kernel<T><<<cuda::grid_for(n, 256), 256, 0, stream>>>(out, recv, stride, own, own_rank, world, n);
  ESM2_CUDA_CHECK_LAUNCH();
}

void launch_rank_sum_widen(float* out, const __nv_bfloat16* recv, size_t stride, const __nv_bfloat16* own, int own_rank,
                           int world, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  rank_sum_kernel<__nv_bfloat16, float>
      <<<cuda::grid_for(n, 256), 256, 0, stream>>>(out, recv, stride, own, own_rank, world, n);
  ESM2_CUDA_CHECK_LAUNCH();
}

void launch_round_to_bf16(__nv_bfloat16* out, const float* in, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  round_to_bf16_kernel<<<cuda::grid_for(n, 256), 256, 0, stream>>>(out, in, n);
  ESM2_CUDA_CHECK_LAUNCH();
}

template void launch_rank_sum<float>(float*, const float*, size_t, const float*, int, int, size_t, cudaStream_t);
template void launch_rank_sum<double>(double*, const double*, size_t, const double*, int, int, size_t, cudaStream_t);
template void launch_rank_sum<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*, size_t, const __nv_bfloat16*, int,
                                             int, size_t, cudaStream_t);

}  // namespace esm2::nccl_detail
