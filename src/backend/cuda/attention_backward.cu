// FlashAttention-2's split of the backward without atomics (so the result is deterministic):
//   Δ_i = dO_i·O_i;  P_ij = exp(q_i·k_j − lse_i);  dS_ij = P_ij (dO_i·v_j − Δ_i)
//   key pass   (a block per key tile, queries streamed):  dV_j = Σ_i P_ij dO_i,  dK_j = Σ_i dS_ij q_i
//   query pass (a block per query tile, keys streamed):   dQ_i = Σ_j dS_ij k_j
// q, k are the rotated (q also scaled) vectors; the rotary adjoint is applied when storing dQ, dK.
#include <cmath>
#include <type_traits>

#include "backend/cuda/attention_backward.cuh"
#include "backend/cuda/attention_forward.cuh"
#include "backend/cuda/attention_mma.cuh"
#include "backend/cuda/attention_rotary.cuh"
#include "backend/cuda/attention_tiles.cuh"
#include "backend/cuda/attention_pad.cuh"

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

// ---- tensor-core backward (bf16; D a multiple of 16) ----
// Both passes keep 4 warps × 16 rows per block and 64-row tiles of the other side in shared memory.
// Scores and their gradients are recomputed in mma accumulators; P and dS become bf16 A fragments
// in registers (acc_to_a), as in FlashAttention-2. dQ and dK leave the kernels through the rotary
// adjoint applied in registers: columns d and d + D/2 of a row sit in the same thread (tiles j and
// j + D/16).

// out_row[d], out_row[d + D/2] (d < D/2 in the tiles this thread holds) = rotᵀ(y)·scale at position pos.
template <int D>
__device__ __forceinline__ void store_unrot_acc(bf16* row0, bf16* row1, int pos0, int pos1, bool ok0, bool ok1,
                                                const float (&y)[D / 8][4], const float* inv_freq, float scale) {
  constexpr int h2 = D / 2, HT = D / 16;
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int j = 0; j < HT; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int d = j * 8 + 2 * (lane & 3) + e;
      float sn, cs;
      if (ok0) {
        sincosf(static_cast<float>(pos0) * inv_freq[d], &sn, &cs);
        const float a = y[j][e], b = y[j + HT][e];
        row0[d] = __float2bfloat16_rn((a * cs + b * sn) * scale);
        row0[d + h2] = __float2bfloat16_rn((b * cs - a * sn) * scale);
      }
      if (ok1) {
        sincosf(static_cast<float>(pos1) * inv_freq[d], &sn, &cs);
        const float a = y[j][2 + e], b = y[j + HT][2 + e];
        row1[d] = __float2bfloat16_rn((a * cs + b * sn) * scale);
        row1[d + h2] = __float2bfloat16_rn((b * cs - a * sn) * scale);
      }
    }
  }
}

