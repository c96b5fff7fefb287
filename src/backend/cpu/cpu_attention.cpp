// fp32 CPU rotary attention over a packed batch (cu_seqlens). One task per (sequence, head): the task
// builds rotated q and k for its sequence in thread scratch, forms the full [L, L] score matrix with
// sgemm, and writes only its own head's columns, so tasks never write the same value.
//
// Numerics follow HF EsmSelfAttention in fp32: q·D^-0.5 first, then rotate-half rotary on q and k
// (cos/sin of float(pos)·inv_freq), scores q·kᵀ, softmax over non-pad keys of the same sequence, ·v.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_math.h"
#include "core/error.h"

namespace esm2 {

namespace {

float* F(void* p) { return static_cast<float*>(p); }
const float* F(const void* p) { return static_cast<const float*>(p); }

float q_scale(int D) { return static_cast<float>(std::pow(static_cast<double>(D), -0.5)); }

// dst[L, D] = rot(src rows · scale); src rows have stride ld.
void rotate_rows(float* dst, const float* src, int64_t ld, int64_t L, int D, float scale, const float* cos_t,
                 const float* sin_t) {
  const int h2 = D / 2;
  for (int64_t i = 0; i < L; ++i) {
    const float* x = src + i * ld;
    float* y = dst + i * D;
    const float* c = cos_t + i * h2;
    const float* s = sin_t + i * h2;
    for (int d = 0; d < h2; ++d) {
      const float x1 = x[d] * scale, x2 = x[d + h2] * scale;
      y[d] = x1 * c[d] - x2 * s[d];
      y[d + h2] = x2 * c[d] + x1 * s[d];
    }
  }
}

// dst rows (stride ld) = rotᵀ(src[L, D]) · scale: the adjoint of rotate_rows.
void unrotate_rows(float* dst, int64_t ld, const float* src, int64_t L, int D, float scale, const float* cos_t,
                   const float* sin_t) {
  const int h2 = D / 2;
  for (int64_t i = 0; i < L; ++i) {
    const float* y = src + i * D;
    float* x = dst + i * ld;
    const float* c = cos_t + i * h2;
    const float* s = sin_t + i * h2;
    for (int d = 0; d < h2; ++d) {
      x[d] = (y[d] * c[d] + y[d + h2] * s[d]) * scale;
      x[d + h2] = (y[d + h2] * c[d] - y[d] * s[d]) * scale;
    }
  }
}


bool has_pad_key(const AttentionShape& a, int64_t t0, int64_t L) {
  if (!a.ids) return false;
  for (int64_t j = 0; j < L; ++j)
    if (a.ids[t0 + j] == a.pad_id) return true;
  return false;
}

void check_shape(const AttentionShape& a) {
  ESM2_ASSERT(a.D % 2 == 0 && a.H > 0 && a.S >= 0 && a.cu_seqlens && a.inv_freq);
}

}  // namespace

void CpuBackend::build_rotary_table(const AttentionShape& a) {
  const int h2 = a.D / 2;
  rot_cos_.resize(static_cast<size_t>(a.max_seqlen) * h2);
  rot_sin_.resize(rot_cos_.size());
  for (int p = 0; p < a.max_seqlen; ++p)
    for (int i = 0; i < h2; ++i) {
      const float f = static_cast<float>(p) * a.inv_freq[i];  // torch.outer(t, inv_freq) in fp32
      rot_cos_[p * h2 + i] = std::cos(f);
      rot_sin_[p * h2 + i] = std::sin(f);
    }
}

void CpuBackend::attention_forward(void* outv, float* lse, const void* qkvv, const AttentionShape& a) {
  check_shape(a);
  build_rotary_table(a);
  float* out = F(outv);
  const float* qkv = F(qkvv);
  const int64_t C = static_cast<int64_t>(a.H) * a.D, C3 = 3 * C;
  const int64_t Lmax = a.max_seqlen;
  const float scale = q_scale(a.D);
  for (int t = 0; t < num_threads_; ++t) thread_scratch(t, 2 * Lmax * a.D + Lmax * Lmax);
  const int64_t tasks = static_cast<int64_t>(a.S) * a.H;
#pragma omp parallel for num_threads(num_threads_) schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int s = static_cast<int>(task / a.H), h = static_cast<int>(task % a.H);
    const int64_t t0 = a.cu_seqlens[s], L = a.cu_seqlens[s + 1] - t0;
    if (L == 0) continue;
    float* Q = scratch_[omp_get_thread_num()].data();  // [L, D]
    float* K = Q + Lmax * a.D;                          // [L, D]
    float* P = K + Lmax * a.D;                          // [L, L]
    const float* base = qkv + t0 * C3 + h * a.D;
    rotate_rows(Q, base, C3, L, a.D, scale, rot_cos_.data(), rot_sin_.data());
    rotate_rows(K, base + C, C3, L, a.D, 1.0f, rot_cos_.data(), rot_sin_.data());
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, a.D, 1.0f, Q, a.D, K, a.D, 0.0f, P, L);
    const bool pads = has_pad_key(a, t0, L);
    for (int64_t i = 0; i < L; ++i) {
      float* row = P + i * L;
      float mx = -std::numeric_limits<float>::infinity();
      if (pads) {
        for (int64_t j = 0; j < L; ++j)
          if (a.ids[t0 + j] != a.pad_id) mx = std::max(mx, row[j]);
      } else {
        mx = cpu::row_max(row, L);
      }
      cpu::exp_shifted(row, L, mx);
      if (pads)
        for (int64_t j = 0; j < L; ++j)
          if (a.ids[t0 + j] == a.pad_id) row[j] = 0.0f;
      const float sum = cpu::row_sum(row, L);
      const float inv = 1.0f / sum;
      for (int64_t j = 0; j < L; ++j) row[j] *= inv;
      lse[h * a.T + t0 + i] = mx + std::log(sum);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, a.D, L, 1.0f, P, L, base + 2 * C, C3, 0.0f,
                out + t0 * C + h * a.D, C);
  }
}

