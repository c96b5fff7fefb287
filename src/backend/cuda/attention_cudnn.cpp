// The SDPA forward and backward graphs on cuDNN's backend (graph) API, op for op the composite graph
// that cuDNN's fused flash-attention engine recognises (the shape cudnn-frontend and TransformerEngine
// hand it): Q·Kᵀ → ·scale → padding mask (row < seq_len_q ∧ col < seq_len_kv, else −inf) → softmax with
// statistics → ·V forward; the FlashAttention-2 backward (Δ = rowsum(dO∘O), P = exp(S − stats),
// dV = Pᵀ·dO, dS = P∘(dO·Vᵀ − Δ)·scale, dK = dSᵀ·Q, dQ = dS·K) behind it. On Hopper the backward's
// dQ goes either straight to the bf16 output (deterministic) or through an fp32 accumulator in the
// workspace that the engine adds into with atomics (faster, run-to-run bits may differ).
#include "backend/cuda/attention_cudnn.h"

#include <cudnn_graph.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <tuple>
#include <vector>

#include "backend/cuda/attention_varlen.cuh"
#include "backend/cuda/cuda_check.h"
#include "core/error.h"

namespace esm2::cuda {

namespace {

void check(cudnnStatus_t st, const char* expr, int line) {
  if (st == CUDNN_STATUS_SUCCESS) return;
  char detail[512] = {0};
  cudnnGetLastErrorString(detail, sizeof(detail));
  fail("cuDNN attention: {} failed at attention_cudnn.cpp:{}: {} ({})", expr, line, cudnnGetErrorString(st), detail);
}
#define CK(expr) check((expr), #expr, __LINE__)

using Dims = std::array<int64_t, 4>;

struct Desc {
  cudnnBackendDescriptor_t d = nullptr;
  explicit Desc(cudnnBackendDescriptorType_t t) { CK(cudnnBackendCreateDescriptor(t, &d)); }
  ~Desc() {
    if (d) cudnnBackendDestroyDescriptor(d);
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
};

// Fixed tensor ids of a graph's inputs and outputs (the variant pack binds pointers to them).
enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kScale, kSeqQ, kSeqKV, kNegInf, kOffC, kOff3C, kDO, kOne, kDQ, kDK, kDV, kSoftmaxSum,
  kDQAccum, kOffKV, kFirstVirtual = 100
};

// Builds one operation graph and its execution plan; owns every descriptor the plan refers to.
class Graph {
 public:
  explicit Graph(cudnnHandle_t h) : handle_(h) {}

  cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t t) {
    keep_.push_back(std::make_unique<Desc>(t));
    return keep_.back()->d;
  }
  static void set(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a, cudnnBackendAttributeType_t ty,
                  int64_t n, const void* v) {
    CK(cudnnBackendSetAttribute(d, a, ty, n, v));
  }

