// fp32 CPU backend: memory, dense products, elementwise ops, LayerNorm, loss and optimizer.
// Attention lives in cpu_attention.cpp.
#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_math.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace esm2 {

namespace {

float* F(void* p) { return static_cast<float*>(p); }
const float* F(const void* p) { return static_cast<const float*>(p); }

// Column reductions (Σ over rows) are split over blocks of columns: each thread owns whole columns and
// sums its rows in index order, so the result never depends on the thread count or timing.
constexpr int64_t kColBlock = 64;

constexpr float kSqrt1_2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
// torch's tanh GELU: kBeta = sqrt(2/pi), kKappa = 0.044715
constexpr float kBeta = 0.79788456080286535588f;
constexpr float kKappa = 0.044715f;

}  // namespace

CpuBackend::CpuBackend(int num_threads) {
  num_threads_ = num_threads > 0 ? num_threads : omp_get_num_procs();
  // One thread pool only: OpenBLAS runs single-threaded inside our OpenMP regions. Two pools on the
  // same cores (OpenBLAS's workers yielding while OpenMP's spin) cost ~10% of a step on 2 cores.
  openblas_set_num_threads(1);
  scratch_.resize(num_threads_);
}

std::unique_ptr<Backend> make_cpu_backend(int num_threads) { return std::make_unique<CpuBackend>(num_threads); }

// ---------------------------------------------------------------- memory

void* CpuBackend::alloc(size_t bytes) {
  if (bytes == 0) bytes = 64;
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  ESM2_CHECK(p != nullptr, "cpu backend: out of memory allocating {} bytes", bytes);
  std::memset(p, 0, rounded);
  return p;
}
void CpuBackend::free(void* p) { std::free(p); }
void CpuBackend::copy_to_device(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}
void CpuBackend::copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}
void CpuBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memmove(dst, src, bytes);
}
void CpuBackend::memset_zero(void* dst, size_t bytes) {
  if (bytes) std::memset(dst, 0, bytes);
}
void CpuBackend::act_to_host_f32(float* dst, const void* src, size_t n) { copy_to_host(dst, src, n * 4); }
void CpuBackend::act_from_host_f32(void* dst, const float* src, size_t n) { copy_to_device(dst, src, n * 4); }

// ---------------------------------------------------------------- dense