// Key pass: block = 64 keys; queries streamed. dV = Pᵀ·dO, dK = dSᵀ·Q.
template <int D>
__global__ void __launch_bounds__(128)
    attention_dkv_mma(bf16* __restrict__ dqkv, const bf16* __restrict__ dout, const bf16* __restrict__ qkv,
                      const bf16* __restrict__ qr, const bf16* __restrict__ kr, const float* __restrict__ lse,
                      const float* __restrict__ delta, const int32_t* __restrict__ cu,
                      const int32_t* __restrict__ ids, int32_t pad_id, const float* __restrict__ inv_freq,
                      int64_t Ttot, int H) {
  constexpr int kB = 64, LD = D + 8, NQ = kB / 8, ND = D / 8, KD = D / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Ks = reinterpret_cast<bf16*>(smem_raw);
  bf16* Vs = Ks + kB * LD;
  bf16* Qs = Vs + kB * LD;
  bf16* dOs = Qs + kB * LD;
  float* lse_s = reinterpret_cast<float*>(dOs + kB * LD);
  float* delta_s = lse_s + kB;
  const int s = blockIdx.x, h = blockIdx.y;
  const int t0 = cu[s], L = cu[s + 1] - t0;
  const int j0 = blockIdx.z * kB;
  if (j0 >= L) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t C = static_cast<int64_t>(H) * D;
  mma::load_rows<D, kB, 128>(Ks, kr + static_cast<int64_t>(t0) * C + h * D, C, j0, L);
  mma::load_rows<D, kB, 128>(Vs, qkv + static_cast<int64_t>(t0) * 3 * C + 2 * C + h * D, 3 * C, j0, L);
  const int k0r = j0 + warp * 16 + (lane >> 2), k1r = k0r + 8;  // this thread's two key rows
  const bool kv0 = k0r < L && !(ids && ids[t0 + k0r] == pad_id);
  const bool kv1 = k1r < L && !(ids && ids[t0 + k1r] == pad_id);
  const float* lse_h = lse + static_cast<int64_t>(h) * Ttot + t0;
  const float* delta_h = delta + static_cast<int64_t>(h) * Ttot + t0;

  float dv[ND][4], dk[ND][4];
#pragma unroll
  for (int j = 0; j < ND; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) dv[j][e] = dk[j][e] = 0.0f;
  for (int i0 = 0; i0 < L; i0 += kB) {
    __syncthreads();
    mma::load_rows<D, kB, 128>(Qs, qr + static_cast<int64_t>(t0) * C + h * D, C, i0, L);
    mma::load_rows<D, kB, 128>(dOs, dout + static_cast<int64_t>(t0) * C + h * D, C, i0, L);
    for (int i = threadIdx.x; i < kB; i += 128) {
      const bool ok = i0 + i < L && lse_h[i0 + i] != -INFINITY;
      lse_s[i] = ok ? lse_h[i0 + i] : INFINITY;  // exp(s − ∞) = 0 for rows outside the sequence
      delta_s[i] = ok ? delta_h[i0 + i] : 0.0f;
    }
    __syncthreads();
    float p[NQ][4], dp[NQ][4];
#pragma unroll
    for (int j = 0; j < NQ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) p[j][e] = dp[j][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      uint32_t ak[4], av[4];
      mma::load_a(ak, Ks, LD, warp * 16, kk * 16);
      mma::load_a(av, Vs, LD, warp * 16, kk * 16);
#pragma unroll
      for (int j = 0; j < NQ; ++j) {
        uint32_t b[2];
        mma::load_b_nk(b, Qs, LD, j * 8, kk * 16);
        mma::mma16816(p[j], ak, b);  // Sᵀ = K·Qᵀ
        mma::load_b_nk(b, dOs, LD, j * 8, kk * 16);
        mma::mma16816(dp[j], av, b);  // dPᵀ = V·dOᵀ
      }
    }
#pragma unroll
    for (int j = 0; j < NQ; ++j) {
      const int c = j * 8 + 2 * (lane & 3);
      const float l0 = lse_s[c], l1 = lse_s[c + 1], d0 = delta_s[c], d1 = delta_s[c + 1];
      p[j][0] = kv0 ? __expf(p[j][0] - l0) : 0.0f;
      p[j][1] = kv0 ? __expf(p[j][1] - l1) : 0.0f;
      p[j][2] = kv1 ? __expf(p[j][2] - l0) : 0.0f;
      p[j][3] = kv1 ? __expf(p[j][3] - l1) : 0.0f;
      dp[j][0] = p[j][0] * (dp[j][0] - d0);  // dSᵀ
      dp[j][1] = p[j][1] * (dp[j][1] - d1);
      dp[j][2] = p[j][2] * (dp[j][2] - d0);
      dp[j][3] = p[j][3] * (dp[j][3] - d1);
    }
#pragma unroll
    for (int kk = 0; kk < kB / 16; ++kk) {
      uint32_t ap[4], ads[4];
      mma::acc_to_a<NQ>(ap, p, kk);
      mma::acc_to_a<NQ>(ads, dp, kk);
#pragma unroll
      for (int j = 0; j < ND; ++j) {
        uint32_t b[2];
        mma::load_b_kn(b, dOs, LD, kk * 16, j * 8);
        mma::mma16816(dv[j], ap, b);
        mma::load_b_kn(b, Qs, LD, kk * 16, j * 8);
        mma::mma16816(dk[j], ads, b);
      }
    }
  }
  const bool ok0 = k0r < L, ok1 = k1r < L;
  bf16* row0 = dqkv + static_cast<int64_t>(t0 + k0r) * 3 * C + h * D;
  bf16* row1 = dqkv + static_cast<int64_t>(t0 + k1r) * 3 * C + h * D;
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    const int c = j * 8 + 2 * (lane & 3);
    if (ok0) *reinterpret_cast<__nv_bfloat162*>(row0 + 2 * C + c) = __floats2bfloat162_rn(dv[j][0], dv[j][1]);
    if (ok1) *reinterpret_cast<__nv_bfloat162*>(row1 + 2 * C + c) = __floats2bfloat162_rn(dv[j][2], dv[j][3]);
  }
  store_unrot_acc<D>(row0 + C, row1 + C, k0r, k1r, ok0, ok1, dk, inv_freq, 1.0f);
}

