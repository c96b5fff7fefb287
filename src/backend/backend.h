// The backend interface: device memory and the ops the ESM-2 model needs, over raw device pointers.
//
// Conventions (llm.c):
// - Row-major everywhere. T = tokens of the packed micro-batch, C = channels (hidden), F = FFN width,
//   H = heads, D = head dim, V = vocab, R = selected rows (e.g. labelled positions), S = sequences.
// - Tensors called "activation" are in activation_dtype() (the CPU backend: F32; a CUDA backend may
//   use BF16) and passed as void*. Parameters, parameter gradients, LayerNorm statistics, softmax
//   log-sum-exp and losses are always fp32 (float*). Token ids / labels / offsets are int32.
// - "=" outputs are overwritten; "+=" outputs accumulate. Parameter gradients always accumulate (+=).
// - Every op is deterministic: the same inputs give bitwise the same outputs on every run, whatever
//   the thread timing (reductions use a fixed partition and a fixed summation order).
// - All pointers are device pointers (on the CPU backend, host memory from alloc()).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "core/error.h"

namespace esm2 {

// A device allocation failed. what() is one line, "CUDA out of memory allocating X MiB (Y MiB free of
// Z MiB)"; callers that know the model append which micro-batch would fit (train/memory_plan.h).
struct OutOfDeviceMemory : Error {
  OutOfDeviceMemory(const std::string& what, size_t requested_bytes, size_t free_bytes, size_t total_bytes,
                    size_t held_bytes, DType act)
      : Error(what),
        requested(requested_bytes),
        free(free_bytes),
        total(total_bytes),
        held(held_bytes),
        activation_dtype(act) {}
  size_t requested, free, total;
  size_t held;  // bytes the backend itself had allocated at the time (usable again after a restart)
  DType activation_dtype;  // of the backend that failed
};

// Device memory as a backend sees it (all 0 on the CPU backend, whose memory is the host's).
struct DeviceMemory {
  size_t held = 0, peak_held = 0;  // bytes this backend has allocated now / at most so far
  size_t free = 0, total = 0;      // the device's, as the driver reports them
};


// Which product of a transformer Linear (y = x·Wᵀ + b) a GEMM computes, for backends with FP8 linears
// (fp8-mixed): they run these in FP8 and every other GEMM as before; other backends ignore it. The model
// marks only the four linears of each encoder layer (QKV, attention output, FFN in, FFN out), in the
// shapes Esm2Model passes: Forward y[T,N] = x[T,K]·W[N,K]ᵀ (+ b); Dgrad dx[T,K] = dy[T,N]·W[N,K];
// Wgrad dW[N,K] += dy[T,N]ᵀ·x[T,K] (fp32 output).
enum class GemmRole : uint8_t { Other, LinearForward, LinearDgrad, LinearWgrad };

// C[M,N] (=, or beta·C + when beta != 0) = alpha · op(A)[M,K] · op(B)[K,N] (+ bias[N] on every row).
// op(X) = X or Xᵀ. Leading dimensions default to the packed ones (0 = packed): lda = trans_a ? M : K,
// ldb = trans_b ? K : N, ldc = N. Each operand carries its dtype (fp32 master weights, activations
// in activation_dtype(), fp32 parameter gradients).
struct GemmArgs {
  bool trans_a = false, trans_b = false;
  int64_t M = 0, N = 0, K = 0;
  float alpha = 1.0f, beta = 0.0f;
  const void* A = nullptr;
  DType a_dtype = DType::F32;
  const void* B = nullptr;
  DType b_dtype = DType::F32;
  void* C = nullptr;
  DType c_dtype = DType::F32;
  const float* bias = nullptr;  // [N] fp32, optional
  int64_t lda = 0, ldb = 0, ldc = 0;
  GemmRole role = GemmRole::Other;
};

// One AdamW step, PyTorch semantics (torch.optim.AdamW, amsgrad=False):
//   g *= grad_scale; p *= 1 - lr·wd; m = b1·m + (1-b1)·g; v = b2·v + (1-b2)·g²;
//   p -= lr · (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
struct AdamWStep {
  float lr = 1e-3f;
  float beta1 = 0.9f, beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  float grad_scale = 1.0f;  // multiplies g before anything else (gradient clipping, loss scaling)
  int64_t step = 1;         // t, 1-based, for the bias corrections
};

// One tensor (or a piece of one) inside flat fp32 buffers, for the batched optimizer ops: elements
// [offset, offset + n) of every buffer passed with it. `decay`: this range takes the step's weight decay.
struct TensorRange {
  size_t offset = 0;
  size_t n = 0;
  bool decay = false;
};

// Rotary + attention over a packed batch (one op so a CUDA backend can fuse it into flash attention).
struct AttentionShape {
  int64_t T = 0;                     // tokens
  int S = 0;                         // sequences
  int H = 0, D = 0;                  // heads, head dim (C = H·D); D even
  int max_seqlen = 0;                // longest sequence (scratch sizing)
  const int32_t* cu_seqlens = nullptr;  // [S+1] device, prefix sums
  const int32_t* ids = nullptr;         // [T] device, optional: keys whose id == pad_id are masked out
  int32_t pad_id = 1;
  const float* inv_freq = nullptr;      // [D/2] device fp32 rotary inverse frequencies
};

// The shape of one micro-batch, as a backend sizes its scratch by it (the memory planner's question).
struct WorkspaceShape {
  int64_t tokens = 0;
  int64_t hidden = 0, ffn = 0, vocab = 0;
  int heads = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual DType activation_dtype() const = 0;
  size_t act_bytes(size_t n) const { return n * dtype_size(activation_dtype()); }
  // true: the GEMMs marked with a Linear GemmRole run in FP8 (--precision fp8-mixed, docs/fp8.md).
  virtual bool fp8_linears() const { return false; }