  cudnnBackendDescriptor_t tensor(int64_t uid, Dims dims, Dims strides, cudnnDataType_t dt, bool is_virtual,
                                  cudnnBackendDescriptor_t ragged = nullptr, bool by_value = false) {
    auto d = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const int64_t align = 16;
    set(d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
    set(d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data());
    set(d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data());
    set(d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    set(d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    set(d, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    if (by_value) set(d, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
    if (ragged) set(d, CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &ragged);
    CK(cudnnBackendFinalize(d));
    return d;
  }
  cudnnBackendDescriptor_t virt(Dims dims, Dims strides, cudnnDataType_t dt = CUDNN_DATA_FLOAT) {
    return tensor(next_uid_++, dims, strides, dt, true);
  }
  cudnnBackendDescriptor_t scalar(int64_t uid) {
    return tensor(uid, {1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_FLOAT, false, nullptr, true);
  }

  void pointwise(cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                 cudnnBackendDescriptor_t y, cudnnBackendDescriptor_t t = nullptr,
                 cudnnDataType_t prec = CUDNN_DATA_FLOAT, int64_t axis = -1) {
    auto p = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    set(p, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    set(p, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
    if (axis >= 0) set(p, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    CK(cudnnBackendFinalize(p));
    auto op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &p);
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    if (b) set(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    if (t) set(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t);
    CK(cudnnBackendFinalize(op));
    ops_.push_back(op);
  }

  void reduction(cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    auto r = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    const cudnnDataType_t f = CUDNN_DATA_FLOAT;
    set(r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f);
    set(r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
    CK(cudnnBackendFinalize(r));
    auto op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &r);
    CK(cudnnBackendFinalize(op));
    ops_.push_back(op);
  }

  // c = a·b (batched over the first two dims); the overrides bound the rows/columns/inner dim per batch.
  void matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c,
              cudnnBackendDescriptor_t m_ov, cudnnBackendDescriptor_t n_ov, cudnnBackendDescriptor_t k_ov,
              bool zero_padding = false) {
    auto m = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    const cudnnDataType_t f = CUDNN_DATA_FLOAT;
    set(m, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f);
    if (zero_padding) {
      const double zero = 0.0;
      set(m, CUDNN_ATTR_MATMUL_PADDING_VALUE, CUDNN_TYPE_DOUBLE, 1, &zero);
    }
    CK(cudnnBackendFinalize(m));
    auto op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m);
    if (m_ov) set(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m_ov);
    if (n_ov) set(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n_ov);
    if (k_ov) set(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &k_ov);
    CK(cudnnBackendFinalize(op));
    ops_.push_back(op);
  }

  void reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    auto op = make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    set(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    set(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    CK(cudnnBackendFinalize(op));
    ops_.push_back(op);
  }

  // scores (=) masked to −inf outside [0, seq_q) × [0, seq_kv), the composite padding mask.
  cudnnBackendDescriptor_t padding_mask(cudnnBackendDescriptor_t s, Dims dims, Dims strides,
                                        cudnnBackendDescriptor_t seq_q, cudnnBackendDescriptor_t seq_kv,
                                        cudnnBackendDescriptor_t neg_inf) {
    auto row = virt(dims, strides, CUDNN_DATA_INT32), col = virt(dims, strides, CUDNN_DATA_INT32);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, row, nullptr, CUDNN_DATA_INT32, 2);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, col, nullptr, CUDNN_DATA_INT32, 3);
    auto rm = virt(dims, strides, CUDNN_DATA_BOOLEAN), cm = virt(dims, strides, CUDNN_DATA_BOOLEAN);
    pointwise(CUDNN_POINTWISE_CMP_LT, row, seq_q, rm, nullptr, CUDNN_DATA_BOOLEAN);
    pointwise(CUDNN_POINTWISE_CMP_LT, col, seq_kv, cm, nullptr, CUDNN_DATA_BOOLEAN);
    auto mask = virt(dims, strides, CUDNN_DATA_BOOLEAN);
    pointwise(CUDNN_POINTWISE_LOGICAL_AND, rm, cm, mask, nullptr, CUDNN_DATA_BOOLEAN);
    auto out = virt(dims, strides);
    pointwise(CUDNN_POINTWISE_BINARY_SELECT, s, neg_inf, out, mask);
    return out;
  }

  // Finalises the graph and takes the first engine configuration (heuristics order) that builds.
  void build_plan(const char* what) {
    auto og = make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    set(og, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(ops_.size()),
        ops_.data());
    set(og, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle_);
    CK(cudnnBackendFinalize(og));
    auto heur = make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    set(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &og);
    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    CK(cudnnBackendFinalize(heur));
    int64_t count = 0;
    CK(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count,
                                nullptr));
    ESM2_CHECK(count > 0, "cuDNN attention: no engine supports the {} graph", what);
    std::vector<cudnnBackendDescriptor_t> cfgs;
    for (int64_t i = 0; i < count; ++i) cfgs.push_back(make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
    int64_t got = 0;
    CK(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got,
                                cfgs.data()));
    std::string last;
    for (int64_t i = 0; i < got; ++i) {
      auto plan = make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      set(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle_);
      set(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]);
      const cudnnStatus_t st = cudnnBackendFinalize(plan);
      if (st != CUDNN_STATUS_SUCCESS) {
        char detail[512] = {0};
        cudnnGetLastErrorString(detail, sizeof(detail));
        last = fmt::format("{} ({})", cudnnGetErrorString(st), detail);
        continue;
      }
      int64_t n = 0;
      CK(cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n,
                                  &workspace));
      this->plan = plan;
      return;
    }
    fail("cuDNN attention: none of the {} engine configurations for the {} graph builds: {}", got, what, last);
  }

  cudnnBackendDescriptor_t plan = nullptr;
  int64_t workspace = 0;

 private:
  cudnnHandle_t handle_;
  std::vector<std::unique_ptr<Desc>> keep_;
  std::vector<cudnnBackendDescriptor_t> ops_;
  int64_t next_uid_ = kFirstVirtual;
};

int64_t pow2_at_least(int64_t x, int64_t lo) {
  int64_t p = lo;
  while (p < x) p *= 2;
  return p;
}

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

// Scratch carving: consecutive 256-byte aligned pieces.
struct Carver {
  char* base;
  size_t used = 0;
  template <class T>
  T* take(size_t count) {
    T* p = reinterpret_cast<T*>(base ? base + used : nullptr);
    used += align256(count * sizeof(T));
    return p;
  }
};

class CudnnAttentionImpl final : public CudnnAttention {
 public:
  CudnnAttentionImpl(cudnnHandle_t h, cudaStream_t s) : handle_(h), stream_(s) {}
  ~CudnnAttentionImpl() override {
    plans_.clear();
    cudnnDestroy(handle_);
  }

  size_t forward_scratch_bytes(const AttentionShape& a) override {
    const Key k = key(a, 0);
    return carve(nullptr, a, k, plan_for(k).workspace).used;
  }
  size_t backward_scratch_bytes(const AttentionShape& a, bool deterministic) override {
    const Key k = key(a, deterministic ? 1 : 2);
    return carve(nullptr, a, k, plan_for(group_key(k)).workspace).used;
  }
  void set_backward_group(int64_t sequences) override {
    ESM2_CHECK(sequences == 0 || (sequences >= 4 && (sequences & (sequences - 1)) == 0),
               "cuDNN attention: a backward group of {} sequences (must be 0 or a power of two >= 4)", sequences);
    group_ = sequences;
  }
  int64_t backward_group() const override { return group_; }

  void forward(void* out, float* lse, const void* qkv, const AttentionShape& a, void* scratch) override {
    if (a.T == 0 || a.S == 0) return;
    const Key k = key(a, 0);
    Graph& g = plan_for(k);
    const int64_t C = static_cast<int64_t>(a.H) * a.D;
    const Layout m = carve(static_cast<char*>(scratch), a, k, g.workspace);
    launch_kv_compaction(m.seqlen_q, m.seqlen_kv, m.off_c, m.off_3c, m.off_kv, m.kv_start, m.kv_pos, a,
                         static_cast<int>(k.B), stream_);
    launch_rotate_compact_qkv(m.q, C, m.kv, m.kv_pos, qkv, a, stream_);
    const float scale = attn_scale(a.D), neg_inf = -std::numeric_limits<float>::infinity();
    const std::vector<std::pair<int64_t, const void*>> bind = {
        {kQ, m.q},          {kK, m.kv},           {kV, static_cast<uint16_t*>(m.kv) + C},
        {kO, out},          {kStats, m.stats},    {kScale, &scale},
        {kSeqQ, m.seqlen_q}, {kSeqKV, m.seqlen_kv}, {kNegInf, &neg_inf},
        {kOffC, m.off_c},   {kOffKV, m.off_kv}};
    execute(g, bind, m.ws);
    launch_stats_to_lse(lse, m.stats, a.cu_seqlens, a.S, a.T, a.H, static_cast<int>(k.sp), stream_);
  }

  void backward(void* dqkv, const void* dout, const void* qkv, const void* out, const float* lse,
                const AttentionShape& a, bool deterministic, void* scratch) override {
    if (a.T == 0 || a.S == 0) return;
    const Key k = key(a, deterministic ? 1 : 2);
    const Key gk = group_key(k);
    Graph& g = plan_for(gk);
    const int64_t C = static_cast<int64_t>(a.H) * a.D;
    const Layout m = carve(static_cast<char*>(scratch), a, k, g.workspace);
    launch_kv_compaction(m.seqlen_q, m.seqlen_kv, m.off_c, m.off_3c, m.off_kv, m.kv_start, m.kv_pos, a,
                         static_cast<int>(k.B), stream_);
    launch_rotate_compact_qkv(m.q, 3 * C, m.kv, m.kv_pos, qkv, a, stream_);
    launch_lse_to_stats(m.stats, lse, a.cu_seqlens, a.S, static_cast<int>(k.B), a.T, a.H, static_cast<int>(k.sp),
                        stream_);
    const float scale = attn_scale(a.D), neg_inf = -std::numeric_limits<float>::infinity(), one = 1.0f;
    auto* dkv = static_cast<uint16_t*>(m.dkv);
    std::vector<std::pair<int64_t, const void*>> bind = {
        {kQ, m.q},           {kK, m.kv},           {kV, static_cast<uint16_t*>(m.kv) + C},
        {kO, out},           {kDO, dout},          {kStats, m.stats},
        {kScale, &scale},    {kOne, &one},         {kSeqQ, m.seqlen_q},
        {kSeqKV, m.seqlen_kv}, {kNegInf, &neg_inf}, {kOffC, m.off_c},
        {kOff3C, m.off_3c},  {kOffKV, m.off_kv},   {kDQ, dqkv},
        {kDK, dkv},          {kDV, dkv + C},       {kSoftmaxSum, m.softmax_sum}};
    if (!deterministic) bind.emplace_back(kDQAccum, m.dq_accum);
    // One execution per group of gk.B sequences: the group's slices of the per-sequence inputs (lengths,
    // ragged offsets, which stay offsets from the same base pointers, and the [B,H,s] statistics); the
    // sequences past a.S have length 0, and groups made only of them are skipped.
    const size_t rows_per_seq = static_cast<size_t>(a.H) * k.sp;
    for (int64_t b0 = 0; b0 < k.B && b0 < a.S; b0 += gk.B) {
      for (auto& [uid, ptr] : bind) {
        switch (uid) {
          case kSeqQ: ptr = m.seqlen_q + b0; break;
          case kSeqKV: ptr = m.seqlen_kv + b0; break;
          case kOffC: ptr = m.off_c + b0; break;
          case kOff3C: ptr = m.off_3c + b0; break;
          case kOffKV: ptr = m.off_kv + b0; break;
          case kStats: ptr = m.stats + static_cast<size_t>(b0) * rows_per_seq; break;
          case kSoftmaxSum: ptr = m.softmax_sum + static_cast<size_t>(b0) * rows_per_seq; break;
          default: break;
        }
      }
      execute(g, bind, m.ws);
    }
    launch_expand_unrotate_dqkv(dqkv, m.dkv, m.kv_pos, a, stream_);
  }

 private:
  // pass: 0 forward, 1 deterministic backward, 2 backward with atomic dQ accumulation.
  struct Key {
    int pass, D, H;
    int64_t B, sp;
    bool operator<(const Key& o) const { return std::tie(pass, D, H, B, sp) < std::tie(o.pass, o.D, o.H, o.B, o.sp); }
  };
  struct Layout {
    void* q;    // rotated q: rows of C (forward) or 3C (backward, the layout of dQ)
    void* kv;   // the kept keys' [rot(k) | v], compacted rows of 2C
    void* dkv;  // backward: their [dk | dv], the same layout
    int32_t *seqlen_q, *seqlen_kv, *off_c, *off_3c, *off_kv, *kv_start, *kv_pos;
    float *stats, *softmax_sum, *dq_accum;
    void* ws;
    size_t used;
  };

  static float attn_scale(int D) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(D))); }
  // The plan of one execution: the whole batch, or (deterministic backward with a group set) a group of
  // group_ sequences. Groups of at least 4 keep every sliced int32 and fp32 input 16-byte aligned.
  Key group_key(const Key& k) const {
    Key g = k;
    if (k.pass == 1 && group_ > 0 && k.B > group_) g.B = group_;
    return g;
  }
  static Key key(const AttentionShape& a, int pass) {
    return {pass, a.D, a.H, pow2_at_least(a.S, 1), pow2_at_least(a.max_seqlen, 128)};
  }

