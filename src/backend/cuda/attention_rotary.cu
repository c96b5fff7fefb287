#include "backend/cuda/attention_rotary.cuh"
#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda {

namespace {
// One thread per (token, head, rotary pair).
__global__ void rotate_qk_kernel(bf16* __restrict__ qr, bf16* __restrict__ kr, const bf16* __restrict__ qkv,
                                 const int32_t* __restrict__ cu, int S, int64_t T, int H, int D,
                                 const float* __restrict__ inv_freq, float q_scale) {
  const int h2 = D / 2;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= T * H * h2) return;
  const int d = static_cast<int>(i % h2);
  const int h = static_cast<int>((i / h2) % H);
  const int64_t t = i / (static_cast<int64_t>(h2) * H);
  int lo = 0, hi = S - 1;  // the sequence holding t: last s with cu[s] <= t
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu[mid] <= t)
      lo = mid;
    else
      hi = mid - 1;
  }
  const int pos = static_cast<int>(t - cu[lo]);
  float sn, cs;
  sincosf(static_cast<float>(pos) * inv_freq[d], &sn, &cs);
  const int64_t C = static_cast<int64_t>(H) * D;
  const bf16* q = qkv + t * 3 * C + h * D;
  const bf16* k = q + C;
  const float q1 = __bfloat162float(q[d]) * q_scale, q2 = __bfloat162float(q[d + h2]) * q_scale;
  const float k1 = __bfloat162float(k[d]), k2 = __bfloat162float(k[d + h2]);
  bf16* qo = qr + t * C + h * D;
  bf16* ko = kr + t * C + h * D;
  qo[d] = __float2bfloat16_rn(q1 * cs - q2 * sn);
  qo[d + h2] = __float2bfloat16_rn(q2 * cs + q1 * sn);
  ko[d] = __float2bfloat16_rn(k1 * cs - k2 * sn);
  ko[d + h2] = __float2bfloat16_rn(k2 * cs + k1 * sn);
}
}  // namespace

void launch_rotate_qk(void* qr, void* kr, const void* qkv, const AttentionShape& a, float q_scale, cudaStream_t s) {
  const int64_t n = a.T * a.H * (a.D / 2);
  if (n == 0) return;
  rotate_qk_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, s>>>(
      static_cast<bf16*>(qr), static_cast<bf16*>(kr), static_cast<const bf16*>(qkv), a.cu_seqlens, a.S, a.T, a.H, a.D,
      a.inv_freq, q_scale);
  ESM2_CUDA_CHECK_LAUNCH();
}

}  // namespace esm2::cuda