  // ---- memory ----
  virtual void* alloc(size_t bytes) = 0;  // zero-initialised
  virtual void free(void* p) = 0;
  virtual void copy_to_device(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;  // device → device
  virtual void memset_zero(void* dst, size_t bytes) = 0;
  // Activation tensor (activation_dtype()) ↔ host fp32, n elements.
  virtual void act_to_host_f32(float* host_dst, const void* src, size_t n) = 0;
  virtual void act_from_host_f32(void* dst, const float* host_src, size_t n) = 0;
  virtual void synchronize() {}
  // Device memory in use now (the whole device as the driver reports it: context, library workspaces
  // and this process's buffers); 0 for host backends, whose use shows in the process RSS.
  virtual size_t device_bytes_in_use() const { return 0; }
  // What this backend allocated (now, at most) beside the device totals; zeros on host backends.
  virtual DeviceMemory device_memory() { return {}; }
  // Device bytes this backend allocates for a micro-batch of this shape beyond the arena, parameters
  // and weight copies (op scratch at its largest, library workspaces): the memory planner asks it
  // rather than knowing any backend's internals. 0 on host backends.
  virtual size_t workspace_bytes(const WorkspaceShape& shape) const { return 0; }

  // ---- dense ----
  virtual void gemm(const GemmArgs& g) = 0;
  // db[N] += Σ_rows dy[M,N] (bias gradient; dy activation).
  virtual void bias_backward(float* db, const void* dy, int64_t M, int64_t N) = 0;
  // out[n] (=) = a[n] + b[n] (residual add; out may alias a or b).
  virtual void add(void* out, const void* a, const void* b, size_t n) = 0;

  // ---- embedding and token dropout ----
  // out[T,C] (=) = wte[ids[t], :]
  virtual void embedding_forward(void* out, const int32_t* ids, const float* wte, int64_t T, int64_t C) = 0;
  // dwte[V,C] += scatter-add of dout[T,C] into rows ids[t]
  virtual void embedding_backward(float* dwte, const void* dout, const int32_t* ids, int64_t T, int64_t C) = 0;
  // ESM-2 token dropout, in place on x[T,C] (HF EsmEmbeddings): rows with id == mask_id are zeroed, then
  // if rescale, every row of a sequence becomes (x · (1-mask_ratio_train)) / (1 - n_mask/n_real), n_real =
  // non-pad tokens of the sequence; rows with id == pad_id are zeroed. Without rescale only pad rows
  // are zeroed (mask rows are kept). Backward (in place on dx) applies the same linear map.
  virtual void token_dropout_forward(void* x, const int32_t* ids, const int32_t* cu_seqlens, int S, int64_t C,
                                     int32_t mask_id, int32_t pad_id, float mask_ratio_train, bool rescale) = 0;
  virtual void token_dropout_backward(void* dx, const int32_t* ids, const int32_t* cu_seqlens, int S, int64_t C,
                                      int32_t mask_id, int32_t pad_id, float mask_ratio_train, bool rescale) = 0;

  // ---- LayerNorm ----
  // out[T,C] (=) = (x - mean)·rstd·w + b; saves mean[T], rstd[T] (fp32) for the backward.
  virtual void layernorm_forward(void* out, float* mean, float* rstd, const void* x, const float* w, const float* b,
                                 int64_t T, int64_t C, float eps) = 0;
  // dx[T,C] += ; dw[C] += ; db[C] += (dx accumulates: it is the residual stream).
  virtual void layernorm_backward(void* dx, float* dw, float* db, const void* dout, const void* x, const float* w,
                                  const float* mean, const float* rstd, int64_t T, int64_t C) = 0;
  // The pre-LN block's residual add and the next LayerNorm in one pass: sum[T,C] (=) = a + b (rounded to
  // the activation dtype), then out (=) = LayerNorm(sum) with mean/rstd saved, exactly as add followed by
  // layernorm_forward (the default, and the CPU oracle); sum may alias a or b.
  virtual void add_layernorm_forward(void* sum, void* out, float* mean, float* rstd, const void* a, const void* b,
                                     const float* w, const float* bias, int64_t T, int64_t C, float eps) {
    add(sum, a, b, static_cast<size_t>(T) * static_cast<size_t>(C));
    layernorm_forward(out, mean, rstd, sum, w, bias, T, C, eps);
  }

  // ---- attention (rotary inside) ----
  // qkv[T,3C]: per token [q | k | v], head h at columns h·D..h·D+D-1 of each part.
  // out[T,C] (=) = softmax over the keys of the same sequence of (rot(q·D^-0.5)·rot(k)ᵀ) · v, per head;
  // rot = rotate-half rotary with positions restarting at 0 at each sequence. Saves lse[H,T] (fp32,
  // natural-log log-sum-exp of each score row).
  virtual void attention_forward(void* out, float* lse, const void* qkv, const AttentionShape& a) = 0;
  // dqkv[T,3C] (=) from dout[T,C], recomputing the scores from qkv and lse.
  virtual void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out, const float* lse,
                                  const AttentionShape& a) = 0;