void CpuBackend::attention_backward(void* dqkvv, const void* doutv, const void* qkvv, const void* outv,
                                    const float* lse, const AttentionShape& a) {
  check_shape(a);
  build_rotary_table(a);
  float* dqkv = F(dqkvv);
  const float *dout = F(doutv), *qkv = F(qkvv), *out = F(outv);
  const int64_t C = static_cast<int64_t>(a.H) * a.D, C3 = 3 * C;
  const int64_t Lmax = a.max_seqlen;
  const float scale = q_scale(a.D);
  for (int t = 0; t < num_threads_; ++t) thread_scratch(t, 4 * Lmax * a.D + 2 * Lmax * Lmax + Lmax);
  const int64_t tasks = static_cast<int64_t>(a.S) * a.H;
#pragma omp parallel for num_threads(num_threads_) schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int s = static_cast<int>(task / a.H), h = static_cast<int>(task % a.H);
    const int64_t t0 = a.cu_seqlens[s], L = a.cu_seqlens[s + 1] - t0;
    if (L == 0) continue;
    float* Q = scratch_[omp_get_thread_num()].data();  // [L, D] rotated, scaled q
    float* K = Q + Lmax * a.D;                          // [L, D] rotated k
    float* dQ = K + Lmax * a.D;                         // [L, D] grad of rotated q
    float* dK = dQ + Lmax * a.D;                        // [L, D] grad of rotated k
    float* P = dK + Lmax * a.D;                         // [L, L] probabilities
    float* dP = P + Lmax * Lmax;                        // [L, L] grad of probabilities, then of scores
    float* Di = dP + Lmax * Lmax;                       // [L]   Σ_d dO·O
    const float* base = qkv + t0 * C3 + h * a.D;
    float* dbase = dqkv + t0 * C3 + h * a.D;
    const float* dO = dout + t0 * C + h * a.D;
    const float* O = out + t0 * C + h * a.D;
    rotate_rows(Q, base, C3, L, a.D, scale, rot_cos_.data(), rot_sin_.data());
    rotate_rows(K, base + C, C3, L, a.D, 1.0f, rot_cos_.data(), rot_sin_.data());
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, a.D, 1.0f, Q, a.D, K, a.D, 0.0f, P, L);
    const bool pads = has_pad_key(a, t0, L);
    for (int64_t i = 0; i < L; ++i) {
      float* row = P + i * L;
      const float l = lse[h * a.T + t0 + i];
      cpu::exp_shifted(row, L, l);
      if (pads)
        for (int64_t j = 0; j < L; ++j)
          if (a.ids[t0 + j] == a.pad_id) row[j] = 0.0f;
      float d = 0;
      for (int k = 0; k < a.D; ++k) d += dO[i * C + k] * O[i * C + k];
      Di[i] = d;
    }
    // dV = Pᵀ·dO, straight into the v columns of dqkv
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, a.D, L, 1.0f, P, L, dO, C, 0.0f, dbase + 2 * C, C3);
    // dP = dO·Vᵀ; dS = P ∘ (dP − D_i)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, L, a.D, 1.0f, dO, C, base + 2 * C, C3, 0.0f, dP, L);
    for (int64_t i = 0; i < L; ++i) {
      float* dpr = dP + i * L;
      const float* pr = P + i * L;
      const float di = Di[i];
      for (int64_t j = 0; j < L; ++j) dpr[j] = pr[j] * (dpr[j] - di);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, L, a.D, L, 1.0f, dP, L, K, a.D, 0.0f, dQ, a.D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, a.D, L, 1.0f, dP, L, Q, a.D, 0.0f, dK, a.D);
    unrotate_rows(dbase, C3, dQ, L, a.D, scale, rot_cos_.data(), rot_sin_.data());
    unrotate_rows(dbase + C, C3, dK, L, a.D, 1.0f, rot_cos_.data(), rot_sin_.data());
  }
}

}  // namespace esm2
