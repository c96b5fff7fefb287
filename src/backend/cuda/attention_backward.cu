// FlashAttention-2's split of the backward without atomics (so the result is deterministic):
//   Δ_i = dO_i·O_i;  P_ij = exp(q_i·k_j − lse_i);  dS_ij = P_ij (dO_i·v_j − Δ_i)
//   key pass   (a block per key tile, queries streamed):  dV_j = Σ_i P_ij dO_i,  dK_j = Σ_i dS_ij q_i
//   query pass (a block per query tile, keys streamed):   dQ_i = Σ_j dS_ij k_j
// q, k are the rotated (q also scaled) vectors; the rotary adjoint is applied when storing dQ, dK.
#include <cmath>

#include "backend/cuda/attention_backward.cuh"
#include "backend/cuda/attention_tiles.cuh"

namespace esm2::cuda {

namespace {

template <class T>
__global__ void attention_delta_kernel(float* __restrict__ delta, const T* __restrict__ dout,
                                       const T* __restrict__ out, int64_t Ttot, int H, int D) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= Ttot * H) return;
  const int64_t t = i / H;
  const int h = static_cast<int>(i % H);
  const int64_t base = t * H * D + static_cast<int64_t>(h) * D;
  float s = 0.0f;
  for (int d = 0; d < D; ++d) s += to_f(dout[base + d]) * to_f(out[base + d]);
  delta[static_cast<int64_t>(h) * Ttot + t] = s;
}

template <class T, int D>
__global__ void __launch_bounds__(attn::Cfg<D>::NT)
    attention_dkv_kernel(T* __restrict__ dqkv, const T* __restrict__ dout, const T* __restrict__ qkv,
                         const float* __restrict__ lse, const float* __restrict__ delta,
                         const int32_t* __restrict__ cu, const int32_t* __restrict__ ids, int32_t pad_id,
                         const float* __restrict__ inv_freq, int64_t Ttot, int H, float scale) {
  using Cf = attn::Cfg<D>;
  __shared__ float Qs[Cf::BK * D], dOs[Cf::BK * D], lse_s[Cf::BK], delta_s[Cf::BK];
  const int s = blockIdx.x, h = blockIdx.y;
  const int t0 = cu[s], L = cu[s + 1] - t0;
  const int j0 = blockIdx.z * Cf::RB;
  if (j0 >= L) return;
  const int row = threadIdx.x / Cf::G, g = threadIdx.x % Cf::G;
  const int kj = j0 + row;
  const bool in_seq = kj < L;
  const bool kvalid = in_seq && !(ids && ids[t0 + kj] == pad_id);
  const int64_t C = static_cast<int64_t>(H) * D, C3 = 3 * C;
  const T* seq = qkv + static_cast<int64_t>(t0) * C3 + h * D;
  const T* dseq = dout + static_cast<int64_t>(t0) * C + h * D;
  const float* lse_h = lse + static_cast<int64_t>(h) * Ttot + t0;
  const float* delta_h = delta + static_cast<int64_t>(h) * Ttot + t0;

  float k[Cf::DG], v[Cf::DG], dk[Cf::DG], dv[Cf::DG];
#pragma unroll
  for (int x = 0; x < Cf::DG; ++x) k[x] = v[x] = dk[x] = dv[x] = 0.0f;
  if (in_seq) {
    attn::load_rot_slice<D>(k, seq + static_cast<int64_t>(kj) * C3 + C, g, kj, inv_freq, 1.0f);
    attn::load_slice<D>(v, seq + static_cast<int64_t>(kj) * C3 + 2 * C, g);
  }
  for (int i0 = 0; i0 < L; i0 += Cf::BK) {
    const int ni = min(Cf::BK, L - i0);
    __syncthreads();
    attn::load_rot_tile<D, Cf::NT, Cf::BK>(Qs, seq, C3, i0, ni, inv_freq, scale);
    attn::load_tile<D, Cf::NT, Cf::BK>(dOs, dseq, C, i0, ni);
    for (int i = threadIdx.x; i < Cf::BK; i += Cf::NT) {
      lse_s[i] = i < ni ? lse_h[i0 + i] : -INFINITY;
      delta_s[i] = i < ni ? delta_h[i0 + i] : 0.0f;
    }
    __syncthreads();
    for (int i = 0; i < ni; ++i) {
      const float sc = attn::dot_row<D>(k, Qs, i, g);
      const float li = lse_s[i];
      const float p = (kvalid && li != -INFINITY) ? expf(sc - li) : 0.0f;
      attn::axpy_row<D>(dv, p, dOs, i, g);
      const float dp = attn::dot_row<D>(v, dOs, i, g);
      attn::axpy_row<D>(dk, p * (dp - delta_s[i]), Qs, i, g);
    }
  }
  if (!in_seq) return;
  T* drow = dqkv + static_cast<int64_t>(t0 + kj) * C3 + h * D;
  attn::store_unrot_slice<D>(drow + C, dk, g, kj, inv_freq, 1.0f);
#pragma unroll
  for (int x = 0; x < Cf::DG; ++x) drow[2 * C + g + Cf::G * x] = from_f<T>(dv[x]);
}

