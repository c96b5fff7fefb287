// ESM-2 (EsmForMaskedLM) forward and backward over a packed micro-batch, written out layer by layer.
//
// Shapes: T tokens, S sequences, C hidden, F ffn, H heads, D head dim, V vocab, L layers,
// R rows that reach the LM head (labelled positions for the loss; all T for forward_outputs).
// Tensor parallel (Megatron): a rank computes H' = H/TP heads (attention width C' = H'·D = C/TP) and
// F' = F/TP FFN units; the row-parallel output projections give partial [T, C] sums that are
// all-reduced over the tp group (forward, and again when a recompute pass rebuilds res_mid), as are
// the input gradients of the column-parallel q/k/v and fc products (backward: Megatron's conjugate
// f/g operators). Everything else (embedding, LayerNorms, residual stream, LM head) is replicated and
// computed identically on every tp rank. Without a tp group C' = C, F' = F, H' = H and no
// communication happens.
// Gradient convention (llm.c): parameter grads +=, activation grads =, except the residual stream
// gradient d_res, which accumulates the LayerNorm input gradients as it flows down the layers.
// Every op goes through the Backend; activations live in one arena of named views.
#include "model/esm2.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <cmath>
#include <numbers>
#include <string_view>

#include "backend/backend.h"
#include "core/error.h"
#include "core/philox.h"
#include "data/tokenizer.h"
#include "comm/communicator.h"
#include "model/param_table.h"