  // The scratch pieces of a call (base nullptr: only the total size is meaningful).
  static Layout carve(char* base, const AttentionShape& a, const Key& k, int64_t ws_bytes) {
    Carver sc{base};
    Layout m{};
    const size_t tc = static_cast<size_t>(a.T) * a.H * a.D, rows = static_cast<size_t>(k.B) * a.H * k.sp;
    const size_t B = static_cast<size_t>(k.B);
    m.q = sc.take<uint16_t>(k.pass == 0 ? tc : 3 * tc);
    m.kv = sc.take<uint16_t>(2 * tc);
    if (k.pass > 0) m.dkv = sc.take<uint16_t>(2 * tc);
    m.seqlen_q = sc.take<int32_t>(B);
    m.seqlen_kv = sc.take<int32_t>(B);
    m.off_c = sc.take<int32_t>(B + 1);
    m.off_3c = sc.take<int32_t>(B + 1);
    m.off_kv = sc.take<int32_t>(B + 1);
    m.kv_start = sc.take<int32_t>(B + 1);
    m.kv_pos = sc.take<int32_t>(static_cast<size_t>(a.T));
    m.stats = sc.take<float>(rows);
    if (k.pass > 0) m.softmax_sum = sc.take<float>(rows);
    if (k.pass == 2) m.dq_accum = sc.take<float>(3 * tc);
    m.ws = sc.take<char>(static_cast<size_t>(ws_bytes));
    m.used = sc.used;
    return m;
  }

