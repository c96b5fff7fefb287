// ESM-2 (EsmForMaskedLM) forward and backward over a packed micro-batch, written out layer by layer.
//
// Shapes: T tokens, S sequences, C hidden, F ffn, H heads, D head dim, V vocab, L layers,
// R rows that reach the LM head (labelled positions for the loss; all T for forward_outputs).
// Gradient convention (llm.c): parameter grads +=, activation grads =, except the residual stream
// gradient d_res, which accumulates the LayerNorm input gradients as it flows down the layers.
// Every op goes through the Backend; activations live in one arena of named views.
#include "model/esm2.h"

#include <omp.h>

#include <cmath>
#include <numbers>

#include "backend/backend.h"
#include "core/error.h"
#include "core/philox.h"
#include "data/tokenizer.h"
#include "dist/communicator.h"
#include "model/param_table.h"

namespace esm2 {

namespace {

// Named views into the activation arena (llm.c's ActivationTensors). Activations are in the backend's
// activation dtype; statistics (mean, rstd, lse, loss) are fp32.
struct Acts {
  void* residual = nullptr;  // [L+1, T, C] residual stream: [l] enters layer l, [L] leaves the last one
  void* res_mid = nullptr;   // [L, T, C]   after the attention block's residual add
  void* ln1 = nullptr;       // [L, T, C]
  void* ln1_mean = nullptr;  // [L, T] f32
  void* ln1_rstd = nullptr;  // [L, T] f32
  void* qkv = nullptr;       // [L, T, 3C]
  void* atty = nullptr;      // [L, T, C]   attention output before the output projection
  void* lse = nullptr;       // [L, H, T] f32 softmax log-sum-exp
  void* ln2 = nullptr;       // [L, T, C]
  void* ln2_mean = nullptr;  // [L, T] f32
  void* ln2_rstd = nullptr;  // [L, T] f32
  void* fch = nullptr;       // [L, T, F]   pre-GELU (GELU is recomputed in the backward)
  void* lnf = nullptr;       // [T, C]      emb_layer_norm_after output
  void* lnf_mean = nullptr;  // [T] f32
  void* lnf_rstd = nullptr;  // [T] f32
  void* h_in = nullptr;      // [R, C]      rows of lnf that reach the LM head
  void* h_dense = nullptr;   // [R, C]
  void* h_gelu = nullptr;    // [R, C]
  void* h_ln = nullptr;      // [R, C]
  void* h_mean = nullptr;    // [R] f32
  void* h_rstd = nullptr;    // [R] f32
  void* logits = nullptr;    // [R, V]
  void* loss = nullptr;      // [R] f32
  // scratch
  void* gelu = nullptr;      // [T, F]
  void* d_res = nullptr;     // [T, C]
  void* d_tmp = nullptr;     // [T, C]
  void* d_qkv = nullptr;     // [T, 3C]
  void* d_fch = nullptr;     // [T, F]
  void* dh_a = nullptr;      // [R, C]
  void* dh_b = nullptr;      // [R, C]
  void* d_logits = nullptr;  // [R, V]
};

float* f32(void* p) { return static_cast<float*>(p); }

// Byte offset helper for views of activation-dtype tensors.
void* at(void* base, size_t elems, size_t esize) { return static_cast<char*>(base) + elems * esize; }

}  // namespace

namespace {
int group_size(const Communicator* c) { return c ? c->world_size() : 1; }
int group_rank(const Communicator* c) { return c ? c->rank() : 0; }
}  // namespace

struct Esm2Model::Impl {
  ModelConfig cfg;
  Backend& be;
  ModelParallel par;
  ShardCoord coord;
  ParamTable table;       // this rank's part
  ParamTable full_table;  // the whole model (names, shapes and offsets of checkpoints)
  float* params = nullptr;  // [num_params]
  float* grads = nullptr;   // [num_params]
  std::vector<float> inv_freq_host;  // [D/2]
  float* inv_freq_dev = nullptr;     // [D/2]

