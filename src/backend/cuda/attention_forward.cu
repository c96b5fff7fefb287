// One block per (sequence, head, tile of 64 queries); key/value tiles stream through shared memory with
// rotary applied on load, and an online softmax (running max m, running sum l) keeps the output in
// registers. Arithmetic in fp32 whatever the activation dtype.
#include <cmath>

#include "backend/cuda/attention_forward.cuh"
#include "backend/cuda/attention_tiles.cuh"

namespace esm2::cuda {

namespace {

template <class T, int D>
__global__ void __launch_bounds__(attn::Cfg<D>::NT)
    attention_forward_kernel(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ qkv,
                             const int32_t* __restrict__ cu, const int32_t* __restrict__ ids, int32_t pad_id,
                             const float* __restrict__ inv_freq, int64_t Ttot, int H, float scale) {
  using Cf = attn::Cfg<D>;
  __shared__ float Ks[Cf::BK * D], Vs[Cf::BK * D], kvalid[Cf::BK];
  const int s = blockIdx.x, h = blockIdx.y;
  const int t0 = cu[s], L = cu[s + 1] - t0;
  const int q0 = blockIdx.z * Cf::RB;
  if (q0 >= L) return;  // whole block: no barrier is skipped by part of it
  const int row = threadIdx.x / Cf::G, g = threadIdx.x % Cf::G;
  const int qi = q0 + row;
  const bool valid = qi < L;
  const int64_t C = static_cast<int64_t>(H) * D, C3 = 3 * C;
  const T* seq = qkv + static_cast<int64_t>(t0) * C3 + h * D;

  float q[Cf::DG], acc[Cf::DG];
#pragma unroll
  for (int k = 0; k < Cf::DG; ++k) q[k] = acc[k] = 0.0f;
  if (valid) attn::load_rot_slice<D>(q, seq + static_cast<int64_t>(qi) * C3, g, qi, inv_freq, scale);
  float m = -INFINITY, l = 0.0f;

  for (int k0 = 0; k0 < L; k0 += Cf::BK) {
    const int nk = min(Cf::BK, L - k0);
    __syncthreads();
    attn::load_rot_tile<D, Cf::NT, Cf::BK>(Ks, seq + C, C3, k0, nk, inv_freq, 1.0f);
    attn::load_tile<D, Cf::NT, Cf::BK>(Vs, seq + 2 * C, C3, k0, nk);
    for (int j = threadIdx.x; j < Cf::BK; j += Cf::NT)
      kvalid[j] = (j < nk && !(ids && ids[t0 + k0 + j] == pad_id)) ? 1.0f : 0.0f;
    __syncthreads();
    for (int j = 0; j < nk; ++j) {
      if (kvalid[j] == 0.0f) continue;  // the same for every thread of the block
      const float sc = attn::dot_row<D>(q, Ks, j, g);
      if (sc > m) {
        const float corr = expf(m - sc);
        l *= corr;
#pragma unroll
        for (int k = 0; k < Cf::DG; ++k) acc[k] *= corr;
        m = sc;
      }
      const float p = expf(sc - m);
      l += p;
      attn::axpy_row<D>(acc, p, Vs, j, g);
    }
  }
  if (!valid) return;
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  T* o = out + static_cast<int64_t>(t0 + qi) * C + h * D;
#pragma unroll
  for (int k = 0; k < Cf::DG; ++k) o[g + Cf::G * k] = from_f<T>(acc[k] * inv);
  if (g == 0) lse[static_cast<int64_t>(h) * Ttot + t0 + qi] = l > 0.0f ? m + logf(l) : -INFINITY;
}

}  // namespace

void launch_attention_forward(void* out, float* lse, const void* qkv, const AttentionShape& a, DType dt,
                              cudaStream_t s) {
  if (a.T == 0 || a.S == 0 || a.max_seqlen == 0) return;
  const float scale = static_cast<float>(std::pow(static_cast<double>(a.D), -0.5));  // as the CPU backend
  dispatch_act(dt, [&](auto tag) {
    using E = decltype(tag);
    attn::dispatch_head_dim(a.D, [&](auto dc) {
      constexpr int D = decltype(dc)::value;
      using Cf = attn::Cfg<D>;
      const dim3 grid(a.S, a.H, (a.max_seqlen + Cf::RB - 1) / Cf::RB);
      attention_forward_kernel<E, D><<<grid, Cf::NT, 0, s>>>(static_cast<E*>(out), lse, static_cast<const E*>(qkv),
                                                             a.cu_seqlens, a.ids, a.pad_id, a.inv_freq, a.T, a.H,
                                                             scale);
      ESM2_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace esm2::cuda
