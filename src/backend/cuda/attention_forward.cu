// One block per (sequence, head, tile of 64 queries); key/value tiles stream through shared memory with
// rotary applied on load, and an online softmax (running max m, running sum l) keeps the output in
// registers. Arithmetic in fp32 whatever the activation dtype.
#include <cmath>

#include "backend/cuda/attention_forward.cuh"
#include "backend/cuda/attention_mma.cuh"
#include "backend/cuda/attention_rotary.cuh"
#include "backend/cuda/attention_tiles.cuh"
#include "backend/cuda/attention_pad.cuh"

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

// Tensor-core forward (FlashAttention-2 schedule): a block of 4 warps owns 64 queries of one
// (sequence, head), each warp 16 rows; key/value tiles of 64 rows stream through shared memory.
// S = Q·Kᵀ and O += P·V run on mma.sync with fp32 accumulators; the online softmax works on the
// accumulator fragments (a row's 64 scores are spread over the 4 lanes of a quad).
template <int D>
__global__ void __launch_bounds__(128)
    attention_forward_mma(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ qr,
                          const bf16* __restrict__ kr, const bf16* __restrict__ qkv, const int32_t* __restrict__ cu,
                          const int32_t* __restrict__ ids, int32_t pad_id, int64_t Ttot, int H) {
  constexpr int kB = 64, LD = D + 8, NK = kB / 8, ND = D / 8, KD = D / 16;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* Qs = reinterpret_cast<bf16*>(smem_raw);
  bf16* Ks = Qs + kB * LD;
  bf16* Vs = Ks + kB * LD;
  float* kbias = reinterpret_cast<float*>(Vs + kB * LD);
  const int s = blockIdx.x, h = blockIdx.y;
  const int t0 = cu[s], L = cu[s + 1] - t0;
  const int q0 = blockIdx.z * kB;
  if (q0 >= L) return;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t C = static_cast<int64_t>(H) * D;
  mma::load_rows<D, kB, 128>(Qs, qr + static_cast<int64_t>(t0) * C + h * D, C, q0, L);

  float o[ND][4];
#pragma unroll
  for (int j = 0; j < ND; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
  for (int k0 = 0; k0 < L; k0 += kB) {
    __syncthreads();
    mma::load_rows<D, kB, 128>(Ks, kr + static_cast<int64_t>(t0) * C + h * D, C, k0, L);
    mma::load_rows<D, kB, 128>(Vs, qkv + static_cast<int64_t>(t0) * 3 * C + 2 * C + h * D, 3 * C, k0, L);
    for (int j = threadIdx.x; j < kB; j += 128)
      kbias[j] = (k0 + j < L && !(ids && ids[t0 + k0 + j] == pad_id)) ? 0.0f : -INFINITY;
    __syncthreads();
    float sc[NK][4];
#pragma unroll
    for (int j = 0; j < NK; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
      uint32_t a[4];
      mma::load_a(a, Qs, LD, warp * 16, kk * 16);
#pragma unroll
      for (int j = 0; j < NK; ++j) {
        uint32_t b[2];
        mma::load_b_nk(b, Ks, LD, j * 8, kk * 16);
        mma::mma16816(sc[j], a, b);
      }
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < NK; ++j) {
      const int c = j * 8 + 2 * (lane & 3);
      sc[j][0] += kbias[c];
      sc[j][1] += kbias[c + 1];
      sc[j][2] += kbias[c];
      sc[j][3] += kbias[c + 1];
      mx0 = fmaxf(mx0, fmaxf(sc[j][0], sc[j][1]));
      mx1 = fmaxf(mx1, fmaxf(sc[j][2], sc[j][3]));
    }
    mx0 = mma::quad_max(mx0);
    mx1 = mma::quad_max(mx1);
    const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
    const float u0 = n0 == -INFINITY ? 0.0f : n0, u1 = n1 == -INFINITY ? 0.0f : n1;  // all-masked rows
    const float c0 = __expf(m0 - u0), c1 = __expf(m1 - u1);
    float r0 = 0.0f, r1 = 0.0f;
#pragma unroll
    for (int j = 0; j < NK; ++j) {
      sc[j][0] = __expf(sc[j][0] - u0);
      sc[j][1] = __expf(sc[j][1] - u0);
      sc[j][2] = __expf(sc[j][2] - u1);
      sc[j][3] = __expf(sc[j][3] - u1);
      r0 += sc[j][0] + sc[j][1];
      r1 += sc[j][2] + sc[j][3];
    }
    l0 = l0 * c0 + r0;
    l1 = l1 * c1 + r1;
    m0 = n0;
    m1 = n1;
#pragma unroll
    for (int j = 0; j < ND; ++j) {
      o[j][0] *= c0;
      o[j][1] *= c0;
      o[j][2] *= c1;
      o[j][3] *= c1;
    }
#pragma unroll
    for (int kk = 0; kk < kB / 16; ++kk) {
      uint32_t a[4];
      mma::acc_to_a<NK>(a, sc, kk);
#pragma unroll
      for (int j = 0; j < ND; ++j) {
        uint32_t b[2];
        mma::load_b_kn(b, Vs, LD, kk * 16, j * 8);
        mma::mma16816(o[j], a, b);
      }
    }
  }
  l0 = mma::quad_sum(l0);
  l1 = mma::quad_sum(l1);
  const int r0 = q0 + warp * 16 + (lane >> 2), r1 = r0 + 8;
  const float i0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, i1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
#pragma unroll
  for (int j = 0; j < ND; ++j) {
    const int c = j * 8 + 2 * (lane & 3);
    if (r0 < L)
      *reinterpret_cast<__nv_bfloat162*>(out + static_cast<int64_t>(t0 + r0) * C + h * D + c) =
          __floats2bfloat162_rn(o[j][0] * i0, o[j][1] * i0);
    if (r1 < L)
      *reinterpret_cast<__nv_bfloat162*>(out + static_cast<int64_t>(t0 + r1) * C + h * D + c) =
          __floats2bfloat162_rn(o[j][2] * i1, o[j][3] * i1);
  }
  if ((lane & 3) == 0) {
    if (r0 < L) lse[static_cast<int64_t>(h) * Ttot + t0 + r0] = l0 > 0.0f ? m0 + logf(l0) : -INFINITY;
    if (r1 < L) lse[static_cast<int64_t>(h) * Ttot + t0 + r1] = l1 > 0.0f ? m1 + logf(l1) : -INFINITY;
  }
}

template <int D>
size_t mma_forward_smem() {
  return 3 * 64 * (D + 8) * sizeof(bf16) + 64 * sizeof(float);
}

}  // namespace