  // Arena and its capacity (tokens, head rows).
  void* arena = nullptr;
  size_t arena_bytes = 0;
  int64_t cap_T = 0, cap_R = 0;
  Acts a;
  int32_t* ids = nullptr;         // [cap_T]
  int32_t* cu = nullptr;          // [cap_T + 1]
  int32_t* rows = nullptr;        // [cap_R] token index of each head row
  int32_t* row_labels = nullptr;  // [cap_R]

  // Current micro-batch.
  int64_t T = 0, R = 0;
  int S = 0, max_seqlen = 0;

  Impl(const ModelConfig& c, Backend& b, const ModelParallel& p)
      : cfg(c),
        be(b),
        par(p),
        coord{group_rank(p.tp), group_size(p.tp), group_rank(p.pp), group_size(p.pp)},
        table(build_param_table(c, coord)),
        full_table(build_param_table(c)) {
    params = static_cast<float*>(be.alloc(table.total * 4));
    grads = static_cast<float*>(be.alloc(table.total * 4));
    const int D = cfg.head_dim();
    inv_freq_dev = static_cast<float*>(be.alloc(D / 2 * 4));
    std::vector<float> f(D / 2);
    for (int i = 0; i < D / 2; ++i) {
      // torch: 1.0 / (base ** (torch.arange(0, D, 2).float() / D)), all fp32
      const float e = static_cast<float>(2 * i) / static_cast<float>(D);
      f[i] = 1.0f / std::pow(cfg.rotary_base, e);
    }
    set_inv_freq(f);
  }
  ~Impl() {
    free_arena();
    be.free(params);
    be.free(grads);
    be.free(inv_freq_dev);
  }

  void set_inv_freq(std::span<const float> f) {
    ESM2_CHECK(static_cast<int>(f.size()) == cfg.head_dim() / 2,
               "inv_freq: expected {} values (head_dim/2), got {}", cfg.head_dim() / 2, f.size());
    inv_freq_host.assign(f.begin(), f.end());
    be.copy_to_device(inv_freq_dev, f.data(), f.size() * 4);
  }

  void free_arena() {
    for (void* p : {arena, static_cast<void*>(ids), static_cast<void*>(cu), static_cast<void*>(rows),
                    static_cast<void*>(row_labels)})
      if (p) be.free(p);
    arena = nullptr;
    ids = cu = rows = row_labels = nullptr;
  }

  // Carve the arena for T tokens and R head rows (TensorSpec style: one table, one allocation).
  void ensure_capacity(int64_t T_need, int64_t R_need) {
    if (T_need <= cap_T && R_need <= cap_R && arena) return;
    const int64_t Tc = std::max(T_need, cap_T), Rc = std::max(R_need, cap_R);
    free_arena();
    const size_t L = cfg.num_layers, C = cfg.hidden_size, F = cfg.ffn_hidden_size, H = cfg.num_attention_heads,
                 V = cfg.vocab_size, Tn = Tc, Rn = Rc;
    const size_t es = dtype_size(be.activation_dtype());
    struct Spec {
      void** slot;
      size_t bytes;
    };
    const Spec specs[] = {
        {&a.residual, (L + 1) * Tn * C * es}, {&a.res_mid, L * Tn * C * es},  {&a.ln1, L * Tn * C * es},
        {&a.ln1_mean, L * Tn * 4},            {&a.ln1_rstd, L * Tn * 4},      {&a.qkv, L * Tn * 3 * C * es},
        {&a.atty, L * Tn * C * es},           {&a.lse, L * H * Tn * 4},       {&a.ln2, L * Tn * C * es},
        {&a.ln2_mean, L * Tn * 4},            {&a.ln2_rstd, L * Tn * 4},      {&a.fch, L * Tn * F * es},
        {&a.lnf, Tn * C * es},                {&a.lnf_mean, Tn * 4},          {&a.lnf_rstd, Tn * 4},
        {&a.h_in, Rn * C * es},               {&a.h_dense, Rn * C * es},      {&a.h_gelu, Rn * C * es},
        {&a.h_ln, Rn * C * es},               {&a.h_mean, Rn * 4},            {&a.h_rstd, Rn * 4},
        {&a.logits, Rn * V * es},             {&a.loss, Rn * 4},              {&a.gelu, Tn * F * es},
        {&a.d_res, Tn * C * es},              {&a.d_tmp, Tn * C * es},        {&a.d_qkv, Tn * 3 * C * es},
        {&a.d_fch, Tn * F * es},              {&a.dh_a, Rn * C * es},         {&a.dh_b, Rn * C * es},
        {&a.d_logits, Rn * V * es},
    };
    auto align = [](size_t b) { return (b + 255) / 256 * 256; };
    size_t total = 0;
    for (const Spec& s : specs) total += align(s.bytes);
    arena = be.alloc(total);
    size_t off = 0;
    for (const Spec& s : specs) {
      *s.slot = static_cast<char*>(arena) + off;
      off += align(s.bytes);
    }
    arena_bytes = total;
    ids = static_cast<int32_t*>(be.alloc(Tn * 4));
    cu = static_cast<int32_t*>(be.alloc((Tn + 1) * 4));
    rows = static_cast<int32_t*>(be.alloc(std::max<size_t>(Rn, 1) * 4));
    row_labels = static_cast<int32_t*>(be.alloc(std::max<size_t>(Rn, 1) * 4));
    cap_T = Tc;
    cap_R = Rc;
  }

