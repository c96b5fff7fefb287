// One warp per row, as the LayerNorm forward kernels: the row's sum is written once and read back by the
// same lanes (their own stores, so no fence is needed) for the statistics and the normalised output,
// saving the separate add's second read of the row and one launch per layer boundary.
#include "backend/cuda/add_layernorm.cuh"
#include "backend/cuda/add.cuh"
#include "backend/cuda/cuda_types.cuh"
#include "backend/cuda/layernorm.cuh"

namespace esm2::cuda {

namespace {

template <int kN>
__device__ __forceinline__ void load4(float (&o)[kN], const float* p) {
#pragma unroll
  for (int q = 0; q < kN / 4; ++q) {
    const float4 v = reinterpret_cast<const float4*>(p)[q];
    o[4 * q] = v.x, o[4 * q + 1] = v.y, o[4 * q + 2] = v.z, o[4 * q + 3] = v.w;
  }
}

// Whole 16-byte packs (C % Pack16<T>::kN == 0, aligned rows, w and bias); the same per-element
// arithmetic, in the same order, as add_kernel and layernorm_forward_vec.
template <class T>
__global__ void add_layernorm_forward_vec(T* sum, T* __restrict__ out, float* __restrict__ mean,
                                          float* __restrict__ rstd, const T* a, const T* b,
                                          const float* __restrict__ w, const float* __restrict__ bias, int64_t T_,
                                          int64_t C, float eps) {
  using P = Pack16<T>;
  constexpr int kN = P::kN;
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.y) + threadIdx.y;
  if (t >= T_) return;
  const int lane = threadIdx.x;
  const P* ar = reinterpret_cast<const P*>(a + t * C);
  const P* br = reinterpret_cast<const P*>(b + t * C);
  P* sr = reinterpret_cast<P*>(sum + t * C);
  const int64_t np = C / kN;
  float s = 0;
  for (int64_t j = lane; j < np; j += 32) {
    P x = ar[j];
    const P y = br[j];
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      x.v[k] = from_f<T>(to_f(x.v[k]) + to_f(y.v[k]));
      s += to_f(x.v[k]);
    }
    sr[j] = x;
  }
  const float m = warp_sum(s) / static_cast<float>(C);
  float v = 0;
  for (int64_t j = lane; j < np; j += 32) {
    const P p = sr[j];
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      const float d = to_f(p.v[k]) - m;
      v += d * d;
    }
  }
  const float r = rsqrtf(warp_sum(v) / static_cast<float>(C) + eps);
  P* o = reinterpret_cast<P*>(out + t * C);
  for (int64_t j = lane; j < np; j += 32) {
    P p = sr[j];
    float wj[kN], bj[kN];
    load4<kN>(wj, w + j * kN);
    load4<kN>(bj, bias + j * kN);
#pragma unroll
    for (int k = 0; k < kN; ++k) p.v[k] = from_f<T>((to_f(p.v[k]) - m) * r * wj[k] + bj[k]);
    o[j] = p;
  }
  if (lane == 0) {
    mean[t] = m;
    rstd[t] = r;
  }
}

}  // namespace

void launch_add_layernorm_forward(void* sum, void* out, float* mean, float* rstd, const void* a, const void* b,
                                  const float* w, const float* bias, int64_t T, int64_t C, float eps, DType dt,
                                  cudaStream_t s) {
  if (T == 0) return;
  bool done = false;
  dispatch_act(dt, [&](auto tag) {
    using E = decltype(tag);
    if (C % Pack16<E>::kN != 0 || !aligned16(sum, out, a) || !aligned16(b, w, bias)) return;
    add_layernorm_forward_vec<E><<<(T + 7) / 8, dim3(32, 8), 0, s>>>(
        static_cast<E*>(sum), static_cast<E*>(out), mean, rstd, static_cast<const E*>(a), static_cast<const E*>(b),
        w, bias, T, C, eps);
    ESM2_CUDA_CHECK_LAUNCH();
    done = true;
  });
  if (done) return;
  // Unaligned or ragged rows: the two separate ops (the same result).
  launch_add(sum, a, b, static_cast<size_t>(T) * static_cast<size_t>(C), dt, s);
  launch_layernorm_forward(out, mean, rstd, sum, w, bias, T, C, eps, dt, s);
}

}  // namespace esm2::cuda
