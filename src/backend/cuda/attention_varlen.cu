#include "backend/cuda/attention_varlen.cuh"
#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda {

namespace {

__device__ __forceinline__ int seq_of(const int32_t* cu, int S, int64_t t) {  // last s with cu[s] <= t
  int lo = 0, hi = S - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (cu[mid] <= t)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

__global__ void stats_to_lse_kernel(float* lse, const float* stats, const int32_t* cu, int S, int64_t T, int H,
                                    int sp) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= T * H) return;
  const int64_t t = i % T;
  const int h = static_cast<int>(i / T);
  const int b = seq_of(cu, S, t);
  lse[i] = stats[(static_cast<int64_t>(b) * H + h) * sp + (t - cu[b])];
}

__global__ void lse_to_stats_kernel(float* stats, const float* lse, const int32_t* cu, int S, int B, int64_t T, int H,
                                    int sp) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= static_cast<int64_t>(B) * H * sp) return;
  const int pos = static_cast<int>(i % sp);
  const int h = static_cast<int>((i / sp) % H);
  const int b = static_cast<int>(i / (static_cast<int64_t>(sp) * H));
  const int len = b < S ? cu[b + 1] - cu[b] : 0;
  stats[i] = pos < len ? lse[static_cast<int64_t>(h) * T + cu[b] + pos] : 0.0f;
}

// One block per sequence slot b < B: its length and the number of keys it keeps.
__global__ void kv_count_kernel(int32_t* seqlen_q, int32_t* seqlen_kv, const int32_t* cu, const int32_t* ids,
                                int32_t pad_id, int S) {
  const int b = blockIdx.x;
  const int begin = b < S ? cu[b] : 0, end = b < S ? cu[b + 1] : 0;
  int n = 0;
  for (int t = begin + static_cast<int>(threadIdx.x); t < end; t += blockDim.x) n += ids == nullptr || ids[t] != pad_id;
  for (int o = 16; o > 0; o >>= 1) n += __shfl_down_sync(0xffffffffu, n, o);
  __shared__ int part[32];
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = n;
  __syncthreads();
  if (threadIdx.x == 0) {
    int total = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x + 31) / 32; ++w) total += part[w];
    seqlen_q[b] = end - begin;
    seqlen_kv[b] = total;
  }
}

// One thread: the offsets are prefix sums over B + 1 slots (B is a few hundred; the attention call
// behind it takes milliseconds).
__global__ void kv_offsets_kernel(int32_t* off_c, int32_t* off_3c, int32_t* off_kv, int32_t* kv_start,
                                  const int32_t* seqlen_kv, const int32_t* cu, int S, int B, int64_t C) {
  int64_t kept = 0;
  for (int b = 0; b <= B; ++b) {
    const int64_t start = cu[min(b, S)];
    off_c[b] = static_cast<int32_t>(start * C);
    off_3c[b] = static_cast<int32_t>(start * 3 * C);
    kv_start[b] = static_cast<int32_t>(kept);
    off_kv[b] = static_cast<int32_t>(kept * 2 * C);
    if (b < B) kept += seqlen_kv[b];
  }
}

// One block per sequence b < S (blockDim a multiple of 32, at most 1024): kv_pos by a block-wide scan of
// the keep flags, chunk by chunk, carrying the count of the chunks before.
__global__ void kv_pos_kernel(int32_t* kv_pos, const int32_t* kv_start, const int32_t* cu, const int32_t* ids,
                              int32_t pad_id) {
  const int b = blockIdx.x;
  const int begin = cu[b], end = cu[b + 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __shared__ int sums[32];
  __shared__ int carry;
  if (threadIdx.x == 0) carry = kv_start[b];
  __syncthreads();
  for (int base = begin; base < end; base += blockDim.x) {  // the same trip count for every thread
    const int t = base + static_cast<int>(threadIdx.x);
    const int keep = t < end && (ids == nullptr || ids[t] != pad_id);
    int x = keep;  // inclusive scan within the warp
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, x, o);
      if (lane >= o) x += y;
    }
    if (lane == 31) sums[warp] = x;
    __syncthreads();
    if (warp == 0) {  // inclusive scan of the warp totals
      int w = lane < warps ? sums[lane] : 0;
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, w, o);
        if (lane >= o) w += y;
      }
      if (lane < warps) sums[lane] = w;
    }
    __syncthreads();
    if (t < end) kv_pos[t] = keep ? carry + (warp > 0 ? sums[warp - 1] : 0) + x - 1 : -1;
    __syncthreads();  // every thread has read carry and sums
    if (threadIdx.x == 0) carry += sums[warps - 1];
    __syncthreads();
  }
}