  // Validate the micro-batch, size the arena, upload ids/offsets and the head rows.
  // all_rows: every token reaches the LM head (inference); otherwise only labelled ones.
  void prepare(const MicroBatch& mb, bool all_rows) {
    const int64_t n = mb.num_tokens();
    ESM2_CHECK(n > 0, "micro-batch: no tokens");
    ESM2_CHECK(mb.labels.empty() || mb.labels.size() == mb.input_ids.size(),
               "micro-batch: {} labels for {} tokens", mb.labels.size(), mb.input_ids.size());
    ESM2_CHECK(all_rows || !mb.labels.empty(), "micro-batch: labels are required for the loss");
    ESM2_CHECK(mb.cu_seqlens.size() >= 2 && mb.cu_seqlens.front() == 0 && mb.cu_seqlens.back() == n,
               "micro-batch: cu_seqlens must start at 0 and end at the token count {}", n);
    int maxlen = 0;
    for (size_t s = 0; s + 1 < mb.cu_seqlens.size(); ++s) {
      const int len = mb.cu_seqlens[s + 1] - mb.cu_seqlens[s];
      ESM2_CHECK(len >= 0, "micro-batch: cu_seqlens decreases at sequence {}", s);
      maxlen = std::max(maxlen, len);
    }
    for (int64_t t = 0; t < n; ++t)
      ESM2_CHECK(mb.input_ids[t] >= 0 && mb.input_ids[t] < cfg.vocab_size,
                 "micro-batch: token {} has id {} outside the vocabulary", t, mb.input_ids[t]);
    std::vector<int32_t> r, lab;
    if (all_rows) {
      r.resize(n);
      lab.assign(n, kIgnoreLabel);
      for (int64_t t = 0; t < n; ++t) {
        r[t] = static_cast<int32_t>(t);
        if (!mb.labels.empty()) lab[t] = mb.labels[t];
      }
    } else {
      for (int64_t t = 0; t < n; ++t)
        if (mb.labels[t] != kIgnoreLabel) {
          r.push_back(static_cast<int32_t>(t));
          lab.push_back(mb.labels[t]);
        }
    }
    for (size_t i = 0; i < lab.size(); ++i)
      ESM2_CHECK(lab[i] == kIgnoreLabel || (lab[i] >= 0 && lab[i] < cfg.vocab_size),
                 "micro-batch: token {} has label {} outside the vocabulary", r[i], lab[i]);
    T = n;
    R = static_cast<int64_t>(r.size());
    S = static_cast<int>(mb.cu_seqlens.size() - 1);
    max_seqlen = maxlen;
    ensure_capacity(T, R);
    be.copy_to_device(ids, mb.input_ids.data(), T * 4);
    be.copy_to_device(cu, mb.cu_seqlens.data(), (S + 1) * 4);
    be.copy_to_device(rows, r.data(), R * 4);
    be.copy_to_device(row_labels, lab.data(), R * 4);
  }