namespace esm2 {

namespace {

// Named views into the activation arena (llm.c's ActivationTensors). Activations are in the backend's
// activation dtype; statistics (mean, rstd, lse, loss) are fp32. The per-layer tensors ln1 … fch have
// L slices when the recompute mode keeps them (Keep below) and one slice, shared by all layers and
// refilled before each layer's backward, when it does not.
struct Acts {
  void* residual = nullptr;  // [L+1, T, C] residual stream: [l] enters layer l, [L] leaves the last one
  void* res_mid = nullptr;   // [L|1, T, C] after the attention block's residual add
  void* ln1 = nullptr;       // [L|1, T, C]
  void* ln1_mean = nullptr;  // [L|1, T] f32
  void* ln1_rstd = nullptr;  // [L|1, T] f32
  void* qkv = nullptr;       // [L|1, T, 3C']
  void* atty = nullptr;      // [L|1, T, C'] attention output before the output projection
  void* lse = nullptr;       // [L|1, H', T] f32 softmax log-sum-exp
  void* ln2 = nullptr;       // [L|1, T, C]
  void* ln2_mean = nullptr;  // [L|1, T] f32
  void* ln2_rstd = nullptr;  // [L|1, T] f32
  void* fch = nullptr;       // [L|1, T, F'] pre-GELU (GELU is recomputed in the backward in every mode)
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
  void* gelu = nullptr;      // [T, F']
  void* d_res = nullptr;     // [T, C]
  void* d_tmp = nullptr;     // [T, C]
  void* d_qkv = nullptr;     // [T, 3C']
  void* d_fch = nullptr;     // [T, F']
  void* dh_a = nullptr;      // [R, C]
  void* dh_b = nullptr;      // [R, C]
  void* d_logits = nullptr;  // [R, V]
};

// Which per-layer tensors the forward keeps for every layer (model/recompute.h). A tensor not kept
// lives in one layer's scratch and is recomputed, from kept ones, just before the layer's backward.
struct Keep {
  bool ln1, qkv, atty, mid, ln2, fch;  // atty: with its lse; ln1/ln2: with their mean/rstd
};
Keep keep_for(Recompute r) {
  switch (r) {
    case Recompute::None: return {true, true, true, true, true, true};
    case Recompute::Selective: return {false, true, true, false, false, true};
    case Recompute::Full: break;
  }
  return {false, false, false, false, false, false};
}

// One layer's activations: the views layer_forward writes and layer_backward reads.
struct LayerActs {
  void* x = nullptr;                                  // [T, C] input: residual [l] (always kept)
  void* ln1 = nullptr;                                // [T, C]
  float *ln1_mean = nullptr, *ln1_rstd = nullptr;     // [T]
  void* qkv = nullptr;                                // [T, 3C']
  void* atty = nullptr;                               // [T, C']
  float* lse = nullptr;                               // [H', T]
  void* mid = nullptr;                                // [T, C]
  void* ln2 = nullptr;                                // [T, C]
  float *ln2_mean = nullptr, *ln2_rstd = nullptr;     // [T]
  void* fch = nullptr;                                // [T, F']
  void* out = nullptr;                                // [T, C] output: residual [l+1] (always kept)
};

struct ArenaSpec {
  void** slot;
  size_t bytes;
};

// The arena's buffers for T tokens and R head rows, in allocation order (TensorSpec style: one table,
// one allocation). es: bytes of one activation element; tp: tensor-parallel size (local widths
// C' = C/tp, F' = F/tp, H' = H/tp). A pipeline stage holds `L` layers and, unless it is the last stage
// (`head`), no final LayerNorm / LM head buffers.
std::vector<ArenaSpec> arena_layout(Acts& a, const ModelConfig& cfg, int tp, size_t L, bool head, size_t Tn,
                                    size_t Rn, Recompute mode, size_t es) {
  const size_t C = cfg.hidden_size, Ca = C / tp, F = cfg.ffn_hidden_size / tp, H = cfg.num_attention_heads / tp,
               V = cfg.vocab_size;
  const size_t Th = head ? Tn : 0;
  if (!head) Rn = 0;
  const Keep k = keep_for(mode);
  auto n = [L](bool kept) { return kept ? L : size_t{1}; };  // slices of a per-layer tensor
  return {
      {&a.residual, (L + 1) * Tn * C * es},
      {&a.res_mid, n(k.mid) * Tn * C * es},
      {&a.ln1, n(k.ln1) * Tn * C * es},
      {&a.ln1_mean, n(k.ln1) * Tn * 4},
      {&a.ln1_rstd, n(k.ln1) * Tn * 4},
      {&a.qkv, n(k.qkv) * Tn * 3 * Ca * es},
      {&a.atty, n(k.atty) * Tn * Ca * es},
      {&a.lse, n(k.atty) * H * Tn * 4},
      {&a.ln2, n(k.ln2) * Tn * C * es},
      {&a.ln2_mean, n(k.ln2) * Tn * 4},
      {&a.ln2_rstd, n(k.ln2) * Tn * 4},
      {&a.fch, n(k.fch) * Tn * F * es},
      {&a.lnf, Th * C * es},
      {&a.lnf_mean, Th * 4},
      {&a.lnf_rstd, Th * 4},
      {&a.h_in, Rn * C * es},
      {&a.h_dense, Rn * C * es},
      {&a.h_gelu, Rn * C * es},
      {&a.h_ln, Rn * C * es},
      {&a.h_mean, Rn * 4},
      {&a.h_rstd, Rn * 4},
      {&a.logits, Rn * V * es},
      {&a.loss, Rn * 4},
      {&a.gelu, Tn * F * es},
      {&a.d_res, Tn * C * es},
      {&a.d_tmp, Tn * C * es},
      {&a.d_qkv, Tn * 3 * Ca * es},
      {&a.d_fch, Tn * F * es},
      {&a.dh_a, Rn * C * es},
      {&a.dh_b, Rn * C * es},
      {&a.d_logits, Rn * V * es},
  };
}

size_t align_arena(size_t b) { return (b + 255) / 256 * 256; }

float* f32(void* p) { return static_cast<float*>(p); }

// Byte offset helper for views of activation-dtype tensors.
void* at(void* base, size_t elems, size_t esize) { return static_cast<char*>(base) + elems * esize; }

// One micro-batch's state: its activation arena (and capacity) and its uploaded ids, offsets and
// head rows. A pipeline stage keeps several micro-batches in flight (1F1B), each in its own slot;
// Impl derives from the slot in use, so the layer code reads a, T, ids… directly and switching
// slots swaps these few pointers and counts.
struct SlotState {
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
  bool has_pad = false;  // some input id is <pad> (attention must mask those keys)
};

}  // namespace

namespace {
int group_size(const Communicator* c) { return c ? c->world_size() : 1; }
int group_rank(const Communicator* c) { return c ? c->rank() : 0; }
}  // namespace

struct Esm2Model::Impl : SlotState {
  ModelConfig cfg;
  Backend& be;
  ModelParallel par;
  ShardCoord coord;
  ParamTable table;       // this rank's part
  ParamTable full_table;  // the whole model (names, shapes and offsets of checkpoints)
  // Local widths under tensor parallelism: heads H', attention width C' = H'·D, FFN units F'.
  int Hl = 0;
  int64_t Cl = 0, Fl = 0;
  float* params = nullptr;  // [num_params]
  float* grads = nullptr;   // [num_params]
  std::vector<float> inv_freq_host;  // [D/2]
  float* inv_freq_dev = nullptr;     // [D/2]

  // The other slots (parked[cur_slot] is empty: its state is the base class).
  std::vector<SlotState> parked = std::vector<SlotState>(1);
  int cur_slot = 0;

  Recompute recompute = Recompute::None;  // set_recompute()
  std::function<void(size_t)> grad_ready;  // set_grad_ready_hook()

  // ESM2_CHECK_FINITE=1 (docs/reliability.md): every tensor the training forward and backward write is
  // read back after the op that wrote it, and its first non-finite value is reported with the token of its
  // row. It finds the op where a run that stopped on a non-finite gradient first went wrong (resume it
  // from the checkpoint written before that step: the step repeats bitwise). A device→host copy per op:
  // a diagnosis mode, not a guard.
  // ESM2_CHECK_FINITE=2 also prints every checked tensor's largest |value| (how far from overflow it is);
  // unset, empty or 0 is off, any other value (1, yes) is on.
  int check_finite = [] {
    const char* v = std::getenv("ESM2_CHECK_FINITE");
    const std::string s = v ? v : "";
    return s.empty() || s == "0" ? 0 : s == "2" ? 2 : 1;
  }();
  int finite_reports = 0;
  std::vector<int32_t> host_ids, host_rows, host_labels;  // the micro-batch, kept only when checking

