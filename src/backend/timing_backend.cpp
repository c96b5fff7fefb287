#include "backend/timing_backend.h"

#include <fmt/format.h>

#include <algorithm>

namespace esm2 {

std::vector<TimingBackend::Entry> TimingBackend::report() const {
  std::vector<Entry> out;
  for (const auto& [k, e] : entries_) out.push_back(e);
  std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) { return a.seconds > b.seconds; });
  return out;
}

double TimingBackend::total_seconds() const {
  double s = 0;
  for (const auto& [k, e] : entries_) s += e.seconds;
  return s;
}

void TimingBackend::copy_to_device(void* d, const void* s, size_t b) { timed("copy_to_device", 0, [&] { in_.copy_to_device(d, s, b); }); }
void TimingBackend::copy_to_host(void* d, const void* s, size_t b) { timed("copy_to_host", 0, [&] { in_.copy_to_host(d, s, b); }); }
void TimingBackend::copy(void* d, const void* s, size_t b) { timed("copy", 0, [&] { in_.copy(d, s, b); }); }
void TimingBackend::memset_zero(void* d, size_t b) { timed("memset_zero", 0, [&] { in_.memset_zero(d, b); }); }
void TimingBackend::act_to_host_f32(float* d, const void* s, size_t n) { timed("act_to_host", 0, [&] { in_.act_to_host_f32(d, s, n); }); }
void TimingBackend::act_from_host_f32(void* d, const float* s, size_t n) { timed("act_from_host", 0, [&] { in_.act_from_host_f32(d, s, n); }); }