  // ---- views ----
  size_t es() const { return dtype_size(be.activation_dtype()); }
  void* res(int l) { return at(a.residual, static_cast<size_t>(l) * T * cfg.hidden_size, es()); }
  void* lay(void* base, int l, size_t width) { return at(base, static_cast<size_t>(l) * T * width, es()); }
  float* stat(void* base, int l, size_t width = 1) { return f32(base) + static_cast<size_t>(l) * T * width; }

  AttentionShape attn_shape() const {
    AttentionShape s;
    s.T = T;
    s.S = S;
    s.H = cfg.num_attention_heads;
    s.D = cfg.head_dim();
    s.max_seqlen = max_seqlen;
    s.cu_seqlens = cu;
    s.ids = ids;
    s.pad_id = kPad;
    s.inv_freq = inv_freq_dev;
    return s;
  }

  // y[M,N] = x[M,K] · W[N,K]ᵀ + b  (a PyTorch Linear)
  void linear(void* y, const void* x, const float* w, const float* b, int64_t M, int64_t N, int64_t K) {
    GemmArgs g;
    g.trans_b = true;
    g.M = M, g.N = N, g.K = K;
    g.A = x, g.a_dtype = be.activation_dtype();
    g.B = w, g.b_dtype = DType::F32;
    g.C = y, g.c_dtype = be.activation_dtype();
    g.bias = b;
    be.gemm(g);
  }
  // Backward of linear: dW[N,K] += dyᵀ·x, db[N] += Σ dy, dx[M,K] (=) = dy·W (dx may be null).
  void linear_backward(void* dx, float* dw, float* db, const void* dy, const void* x, const float* w, int64_t M,
                       int64_t N, int64_t K) {
    const DType ad = be.activation_dtype();
    if (db) be.bias_backward(db, dy, M, N);
    GemmArgs gw;
    gw.trans_a = true;
    gw.M = N, gw.N = K, gw.K = M;
    gw.A = dy, gw.a_dtype = ad;
    gw.B = x, gw.b_dtype = ad;
    gw.C = dw, gw.c_dtype = DType::F32;
    gw.beta = 1.0f;
    be.gemm(gw);
    if (!dx) return;
    GemmArgs gx;
    gx.M = M, gx.N = K, gx.K = N;
    gx.A = dy, gx.a_dtype = ad;
    gx.B = w, gx.b_dtype = DType::F32;
    gx.C = dx, gx.c_dtype = ad;
    be.gemm(gx);
  }

  // ---- forward ----
  void encoder_forward() {
    const int64_t C = cfg.hidden_size, F = cfg.ffn_hidden_size;
    const float* P = params;
    be.embedding_forward(res(0), ids, P + table.wte, T, C);
    be.token_dropout_forward(res(0), ids, cu, S, C, kMask, kPad, cfg.mask_ratio_train, cfg.token_dropout);
    const AttentionShape as = attn_shape();
    for (int l = 0; l < cfg.num_layers; ++l) {
      const LayerOffsets& o = table.layers[l];
      void* x = res(l);
      void* ln1 = lay(a.ln1, l, C);
      void* qkv = lay(a.qkv, l, 3 * C);
      void* atty = lay(a.atty, l, C);
      void* mid = lay(a.res_mid, l, C);
      void* ln2 = lay(a.ln2, l, C);
      void* fch = lay(a.fch, l, F);
      // x_mid = x + out_proj(Attn(LN1(x)))
      be.layernorm_forward(ln1, stat(a.ln1_mean, l), stat(a.ln1_rstd, l), x, P + o.ln1_w, P + o.ln1_b, T, C,
                           cfg.layer_norm_eps);
      linear(qkv, ln1, P + o.w_qkv, P + o.b_qkv, T, 3 * C, C);
      be.attention_forward(atty, stat(a.lse, l, cfg.num_attention_heads), qkv, as);
      linear(mid, atty, P + o.w_o, P + o.b_o, T, C, C);
      be.add(mid, mid, x, T * C);
      // x_next = x_mid + proj(GELU(fc(LN2(x_mid))))
      be.layernorm_forward(ln2, stat(a.ln2_mean, l), stat(a.ln2_rstd, l), mid, P + o.ln2_w, P + o.ln2_b, T, C,
                           cfg.layer_norm_eps);
      linear(fch, ln2, P + o.w_fc, P + o.b_fc, T, F, C);
      be.gelu_forward(a.gelu, fch, T * F, cfg.gelu_tanh);
      void* next = res(l + 1);
      linear(next, a.gelu, P + o.w_proj, P + o.b_proj, T, C, F);
      be.add(next, next, mid, T * C);
    }
    be.layernorm_forward(a.lnf, f32(a.lnf_mean), f32(a.lnf_rstd), res(cfg.num_layers), P + table.lnf_w,
                         P + table.lnf_b, T, C, cfg.layer_norm_eps);
  }