template <class T, int D>
__global__ void __launch_bounds__(attn::Cfg<D>::NT)
    attention_dq_kernel(T* __restrict__ dqkv, const T* __restrict__ dout, const T* __restrict__ qkv,
                        const float* __restrict__ lse, const float* __restrict__ delta,
                        const int32_t* __restrict__ cu, const int32_t* __restrict__ ids, int32_t pad_id,
                        const float* __restrict__ inv_freq, int64_t Ttot, int H, float scale) {
  using Cf = attn::Cfg<D>;
  __shared__ float Ks[Cf::BK * D], Vs[Cf::BK * D], kvalid[Cf::BK];
  const int s = blockIdx.x, h = blockIdx.y;
  const int t0 = cu[s], L = cu[s + 1] - t0;
  const int q0 = blockIdx.z * Cf::RB;
  if (q0 >= L) return;
  const int row = threadIdx.x / Cf::G, g = threadIdx.x % Cf::G;
  const int qi = q0 + row;
  const bool valid = qi < L;
  const int64_t C = static_cast<int64_t>(H) * D, C3 = 3 * C;
  const T* seq = qkv + static_cast<int64_t>(t0) * C3 + h * D;

  float q[Cf::DG], dO[Cf::DG], dq[Cf::DG];
#pragma unroll
  for (int x = 0; x < Cf::DG; ++x) q[x] = dO[x] = dq[x] = 0.0f;
  float li = -INFINITY, di = 0.0f;
  if (valid) {
    attn::load_rot_slice<D>(q, seq + static_cast<int64_t>(qi) * C3, g, qi, inv_freq, scale);
    attn::load_slice<D>(dO, dout + static_cast<int64_t>(t0 + qi) * C + h * D, g);
    li = lse[static_cast<int64_t>(h) * Ttot + t0 + qi];
    di = delta[static_cast<int64_t>(h) * Ttot + t0 + qi];
  }
  for (int k0 = 0; k0 < L; k0 += Cf::BK) {
    const int nk = min(Cf::BK, L - k0);
    __syncthreads();
    attn::load_rot_tile<D, Cf::NT, Cf::BK>(Ks, seq + C, C3, k0, nk, inv_freq, 1.0f);
    attn::load_tile<D, Cf::NT, Cf::BK>(Vs, seq + 2 * C, C3, k0, nk);
    for (int j = threadIdx.x; j < Cf::BK; j += Cf::NT)
      kvalid[j] = (j < nk && !(ids && ids[t0 + k0 + j] == pad_id)) ? 1.0f : 0.0f;
    __syncthreads();
    for (int j = 0; j < nk; ++j) {
      if (kvalid[j] == 0.0f) continue;
      const float sc = attn::dot_row<D>(q, Ks, j, g);
      const float p = li != -INFINITY ? expf(sc - li) : 0.0f;
      const float dp = attn::dot_row<D>(dO, Vs, j, g);
      attn::axpy_row<D>(dq, p * (dp - di), Ks, j, g);
    }
  }
  if (!valid) return;
  attn::store_unrot_slice<D>(dqkv + static_cast<int64_t>(t0 + qi) * C3 + h * D, dq, g, qi, inv_freq, scale);
}

}  // namespace

size_t attention_backward_scratch_floats(const AttentionShape& a) { return static_cast<size_t>(a.T) * a.H; }

void launch_attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out, const float* lse,
                               const AttentionShape& a, DType dt, float* scratch, cudaStream_t s) {
  if (a.T == 0 || a.S == 0) return;
  const float scale = static_cast<float>(std::pow(static_cast<double>(a.D), -0.5));  // as the CPU backend
  float* delta = scratch;
  dispatch_act(dt, [&](auto tag) {
    using E = decltype(tag);
    const int64_t n = a.T * a.H;
    attention_delta_kernel<E><<<(n + 255) / 256, 256, 0, s>>>(delta, static_cast<const E*>(dout),
                                                              static_cast<const E*>(out), a.T, a.H, a.D);
    ESM2_CUDA_CHECK_LAUNCH();
    attn::dispatch_head_dim(a.D, [&](auto dc) {
      constexpr int D = decltype(dc)::value;
      using Cf = attn::Cfg<D>;
      const dim3 grid(a.S, a.H, (a.max_seqlen + Cf::RB - 1) / Cf::RB);
      attention_dkv_kernel<E, D><<<grid, Cf::NT, 0, s>>>(static_cast<E*>(dqkv), static_cast<const E*>(dout),
                                                         static_cast<const E*>(qkv), lse, delta, a.cu_seqlens, a.ids,
                                                         a.pad_id, a.inv_freq, a.T, a.H, scale);
      ESM2_CUDA_CHECK_LAUNCH();
      attention_dq_kernel<E, D><<<grid, Cf::NT, 0, s>>>(static_cast<E*>(dqkv), static_cast<const E*>(dout),
                                                        static_cast<const E*>(qkv), lse, delta, a.cu_seqlens, a.ids,
                                                        a.pad_id, a.inv_freq, a.T, a.H, scale);
      ESM2_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace esm2::cuda
