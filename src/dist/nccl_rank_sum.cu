#include <cuda_bf16.h>

#include "backend/cuda/cuda_types.cuh"
#include "dist/nccl_rank_sum.cuh"

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

template <class T>
__global__ void rank_sum_kernel(T* out, const T* recv, size_t stride, const T* own, int own_rank, int world,
                                size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    // Plain adds in a fixed order (no FMA can form): the same result as the MPI path's host loop.
    typename Acc<T>::type acc = Acc<T>::load(own_rank == 0 ? own[i] : recv[i]);
    for (int p = 1; p < world; ++p) acc += Acc<T>::load(p == own_rank ? own[i] : recv[p * stride + i]);
    out[i] = Acc<T>::store(acc);
  }
}

}  // namespace

template <class T>
void launch_rank_sum(T* out, const T* recv, size_t stride, const T* own, int own_rank, int world, size_t n,
                     cudaStream_t stream) {
  if (n == 0) return;
  rank_sum_kernel<T><<<cuda::grid_for(n, 256), 256, 0, stream>>>(out, recv, stride, own, own_rank, world, n);
  ESM2_CUDA_CHECK_LAUNCH();
}

template void launch_rank_sum<float>(float*, const float*, size_t, const float*, int, int, size_t, cudaStream_t);
template void launch_rank_sum<double>(double*, const double*, size_t, const double*, int, int, size_t, cudaStream_t);
template void launch_rank_sum<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*, size_t, const __nv_bfloat16*, int,
                                             int, size_t, cudaStream_t);

}  // namespace esm2::nccl_detail