// One thread per (token, head, rotary pair): q → q_out, and for a kept key [rot(k) | v] → its compacted row.
__global__ void rotate_compact_kernel(bf16* __restrict__ q_out, int64_t ld_q, bf16* __restrict__ kv,
                                      const int32_t* __restrict__ kv_pos, const bf16* __restrict__ qkv,
                                      const int32_t* __restrict__ cu, int S, int64_t T, int H, int D,
                                      const float* __restrict__ inv_freq) {
  const int h2 = D / 2;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= T * H * h2) return;
  const int d = static_cast<int>(i % h2);
  const int h = static_cast<int>((i / h2) % H);
  const int64_t t = i / (static_cast<int64_t>(h2) * H);
  const int pos = static_cast<int>(t - cu[seq_of(cu, S, t)]);
  float sn, cs;
  sincosf(static_cast<float>(pos) * inv_freq[d], &sn, &cs);
  const int64_t C = static_cast<int64_t>(H) * D;
  const bf16* q = qkv + t * 3 * C + h * D;
  const float q1 = __bfloat162float(q[d]), q2 = __bfloat162float(q[d + h2]);
  bf16* qo = q_out + t * ld_q + h * D;
  qo[d] = __float2bfloat16_rn(q1 * cs - q2 * sn);
  qo[d + h2] = __float2bfloat16_rn(q2 * cs + q1 * sn);
  const int32_t r = kv_pos[t];
  if (r < 0) return;
  const bf16* k = q + C;
  const bf16* v = q + 2 * C;
  const float k1 = __bfloat162float(k[d]), k2 = __bfloat162float(k[d + h2]);
  bf16* ko = kv + static_cast<int64_t>(r) * 2 * C + h * D;
  ko[d] = __float2bfloat16_rn(k1 * cs - k2 * sn);
  ko[d + h2] = __float2bfloat16_rn(k2 * cs + k1 * sn);
  ko[C + d] = v[d];
  ko[C + d + h2] = v[d + h2];
}

// One thread per (token, head, rotary pair): dq unrotated in place, dk unrotated and dv copied from the
// token's compacted row (zero for a dropped key).
__global__ void expand_unrotate_kernel(bf16* __restrict__ dqkv, const bf16* __restrict__ dkv,
                                       const int32_t* __restrict__ kv_pos, const int32_t* __restrict__ cu, int S,
                                       int64_t T, int H, int D, const float* __restrict__ inv_freq) {
  const int h2 = D / 2;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= T * H * h2) return;
  const int d = static_cast<int>(i % h2);
  const int h = static_cast<int>((i / h2) % H);
  const int64_t t = i / (static_cast<int64_t>(h2) * H);
  const int pos = static_cast<int>(t - cu[seq_of(cu, S, t)]);
  float sn, cs;
  sincosf(static_cast<float>(pos) * inv_freq[d], &sn, &cs);
  const int64_t C = static_cast<int64_t>(H) * D;
  bf16* gq = dqkv + t * 3 * C + h * D;
  const float q1 = __bfloat162float(gq[d]), q2 = __bfloat162float(gq[d + h2]);
  gq[d] = __float2bfloat16_rn(q1 * cs + q2 * sn);
  gq[d + h2] = __float2bfloat16_rn(q2 * cs - q1 * sn);
  const int32_t r = kv_pos[t];
  bf16* gk = gq + C;
  bf16* gv = gq + 2 * C;
  if (r < 0) {  // a dropped (masked) key gets no gradient
    gk[d] = gk[d + h2] = gv[d] = gv[d + h2] = __float2bfloat16_rn(0.0f);
    return;
  }
  const bf16* src = dkv + static_cast<int64_t>(r) * 2 * C + h * D;
  const float k1 = __bfloat162float(src[d]), k2 = __bfloat162float(src[d + h2]);
  gk[d] = __float2bfloat16_rn(k1 * cs + k2 * sn);
  gk[d + h2] = __float2bfloat16_rn(k2 * cs - k1 * sn);
  gv[d] = src[C + d];
  gv[d + h2] = src[C + d + h2];
}