void TimingBackend::gemm(const GemmArgs& g) {
  // Keyed by the weight's shape with the token dimension left out (it varies per micro-batch), so each
  // projection's forward (NT: x·Wᵀ), input gradient (NN: dy·W) and weight gradient (TN: dyᵀ·x) add up.
  std::string key;
  if (g.trans_a && !g.trans_b) key = fmt::format("gemm dW   {}x{}", g.M, g.N);
  else if (!g.trans_a && g.trans_b) key = fmt::format("gemm fwd  {}x{}", g.N, g.K);
  else key = fmt::format("gemm dX   {}x{}{}", g.K, g.N, g.trans_a ? " (TT)" : "");
  timed(key, 2.0 * double(g.M) * double(g.N) * double(g.K), [&] { in_.gemm(g); });
}
void TimingBackend::bias_backward(float* db, const void* dy, int64_t M, int64_t N) { timed("bias_backward", 0, [&] { in_.bias_backward(db, dy, M, N); }); }
void TimingBackend::add(void* o, const void* a, const void* b, size_t n) { timed("add (residual)", 0, [&] { in_.add(o, a, b, n); }); }
void TimingBackend::embedding_forward(void* o, const int32_t* ids, const float* w, int64_t T, int64_t C) {
  timed("embedding_forward", 0, [&] { in_.embedding_forward(o, ids, w, T, C); });
}
void TimingBackend::embedding_backward(float* d, const void* o, const int32_t* ids, int64_t T, int64_t C) {
  timed("embedding_backward", 0, [&] { in_.embedding_backward(d, o, ids, T, C); });
}
void TimingBackend::token_dropout_forward(void* x, const int32_t* ids, const int32_t* cu, int S, int64_t C, int32_t m,
                                          int32_t p, float r, bool rs) {
  timed("token_dropout_forward", 0, [&] { in_.token_dropout_forward(x, ids, cu, S, C, m, p, r, rs); });
}
void TimingBackend::token_dropout_backward(void* x, const int32_t* ids, const int32_t* cu, int S, int64_t C, int32_t m,
                                           int32_t p, float r, bool rs) {
  timed("token_dropout_backward", 0, [&] { in_.token_dropout_backward(x, ids, cu, S, C, m, p, r, rs); });
}
void TimingBackend::layernorm_forward(void* o, float* mean, float* rstd, const void* x, const float* w, const float* b,
                                      int64_t T, int64_t C, float eps) {
  timed("layernorm_forward", 0, [&] { in_.layernorm_forward(o, mean, rstd, x, w, b, T, C, eps); });
}
void TimingBackend::layernorm_backward(void* dx, float* dw, float* db, const void* d, const void* x, const float* w,
                                       const float* mean, const float* rstd, int64_t T, int64_t C) {
  timed("layernorm_backward", 0, [&] { in_.layernorm_backward(dx, dw, db, d, x, w, mean, rstd, T, C); });
}
void TimingBackend::attention_forward(void* o, float* lse, const void* qkv, const AttentionShape& a) {
  timed("attention_forward", 0, [&] { in_.attention_forward(o, lse, qkv, a); });
}
void TimingBackend::attention_backward(void* dqkv, const void* d, const void* qkv, const void* o, const float* lse,
                                       const AttentionShape& a) {
  timed("attention_backward", 0, [&] { in_.attention_backward(dqkv, d, qkv, o, lse, a); });
}
void TimingBackend::gelu_forward(void* o, const void* x, size_t n, bool t) { timed("gelu_forward", 0, [&] { in_.gelu_forward(o, x, n, t); }); }
void TimingBackend::gelu_backward(void* dx, const void* d, const void* x, size_t n, bool t) {
  timed("gelu_backward", 0, [&] { in_.gelu_backward(dx, d, x, n, t); });
}
void TimingBackend::add_layernorm_forward(void* sum, void* out, float* mean, float* rstd, const void* a, const void* b,
                                          const float* w, const float* bias, int64_t T, int64_t C, float eps) {
  timed("add_layernorm_forward", 0, [&] { in_.add_layernorm_forward(sum, out, mean, rstd, a, b, w, bias, T, C, eps); });
}
void TimingBackend::gelu_backward_bias(void* dx, float* db, const void* d, const void* x, int64_t M, int64_t N, bool t) {
  timed("gelu_backward_bias", 0, [&] { in_.gelu_backward_bias(dx, db, d, x, M, N, t); });
}
void TimingBackend::gather_rows(void* o, const void* x, const int32_t* idx, int64_t R, int64_t C) {
  timed("gather_rows", 0, [&] { in_.gather_rows(o, x, idx, R, C); });
}
void TimingBackend::scatter_add_rows(void* dx, const void* d, const int32_t* idx, int64_t R, int64_t C) {
  timed("scatter_add_rows", 0, [&] { in_.scatter_add_rows(dx, d, idx, R, C); });
}
void TimingBackend::cross_entropy_forward(float* l, const void* lg, const int32_t* lab, int64_t R, int64_t V) {
  timed("cross_entropy_forward", 0, [&] { in_.cross_entropy_forward(l, lg, lab, R, V); });
}
void TimingBackend::cross_entropy_backward(void* d, const void* lg, const int32_t* lab, int64_t R, int64_t V, float s) {
  timed("cross_entropy_backward", 0, [&] { in_.cross_entropy_backward(d, lg, lab, R, V, s); });
}
void TimingBackend::adamw_update(float* p, const float* g, float* m, float* v, size_t n, const AdamWStep& s) {
  timed("adamw_update", 0, [&] { in_.adamw_update(p, g, m, v, n, s); });
}
double TimingBackend::sum_squares(const float* x, size_t n) { return timed("sum_squares (grad norm)", 0, [&] { return in_.sum_squares(x, n); }); }
double TimingBackend::sum_squares_ranges(const float* base, const TensorRange* r, size_t count) {
  return timed("sum_squares_ranges (grad norm)", 0, [&] { return in_.sum_squares_ranges(base, r, count); });
}
void TimingBackend::adamw_update_ranges(float* p, const float* g, float* m, float* v, const TensorRange* r, size_t count,
                                        const AdamWStep& s) {
  timed("adamw_update_ranges", 0, [&] { in_.adamw_update_ranges(p, g, m, v, r, count, s); });
}
void TimingBackend::scale(float* x, float a, size_t n) { timed("scale", 0, [&] { in_.scale(x, a, n); }); }

}  // namespace esm2