bool attention_uses_mma(DType dt, int D) { return dt == DType::BF16 && (D == 16 || D == 32 || D == 64 || D == 128); }

int attention_kernel_head_dim(DType dt, int D) {
  if (D % 2 != 0 || D < 2 || D > 128)
    throw_unsupported("attention: head dim must be even and at most 128", __FILE__, __LINE__);
  (void)dt;
  if (D == 24) return 24;  // 35M: the CUDA-core kernel has a D = 24 instance (both dtypes)
  for (int k : {16, 32, 64, 128})
    if (D <= k) return k;
  return 128;
}

namespace {

size_t native_forward_scratch_floats(const AttentionShape& a) { return static_cast<size_t>(a.T) * a.H * a.D; }

void forward_native(void* out, float* lse, const void* qkv, const AttentionShape& a, DType dt, float* scratch,
                    float scale, cudaStream_t s) {
  if (attention_uses_mma(dt, a.D)) {
    bf16* qr = reinterpret_cast<bf16*>(scratch);
    bf16* kr = qr + a.T * a.H * a.D;
    launch_rotate_qk(qr, kr, qkv, a, scale, s);
    attn::dispatch_head_dim(a.D, [&](auto dc) {
      constexpr int D = decltype(dc)::value;
      if constexpr (D % 16 == 0) {
        const size_t smem = mma_forward_smem<D>();
        ESM2_CUDA_CHECK(cudaFuncSetAttribute(attention_forward_mma<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(smem)));
        const dim3 grid(a.S, a.H, (a.max_seqlen + 63) / 64);
        attention_forward_mma<D><<<grid, 128, smem, s>>>(static_cast<bf16*>(out), lse, qr, kr,
                                                         static_cast<const bf16*>(qkv), a.cu_seqlens, a.ids,
                                                         a.pad_id, a.T, a.H);
        ESM2_CUDA_CHECK_LAUNCH();
      }
    });
    return;
  }
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

}  // namespace

size_t attention_forward_scratch_floats(const AttentionShape& a, DType dt) {
  const int Dk = attention_kernel_head_dim(dt, a.D);
  if (Dk == a.D) return native_forward_scratch_floats(a);
  AttentionShape ap = a;
  ap.D = Dk;
  const size_t n = static_cast<size_t>(a.T) * a.H * Dk;
  return attn_pad::act_floats(3 * n, dt) + attn_pad::act_floats(n, dt) + 64 + native_forward_scratch_floats(ap);
}

void launch_attention_forward(void* out, float* lse, const void* qkv, const AttentionShape& a, DType dt,
                              float* scratch, cudaStream_t s) {
  if (a.T == 0 || a.S == 0 || a.max_seqlen == 0) return;
  const float scale = static_cast<float>(std::pow(static_cast<double>(a.D), -0.5));  // as the CPU backend
  const int Dk = attention_kernel_head_dim(dt, a.D);
  if (Dk == a.D) {
    forward_native(out, lse, qkv, a, dt, scratch, scale, s);
    return;
  }
  const size_t n = static_cast<size_t>(a.T) * a.H * Dk;
  float* qkv_p = scratch;
  float* out_p = qkv_p + attn_pad::act_floats(3 * n, dt);
  float* inv_p = out_p + attn_pad::act_floats(n, dt);
  float* inner = inv_p + 64;
  launch_pad_heads(qkv_p, qkv, a.T, 3, a.H, a.D, Dk, dt, s);
  launch_pad_inv_freq(inv_p, a.inv_freq, a.D, Dk, s);
  AttentionShape ap = a;
  ap.D = Dk;
  ap.inv_freq = inv_p;
  forward_native(out_p, lse, qkv_p, ap, dt, inner, scale, s);
  launch_unpad_heads(out, out_p, a.T, 1, a.H, a.D, Dk, dt, s);
}

}  // namespace esm2::cuda
