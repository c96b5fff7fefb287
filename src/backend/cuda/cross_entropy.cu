// One warp per row: ESM-2's vocabulary is 33, so a row is one or two loads per lane.
#include "backend/cuda/cross_entropy.cuh"
#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda {

namespace {

template <class T>
__device__ float row_lse(const T* l, int64_t V, int lane) {
  float mx = -INFINITY;
  for (int64_t j = lane; j < V; j += 32) mx = fmaxf(mx, to_f(l[j]));
  mx = warp_max(mx);
  float s = 0;
  for (int64_t j = lane; j < V; j += 32) s += expf(to_f(l[j]) - mx);
  return mx + logf(warp_sum(s));
}

template <class T>
__global__ void ce_forward_kernel(float* loss, const T* logits, const int32_t* labels, int64_t R, int64_t V) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.y) + threadIdx.y;
  if (r >= R) return;
  const int lab = labels[r];
  if (lab < 0) {
    if (threadIdx.x == 0) loss[r] = 0.0f;
    return;
  }
  const T* l = logits + r * V;
  const float lse = row_lse(l, V, threadIdx.x);
  if (threadIdx.x == 0) loss[r] = lse - to_f(l[lab]);
}

template <class T>
__global__ void ce_backward_kernel(T* dl, const T* logits, const int32_t* labels, int64_t R, int64_t V,
                                   float dloss) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.y) + threadIdx.y;
  if (r >= R) return;
  const int lab = labels[r];
  T* d = dl + r * V;
  if (lab < 0) {
    for (int64_t j = threadIdx.x; j < V; j += 32) d[j] = from_f<T>(0.0f);
    return;
  }
  const T* l = logits + r * V;
  const float lse = row_lse(l, V, threadIdx.x);
  for (int64_t j = threadIdx.x; j < V; j += 32)
    d[j] = from_f<T>(dloss * (expf(to_f(l[j]) - lse) - (j == lab ? 1.0f : 0.0f)));
}

}  // namespace

void launch_cross_entropy_forward(float* loss, const void* logits, const int32_t* labels, int64_t R, int64_t V,
                                  DType dt, cudaStream_t s) {
  if (R == 0) return;
  dispatch_act(dt, [&](auto tag) {
    using E = decltype(tag);
    ce_forward_kernel<E><<<(R + 7) / 8, dim3(32, 8), 0, s>>>(loss, static_cast<const E*>(logits), labels, R, V);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

void launch_cross_entropy_backward(void* dlogits, const void* logits, const int32_t* labels, int64_t R, int64_t V,
                                   float dloss, DType dt, cudaStream_t s) {
  if (R == 0) return;
  dispatch_act(dt, [&](auto tag) {
    using E = decltype(tag);
    ce_backward_kernel<E><<<(R + 7) / 8, dim3(32, 8), 0, s>>>(static_cast<E*>(dlogits),
                                                              static_cast<const E*>(logits), labels, R, V, dloss);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace esm2::cuda