void CpuBackend::gemm(const GemmArgs& g) {
  ESM2_ASSERT(g.a_dtype == DType::F32 && g.b_dtype == DType::F32 && g.c_dtype == DType::F32);
  if (g.M == 0 || g.N == 0) return;
  const int64_t lda = g.lda ? g.lda : (g.trans_a ? g.M : g.K);
  const int64_t ldb = g.ldb ? g.ldb : (g.trans_b ? g.K : g.N);
  const int64_t ldc = g.ldc ? g.ldc : g.N;
  float* C = F(g.C);
  float beta = g.beta;
  if (g.bias) {
    // C = beta·C + bias first, then the product accumulates onto it.
#pragma omp parallel for num_threads(num_threads_) schedule(static)
    for (int64_t i = 0; i < g.M; ++i) {
      float* row = C + i * ldc;
      if (beta == 0.0f)
        for (int64_t j = 0; j < g.N; ++j) row[j] = g.bias[j];
      else
        for (int64_t j = 0; j < g.N; ++j) row[j] = beta * row[j] + g.bias[j];
    }
    beta = 1.0f;
  }
  if (g.K == 0) {
    if (!g.bias) {
      for (int64_t i = 0; i < g.M; ++i)
        for (int64_t j = 0; j < g.N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    }
    return;
  }
  const CBLAS_TRANSPOSE ta = g.trans_a ? CblasTrans : CblasNoTrans, tb = g.trans_b ? CblasTrans : CblasNoTrans;
  const float* A = F(g.A);
  const float* B = F(g.B);
  const double flops = 2.0 * g.M * g.N * g.K;
  if (num_threads_ == 1 || flops < 4e6) {
    cblas_sgemm(CblasRowMajor, ta, tb, g.M, g.N, g.K, g.alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // Each thread computes a block of rows (or of columns, whichever dimension is larger) of C with a
  // single-threaded sgemm over the full K: every element has one owner and a fixed summation order.
  const bool by_rows = g.M >= g.N;
  const int64_t extent = by_rows ? g.M : g.N;
  const int parts = static_cast<int>(std::min<int64_t>(num_threads_, (extent + 15) / 16));
  const int64_t chunk = ((extent + parts - 1) / parts + 15) / 16 * 16;
#pragma omp parallel for num_threads(parts) schedule(static)
  for (int p = 0; p < parts; ++p) {
    const int64_t i0 = p * chunk, n = std::min(extent, i0 + chunk) - i0;
    if (n <= 0) continue;
    if (by_rows)
      cblas_sgemm(CblasRowMajor, ta, tb, n, g.N, g.K, g.alpha, g.trans_a ? A + i0 : A + i0 * lda, lda, B, ldb, beta,
                  C + i0 * ldc, ldc);
    else
      cblas_sgemm(CblasRowMajor, ta, tb, g.M, n, g.K, g.alpha, A, lda, g.trans_b ? B + i0 * ldb : B + i0, ldb, beta,
                  C + i0, ldc);
  }
}

void CpuBackend::bias_backward(float* db, const void* dyv, int64_t M, int64_t N) {
  const float* dy = F(dyv);
  const int64_t nblocks = (N + kColBlock - 1) / kColBlock;
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t j0 = b * kColBlock, j1 = std::min(N, j0 + kColBlock);
    float acc[kColBlock] = {};
    for (int64_t i = 0; i < M; ++i) {
      const float* row = dy + i * N;
      for (int64_t j = j0; j < j1; ++j) acc[j - j0] += row[j];
    }
    for (int64_t j = j0; j < j1; ++j) db[j] += acc[j - j0];
  }
}

void CpuBackend::add(void* outv, const void* av, const void* bv, size_t n) {
  float* out = F(outv);
  const float *a = F(av), *b = F(bv);
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

// ---------------------------------------------------------------- embedding, token dropout

void CpuBackend::embedding_forward(void* outv, const int32_t* ids, const float* wte, int64_t T, int64_t C) {
  float* out = F(outv);
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (int64_t t = 0; t < T; ++t) std::memcpy(out + t * C, wte + static_cast<int64_t>(ids[t]) * C, C * 4);
}

void CpuBackend::embedding_backward(float* dwte, const void* doutv, const int32_t* ids, int64_t T, int64_t C) {
  const float* dout = F(doutv);
  const int64_t nblocks = (C + kColBlock - 1) / kColBlock;
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t j0 = b * kColBlock, j1 = std::min(C, j0 + kColBlock);
    for (int64_t t = 0; t < T; ++t) {
      float* dst = dwte + static_cast<int64_t>(ids[t]) * C;
      const float* src = dout + t * C;
      for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
    }
  }
}

namespace {
// The linear map of token dropout is the same forward and backward: row t of sequence s becomes
// 0 (pad, or <mask> when rescaling) or (x·keep) / denom_s, computed in that order as HF does in fp32.
void token_dropout_apply(float* x, const int32_t* ids, const int32_t* cu, int S, int64_t C, int32_t mask_id,
                         int32_t pad_id, float ratio_train, bool rescale, int nt) {
  const float keep = static_cast<float>(1.0 - static_cast<double>(ratio_train));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int s = 0; s < S; ++s) {
    int64_t n_mask = 0, n_real = 0;
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t) {
      n_mask += ids[t] == mask_id;
      n_real += ids[t] != pad_id;
    }
    const float denom = 1.0f - static_cast<float>(n_mask) / static_cast<float>(std::max<int64_t>(n_real, 1));
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t) {
      float* row = x + t * C;
      if (ids[t] == pad_id || (rescale && ids[t] == mask_id)) {
        std::memset(row, 0, C * 4);
      } else if (rescale) {
        for (int64_t j = 0; j < C; ++j) row[j] = (row[j] * keep) / denom;
      }
    }
  }
}
}  // namespace

void CpuBackend::token_dropout_forward(void* x, const int32_t* ids, const int32_t* cu, int S, int64_t C,
                                       int32_t mask_id, int32_t pad_id, float ratio, bool rescale) {
  token_dropout_apply(F(x), ids, cu, S, C, mask_id, pad_id, ratio, rescale, num_threads_);
}
void CpuBackend::token_dropout_backward(void* dx, const int32_t* ids, const int32_t* cu, int S, int64_t C,
                                        int32_t mask_id, int32_t pad_id, float ratio, bool rescale) {
  token_dropout_apply(F(dx), ids, cu, S, C, mask_id, pad_id, ratio, rescale, num_threads_);
}