  // LM head on the R selected rows: dense → GELU → LayerNorm → tied decoder + bias.
  void head_forward() {
    const int64_t C = cfg.hidden_size, V = cfg.vocab_size;
    const float* P = params;
    be.gather_rows(a.h_in, a.lnf, rows, R, C);
    linear(a.h_dense, a.h_in, P + table.head_w, P + table.head_b, R, C, C);
    be.gelu_forward(a.h_gelu, a.h_dense, R * C, cfg.gelu_tanh);
    be.layernorm_forward(a.h_ln, f32(a.h_mean), f32(a.h_rstd), a.h_gelu, P + table.head_ln_w, P + table.head_ln_b,
                         R, C, cfg.layer_norm_eps);
    linear(a.logits, a.h_ln, P + table.wte, P + table.head_bias, R, V, C);
  }

  LossSum loss_sum() {
    LossSum out;
    out.num_labels = R;
    if (R == 0) return out;
    be.cross_entropy_forward(f32(a.loss), a.logits, row_labels, R, cfg.vocab_size);
    std::vector<float> l(R);
    be.copy_to_host(l.data(), a.loss, R * 4);
    for (float v : l) out.loss_sum += v;  // in row order: deterministic
    return out;
  }

  // ---- backward (mirror of the forward, in reverse) ----
  void backward(float grad_scale) {
    const int64_t C = cfg.hidden_size, F = cfg.ffn_hidden_size, V = cfg.vocab_size;
    const float* P = params;
    float* G = grads;
    // LM head
    be.cross_entropy_backward(a.d_logits, a.logits, row_labels, R, V, grad_scale);
    linear_backward(a.dh_a, G + table.wte, G + table.head_bias, a.d_logits, a.h_ln, P + table.wte, R, V, C);
    be.memset_zero(a.dh_b, be.act_bytes(R * C));
    be.layernorm_backward(a.dh_b, G + table.head_ln_w, G + table.head_ln_b, a.dh_a, a.h_gelu, P + table.head_ln_w,
                          f32(a.h_mean), f32(a.h_rstd), R, C);
    be.gelu_backward(a.dh_b, a.dh_b, a.h_dense, R * C, cfg.gelu_tanh);
    linear_backward(a.dh_a, G + table.head_w, G + table.head_b, a.dh_b, a.h_in, P + table.head_w, R, C, C);
    be.memset_zero(a.d_tmp, be.act_bytes(T * C));
    be.scatter_add_rows(a.d_tmp, a.dh_a, rows, R, C);
    // final LayerNorm: d_res becomes the gradient of the last residual stream
    be.memset_zero(a.d_res, be.act_bytes(T * C));
    be.layernorm_backward(a.d_res, G + table.lnf_w, G + table.lnf_b, a.d_tmp, res(cfg.num_layers), P + table.lnf_w,
                          f32(a.lnf_mean), f32(a.lnf_rstd), T, C);
    const AttentionShape as = attn_shape();
    for (int l = cfg.num_layers - 1; l >= 0; --l) {
      const LayerOffsets& o = table.layers[l];
      void* ln1 = lay(a.ln1, l, C);
      void* qkv = lay(a.qkv, l, 3 * C);
      void* atty = lay(a.atty, l, C);
      void* mid = lay(a.res_mid, l, C);
      void* ln2 = lay(a.ln2, l, C);
      void* fch = lay(a.fch, l, F);
      // FFN block; the residual passes d_res through unchanged
      be.gelu_forward(a.gelu, fch, T * F, cfg.gelu_tanh);
      linear_backward(a.d_fch, G + o.w_proj, G + o.b_proj, a.d_res, a.gelu, P + o.w_proj, T, C, F);
      be.gelu_backward(a.d_fch, a.d_fch, fch, T * F, cfg.gelu_tanh);
      linear_backward(a.d_tmp, G + o.w_fc, G + o.b_fc, a.d_fch, ln2, P + o.w_fc, T, F, C);
      be.layernorm_backward(a.d_res, G + o.ln2_w, G + o.ln2_b, a.d_tmp, mid, P + o.ln2_w, stat(a.ln2_mean, l),
                            stat(a.ln2_rstd, l), T, C);
      // attention block
      linear_backward(a.d_tmp, G + o.w_o, G + o.b_o, a.d_res, atty, P + o.w_o, T, C, C);
      be.attention_backward(a.d_qkv, a.d_tmp, qkv, atty, stat(a.lse, l, cfg.num_attention_heads), as);
      linear_backward(a.d_tmp, G + o.w_qkv, G + o.b_qkv, a.d_qkv, ln1, P + o.w_qkv, T, 3 * C, C);
      be.layernorm_backward(a.d_res, G + o.ln1_w, G + o.ln1_b, a.d_tmp, res(l), P + o.ln1_w, stat(a.ln1_mean, l),
                            stat(a.ln1_rstd, l), T, C);
    }
    be.token_dropout_backward(a.d_res, ids, cu, S, C, kMask, kPad, cfg.mask_ratio_train, cfg.token_dropout);
    be.embedding_backward(G + table.wte, a.d_res, ids, T, C);
  }
};

Esm2Model::Esm2Model(const ModelConfig& cfg, Backend& backend, const ModelParallel& parallel)
    : impl_(std::make_unique<Impl>(cfg, backend, parallel)) {}
Esm2Model::~Esm2Model() = default;

const ModelConfig& Esm2Model::config() const { return impl_->cfg; }
Backend& Esm2Model::backend() { return impl_->be; }
const std::vector<ParamInfo>& Esm2Model::params_info() const { return impl_->table.infos; }
size_t Esm2Model::num_params() const { return impl_->table.total; }
const ModelParallel& Esm2Model::parallel() const { return impl_->par; }
const ShardCoord& Esm2Model::shard_coord() const { return impl_->coord; }
const std::vector<ParamInfo>& Esm2Model::full_params_info() const { return impl_->full_table.infos; }
size_t Esm2Model::full_num_params() const { return impl_->full_table.total; }
const std::vector<FlatRun>& Esm2Model::full_runs() const { return impl_->table.runs; }
float* Esm2Model::param_data() { return impl_->params; }
float* Esm2Model::grad_data() { return impl_->grads; }
size_t Esm2Model::activation_bytes() const { return impl_->arena_bytes; }

void Esm2Model::get_params(std::span<float> out) const {
  ESM2_CHECK(out.size() == impl_->table.total, "get_params: buffer has {} floats, model has {}", out.size(),
             impl_->table.total);
  impl_->be.copy_to_host(out.data(), impl_->params, out.size() * 4);
}
void Esm2Model::set_params(std::span<const float> in) {
  ESM2_CHECK(in.size() == impl_->table.total, "set_params: buffer has {} floats, model has {}", in.size(),
             impl_->table.total);
  impl_->be.copy_to_device(impl_->params, in.data(), in.size() * 4);
}
void Esm2Model::get_grads(std::span<float> out) const {
  ESM2_CHECK(out.size() == impl_->table.total, "get_grads: buffer has {} floats, model has {}", out.size(),
             impl_->table.total);
  impl_->be.copy_to_host(out.data(), impl_->grads, out.size() * 4);
}

void Esm2Model::set_inv_freq(std::span<const float> inv_freq) { impl_->set_inv_freq(inv_freq); }
std::vector<float> Esm2Model::inv_freq() const { return impl_->inv_freq_host; }

void Esm2Model::init_weights(uint64_t seed) {
  // The whole model is drawn, then this rank keeps its part: any TP/PP split starts from exactly
  // the weights of the single-rank model.
  const ParamTable& t = impl_->full_table;
  std::vector<float> host(t.total, 0.0f);
  const PhiloxStream rng{seed, RngStream::Init, 0};
  // N(0, 0.02) by Box–Muller, one normal per element keyed by its flat index: independent of threads.
  auto normal = [&rng](size_t i) {
    const double u1 = (static_cast<double>(rng.word(2 * i) >> 8) + 1.0) / 16777216.0;  // (0, 1]
    const double u2 = static_cast<double>(rng.word(2 * i + 1) >> 8) / 16777216.0;      // [0, 1)
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  };
  const float std_dev = 0.02f;
  for (const ParamInfo& p : t.infos) {
    const bool normal_init = p.weight_decay || p.offset == t.wte;
    const bool is_ln_weight = p.name.ends_with("LayerNorm.weight") || p.name.ends_with("layer_norm.weight") ||
                              p.name.ends_with("emb_layer_norm_after.weight");
    float* dst = host.data() + p.offset;
    if (normal_init) {
#pragma omp parallel for schedule(static)
      for (size_t i = 0; i < p.numel; ++i) dst[i] = static_cast<float>(std_dev * normal(p.offset + i));
    } else if (is_ln_weight) {
      std::fill(dst, dst + p.numel, 1.0f);
    }
  }
  const size_t C = impl_->cfg.hidden_size;
  std::fill_n(host.data() + t.wte + kPad * C, C, 0.0f);  // padding_idx row
  if (impl_->coord.whole()) {
    set_params(host);
    return;
  }
  std::vector<float> local(impl_->table.total);
  for (const FlatRun& r : impl_->table.runs)
    std::copy_n(host.data() + r.full, r.length, local.data() + r.local);
  set_params(local);
}

void Esm2Model::zero_grads() { impl_->be.memset_zero(impl_->grads, impl_->table.total * 4); }

LossSum Esm2Model::forward_backward(const MicroBatch& mb, float grad_scale) {
  Impl& m = *impl_;
  m.prepare(mb, /*all_rows=*/false);
  if (m.R == 0) return {};  // nothing labelled: the loss and its gradient are zero
  m.encoder_forward();
  m.head_forward();
  LossSum out = m.loss_sum();
  m.backward(grad_scale);
  return out;
}

LossSum Esm2Model::forward_loss(const MicroBatch& mb) {
  Impl& m = *impl_;
  m.prepare(mb, /*all_rows=*/false);
  if (m.R == 0) return {};
  m.encoder_forward();
  m.head_forward();
  return m.loss_sum();
}

void Esm2Model::forward_outputs(const MicroBatch& mb, std::vector<float>* logits, std::vector<float>* last_hidden,
                                int repr_layer, std::vector<float>* repr) {
  Impl& m = *impl_;
  const int L = m.cfg.num_layers;
  ESM2_CHECK(repr_layer < 0 || repr_layer <= L, "forward_outputs: repr_layer {} outside 0..{}", repr_layer, L);
  ESM2_CHECK(repr_layer < 0 || repr != nullptr, "forward_outputs: repr_layer {} given without an output", repr_layer);
  m.prepare(mb, /*all_rows=*/true);
  m.encoder_forward();
  const size_t C = m.cfg.hidden_size;
  if (logits) {
    m.head_forward();
    logits->resize(m.T * m.cfg.vocab_size);
    m.be.act_to_host_f32(logits->data(), m.a.logits, logits->size());
  }
  if (last_hidden) {
    last_hidden->resize(m.T * C);
    m.be.act_to_host_f32(last_hidden->data(), m.a.lnf, last_hidden->size());
  }
  if (repr_layer >= 0) {
    repr->resize(m.T * C);
    m.be.act_to_host_f32(repr->data(), repr_layer == L ? m.a.lnf : m.res(repr_layer), repr->size());
  }
}

}  // namespace esm2