unsigned blocks(int64_t n) { return static_cast<unsigned>((n + 255) / 256); }

}  // namespace

void launch_kv_compaction(int32_t* seqlen_q, int32_t* seqlen_kv, int32_t* off_c, int32_t* off_3c, int32_t* off_kv,
                          int32_t* kv_start, int32_t* kv_pos, const AttentionShape& a, int B, cudaStream_t s) {
  if (B <= 0) return;
  const int64_t C = static_cast<int64_t>(a.H) * a.D;
  kv_count_kernel<<<B, 256, 0, s>>>(seqlen_q, seqlen_kv, a.cu_seqlens, a.ids, a.pad_id, a.S);
  ESM2_CUDA_CHECK_LAUNCH();
  kv_offsets_kernel<<<1, 1, 0, s>>>(off_c, off_3c, off_kv, kv_start, seqlen_kv, a.cu_seqlens, a.S, B, C);
  ESM2_CUDA_CHECK_LAUNCH();
  if (a.S > 0) {
    kv_pos_kernel<<<a.S, 256, 0, s>>>(kv_pos, kv_start, a.cu_seqlens, a.ids, a.pad_id);
    ESM2_CUDA_CHECK_LAUNCH();
  }
}

void launch_rotate_compact_qkv(void* q_out, int64_t ld_q, void* kv, const int32_t* kv_pos, const void* qkv,
                               const AttentionShape& a, cudaStream_t s) {
  const int64_t n = a.T * a.H * (a.D / 2);
  if (n == 0) return;
  rotate_compact_kernel<<<blocks(n), 256, 0, s>>>(static_cast<bf16*>(q_out), ld_q, static_cast<bf16*>(kv), kv_pos,
                                                  static_cast<const bf16*>(qkv), a.cu_seqlens, a.S, a.T, a.H, a.D,
                                                  a.inv_freq);
  ESM2_CUDA_CHECK_LAUNCH();
}

void launch_expand_unrotate_dqkv(void* dqkv, const void* dkv, const int32_t* kv_pos, const AttentionShape& a,
                                 cudaStream_t s) {
  const int64_t n = a.T * a.H * (a.D / 2);
  if (n == 0) return;
  expand_unrotate_kernel<<<blocks(n), 256, 0, s>>>(static_cast<bf16*>(dqkv), static_cast<const bf16*>(dkv), kv_pos,
                                                   a.cu_seqlens, a.S, a.T, a.H, a.D, a.inv_freq);
  ESM2_CUDA_CHECK_LAUNCH();
}

void launch_stats_to_lse(float* lse, const float* stats, const int32_t* cu, int S, int64_t T, int H, int sp,
                         cudaStream_t s) {
  if (T * H == 0) return;
  stats_to_lse_kernel<<<blocks(T * H), 256, 0, s>>>(lse, stats, cu, S, T, H, sp);
  ESM2_CUDA_CHECK_LAUNCH();
}

void launch_lse_to_stats(float* stats, const float* lse, const int32_t* cu, int S, int B, int64_t T, int H, int sp,
                         cudaStream_t s) {
  const int64_t n = static_cast<int64_t>(B) * H * sp;
  if (n == 0) return;
  lse_to_stats_kernel<<<blocks(n), 256, 0, s>>>(stats, lse, cu, S, B, T, H, sp);
  ESM2_CUDA_CHECK_LAUNCH();
}

}  // namespace esm2::cuda