// ---------------------------------------------------------------- LayerNorm

void CpuBackend::layernorm_forward(void* outv, float* mean, float* rstd, const void* xv, const float* w,
                                   const float* b, int64_t T, int64_t C, float eps) {
  float* out = F(outv);
  const float* x = F(xv);
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * C;
    double s = 0;
    for (int64_t j = 0; j < C; ++j) s += xr[j];
    const float m = static_cast<float>(s / C);
    double v = 0;
    for (int64_t j = 0; j < C; ++j) {
      const double d = xr[j] - m;
      v += d * d;
    }
    const float r = static_cast<float>(1.0 / std::sqrt(v / C + eps));
    float* o = out + t * C;
    for (int64_t j = 0; j < C; ++j) o[j] = (xr[j] - m) * r * w[j] + b[j];
    mean[t] = m;
    rstd[t] = r;
  }
}

void CpuBackend::layernorm_backward(void* dxv, float* dw, float* db, const void* doutv, const void* xv,
                                    const float* w, const float* mean, const float* rstd, int64_t T, int64_t C) {
  float* dx = F(dxv);
  const float *dout = F(doutv), *x = F(xv);
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = x + t * C;
    const float* dr = dout + t * C;
    const float m = mean[t], r = rstd[t];
    float sum_dn = 0, sum_dn_xhat = 0;
    for (int64_t j = 0; j < C; ++j) {
      const float dn = dr[j] * w[j];
      sum_dn += dn;
      sum_dn_xhat += dn * (xr[j] - m) * r;
    }
    const float mdn = sum_dn / C, mdnx = sum_dn_xhat / C;
    float* dxr = dx + t * C;
    for (int64_t j = 0; j < C; ++j) {
      const float xhat = (xr[j] - m) * r;
      dxr[j] += r * (dr[j] * w[j] - mdn - xhat * mdnx);
    }
  }
  const int64_t nblocks = (C + kColBlock - 1) / kColBlock;
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t j0 = b * kColBlock, j1 = std::min(C, j0 + kColBlock);
    float aw[kColBlock] = {}, ab[kColBlock] = {};
    for (int64_t t = 0; t < T; ++t) {
      const float* xr = x + t * C;
      const float* dr = dout + t * C;
      const float m = mean[t], r = rstd[t];
      for (int64_t j = j0; j < j1; ++j) {
        aw[j - j0] += dr[j] * (xr[j] - m) * r;
        ab[j - j0] += dr[j];
      }
    }
    for (int64_t j = j0; j < j1; ++j) {
      dw[j] += aw[j - j0];
      db[j] += ab[j - j0];
    }
  }
}

// ---------------------------------------------------------------- GELU

void CpuBackend::gelu_forward(void* outv, const void* xv, size_t n, bool tanh_approx) {
  float* out = F(outv);
  const float* x = F(xv);
  if (tanh_approx) {
#pragma omp parallel for num_threads(num_threads_) schedule(static)
    for (size_t i = 0; i < n; ++i) {
      const float v = x[i];
      out[i] = 0.5f * v * (1.0f + std::tanh(kBeta * (v + kKappa * v * v * v)));
    }
  } else {
#pragma omp parallel for num_threads(num_threads_) schedule(static)
    for (size_t i = 0; i < n; ++i) {
      const float v = x[i];
      out[i] = v * 0.5f * (1.0f + cpu::erf_approx(v * kSqrt1_2));
    }
  }
}

void CpuBackend::gelu_backward(void* dxv, const void* doutv, const void* xv, size_t n, bool tanh_approx) {
  float* dx = F(dxv);
  const float *dout = F(doutv), *x = F(xv);
  if (tanh_approx) {
#pragma omp parallel for num_threads(num_threads_) schedule(static)
    for (size_t i = 0; i < n; ++i) {
      const float v = x[i];
      const float th = std::tanh(kBeta * (v + kKappa * v * v * v));
      const float d = 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * kBeta * (1.0f + 3.0f * kKappa * v * v);
      dx[i] = d * dout[i];
    }
  } else {
#pragma omp parallel for num_threads(num_threads_) schedule(static)
    for (size_t i = 0; i < n; ++i) {
      const float v = x[i];
      const float cdf = 0.5f * (1.0f + cpu::erf_approx(v * kSqrt1_2));
      const float pdf = kInvSqrt2Pi * cpu::exp_approx(-0.5f * v * v);
      dx[i] = (cdf + v * pdf) * dout[i];
    }
  }
}