// Query pass: block = 64 queries; keys streamed. dQ = dS·K.
template <int D>
__global__ void __launch_bounds__(128)
    attention_dq_mma(bf16* __restrict__ dqkv, const bf16* __restrict__ dout, const bf16* __restrict__ qkv,
                     const bf16* __restrict__ qr, const bf16* __restrict__ kr, const float* __restrict__ lse,
                     const float* __restrict__ delta, const int32_t* __restrict__ cu, const int32_t* __restrict__ ids,
                     int32_t pad_id, const float* __restrict__ inv_freq, int64_t Ttot, int H, float scale) {
  constexpr int kB = 64, LD = D + 8, NK = kB / 8, ND = D / 8, KD = D / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* dOs = Qs + kB * LD;
  bf16* Ks = dOs + kB * LD;
  bf16* Vs = Ks + kB * LD;
  float* kval = reinterpret_cast<float*>(Vs + kB * LD);
  const int s = blockIdx.x, h = blockIdx.y;
  const int t0 = cu[s], L = cu[s + 1] - t0;
  const int q0 = blockIdx.z * kB;
  if (q0 >= L) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t C = static_cast<int64_t>(H) * D;
  mma::load_rows<D, kB, 128>(Qs, qr + static_cast<int64_t>(t0) * C + h * D, C, q0, L);
  mma::load_rows<D, kB, 128>(dOs, dout + static_cast<int64_t>(t0) * C + h * D, C, q0, L);
  const int r0 = q0 + warp * 16 + (lane >> 2), r1 = r0 + 8;
  const float* lse_h = lse + static_cast<int64_t>(h) * Ttot + t0;
  const float* delta_h = delta + static_cast<int64_t>(h) * Ttot + t0;
  float l0 = r0 < L ? lse_h[r0] : INFINITY, l1 = r1 < L ? lse_h[r1] : INFINITY;
  if (l0 == -INFINITY) l0 = INFINITY;  // a row with every key masked has no gradient
  if (l1 == -INFINITY) l1 = INFINITY;
  const float d0 = r0 < L ? delta_h[r0] : 0.0f, d1 = r1 < L ? delta_h[r1] : 0.0f;

  float dq[ND][4];
#pragma unroll
  for (int j = 0; j < ND; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.0f;
  for (int k0 = 0; k0 < L; k0 += kB) {
    __syncthreads();
    mma::load_rows<D, kB, 128>(Ks, kr + static_cast<int64_t>(t0) * C + h * D, C, k0, L);
    mma::load_rows<D, kB, 128>(Vs, qkv + static_cast<int64_t>(t0) * 3 * C + 2 * C + h * D, 3 * C, k0, L);
    for (int j = threadIdx.x; j < kB; j += 128)
      kval[j] = (k0 + j < L && !(ids && ids[t0 + k0 + j] == pad_id)) ? 1.0f : 0.0f;
    __syncthreads();
    float p[NK][4], dp[NK][4];
#pragma unroll
    for (int j = 0; j < NK; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) p[j][e] = dp[j][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      uint32_t aq[4], ado[4];
      mma::load_a(aq, Qs, LD, warp * 16, kk * 16);
      mma::load_a(ado, dOs, LD, warp * 16, kk * 16);
#pragma unroll
      for (int j = 0; j < NK; ++j) {
        uint32_t b[2];
        mma::load_b_nk(b, Ks, LD, j * 8, kk * 16);
        mma::mma16816(p[j], aq, b);  // S = Q·Kᵀ
        mma::load_b_nk(b, Vs, LD, j * 8, kk * 16);
        mma::mma16816(dp[j], ado, b);  // dP = dO·Vᵀ
      }
    }
#pragma unroll
    for (int j = 0; j < NK; ++j) {
      const int c = j * 8 + 2 * (lane & 3);
      const float v0 = kval[c], v1 = kval[c + 1];
      // a select, not a product: a pad key's score was never part of the forward's lse, so exp may be inf
      // there, and 0 × inf would put a NaN into dS
      p[j][0] = v0 != 0.0f ? __expf(p[j][0] - l0) : 0.0f;
      p[j][1] = v1 != 0.0f ? __expf(p[j][1] - l0) : 0.0f;
      p[j][2] = v0 != 0.0f ? __expf(p[j][2] - l1) : 0.0f;
      p[j][3] = v1 != 0.0f ? __expf(p[j][3] - l1) : 0.0f;
      dp[j][0] = p[j][0] * (dp[j][0] - d0);  // dS
      dp[j][1] = p[j][1] * (dp[j][1] - d0);
      dp[j][2] = p[j][2] * (dp[j][2] - d1);
      dp[j][3] = p[j][3] * (dp[j][3] - d1);
    }
#pragma unroll
    for (int kk = 0; kk < kB / 16; ++kk) {
      uint32_t a[4];
      mma::acc_to_a<NK>(a, dp, kk);
#pragma unroll
      for (int j = 0; j < ND; ++j) {
        uint32_t b[2];
        mma::load_b_kn(b, Ks, LD, kk * 16, j * 8);
        mma::mma16816(dq[j], a, b);
      }
    }
  }
  store_unrot_acc<D>(dqkv + static_cast<int64_t>(t0 + r0) * 3 * C + h * D,
                     dqkv + static_cast<int64_t>(t0 + r1) * 3 * C + h * D, r0, r1, r0 < L, r1 < L, dq, inv_freq,
                     scale);
}

template <int D>
size_t mma_backward_smem() {
  return 4 * 64 * (D + 8) * sizeof(bf16) + 2 * 64 * sizeof(float);
}

}  // namespace