  // ---- GELU ----
  // out[n] (=) = gelu(x) (erf form, or tanh approximation when tanh_approx). out may alias x.
  virtual void gelu_forward(void* out, const void* x, size_t n, bool tanh_approx) = 0;
  // dx[n] (=) = gelu'(x)·dout. dx may alias dout.
  virtual void gelu_backward(void* dx, const void* dout, const void* x, size_t n, bool tanh_approx) = 0;
  // GELU backward and the preceding Linear's bias gradient in one pass: dx[M,N] (=) = gelu'(x)·dout, then
  // db[N] += Σ_rows dx (of dx as stored, i.e. rounded), exactly as gelu_backward followed by
  // bias_backward (the default, and the CPU oracle). dx may alias dout.
  virtual void gelu_backward_bias(void* dx, float* db, const void* dout, const void* x, int64_t M, int64_t N,
                                  bool tanh_approx) {
    gelu_backward(dx, dout, x, static_cast<size_t>(M) * static_cast<size_t>(N), tanh_approx);
    bias_backward(db, dx, M, N);
  }

  // ---- row gather / scatter ----
  // out[R,C] (=) = x[idx[r], :]
  virtual void gather_rows(void* out, const void* x, const int32_t* idx, int64_t R, int64_t C) = 0;
  // dx[idx[r], :] += dout[r, :] (idx entries distinct)
  virtual void scatter_add_rows(void* dx, const void* dout, const int32_t* idx, int64_t R, int64_t C) = 0;

  // ---- loss ----
  // loss[r] (=) = logsumexp(logits[r,:]) - logits[r, labels[r]]; 0 where labels[r] == -100.
  virtual void cross_entropy_forward(float* loss, const void* logits, const int32_t* labels, int64_t R,
                                     int64_t V) = 0;
  // dlogits[R,V] (=) = dloss · (softmax(logits[r,:]) - onehot(labels[r])); 0 rows where label == -100.
  virtual void cross_entropy_backward(void* dlogits, const void* logits, const int32_t* labels, int64_t R, int64_t V,
                                      float dloss) = 0;

  // ---- optimizer ----
  virtual void adamw_update(float* p, const float* g, float* m, float* v, size_t n, const AdamWStep& s) = 0;
  // Σ x² accumulated in fp64 (global gradient norm), deterministic.
  virtual double sum_squares(const float* x, size_t n) = 0;
  // Batched forms of the two above over many tensors of flat buffers (one launch on a GPU instead of one
  // per tensor, and one host synchronisation for the norm). The results are bitwise those of the
  // per-tensor calls: sum_squares_ranges = Σ over ranges, in range order, of sum_squares(base + offset, n);
  // adamw_update_ranges = adamw_update on each range with weight_decay = s.weight_decay where r.decay,
  // else 0. Ranges must not overlap. The defaults loop over the per-tensor calls.
  virtual double sum_squares_ranges(const float* base, const TensorRange* ranges, size_t count) {
    double ss = 0;
    for (size_t i = 0; i < count; ++i) ss += sum_squares(base + ranges[i].offset, ranges[i].n);
    return ss;
  }
  virtual void adamw_update_ranges(float* p, const float* g, float* m, float* v, const TensorRange* ranges, size_t count,
                                   const AdamWStep& s) {
    for (size_t i = 0; i < count; ++i) {
      const TensorRange& r = ranges[i];
      AdamWStep rs = s;
      if (!r.decay) rs.weight_decay = 0.0f;
      adamw_update(p + r.offset, g + r.offset, m + r.offset, v + r.offset, r.n, rs);
    }
  }
  // x[n] *= a (fp32 buffers, e.g. gradients)
  virtual void scale(float* x, float a, size_t n) = 0;
};

// fp32 reference backend: OpenBLAS sgemm + OpenMP over num_threads (<= 0: all cores).
std::unique_ptr<Backend> make_cpu_backend(int num_threads);

}  // namespace esm2