// ---------------------------------------------------------------- rows

void CpuBackend::gather_rows(void* outv, const void* xv, const int32_t* idx, int64_t R, int64_t C) {
  float* out = F(outv);
  const float* x = F(xv);
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (int64_t r = 0; r < R; ++r) std::memcpy(out + r * C, x + static_cast<int64_t>(idx[r]) * C, C * 4);
}

void CpuBackend::scatter_add_rows(void* dxv, const void* doutv, const int32_t* idx, int64_t R, int64_t C) {
  float* dx = F(dxv);
  const float* dout = F(doutv);
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    float* dst = dx + static_cast<int64_t>(idx[r]) * C;
    const float* src = dout + r * C;
    for (int64_t j = 0; j < C; ++j) dst[j] += src[j];
  }
}

// ---------------------------------------------------------------- loss

namespace {
float row_logsumexp(const float* l, int64_t V) {
  float mx = l[0];
  for (int64_t j = 1; j < V; ++j) mx = std::max(mx, l[j]);
  double s = 0;
  for (int64_t j = 0; j < V; ++j) s += std::exp(static_cast<double>(l[j] - mx));
  return mx + static_cast<float>(std::log(s));
}
}  // namespace

void CpuBackend::cross_entropy_forward(float* loss, const void* logitsv, const int32_t* labels, int64_t R,
                                       int64_t V) {
  const float* logits = F(logitsv);
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    const float* l = logits + r * V;
    loss[r] = labels[r] < 0 ? 0.0f : row_logsumexp(l, V) - l[labels[r]];
  }
}

void CpuBackend::cross_entropy_backward(void* dlogitsv, const void* logitsv, const int32_t* labels, int64_t R,
                                        int64_t V, float dloss) {
  float* dl = F(dlogitsv);
  const float* logits = F(logitsv);
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (int64_t r = 0; r < R; ++r) {
    const float* l = logits + r * V;
    float* d = dl + r * V;
    if (labels[r] < 0) {
      std::memset(d, 0, V * 4);
      continue;
    }
    const float lse = row_logsumexp(l, V);
    for (int64_t j = 0; j < V; ++j) d[j] = dloss * (std::exp(l[j] - lse) - (j == labels[r] ? 1.0f : 0.0f));
  }
}

// ---------------------------------------------------------------- optimizer

void CpuBackend::adamw_update(float* p, const float* g, float* m, float* v, size_t n, const AdamWStep& s) {
  ESM2_ASSERT(s.step >= 1);
  // Scalars as torch.optim.AdamW (single-tensor path) computes them.
  const double bc1 = 1.0 - std::pow(static_cast<double>(s.beta1), static_cast<double>(s.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(s.beta2), static_cast<double>(s.step));
  const float decay = static_cast<float>(1.0 - static_cast<double>(s.lr) * s.weight_decay);
  const float step_size = static_cast<float>(s.lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float b1c = 1.0f - s.beta1, b2c = 1.0f - s.beta2;
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (size_t i = 0; i < n; ++i) {
    const float gi = g[i] * s.grad_scale;
    float pi = p[i] * decay;
    const float mi = m[i] + b1c * (gi - m[i]);
    const float vi = v[i] * s.beta2 + b2c * gi * gi;
    const float denom = std::sqrt(vi) / bc2_sqrt + s.eps;
    pi -= step_size * (mi / denom);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
  }
}

double CpuBackend::sum_squares(const float* x, size_t n) {
  // Fixed chunks summed in order: the result does not depend on the thread count.
  constexpr size_t kChunk = 1 << 16;
  const size_t nchunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(nchunks, 0.0);
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (size_t c = 0; c < nchunks; ++c) {
    const size_t i0 = c * kChunk, i1 = std::min(n, i0 + kChunk);
    double s = 0;
    for (size_t i = i0; i < i1; ++i) s += static_cast<double>(x[i]) * x[i];
    part[c] = s;
  }
  double total = 0;
  for (double p : part) total += p;
  return total;
}

void CpuBackend::scale(float* x, float a, size_t n) {
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (size_t i = 0; i < n; ++i) x[i] *= a;
}

float* CpuBackend::thread_scratch(int thread, size_t floats) {
  auto& s = scratch_[thread];
  if (s.size() < floats) s.resize(floats);
  return s.data();
}

}  // namespace esm2