namespace {
// Δ[H,T] first, then the rotated q and k; the latter start on a 256-byte boundary for 16-byte loads.
size_t delta_floats(const AttentionShape& a) { return (static_cast<size_t>(a.T) * a.H + 63) / 64 * 64; }

size_t native_backward_scratch_floats(const AttentionShape& a) {
  return delta_floats(a) + static_cast<size_t>(a.T) * a.H * a.D;
}

void backward_native(void* dqkv, const void* dout, const void* qkv, const void* out, const float* lse,
                     const AttentionShape& a, DType dt, float* scratch, float scale, cudaStream_t s) {
  float* delta = scratch;
  dispatch_act(dt, [&](auto tag) {
    using E = decltype(tag);
    const int64_t n = a.T * a.H;
    attention_delta_kernel<E><<<(n + 255) / 256, 256, 0, s>>>(delta, static_cast<const E*>(dout),
                                                              static_cast<const E*>(out), a.T, a.H, a.D);
    ESM2_CUDA_CHECK_LAUNCH();
    if constexpr (std::is_same_v<E, bf16>) {
      if (attention_uses_mma(dt, a.D)) {
        bf16* qr = reinterpret_cast<bf16*>(scratch + delta_floats(a));
        bf16* kr = qr + a.T * a.H * a.D;
        launch_rotate_qk(qr, kr, qkv, a, scale, s);
        attn::dispatch_head_dim(a.D, [&](auto dc) {
          constexpr int D = decltype(dc)::value;
          if constexpr (D % 16 == 0) {
            const size_t smem = mma_backward_smem<D>();
            ESM2_CUDA_CHECK(cudaFuncSetAttribute(attention_dkv_mma<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem)));
            ESM2_CUDA_CHECK(cudaFuncSetAttribute(attention_dq_mma<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem)));
            const dim3 grid(a.S, a.H, (a.max_seqlen + 63) / 64);
            auto* dq = static_cast<bf16*>(dqkv);
            auto* go = static_cast<const bf16*>(dout);
            auto* x = static_cast<const bf16*>(qkv);
            attention_dkv_mma<D><<<grid, 128, smem, s>>>(dq, go, x, qr, kr, lse, delta, a.cu_seqlens, a.ids, a.pad_id,
                                                         a.inv_freq, a.T, a.H);
            ESM2_CUDA_CHECK_LAUNCH();
            attention_dq_mma<D><<<grid, 128, smem, s>>>(dq, go, x, qr, kr, lse, delta, a.cu_seqlens, a.ids, a.pad_id,
                                                        a.inv_freq, a.T, a.H, scale);
            ESM2_CUDA_CHECK_LAUNCH();
          }
        });
        return;
      }
    }
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

}  // namespace

size_t attention_backward_scratch_floats(const AttentionShape& a, DType dt) {
  const int Dk = attention_kernel_head_dim(dt, a.D);
  if (Dk == a.D) return native_backward_scratch_floats(a);
  AttentionShape ap = a;
  ap.D = Dk;
  const size_t n = static_cast<size_t>(a.T) * a.H * Dk;
  return 2 * attn_pad::act_floats(3 * n, dt) + 2 * attn_pad::act_floats(n, dt) + 64 +
         native_backward_scratch_floats(ap);
}

void launch_attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out, const float* lse,
                               const AttentionShape& a, DType dt, float* scratch, cudaStream_t s) {
  if (a.T == 0 || a.S == 0) return;
  const float scale = static_cast<float>(std::pow(static_cast<double>(a.D), -0.5));  // as the CPU backend
  const int Dk = attention_kernel_head_dim(dt, a.D);
  if (Dk == a.D) {
    backward_native(dqkv, dout, qkv, out, lse, a, dt, scratch, scale, s);
    return;
  }
  const size_t n = static_cast<size_t>(a.T) * a.H * Dk;
  float* qkv_p = scratch;
  float* dqkv_p = qkv_p + attn_pad::act_floats(3 * n, dt);
  float* out_p = dqkv_p + attn_pad::act_floats(3 * n, dt);
  float* dout_p = out_p + attn_pad::act_floats(n, dt);
  float* inv_p = dout_p + attn_pad::act_floats(n, dt);
  float* inner = inv_p + 64;
  launch_pad_heads(qkv_p, qkv, a.T, 3, a.H, a.D, Dk, dt, s);
  launch_pad_heads(out_p, out, a.T, 1, a.H, a.D, Dk, dt, s);
  launch_pad_heads(dout_p, dout, a.T, 1, a.H, a.D, Dk, dt, s);
  launch_pad_inv_freq(inv_p, a.inv_freq, a.D, Dk, s);
  AttentionShape ap = a;
  ap.D = Dk;
  ap.inv_freq = inv_p;
  backward_native(dqkv_p, dout_p, qkv_p, out_p, lse, ap, dt, inner, scale, s);
  launch_unpad_heads(dqkv, dqkv_p, a.T, 3, a.H, a.D, Dk, dt, s);
}

}  // namespace esm2::cuda