  Impl(const ModelConfig& c, Backend& b, const ModelParallel& p)
      : cfg(c),
        be(b),
        par(p),
        coord{group_rank(p.tp), group_size(p.tp), group_rank(p.pp), group_size(p.pp)},
        table(build_param_table(c, coord)),
        full_table(build_param_table(c)) {
    Hl = cfg.num_attention_heads / coord.tp_size;
    Cl = static_cast<int64_t>(Hl) * cfg.head_dim();
    Fl = cfg.ffn_hidden_size / coord.tp_size;
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
    for (SlotState& s : parked) {
      static_cast<SlotState&>(*this) = s;
      free_arena();
    }
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

  void require_whole(const char* what) const {
    ESM2_CHECK(table.has_embedding && table.has_head,
               "model: {} needs every layer on this rank; pipeline stage {} of {} runs through PipelineSchedule", what,
               coord.pp_rank, coord.pp_size);
  }

  size_t boundary_bytes() const { return be.act_bytes(static_cast<size_t>(T) * cfg.hidden_size); }

  int num_local_layers() const { return static_cast<int>(table.layers.size()); }

  void use_slot(int k) {
    ESM2_CHECK(k >= 0 && k < static_cast<int>(parked.size()), "model: activation slot {} outside 0..{}", k,
               parked.size() - 1);
    if (k == cur_slot) return;
    parked[cur_slot] = static_cast<const SlotState&>(*this);
    static_cast<SlotState&>(*this) = parked[k];
    parked[k] = SlotState{};
    cur_slot = k;
  }

  size_t total_arena_bytes() const {
    size_t b = arena_bytes;
    for (const SlotState& s : parked) b += s.arena_bytes;
    return b;
  }

  void free_arena() {
    for (void* p : {arena, static_cast<void*>(ids), static_cast<void*>(cu), static_cast<void*>(rows),
                    static_cast<void*>(row_labels)})
      if (p) be.free(p);
    arena = nullptr;
    ids = cu = rows = row_labels = nullptr;
  }

  // Carve the arena for T tokens and R head rows (arena_layout: one table, one allocation).
  void ensure_capacity(int64_t T_need, int64_t R_need) {
    if (T_need <= cap_T && R_need <= cap_R && arena) return;
    const int64_t Tc = std::max(T_need, cap_T), Rc = std::max(R_need, cap_R);
    free_arena();
    const size_t Tn = Tc, Rn = Rc;
    const std::vector<ArenaSpec> specs =
        arena_layout(a, cfg, coord.tp_size, num_local_layers(), table.has_head, Tn, Rn, recompute, es());
    size_t total = 0;
    for (const ArenaSpec& s : specs) total += align_arena(s.bytes);
    arena = be.alloc(total);
    size_t off = 0;
    for (const ArenaSpec& s : specs) {
      *s.slot = static_cast<char*>(arena) + off;
      off += align_arena(s.bytes);
    }
    arena_bytes = total;
    ids = static_cast<int32_t*>(be.alloc(Tn * 4));
    cu = static_cast<int32_t*>(be.alloc((Tn + 1) * 4));
    rows = static_cast<int32_t*>(be.alloc(std::max<size_t>(Rn, 1) * 4));
    row_labels = static_cast<int32_t*>(be.alloc(std::max<size_t>(Rn, 1) * 4));
    cap_T = Tc;
    cap_R = Rc;
  }

  void set_recompute(Recompute r) {
    if (r == recompute) return;
    // The layout depends on the mode: every slot's arena is carved again at its next micro-batch.
    const int cur = cur_slot;
    for (int k = 0; k < static_cast<int>(parked.size()); ++k) {
      use_slot(k);
      free_arena();
      arena_bytes = 0;
      cap_T = cap_R = 0;
    }
    use_slot(cur);
    recompute = r;
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
    if (check_finite > 0) {
      host_ids = mb.input_ids;
      host_rows = r;
      host_labels = mb.labels;
    }
    T = n;
    R = static_cast<int64_t>(r.size());
    S = static_cast<int>(mb.cu_seqlens.size() - 1);
    max_seqlen = maxlen;
    has_pad = std::find(mb.input_ids.begin(), mb.input_ids.end(), kPad) != mb.input_ids.end();
    ensure_capacity(T, R);
    be.copy_to_device(ids, mb.input_ids.data(), T * 4);
    be.copy_to_device(cu, mb.cu_seqlens.data(), (S + 1) * 4);
    if (table.has_head) {  // only the last pipeline stage has the LM head (and room for its rows)
      be.copy_to_device(rows, r.data(), R * 4);
      be.copy_to_device(row_labels, lab.data(), R * 4);
    }
  }

  // What a checked tensor's rows are: the micro-batch's tokens, the LM head's rows (labelled tokens), or
  // heads of a [heads, tokens] statistic (the attention's lse), whose token is the column.
  enum class RowsAre { Tokens, HeadRows, Heads };
  // Under ESM2_CHECK_FINITE: scan rows×cols values at p (activation dtype, or fp32 when f32) and report the
  // first non-finite one.
  void chk(std::string_view what, int layer, const void* p, int64_t rows, int64_t cols, bool f32 = false,
           RowsAre rows_are = RowsAre::Tokens) {
    if (check_finite <= 0 || finite_reports >= 64 || rows * cols == 0) return;
    std::vector<float> h(static_cast<size_t>(rows * cols));
    if (f32) be.copy_to_host(h.data(), p, h.size() * 4);
    else be.act_to_host_f32(h.data(), p, h.size());
    int64_t bad = 0, first = -1, at_max = 0;
    float amax = 0;
    for (size_t i = 0; i < h.size(); ++i) {
      if (!std::isfinite(h[i])) {
        if (first < 0) first = static_cast<int64_t>(i);
        ++bad;
      } else if (std::fabs(h[i]) > amax) {
        amax = std::fabs(h[i]);
        at_max = static_cast<int64_t>(i);
      }
    }
    // "row r (token t id i[ <pad>], labelled|unlabelled)" of flat index i
    auto describe = [&](int64_t i) {
      const int64_t row = i / cols;
      int64_t tok = row;
      if (rows_are == RowsAre::Heads) tok = i % cols;
      else if (rows_are == RowsAre::HeadRows && row < static_cast<int64_t>(host_rows.size())) tok = host_rows[row];
      std::string token = "?";
      if (tok < static_cast<int64_t>(host_ids.size())) {
        const int32_t id = host_ids[tok];
        const bool labelled = tok < static_cast<int64_t>(host_labels.size()) && host_labels[tok] != kIgnoreLabel;
        token = fmt::format("token {} id {}{}, {}", tok, id, id == kPad ? " <pad>" : "", labelled ? "labelled" : "unlabelled");
      }
      return fmt::format("row {} ({}), column {}", row, token, i % cols);
    };
    const std::string where = layer >= 0 ? fmt::format("layer {} {}", layer + table.first_layer, what) : std::string(what);
    if (bad == 0) {
      if (check_finite >= 2)
        fmt::print(stderr, "esm2: check-finite: {}: {}x{}, |max| {} at {}\n", where, rows, cols, amax, describe(at_max));
      return;
    }
    ++finite_reports;
    fmt::print(stderr, "esm2: check-finite: {}: {} non-finite of {}x{}; first at {}: {}; finite |max| {}\n", where, bad,
               rows, cols, describe(first), h[static_cast<size_t>(first)], amax);
  }
  // The parameter gradients after a backward, tensor by tensor.
  void chk_grads() {
    if (check_finite <= 0) return;
    for (const ParamInfo& p : table.infos) {
      std::vector<float> h(p.numel);
      be.copy_to_host(h.data(), grads + p.offset, p.numel * 4);
      const int64_t bad = std::count_if(h.begin(), h.end(), [](float v) { return !std::isfinite(v); });
      if (bad) fmt::print(stderr, "esm2: check-finite: gradient {}: {} non-finite of {}\n", p.name, bad, p.numel);
      else if (check_finite >= 2)
        fmt::print(stderr, "esm2: check-finite: gradient {}: |max| {}\n", p.name,
                   std::fabs(*std::max_element(h.begin(), h.end(), [](float a, float b) { return std::fabs(a) < std::fabs(b); })));
    }
  }

  // ---- views ----
  size_t es() const { return dtype_size(be.activation_dtype()); }
  void* res(int l) { return at(a.residual, static_cast<size_t>(l) * T * cfg.hidden_size, es()); }
  void* lay(void* base, int l, size_t width) { return at(base, static_cast<size_t>(l) * T * width, es()); }
  float* stat(void* base, int l, size_t width = 1) { return f32(base) + static_cast<size_t>(l) * T * width; }

  // Layer l's views: slice l of a kept tensor, slice 0 (the shared scratch) of a recomputed one.
  LayerActs layer(int l) {
    const Keep k = keep_for(recompute);
    const size_t C = cfg.hidden_size, Ca = Cl, F = Fl, H = Hl;
    auto at_l = [l](bool kept) { return kept ? l : 0; };
    LayerActs v;
    v.x = res(l);
    v.out = res(l + 1);
    v.ln1 = lay(a.ln1, at_l(k.ln1), C);
    v.ln1_mean = stat(a.ln1_mean, at_l(k.ln1));
    v.ln1_rstd = stat(a.ln1_rstd, at_l(k.ln1));
    v.qkv = lay(a.qkv, at_l(k.qkv), 3 * Ca);
    v.atty = lay(a.atty, at_l(k.atty), Ca);
    v.lse = stat(a.lse, at_l(k.atty), H);
    v.mid = lay(a.res_mid, at_l(k.mid), C);
    v.ln2 = lay(a.ln2, at_l(k.ln2), C);
    v.ln2_mean = stat(a.ln2_mean, at_l(k.ln2));
    v.ln2_rstd = stat(a.ln2_rstd, at_l(k.ln2));
    v.fch = lay(a.fch, at_l(k.fch), F);
    return v;
  }

  AttentionShape attn_shape() const {
    AttentionShape s;
    s.T = T;
    s.S = S;
    s.H = Hl;  // this rank's heads: qkv rows are [q' | k' | v'] of width C' = H'·D each
    s.D = cfg.head_dim();
    s.max_seqlen = max_seqlen;
    s.cu_seqlens = cu;
    s.ids = has_pad ? ids : nullptr;  // no pad token: no key mask to apply
    s.pad_id = kPad;
    s.inv_freq = inv_freq_dev;
    return s;
  }

  // y[M,N] = x[M,K] · W[N,K]ᵀ + b  (a PyTorch Linear). `encoder`: one of the four linears of an encoder
  // layer, whose products a backend with FP8 linears runs in FP8 (GemmRole; the LM head never).
  void linear(void* y, const void* x, const float* w, const float* b, int64_t M, int64_t N, int64_t K,
              bool encoder = false) {
    GemmArgs g;
    if (encoder) g.role = GemmRole::LinearForward;
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
                       int64_t N, int64_t K, bool encoder = false) {
    const DType ad = be.activation_dtype();
    if (db) be.bias_backward(db, dy, M, N);
    GemmArgs gw;
    if (encoder) gw.role = GemmRole::LinearWgrad;
    gw.trans_a = true;
    gw.M = N, gw.N = K, gw.K = M;
    gw.A = dy, gw.a_dtype = ad;
    gw.B = x, gw.b_dtype = ad;
    gw.C = dw, gw.c_dtype = DType::F32;
    gw.beta = 1.0f;
    be.gemm(gw);
    if (!dx) return;
    GemmArgs gx;
    if (encoder) gx.role = GemmRole::LinearDgrad;
    gx.M = M, gx.N = K, gx.K = N;
    gx.A = dy, gx.a_dtype = ad;
    gx.B = w, gx.b_dtype = DType::F32;
    gx.C = dx, gx.c_dtype = ad;
    be.gemm(gx);
  }

  // Sum of the tensor-parallel ranks' partial x[n] (activation dtype), identical on every rank.
  void tp_allreduce(void* x, size_t n, const char* what) {
    if (coord.tp_size > 1) par.tp->allreduce_sum_typed(x, n, be.activation_dtype(), what);
  }
  // A replicated bias added to a row-parallel product before its all-reduce goes in once: on tp rank 0.
  const float* row_parallel_bias(const float* b) const { return coord.tp_rank == 0 ? b : nullptr; }

  // ---- forward ----
  // One pre-LN layer into v. recompute = false: the whole layer from v.x, except its last residual add,
  // v.out += v.mid, which encoder_forward fuses with the LayerNorm that reads v.out (ln1_ready: this
  // layer's LN1 came from that fused add of the layer before). recompute = true (before layer l's
  // backward): only the tensors the mode does not keep, in forward order, from the kept ones; the same
  // ops on the same inputs (a fused add + LayerNorm is bitwise the two ops), so bitwise the values the
  // forward had.
  void layer_forward(int l, const LayerActs& v, bool recompute_pass, bool ln1_ready = false) {
    const int64_t C = cfg.hidden_size, Ca = Cl, F = Fl;
    const LayerOffsets& o = table.layers[l];
    const float* P = params;
    const Keep k = keep_for(recompute);
    auto need = [recompute_pass](bool kept) { return !recompute_pass || !kept; };
    // x_mid = x + out_proj(Attn(LN1(x))); out_proj is row-parallel: partial sums over the local heads
    if (need(k.ln1) && !ln1_ready)
      be.layernorm_forward(v.ln1, v.ln1_mean, v.ln1_rstd, v.x, P + o.ln1_w, P + o.ln1_b, T, C, cfg.layer_norm_eps);
    if (need(k.qkv)) linear(v.qkv, v.ln1, P + o.w_qkv, P + o.b_qkv, T, 3 * Ca, C, true);
    if (need(k.atty)) be.attention_forward(v.atty, v.lse, v.qkv, attn_shape());
    // The recompute pass is checked too (the backward reads what it recomputes); the name is built only
    // when checking, off the hot path.
    auto chk_fwd = [&](bool done, const char* what, const void* p, int64_t rows, int64_t cols, bool f32 = false,
                       RowsAre rows_are = RowsAre::Tokens) {
      if (done && check_finite > 0)
        chk(recompute_pass ? fmt::format("{} (recomputed)", what) : what, l, p, rows, cols, f32, rows_are);
    };
    chk_fwd(need(k.ln1), "ln1", v.ln1, T, C);
    chk_fwd(need(k.ln1), "ln1 rstd", v.ln1_rstd, T, 1, true);
    chk_fwd(need(k.qkv), "qkv", v.qkv, T, 3 * Ca);
    chk_fwd(need(k.atty), "attention", v.atty, T, Ca);
    chk_fwd(need(k.atty), "attention lse", v.lse, Hl, T, true, RowsAre::Heads);
    // x_next = x_mid + proj(GELU(fc(LN2(x_mid)))); the residual add and LN2 in one pass
    if (need(k.mid)) {
      linear(v.mid, v.atty, P + o.w_o, row_parallel_bias(P + o.b_o), T, C, Ca, true);
      tp_allreduce(v.mid, T * C, "tensor-parallel attention output all-reduce");
      if (need(k.ln2))
        be.add_layernorm_forward(v.mid, v.ln2, v.ln2_mean, v.ln2_rstd, v.mid, v.x, P + o.ln2_w, P + o.ln2_b, T, C,
                                 cfg.layer_norm_eps);
      else
        be.add(v.mid, v.mid, v.x, T * C);
    } else if (need(k.ln2)) {
      be.layernorm_forward(v.ln2, v.ln2_mean, v.ln2_rstd, v.mid, P + o.ln2_w, P + o.ln2_b, T, C, cfg.layer_norm_eps);
    }
    if (need(k.fch)) linear(v.fch, v.ln2, P + o.w_fc, P + o.b_fc, T, F, C, true);
    chk_fwd(need(k.mid), "attention residual", v.mid, T, C);
    chk_fwd(need(k.ln2), "ln2", v.ln2, T, C);
    chk_fwd(need(k.ln2), "ln2 rstd", v.ln2_rstd, T, 1, true);
    chk_fwd(need(k.fch), "fc", v.fch, T, F);
    if (recompute_pass) return;  // v.out is the next layer's kept input
    be.gelu_forward(a.gelu, v.fch, T * F, cfg.gelu_tanh);
    chk("gelu", l, a.gelu, T, F);
    linear(v.out, a.gelu, P + o.w_proj, row_parallel_bias(P + o.b_proj), T, C, F, true);
    tp_allreduce(v.out, T * C, "tensor-parallel FFN output all-reduce");
    chk("ffn out", l, v.out, T, C);
  }

  void encoder_forward() {
    const int64_t C = cfg.hidden_size;
    const float eps = cfg.layer_norm_eps;
    const float* P = params;
    // A later pipeline stage finds the previous stage's output in res(0) instead.
    if (table.has_embedding) {
      be.embedding_forward(res(0), ids, P + table.wte, T, C);
      be.token_dropout_forward(res(0), ids, cu, S, C, kMask, kPad, cfg.mask_ratio_train, cfg.token_dropout);
      chk("embedding", -1, res(0), T, C);
    }
    const int L = num_local_layers();
    for (int l = 0; l < L; ++l) {
      const LayerActs v = layer(l);
      layer_forward(l, v, /*recompute_pass=*/false, /*ln1_ready=*/l > 0);
      // The layer's residual add, fused with the LayerNorm that reads its output: the next layer's LN1,
      // or the final LayerNorm after the last layer.
      if (l + 1 < L) {
        const LayerActs n = layer(l + 1);
        const LayerOffsets& o = table.layers[l + 1];
        be.add_layernorm_forward(v.out, n.ln1, n.ln1_mean, n.ln1_rstd, v.out, v.mid, P + o.ln1_w, P + o.ln1_b, T, C,
                                 eps);
      } else if (table.has_head) {
        be.add_layernorm_forward(v.out, a.lnf, f32(a.lnf_mean), f32(a.lnf_rstd), v.out, v.mid, P + table.lnf_w,
                                 P + table.lnf_b, T, C, eps);
      } else {
        be.add(v.out, v.out, v.mid, T * C);
      }
      chk("residual", l, v.out, T, C);
    }
    if (table.has_head && L == 0)
      be.layernorm_forward(a.lnf, f32(a.lnf_mean), f32(a.lnf_rstd), res(0), P + table.lnf_w, P + table.lnf_b, T, C,
                           eps);
    if (table.has_head) chk("final LayerNorm", -1, a.lnf, T, C);
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
    chk("head dense", -1, a.h_dense, R, C, false, RowsAre::HeadRows);
    chk("head LayerNorm", -1, a.h_ln, R, C, false, RowsAre::HeadRows);
    chk("logits", -1, a.logits, R, V, false, RowsAre::HeadRows);
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
    const int64_t C = cfg.hidden_size, V = cfg.vocab_size;
    const float* P = params;
    float* G = grads;
    // A pipeline stage before the last finds the gradient of its output (from the next stage) in d_res.
    if (table.has_head) {
      // LM head
      be.cross_entropy_backward(a.d_logits, a.logits, row_labels, R, V, grad_scale);
      linear_backward(a.dh_a, G + table.wte, G + table.head_bias, a.d_logits, a.h_ln, P + table.wte, R, V, C);
      be.memset_zero(a.dh_b, be.act_bytes(R * C));
      be.layernorm_backward(a.dh_b, G + table.head_ln_w, G + table.head_ln_b, a.dh_a, a.h_gelu, P + table.head_ln_w,
                            f32(a.h_mean), f32(a.h_rstd), R, C);
      be.gelu_backward_bias(a.dh_b, G + table.head_b, a.dh_b, a.h_dense, R, C, cfg.gelu_tanh);
      linear_backward(a.dh_a, G + table.head_w, nullptr, a.dh_b, a.h_in, P + table.head_w, R, C, C);
      be.memset_zero(a.d_tmp, be.act_bytes(T * C));
      be.scatter_add_rows(a.d_tmp, a.dh_a, rows, R, C);
      // final LayerNorm: d_res becomes the gradient of the last residual stream
      be.memset_zero(a.d_res, be.act_bytes(T * C));
      be.layernorm_backward(a.d_res, G + table.lnf_w, G + table.lnf_b, a.d_tmp, res(num_local_layers()),
                            P + table.lnf_w, f32(a.lnf_mean), f32(a.lnf_rstd), T, C);
      chk("d logits", -1, a.d_logits, R, V, false, RowsAre::HeadRows);
      chk("d head input (scattered)", -1, a.d_tmp, T, C);
      chk("d final LayerNorm input", -1, a.d_res, T, C);
      // The tail (final LayerNorm, LM head) is final; the tied decoder's share of wte is not (wte sits
      // at the front and the embedding adds to it last).
      if (grad_ready) grad_ready(table.lnf_w);
    }
    for (int l = num_local_layers() - 1; l >= 0; --l) {
      const LayerActs v = layer(l);
      layer_forward(l, v, /*recompute_pass=*/true);
      layer_backward(l, v);
      if (grad_ready) grad_ready(table.layers[size_t(l)].w_qkv);  // a layer's tensors start with q
    }
    // A later pipeline stage sends d_res (the gradient of its input) to the previous stage instead.
    if (!table.has_embedding) return;
    be.token_dropout_backward(a.d_res, ids, cu, S, C, kMask, kPad, cfg.mask_ratio_train, cfg.token_dropout);
    be.embedding_backward(G + table.wte, a.d_res, ids, T, C);
    chk("d embedding", -1, a.d_res, T, C);
    chk_grads();
  }

  // Layer l's backward from its activations v; d_res holds dL/d(v.out) on entry, dL/d(v.x) on exit.
  void layer_backward(int l, const LayerActs& v) {
    const int64_t C = cfg.hidden_size, Ca = Cl, F = Fl;
    const LayerOffsets& o = table.layers[l];
    const float* P = params;
    float* G = grads;
    // FFN block; the residual passes d_res through unchanged. d_res is replicated, so the replicated
    // bias/LayerNorm gradients come out identical on every tp rank.
    be.gelu_forward(a.gelu, v.fch, T * F, cfg.gelu_tanh);
    linear_backward(a.d_fch, G + o.w_proj, G + o.b_proj, a.d_res, a.gelu, P + o.w_proj, T, C, F, true);
    chk("d gelu", l, a.d_fch, T, F);
    be.gelu_backward_bias(a.d_fch, G + o.b_fc, a.d_fch, v.fch, T, F, cfg.gelu_tanh);
    chk("d fc", l, a.d_fch, T, F);
    linear_backward(a.d_tmp, G + o.w_fc, nullptr, a.d_fch, v.ln2, P + o.w_fc, T, F, C, true);
    tp_allreduce(a.d_tmp, T * C, "tensor-parallel FFN input-gradient all-reduce");
    chk("d ln2", l, a.d_tmp, T, C);
    be.layernorm_backward(a.d_res, G + o.ln2_w, G + o.ln2_b, a.d_tmp, v.mid, P + o.ln2_w, v.ln2_mean, v.ln2_rstd, T, C);
    chk("d attention residual", l, a.d_res, T, C);
    // attention block
    linear_backward(a.d_tmp, G + o.w_o, G + o.b_o, a.d_res, v.atty, P + o.w_o, T, C, Ca, true);
    chk("d attention", l, a.d_tmp, T, Ca);
    be.attention_backward(a.d_qkv, a.d_tmp, v.qkv, v.atty, v.lse, attn_shape());
    chk("d qkv", l, a.d_qkv, T, 3 * Ca);
    linear_backward(a.d_tmp, G + o.w_qkv, G + o.b_qkv, a.d_qkv, v.ln1, P + o.w_qkv, T, 3 * Ca, C, true);
    tp_allreduce(a.d_tmp, T * C, "tensor-parallel attention input-gradient all-reduce");
    chk("d ln1", l, a.d_tmp, T, C);
    be.layernorm_backward(a.d_res, G + o.ln1_w, G + o.ln1_b, a.d_tmp, v.x, P + o.ln1_w, v.ln1_mean, v.ln1_rstd, T, C);
    chk("d layer input", l, a.d_res, T, C);
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
size_t Esm2Model::activation_bytes() const { return impl_->total_arena_bytes(); }
Recompute Esm2Model::recompute() const { return impl_->recompute; }
void Esm2Model::set_recompute(Recompute r) { impl_->set_recompute(r); }
void Esm2Model::set_grad_ready_hook(std::function<void(size_t)> hook) { impl_->grad_ready = std::move(hook); }

size_t activation_arena_bytes(const ModelConfig& cfg, int64_t tokens, int64_t head_rows, Recompute recompute,
                              DType activation_dtype) {
  Acts views;
  size_t total = 0;
  for (const ArenaSpec& s : arena_layout(views, cfg, /*tp=*/1, static_cast<size_t>(cfg.num_layers), /*head=*/true,
                                         static_cast<size_t>(tokens), static_cast<size_t>(head_rows), recompute,
                                         dtype_size(activation_dtype)))
    total += align_arena(s.bytes);
  return total;
}

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
  // Every value is a function of its index in the WHOLE model's flat layout, so a rank draws only
  // the elements it holds and any TP/PP split starts from exactly the single-rank model's weights,
  // without materialising the whole model on every rank (15B would be 60 GB of host memory each).
  const ParamTable& t = impl_->full_table;
  const PhiloxStream rng{seed, RngStream::Init, 0};
  // N(0, 0.02) by Box–Muller, one normal per element keyed by its flat index: independent of threads.
  auto normal = [&rng](size_t i) {
    const double u1 = (static_cast<double>(rng.word(2 * i) >> 8) + 1.0) / 16777216.0;  // (0, 1]
    const double u2 = static_cast<double>(rng.word(2 * i + 1) >> 8) / 16777216.0;      // [0, 1)
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  };
  const float std_dev = 0.02f;
  const size_t C = impl_->cfg.hidden_size;
  const size_t pad_begin = t.wte + kPad * C, pad_end = pad_begin + C;  // padding_idx row: zero
  std::vector<float> local(impl_->table.total, 0.0f);
  for (const FlatRun& r : impl_->table.runs) {
    // The whole-model tensor this run lies in (runs never cross tensors); infos are in offset order.
    const auto it = std::upper_bound(t.infos.begin(), t.infos.end(), r.full,
                                     [](size_t off, const ParamInfo& p) { return off < p.offset; });
    const ParamInfo& p = *std::prev(it);
    ESM2_ASSERT(r.full >= p.offset && r.full + r.length <= p.offset + p.numel);
    const bool normal_init = p.weight_decay || p.offset == t.wte;
    const bool is_ln_weight = p.name.ends_with("LayerNorm.weight") || p.name.ends_with("layer_norm.weight") ||
                              p.name.ends_with("emb_layer_norm_after.weight");
    float* dst = local.data() + r.local;
    if (normal_init) {
#pragma omp parallel for schedule(static)
      for (size_t i = 0; i < r.length; ++i) {
        const size_t f = r.full + i;
        dst[i] = f >= pad_begin && f < pad_end ? 0.0f : static_cast<float>(std_dev * normal(f));
      }
    } else if (is_ln_weight) {
      std::fill(dst, dst + r.length, 1.0f);
    }
  }
  set_params(local);
}

void Esm2Model::zero_grads() { impl_->be.memset_zero(impl_->grads, impl_->table.total * 4); }

LossSum Esm2Model::forward_backward(const MicroBatch& mb, float grad_scale) {
  Impl& m = *impl_;
  m.require_whole("forward_backward");
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
  m.require_whole("forward_loss");
  m.prepare(mb, /*all_rows=*/false);
  if (m.R == 0) return {};
  m.encoder_forward();
  m.head_forward();
  return m.loss_sum();
}

void Esm2Model::forward_outputs(const MicroBatch& mb, std::vector<float>* logits, std::vector<float>* last_hidden,
                                int repr_layer, std::vector<float>* repr) {
  Impl& m = *impl_;
  m.require_whole("forward_outputs");
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

// ---- pipeline stage ----

int Esm2Model::first_layer() const { return impl_->table.first_layer; }
int Esm2Model::end_layer() const { return impl_->table.end_layer; }
bool Esm2Model::has_embedding() const { return impl_->table.has_embedding; }
bool Esm2Model::has_head() const { return impl_->table.has_head; }

void Esm2Model::reserve_slots(int slots, int64_t max_tokens, int64_t max_rows) {
  Impl& m = *impl_;
  ESM2_CHECK(slots >= 1, "model: {} activation slots requested", slots);
  const int cur = m.cur_slot;
  if (m.parked.size() < static_cast<size_t>(slots)) m.parked.resize(static_cast<size_t>(slots));
  for (int k = 0; k < slots; ++k) {
    m.use_slot(k);
    m.ensure_capacity(std::max<int64_t>(max_tokens, 1), max_rows);
  }
  m.use_slot(cur);
}

void* Esm2Model::stage_input(int slot, const MicroBatch& mb) {
  Impl& m = *impl_;
  m.use_slot(slot);
  m.prepare(mb, /*all_rows=*/false);
  return m.table.has_embedding ? nullptr : m.res(0);
}

LossSum Esm2Model::stage_forward(int slot) {
  Impl& m = *impl_;
  m.use_slot(slot);
  m.encoder_forward();
  if (!m.table.has_head) return {};
  m.head_forward();
  return m.loss_sum();
}

const void* Esm2Model::stage_output(int slot) {
  Impl& m = *impl_;
  m.use_slot(slot);
  return m.table.has_head ? nullptr : m.res(m.num_local_layers());
}

void* Esm2Model::stage_output_grad(int slot) {
  Impl& m = *impl_;
  m.use_slot(slot);
  return m.table.has_head ? nullptr : m.a.d_res;
}

const void* Esm2Model::stage_backward(int slot, float grad_scale) {
  Impl& m = *impl_;
  m.use_slot(slot);
  m.backward(grad_scale);
  return m.table.has_embedding ? nullptr : m.a.d_res;
}

size_t Esm2Model::stage_boundary_bytes(int slot) {
  impl_->use_slot(slot);
  return impl_->boundary_bytes();
}

}  // namespace esm2