  void execute(Graph& g, const std::vector<std::pair<int64_t, const void*>>& bind, void* ws) {
    std::vector<int64_t> uids;
    std::vector<void*> ptrs;
    for (auto& [u, p] : bind) {
      uids.push_back(u);
      ptrs.push_back(const_cast<void*>(p));
    }
    Desc vp(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    Graph::set(vp.d, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, static_cast<int64_t>(uids.size()),
               uids.data());
    Graph::set(vp.d, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, static_cast<int64_t>(ptrs.size()),
               ptrs.data());
    Graph::set(vp.d, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
    CK(cudnnBackendFinalize(vp.d));
    CK(cudnnBackendExecute(handle_, g.plan, vp.d));
  }

  // The cached plan; a shape whose plan failed to build fails again at once (no rebuild per call).
  Graph& plan_for(const Key& k) {
    auto it = plans_.find(k);
    if (it != plans_.end()) return *it->second;
    if (auto f = failed_.find(k); f != failed_.end()) throw Error(f->second);
    auto g = std::make_unique<Graph>(handle_);
    try {
      if (k.pass == 0)
        build_forward(*g, k);
      else
        build_backward(*g, k);
    } catch (const Error& e) {
      failed_.emplace(k, e.what());
      throw;
    }
    return *plans_.emplace(k, std::move(g)).first->second;
  }

  // Shared inputs: the ragged offsets, the sequence lengths and the by-value scalars.
  struct Inputs {
    cudnnBackendDescriptor_t off_c, off_3c, off_kv, seq_q, seq_kv, scale, neg_inf;
  };
  static Inputs inputs(Graph& g, const Key& k) {
    Inputs in{};
    in.off_c = g.tensor(kOffC, {k.B + 1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_INT32, false);
    in.off_3c = g.tensor(kOff3C, {k.B + 1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_INT32, false);
    in.off_kv = g.tensor(kOffKV, {k.B + 1, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_INT32, false);
    in.seq_q = g.tensor(kSeqQ, {k.B, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_INT32, false);
    in.seq_kv = g.tensor(kSeqKV, {k.B, 1, 1, 1}, {1, 1, 1, 1}, CUDNN_DATA_INT32, false);
    in.scale = g.scalar(kScale);
    in.neg_inf = g.scalar(kNegInf);
    return in;
  }

  // Layouts (dims [b, h, s, d]): q, k rotated [T, C] rows (stride C), v / dq / dk / dv inside the [T, 3C]
  // rows (stride 3C), out / dout [T, C]; each sequence starts at its ragged offset.
  static void build_forward(Graph& g, const Key& k) {
    const int64_t B = k.B, H = k.H, s = k.sp, D = k.D, C = H * D;
    const Inputs in = inputs(g, k);
    auto q = g.tensor(kQ, {B, H, s, D}, {s * C, D, C, 1}, CUDNN_DATA_BFLOAT16, false, in.off_c);
    auto kt = g.tensor(kK, {B, H, D, s}, {s * 2 * C, D, 1, 2 * C}, CUDNN_DATA_BFLOAT16, false, in.off_kv);
    auto v = g.tensor(kV, {B, H, s, D}, {s * 2 * C, D, 2 * C, 1}, CUDNN_DATA_BFLOAT16, false, in.off_kv);
    auto o = g.tensor(kO, {B, H, s, D}, {s * C, D, C, 1}, CUDNN_DATA_BFLOAT16, false, in.off_c);
    const Dims sd = {B, H, s, s}, ss = {H * s * s, s * s, s, 1}, rd = {B, H, s, 1}, rs = {H * s, s, 1, 1};
    auto stats = g.tensor(kStats, rd, rs, CUDNN_DATA_FLOAT, false);
    auto s1 = g.virt(sd, ss);
    g.matmul(q, kt, s1, in.seq_q, in.seq_kv, nullptr, true);
    auto s2 = g.virt(sd, ss);
    g.pointwise(CUDNN_POINTWISE_MUL, s1, in.scale, s2);
    auto s3 = g.padding_mask(s2, sd, ss, in.seq_q, in.seq_kv, in.neg_inf);
    auto mx = g.virt(rd, rs);
    g.reduction(CUDNN_REDUCE_TENSOR_MAX, s3, mx);
    auto s4 = g.virt(sd, ss);
    g.pointwise(CUDNN_POINTWISE_SUB, s3, mx, s4);
    auto e = g.virt(sd, ss);
    g.pointwise(CUDNN_POINTWISE_EXP, s4, nullptr, e);
    auto z = g.virt(rd, rs);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, z);
    auto lz = g.virt(rd, rs);
    g.pointwise(CUDNN_POINTWISE_LOG, z, nullptr, lz);
    g.pointwise(CUDNN_POINTWISE_ADD, mx, lz, stats);
    auto p = g.virt(sd, ss, CUDNN_DATA_BFLOAT16);
    g.pointwise(CUDNN_POINTWISE_DIV, e, z, p);
    g.matmul(p, v, o, in.seq_q, nullptr, in.seq_kv);
    g.build_plan("forward");
  }

  // Layouts: Q and dQ in rows of 3C (dQ lands in dqkv; the rotated q sits in a scratch of the same
  // layout), K, V, dK, dV in the compacted [k | v] rows of 2C, O and dO in rows of C. Each gradient has
  // its input's strides and ragged offsets: the first H100 run (cuDNN 9.14), with rotated q/k in rows of C
  // and dQ/dK in rows of 3C, got wrong dQ/dK, as if the engine addressed the gradients with the inputs'
  // layout; TransformerEngine's layouts keep them equal too.
  static void build_backward(Graph& g, const Key& k) {
    const bool deterministic = k.pass == 1;
    const int64_t B = k.B, H = k.H, s = k.sp, D = k.D, C = H * D;
    const Inputs in = inputs(g, k);
    const auto bf = CUDNN_DATA_BFLOAT16;
    const Dims qd = {B, H, s, D}, q3 = {s * 3 * C, D, 3 * C, 1}, kv2 = {s * 2 * C, D, 2 * C, 1};
    auto q = g.tensor(kQ, qd, q3, bf, false, in.off_3c);
    auto kt = g.tensor(kK, {B, H, D, s}, {s * 2 * C, D, 1, 2 * C}, bf, false, in.off_kv);
    auto vt = g.tensor(kV, {B, H, D, s}, {s * 2 * C, D, 1, 2 * C}, bf, false, in.off_kv);
    auto o = g.tensor(kO, qd, {s * C, D, C, 1}, bf, false, in.off_c);
    auto d_o = g.tensor(kDO, qd, {s * C, D, C, 1}, bf, false, in.off_c);
    auto dq = g.tensor(kDQ, qd, q3, bf, false, in.off_3c);
    auto dk = g.tensor(kDK, qd, kv2, bf, false, in.off_kv);
    auto dv = g.tensor(kDV, qd, kv2, bf, false, in.off_kv);
    const Dims sd = {B, H, s, s}, ss = {H * s * s, s * s, s, 1}, rd = {B, H, s, 1}, rs = {H * s, s, 1, 1};
    const Dims td = {B, H, s, s}, ts = {H * s * s, s * s, 1, s};  // transposed scores (kv rows, q columns)
    auto stats = g.tensor(kStats, rd, rs, CUDNN_DATA_FLOAT, false);
    auto one = g.scalar(kOne);
    // Δ = rowsum(dO ∘ O), kept in the workspace.
    auto doo = g.virt(qd, {H * s * D, s * D, H * D, 1});
    g.pointwise(CUDNN_POINTWISE_MUL, d_o, o, doo);
    auto r1 = g.virt(rd, rs);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, doo, r1);
    auto delta = g.tensor(kSoftmaxSum, rd, rs, CUDNN_DATA_FLOAT, false);
    g.pointwise(CUDNN_POINTWISE_MUL, r1, one, delta);
    // P = exp(S·scale (masked) − stats)
    auto s1 = g.virt(sd, ss);
    g.matmul(q, kt, s1, in.seq_q, in.seq_kv, nullptr);
    auto s2 = g.virt(sd, ss);
    g.pointwise(CUDNN_POINTWISE_MUL, s1, in.scale, s2);
    auto s3 = g.padding_mask(s2, sd, ss, in.seq_q, in.seq_kv, in.neg_inf);
    auto s4 = g.virt(sd, ss);
    g.pointwise(CUDNN_POINTWISE_SUB, s3, stats, s4);
    auto p = g.virt(sd, ss);
    g.pointwise(CUDNN_POINTWISE_EXP, s4, nullptr, p);
    auto pt = g.virt(td, ts, bf);
    g.reshape(p, pt);
    g.matmul(pt, d_o, dv, in.seq_kv, nullptr, in.seq_q);
    // dS = P ∘ (dO·Vᵀ − Δ) · scale
    auto dp = g.virt(sd, ss);
    g.matmul(d_o, vt, dp, in.seq_q, in.seq_kv, nullptr);
    auto dp2 = g.virt(sd, ss);
    g.pointwise(CUDNN_POINTWISE_SUB, dp, delta, dp2);
    auto ds1 = g.virt(sd, ss);
    g.pointwise(CUDNN_POINTWISE_MUL, dp2, p, ds1);
    auto ds = g.virt(sd, ss);
    g.pointwise(CUDNN_POINTWISE_MUL, ds1, in.scale, ds);
    auto dst = g.virt(td, ts, bf);
    g.reshape(ds, dst);
    g.matmul(dst, q, dk, in.seq_kv, nullptr, in.seq_q);
    auto kk = g.tensor(kFirstVirtual - 1, qd, kv2, bf, true, in.off_kv);
    g.reshape(kt, kk);
    if (deterministic) {
      g.matmul(ds, kk, dq, in.seq_q, nullptr, in.seq_kv);
    } else {
      auto acc = g.tensor(kDQAccum, qd, q3, CUDNN_DATA_FLOAT, false, in.off_3c);
      g.matmul(ds, kk, acc, in.seq_q, nullptr, in.seq_kv);
      g.pointwise(CUDNN_POINTWISE_IDENTITY, acc, nullptr, dq);
    }
    g.build_plan(deterministic ? "deterministic backward" : "backward");
  }

  cudnnHandle_t handle_;
  cudaStream_t stream_;
  int64_t group_ = 0;  // set_backward_group
  std::map<Key, std::unique_ptr<Graph>> plans_;
  std::map<Key, std::string> failed_;
};

}  // namespace

std::unique_ptr<CudnnAttention> CudnnAttention::create(cudaStream_t stream, std::string* why) {
  const size_t ver = cudnnGetVersion();
  if (ver < 90000) {
    if (why) *why = fmt::format("cuDNN {} found at run time; the fused attention needs 9.0 or newer", ver);
    return nullptr;
  }
  cudnnHandle_t h = nullptr;
  const cudnnStatus_t st = cudnnCreate(&h);
  if (st != CUDNN_STATUS_SUCCESS) {
    if (why) *why = fmt::format("cudnnCreate failed: {}", cudnnGetErrorString(st));
    return nullptr;
  }
  CK(cudnnSetStream(h, stream));
  return std::make_unique<CudnnAttentionImpl>(h, stream);
}

bool CudnnAttention::supports(const AttentionShape& a, DType dt) {
  const int64_t C = static_cast<int64_t>(a.H) * a.D;
  return dt == DType::BF16 && a.D % 8 == 0 && a.D <= 128 && a.T * 3 * C < std::numeric_limits<int32_t>::max();
}

}  // namespace esm2::cuda
