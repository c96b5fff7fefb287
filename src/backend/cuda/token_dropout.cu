// Grid (sequence, 8 row slices): every block of a sequence counts that sequence's <mask> and real tokens
// itself (a few hundred ids), so no device-side T and no second launch are needed.
#include "backend/cuda/cuda_types.cuh"
#include "backend/cuda/token_dropout.cuh"

namespace esm2::cuda {

namespace {

constexpr int kSlices = 8;

template <class T>
__global__ void token_dropout_kernel(T* x, const int32_t* ids, const int32_t* cu, int64_t C, int32_t mask_id,
                                     int32_t pad_id, float keep, bool rescale) {
  __shared__ int sm_mask[32], sm_real[32];
  __shared__ float denom_s;
  const int s = blockIdx.x;
  const int64_t t0 = cu[s], t1 = cu[s + 1];
  if (rescale) {
    int nm = 0, nr = 0;
    for (int64_t t = t0 + threadIdx.x; t < t1; t += blockDim.x) {
      nm += ids[t] == mask_id;
      nr += ids[t] != pad_id;
    }
    for (int o = 16; o > 0; o >>= 1) {
      nm += __shfl_xor_sync(0xffffffffu, nm, o);
      nr += __shfl_xor_sync(0xffffffffu, nr, o);
    }
    if ((threadIdx.x & 31) == 0) {
      sm_mask[threadIdx.x >> 5] = nm;
      sm_real[threadIdx.x >> 5] = nr;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int m = 0, r = 0;
      for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
        m += sm_mask[w];
        r += sm_real[w];
      }
      denom_s = 1.0f - static_cast<float>(m) / static_cast<float>(max(r, 1));  // as the CPU, in fp32
    }
    __syncthreads();
  }
  const float d = rescale ? denom_s : 1.0f;
  for (int64_t t = t0 + blockIdx.y; t < t1; t += kSlices) {
    const int32_t id = ids[t];
    T* row = x + t * C;
    if (id == pad_id || (rescale && id == mask_id)) {
      for (int64_t j = threadIdx.x; j < C; j += blockDim.x) row[j] = from_f<T>(0.0f);
    } else if (rescale) {
      for (int64_t j = threadIdx.x; j < C; j += blockDim.x) row[j] = from_f<T>((to_f(row[j]) * keep) / d);
    }
  }
}

}  // namespace

void launch_token_dropout(void* x, const int32_t* ids, const int32_t* cu, int S, int64_t C, int32_t mask_id,
                          int32_t pad_id, float ratio_train, bool rescale, DType dt, cudaStream_t s) {
  if (S == 0) return;
  const float keep = static_cast<float>(1.0 - static_cast<double>(ratio_train));
  dispatch_act(dt, [&](auto tag) {
    using E = decltype(tag);
    token_dropout_kernel<E><<<dim3(S, kSlices), 256, 0, s>>>(static_cast<E*>(x), ids, cu, C, mask_id, pad_id, keep,
                                                             rescale);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace esm2::cuda
