#include <cmath>

#include "backend/cuda/adamw.cuh"
#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda {

namespace {

struct AdamWScalars {
  float grad_scale, decay_on, step_size, bc2_sqrt, b1c, beta2, b2c, eps;
};

__device__ __forceinline__ float adamw_one(float& p, float g, float& m, float& v, float decay, const AdamWScalars& k) {
  const float gi = g * k.grad_scale;
  float pi = p * decay;
  const float mi = m + k.b1c * (gi - m);
  const float vi = v * k.beta2 + k.b2c * gi * gi;
  const float denom = sqrtf(vi) / k.bc2_sqrt + k.eps;
  pi -= k.step_size * (mi / denom);
  p = pi;
  m = mi;
  v = vi;
  return pi;
}

// The block's tensor: the last range whose first_block <= blockIdx.x (binary search over the prefix).
__device__ __forceinline__ int find_range(const AdamWRangeDesc* r, int count) {
  int lo = 0, hi = count - 1;
  const uint32_t b = blockIdx.x;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (r[mid].first_block <= b) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

__global__ void __launch_bounds__(256) adamw_ranges_kernel(float* __restrict__ P, const float* __restrict__ G,
                                                           float* __restrict__ M, float* __restrict__ V,
                                                           const AdamWRangeDesc* __restrict__ ranges, int count,
                                                           AdamWScalars k) {
  const AdamWRangeDesc r = ranges[find_range(ranges, count)];
  const size_t t0 = static_cast<size_t>(blockIdx.x - r.first_block) * kAdamWTile;
  const size_t t1 = min(r.n, t0 + kAdamWTile);
  const float decay = r.decay ? k.decay_on : 1.0f;
  float* p = P + r.offset;
  const float* g = G + r.offset;
  float* m = M + r.offset;
  float* v = V + r.offset;
  bf16* pb = r.mirror;
  // 16-byte accesses where all four fp32 streams are aligned (every tensor of the flat layout whose
  // offset is a multiple of 4); otherwise, or for the tail, one element per thread.
  const bool vec = ((reinterpret_cast<uintptr_t>(p) | reinterpret_cast<uintptr_t>(g) | reinterpret_cast<uintptr_t>(m) |
                     reinterpret_cast<uintptr_t>(v)) & 15u) == 0 &&
                   (reinterpret_cast<uintptr_t>(pb) & 7u) == 0;
  size_t i0 = t0;
  if (vec) {
    const size_t nv = (t1 - t0) / 4;
#pragma unroll 4
    for (size_t j = threadIdx.x; j < nv; j += blockDim.x) {
      const size_t i = t0 + 4 * j;
      float4 pp = *reinterpret_cast<const float4*>(p + i);
      const float4 gg = *reinterpret_cast<const float4*>(g + i);
      float4 mm = *reinterpret_cast<const float4*>(m + i);
      float4 vv = *reinterpret_cast<const float4*>(v + i);
      adamw_one(pp.x, gg.x, mm.x, vv.x, decay, k);
      adamw_one(pp.y, gg.y, mm.y, vv.y, decay, k);
      adamw_one(pp.z, gg.z, mm.z, vv.z, decay, k);
      adamw_one(pp.w, gg.w, mm.w, vv.w, decay, k);
      *reinterpret_cast<float4*>(p + i) = pp;
      *reinterpret_cast<float4*>(m + i) = mm;
      *reinterpret_cast<float4*>(v + i) = vv;
      if (pb) {
        __nv_bfloat162 lo = __floats2bfloat162_rn(pp.x, pp.y), hi = __floats2bfloat162_rn(pp.z, pp.w);
        uint2 packed;
        packed.x = *reinterpret_cast<uint32_t*>(&lo);
        packed.y = *reinterpret_cast<uint32_t*>(&hi);
        *reinterpret_cast<uint2*>(pb + i) = packed;
      }
    }
    i0 = t0 + 4 * nv;
  }
  for (size_t i = i0 + threadIdx.x; i < t1; i += blockDim.x) {
    const float pi = adamw_one(p[i], g[i], m[i], v[i], decay, k);
    if (pb) pb[i] = __float2bfloat16_rn(pi);
  }
}
}  // namespace

void launch_adamw_ranges(float* p, const float* g, float* m, float* v, const AdamWRangeDesc* ranges, int count,
                         uint32_t total_blocks, const AdamWStep& st, cudaStream_t s) {
  if (count == 0 || total_blocks == 0) return;
  // Scalars exactly as the CPU backend (and torch's single-tensor AdamW) computes them; a range without
  // decay multiplies by 1 - lr·0 = 1 exactly, as a per-tensor call with weight_decay 0 does.
  const double bc1 = 1.0 - std::pow(static_cast<double>(st.beta1), static_cast<double>(st.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(st.beta2), static_cast<double>(st.step));
  AdamWScalars k;
  k.grad_scale = st.grad_scale;
  k.decay_on = static_cast<float>(1.0 - static_cast<double>(st.lr) * st.weight_decay);
  k.step_size = static_cast<float>(st.lr / bc1);
  k.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  k.b1c = 1.0f - st.beta1;
  k.beta2 = st.beta2;
  k.b2c = 1.0f - st.beta2;
  k.eps = st.eps;
  adamw_ranges_kernel<<<total_blocks, 256, 0, s>>>(p, g, m, v, ranges, count, k);
  ESM2_CUDA_CHECK_LAUNCH();
}

}  // namespace esm2::cuda
