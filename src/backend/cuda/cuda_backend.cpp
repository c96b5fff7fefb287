// CudaBackend: memory, dispatch of every Backend op to its launcher (one .cu/.cuh pair per op), and the
// bf16 weight cache.
//
// Weight cache: in bf16-mixed mode a GEMM operand given as F32 (a master weight, e.g. P + w_qkv) is read
// through a bf16 copy keyed by its pointer. The copy stays valid until something writes the fp32 range
// through this backend (uploads, copies, memsets, fp32 GEMM outputs, ...); adamw_update on exactly that
// tensor rewrites the copy in the same kernel, so a training step casts each weight once, at first use.
//
// fp8-mixed (docs/fp8.md): the GEMMs the model marks with a Linear GemmRole run in FP8 through
// cuBLASLt. Activations and gradients are quantised just before each product with per-tensor current
// scaling (fp8_quantize.cuh); weights are quantised once per optimizer step into an FP8 cache beside the
// bf16 one (both orientations, since Hopper's FP8 kernels take only K-contiguous operands), invalidated by
// the same writes.
#include "backend/cuda/cuda_backend.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "backend/cuda/adamw.cuh"
#include "backend/cuda/add.cuh"
#include "backend/cuda/add_layernorm.cuh"
#include "backend/cuda/attention_backward.cuh"
#ifdef ESM2_HAVE_CUDNN
#include "backend/cuda/attention_cudnn.h"
#endif
#include "backend/cuda/attention_forward.cuh"
#include "backend/cuda/bias_backward.cuh"
#include "backend/cuda/convert.cuh"
#include "backend/cuda/cross_entropy.cuh"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/embedding.cuh"
#include "backend/cuda/fp8_quantize.cuh"
#include "backend/cuda/gelu.cuh"
#include "backend/cuda/gemm_lt.h"
#include "backend/cuda/layernorm.cuh"
#include "backend/cuda/rows.cuh"
#include "backend/cuda/sum_squares.cuh"
#include "backend/cuda/token_dropout.cuh"
#include "backend/backend_factory.h"
#include "core/error.h"

namespace esm2 {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

namespace {

using bf16 = __nv_bfloat16;

class CudaBackend final : public Backend {
 public:
  CudaBackend(DType act, int device, bool fp8) : act_(act), device_(device), fp8_(fp8) {
    ESM2_CHECK(act == DType::F32 || act == DType::BF16, "cuda backend: activation dtype must be F32 or BF16");
    ESM2_CHECK(!fp8 || act == DType::BF16, "cuda backend: FP8 linears need BF16 activations");
    const int n = cuda_device_count();
    ESM2_CHECK(n > 0, "--backend cuda: no CUDA device is visible (cudaGetDeviceCount reports none)");
    ESM2_CHECK(device >= 0 && device < n, "--backend cuda: device {} requested, {} visible", device, n);
    if (fp8) {
      int major = 0, minor = 0;
      ESM2_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
      ESM2_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
      ESM2_CHECK(major >= 9, "{}; device {} is sm_{}{}", kFp8NeedsHopper, device, major, minor);
    }
    ESM2_CUDA_CHECK(cudaSetDevice(device));
    ESM2_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    ESM2_CUDA_CHECK(cudaMallocHost(&host_word_, 16));
    lt_ = std::make_unique<cuda::LtRunner>();
  }

  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    for (auto& [p, m] : mirrors_) cudaFree(m.bf);
    for (auto& [p, w] : fp8_weights_) cudaFree(w.q);
    if (fp8_scales_) cudaFree(fp8_scales_);
    for (auto& s : scratch_) cudaFree(s.ptr);
    for (auto& u : uploads_) cudaFree(u.dev);
    lt_.reset();
#ifdef ESM2_HAVE_CUDNN
    cudnn_.reset();
#endif
    cudaFreeHost(host_word_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "cuda"; }
  DType activation_dtype() const override { return act_; }
  bool fp8_linears() const override { return fp8_; }
  Fp8GemmCounts fp8_counts() const { return fp8_counts_; }
  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }
  int64_t cudnn_attention_calls() const { return cudnn_calls_; }

  // ---- memory ----
  void* alloc(size_t bytes) override {
    const size_t n = std::max<size_t>(bytes, 256);
    void* p = device_malloc(n);
    ESM2_CUDA_CHECK(cudaMemsetAsync(p, 0, n, stream_));
    sizes_[p] = n;
    return p;
  }
  void free(void* p) override {
    if (!p) return;
    auto it = sizes_.find(p);
    const size_t bytes = it == sizes_.end() ? 0 : it->second;  // alloc() records every pointer it returns
    if (bytes) {
      drop_mirrors(p, bytes);
      sizes_.erase(it);
    }
    ESM2_CUDA_CHECK(cudaStreamSynchronize(stream_));
    device_free(p, bytes);
  }
  void copy_to_device(void* dst, const void* src, size_t bytes) override {
    if (!bytes) return;
    invalidate(dst, bytes);
    ESM2_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  }
  void copy_to_host(void* dst, const void* src, size_t bytes) override {
    if (!bytes) return;
    ESM2_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    ESM2_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (!bytes) return;
    invalidate(dst, bytes);
    ESM2_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
  }
  void memset_zero(void* dst, size_t bytes) override {
    if (!bytes) return;
    invalidate(dst, bytes);
    ESM2_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream_));
  }
  void act_to_host_f32(float* dst, const void* src, size_t n) override {
    if (act_ == DType::F32) return copy_to_host(dst, src, n * 4);
    float* tmp = scratch(Slot::Convert, n);
    cuda::launch_convert(tmp, DType::F32, src, act_, n, stream_);
    copy_to_host(dst, tmp, n * 4);
  }
  void act_from_host_f32(void* dst, const float* src, size_t n) override {
    if (act_ == DType::F32) return copy_to_device(dst, src, n * 4);
    float* tmp = scratch(Slot::Convert, n);
    ESM2_CUDA_CHECK(cudaMemcpyAsync(tmp, src, n * 4, cudaMemcpyHostToDevice, stream_));
    cuda::launch_convert(dst, act_, tmp, DType::F32, n, stream_);
  }
  void synchronize() override { ESM2_CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  // The scratch slots at their largest for this shape (a slot grows to at most 1.5 × its largest
  // request, see scratch()), asked of the same functions the ops size their scratch with, plus the
  // cuBLASLt workspace. The small Convert/Reduce/Word slots are left out.
  size_t workspace_bytes(const WorkspaceShape& w) const override {
    const int64_t T = w.tokens, C = w.hidden;
    AttentionShape a;
    a.T = T;
    a.H = w.heads;
    a.D = w.heads > 0 ? static_cast<int>(C / w.heads) : 0;
    a.S = 1;
    a.max_seqlen = static_cast<int>(std::min<int64_t>(T, 1 << 30));
    const size_t attention =
        std::max(cuda::attention_forward_scratch_floats(a, act_), cuda::attention_backward_scratch_floats(a, act_));
    size_t columns = std::max(cuda::layernorm_backward_scratch_floats(T, C),
                              cuda::embedding_backward_scratch_floats(T, C, static_cast<int>(w.vocab)));
    for (int64_t n : {3 * C, C, w.ffn, w.vocab}) columns = std::max(columns, cuda::bias_backward_scratch_floats(T, n));
    size_t fp8 = 0;  // the three FP8 operand slots (fp8_gemm): T (padded) × the widest linear, a byte each
    // (+ 32 rows: the Fp8B slot also holds the 16-row bf16 tail of fp8_gemm_split_rows)
    if (fp8_) fp8 = (3 * static_cast<size_t>(pad16(T)) + 32) * static_cast<size_t>(std::max(3 * C, w.ffn)) / sizeof(float);
    return (attention + columns + fp8) * sizeof(float) * 3 / 2 + cuda::LtRunner::kWorkspaceBytes;
  }

  size_t device_bytes_in_use() const override {
    size_t free_b = 0, total_b = 0;
    return cudaMemGetInfo(&free_b, &total_b) == cudaSuccess ? total_b - free_b : 0;
  }
  DeviceMemory device_memory() override {
    DeviceMemory m;
    m.held = held_;
    m.peak_held = peak_held_;
    ESM2_CUDA_CHECK(cudaMemGetInfo(&m.free, &m.total));
    return m;
  }

  // ---- dense ----
  void gemm(const GemmArgs& g) override {
    // The quantised dy a wgrad left for its dgrad is good for the very next GEMM only.
    const Fp8Dy dy = std::exchange(fp8_dy_, Fp8Dy{});
    // An empty product (no rows, columns or tokens) has nothing to run in FP8; the bf16 path below handles
    // it (for K = 0: C = beta·C + bias) without counting it as a fallback or warning about it.
    if (fp8_ && g.role != GemmRole::Other && g.M > 0 && g.N > 0 && g.K > 0) {
      if (fp8_gemm(g, dy)) {
        ++fp8_counts_.fp8;
        return;
      }
      ++fp8_counts_.bf16_fallback;
      if (!fp8_warned_)
        std::fprintf(stderr,
                     "esm2: warning: FP8 GEMM of shape M=%lld N=%lld K=%lld not taken by cuBLASLt (%s); such products "
                     "run in bf16\n",
                     static_cast<long long>(g.M), static_cast<long long>(g.N), static_cast<long long>(g.K),
                     lt_->fp8_refusal().empty() ? "its operands' layout" : lt_->fp8_refusal().c_str());
      fp8_warned_ = true;
    }
    cuda::LtGemm l;
    l.trans_a = g.trans_a, l.trans_b = g.trans_b, l.M = g.M, l.N = g.N, l.K = g.K, l.alpha = g.alpha,
    l.beta = g.beta;
    l.lda = g.lda ? g.lda : (g.trans_a ? g.M : g.K);
    l.ldb = g.ldb ? g.ldb : (g.trans_b ? g.K : g.N);
    l.ldc = g.ldc ? g.ldc : g.N;
    l.A = operand(g.A, g.a_dtype, g.trans_a ? g.K : g.M, g.trans_a ? g.M : g.K, l.lda);
    l.B = operand(g.B, g.b_dtype, g.trans_b ? g.N : g.K, g.trans_b ? g.K : g.N, l.ldb);
    l.a_dtype = l.b_dtype = act_;
    ESM2_CHECK(g.c_dtype == DType::F32 || g.c_dtype == act_, "cuda gemm: output dtype {} with activations {}",
               dtype_name(g.c_dtype), dtype_name(act_));
    l.C = g.C, l.c_dtype = g.c_dtype;
    l.bias = g.bias;
    // The epilogue of a bf16 output reads a bf16 copy of the bias, cached and refreshed like the weights.
    if (g.bias && g.c_dtype == DType::BF16 && g.K > 0) l.bias_c = operand(g.bias, DType::F32, 1, g.N, g.N);
    if (g.c_dtype == DType::F32 && g.M > 0) invalidate(g.C, ((g.M - 1) * l.ldc + g.N) * 4);
    lt_->run(l, stream_);
  }
  void bias_backward(float* db, const void* dy, int64_t M, int64_t N) override {
    invalidate(db, N * 4);
    cuda::launch_bias_backward(db, dy, act_, M, N, scratch(Slot::Columns, cuda::bias_backward_scratch_floats(M, N)),
                               stream_);
  }
  void add(void* out, const void* a, const void* b, size_t n) override {
    cuda::launch_add(out, a, b, n, act_, stream_);
  }

  // ---- embedding and token dropout ----
  void embedding_forward(void* out, const int32_t* ids, const float* wte, int64_t T, int64_t C) override {
    cuda::launch_embedding_forward(out, ids, wte, T, C, act_, stream_);
  }
  void embedding_backward(float* dwte, const void* dout, const int32_t* ids, int64_t T, int64_t C) override {
    if (T == 0) return;
    // The interface does not pass V: read the largest id back (one small synchronisation per step).
    int32_t* dmax = reinterpret_cast<int32_t*>(scratch(Slot::Word, 4));
    cuda::launch_max_id(dmax, ids, T, stream_);
    ESM2_CUDA_CHECK(cudaMemcpyAsync(host_word_, dmax, 4, cudaMemcpyDeviceToHost, stream_));
    ESM2_CUDA_CHECK(cudaStreamSynchronize(stream_));
    const int V = *static_cast<int32_t*>(host_word_) + 1;
    invalidate(dwte, static_cast<size_t>(V) * C * 4);
    cuda::launch_embedding_backward(dwte, dout, ids, T, C, V, act_,
                                    scratch(Slot::Columns, cuda::embedding_backward_scratch_floats(T, C, V)), stream_);
  }
  void token_dropout_forward(void* x, const int32_t* ids, const int32_t* cu, int S, int64_t C, int32_t mask_id,
                             int32_t pad_id, float ratio, bool rescale) override {
    cuda::launch_token_dropout(x, ids, cu, S, C, mask_id, pad_id, ratio, rescale, act_, stream_);
  }
  void token_dropout_backward(void* dx, const int32_t* ids, const int32_t* cu, int S, int64_t C, int32_t mask_id,
                              int32_t pad_id, float ratio, bool rescale) override {
    cuda::launch_token_dropout(dx, ids, cu, S, C, mask_id, pad_id, ratio, rescale, act_, stream_);
  }

  // ---- LayerNorm ----
  void layernorm_forward(void* out, float* mean, float* rstd, const void* x, const float* w, const float* b,
                         int64_t T, int64_t C, float eps) override {
    cuda::launch_layernorm_forward(out, mean, rstd, x, w, b, T, C, eps, act_, stream_);
  }
  void layernorm_backward(void* dx, float* dw, float* db, const void* dout, const void* x, const float* w,
                          const float* mean, const float* rstd, int64_t T, int64_t C) override {
    invalidate(dw, C * 4);
    invalidate(db, C * 4);
    cuda::launch_layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, T, C, act_,
                                    scratch(Slot::Columns, cuda::layernorm_backward_scratch_floats(T, C)), stream_);
  }

  void add_layernorm_forward(void* sum, void* out, float* mean, float* rstd, const void* a, const void* b,
                             const float* w, const float* bias, int64_t T, int64_t C, float eps) override {
    cuda::launch_add_layernorm_forward(sum, out, mean, rstd, a, b, w, bias, T, C, eps, act_, stream_);
  }

  // ---- attention ----
  void attention_forward(void* out, float* lse, const void* qkv, const AttentionShape& a) override {
#ifdef ESM2_HAVE_CUDNN
    if (cuda::CudnnAttention* c = cudnn_for(a)) {
      size_t bytes = 0;
      if (cudnn_plan_ok([&] { bytes = c->forward_scratch_bytes(a); })) {
        if (void* ws = cudnn_scratch(c, a, bytes)) {
          c->forward(out, lse, qkv, a, ws);
          ++cudnn_calls_;
          return;
        }
      }
    }
#endif
    cuda::launch_attention_forward(out, lse, qkv, a, act_,
                                   scratch(Slot::Attention, cuda::attention_forward_scratch_floats(a, act_)), stream_);
  }
  void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out, const float* lse,
                          const AttentionShape& a) override {
#ifdef ESM2_HAVE_CUDNN
    if (cuda::CudnnAttention* c = cudnn_for(a)) {
      const bool det = cudnn_deterministic(a);
      size_t bytes = 0;
      if (cudnn_plan_ok([&] { bytes = c->backward_scratch_bytes(a, det); })) {
        if (void* ws = cudnn_scratch(c, a, bytes)) {
          c->backward(dqkv, dout, qkv, out, lse, a, det, ws);
          ++cudnn_calls_;
          return;
        }
      }
    }
#endif
    cuda::launch_attention_backward(dqkv, dout, qkv, out, lse, a, act_,
                                    scratch(Slot::Attention, cuda::attention_backward_scratch_floats(a, act_)), stream_);
  }

  // ---- GELU, rows, loss ----
  void gelu_forward(void* out, const void* x, size_t n, bool tanh_approx) override {
    cuda::launch_gelu_forward(out, x, n, tanh_approx, act_, stream_);
  }
  void gelu_backward(void* dx, const void* dout, const void* x, size_t n, bool tanh_approx) override {
    cuda::launch_gelu_backward(dx, dout, x, n, tanh_approx, act_, stream_);
  }
  void gelu_backward_bias(void* dx, float* db, const void* dout, const void* x, int64_t M, int64_t N,
                          bool tanh_approx) override {
    invalidate(db, N * 4);
    cuda::launch_gelu_backward_bias(dx, db, dout, x, M, N, tanh_approx, act_,
                                    scratch(Slot::Columns, cuda::gelu_backward_bias_scratch_floats(M, N)), stream_);
  }
  void gather_rows(void* out, const void* x, const int32_t* idx, int64_t R, int64_t C) override {
    cuda::launch_gather_rows(out, x, idx, R, C, act_, stream_);
  }
  void scatter_add_rows(void* dx, const void* dout, const int32_t* idx, int64_t R, int64_t C) override {
    cuda::launch_scatter_add_rows(dx, dout, idx, R, C, act_, stream_);
  }
  void cross_entropy_forward(float* loss, const void* logits, const int32_t* labels, int64_t R, int64_t V) override {
    cuda::launch_cross_entropy_forward(loss, logits, labels, R, V, act_, stream_);
  }
  void cross_entropy_backward(void* dlogits, const void* logits, const int32_t* labels, int64_t R, int64_t V,
                              float dloss) override {
    cuda::launch_cross_entropy_backward(dlogits, logits, labels, R, V, dloss, act_, stream_);
  }

  // ---- optimizer ----
  void adamw_update(float* p, const float* g, float* m, float* v, size_t n, const AdamWStep& s) override {
    const TensorRange r{0, n, true};
    adamw_update_ranges(p, g, m, v, &r, 1, s);
  }
  void adamw_update_ranges(float* p, const float* g, float* m, float* v, const TensorRange* ranges, size_t count,
                           const AdamWStep& s) override {
    ESM2_ASSERT(s.step >= 1);
    std::vector<cuda::AdamWRangeDesc> d(count);
    uint32_t blocks = 0;
    size_t lo = SIZE_MAX, hi = 0;
    for (size_t i = 0; i < count; ++i) {
      const TensorRange& r = ranges[i];
      d[i].offset = r.offset, d[i].n = r.n, d[i].decay = r.decay ? 1u : 0u, d[i].first_block = blocks;
      blocks += cuda::adamw_tiles(r.n);
      lo = std::min(lo, r.offset), hi = std::max(hi, r.offset + r.n);
      invalidate_fp8(p + r.offset, r.n * 4);  // requantised at the next forward (once per step)
      // A weight whose bf16 copy covers exactly this range gets the copy rewritten by the same kernel.
      auto it = mirrors_.find(p + r.offset);
      if (it != mirrors_.end() && it->second.n == r.n) {
        d[i].mirror = it->second.bf;
        it->second.valid = true;
      } else {
        invalidate(p + r.offset, r.n * 4);
      }
    }
    if (blocks == 0) return;
    invalidate(m + lo, (hi - lo) * 4);
    invalidate(v + lo, (hi - lo) * 4);
    const auto* dd = static_cast<const cuda::AdamWRangeDesc*>(upload(Upload::AdamW, d.data(), count * sizeof(d[0])));
    cuda::launch_adamw_ranges(p, g, m, v, dd, static_cast<int>(count), blocks, s, stream_);
  }
  double sum_squares(const float* x, size_t n) override {
    const TensorRange r{0, n, false};
    return sum_squares_ranges(x, &r, 1);
  }
  double sum_squares_ranges(const float* base, const TensorRange* ranges, size_t count) override {
    if (count == 0) return 0.0;
    std::vector<cuda::SumSquaresRangeDesc> d(count);
    uint32_t blocks = 0;
    for (size_t i = 0; i < count; ++i) {
      d[i].offset = ranges[i].offset, d[i].n = ranges[i].n, d[i].first_block = blocks;
      d[i].blocks = cuda::sum_squares_blocks(ranges[i].n);
      blocks += d[i].blocks;
    }
    // [count] totals, then [count · kSumSquaresBlocks] partials (floats are half a double).
    double* out = reinterpret_cast<double*>(scratch(Slot::Reduce, 2 * count * (cuda::kSumSquaresBlocks + 1)));
    const auto* dd =
        static_cast<const cuda::SumSquaresRangeDesc*>(upload(Upload::SumSquares, d.data(), count * sizeof(d[0])));
    cuda::launch_sum_squares_ranges(out, base, dd, static_cast<int>(count), blocks, out + count, stream_);
    per_range_.resize(count);
    ESM2_CUDA_CHECK(cudaMemcpyAsync(per_range_.data(), out, count * sizeof(double), cudaMemcpyDeviceToHost, stream_));
    ESM2_CUDA_CHECK(cudaStreamSynchronize(stream_));
    // Tensor sums added in range order on the host, as the per-tensor calls were.
    double ss = 0;
    for (double t : per_range_) ss += t;
    return ss;
  }
  void scale(float* x, float a, size_t n) override {
    invalidate(x, n * 4);
    cuda::launch_scale(x, a, n, stream_);
  }

 private:
  enum class Slot { Columns, Attention, Convert, Reduce, Word, Fp8A, Fp8B, Fp8Dy, kCount };
  // The output gradient dy[rows, cols] of the last FP8 wgrad, quantised row-wise (E5M2) at q in Fp8Dy, its
  // scale words at fp8_scale_words(): the dgrad that linear_backward runs next on the same dy uses it
  // instead of a second amax and quantisation. Any GEMM consumes it (gemm()), so it never outlives the pair.
  struct Fp8Dy {
    const void* x = nullptr;
    int64_t rows = 0, cols = 0;
    const uint8_t* q = nullptr;
  };
  enum class Upload { AdamW, SumSquares, kCount };
  struct Uploaded {
    void* dev = nullptr;
    size_t capacity = 0;
    std::vector<char> host;  // what dev holds
  };
  struct Scratch {
    float* ptr = nullptr;
    size_t floats = 0;
  };
  struct Mirror {
    size_t n = 0;
    bf16* bf = nullptr;
    bool valid = false;
  };
  // A Linear weight W[rows, cols] (fp32 master) in E4M3: q = [rows, cols] codes, then [cols, rows] (the
  // transpose, for dgrad), then at the next 16-byte boundary its scaling words (fp8_quantize.cuh).
  struct Fp8Weight {
    int64_t rows = 0, cols = 0;
    uint8_t* q = nullptr;
    bool valid = false;
    size_t bytes() const { return static_cast<size_t>(rows * cols) * 2 + 256; }
    const uint8_t* rowwise() const { return q; }
    const uint8_t* colwise() const { return q + rows * cols; }
    float* scales() const { return reinterpret_cast<float*>(q + ((2 * rows * cols + 15) / 16) * 16); }
  };

  // Device scratch of at least `floats` floats, grown on demand (never shrunk). Growing frees the old
  // buffer after the stream drains, so queued kernels never see it vanish.
  void release_scratch(Slot slot) {
    Scratch& s = scratch_[static_cast<int>(slot)];
    if (!s.ptr) return;
    ESM2_CUDA_CHECK(cudaStreamSynchronize(stream_));
    device_free(s.ptr, s.floats * 4);
    s.ptr = nullptr;
    s.floats = 0;
  }
  // Grows by half again (fewer regrowths as batch shapes vary) unless `exact`. A failed allocation leaves
  // the slot empty: the old buffer is released first.
  float* scratch(Slot slot, size_t floats, bool exact = false) {
    Scratch& s = scratch_[static_cast<int>(slot)];
    if (s.floats < floats) {
      const size_t want = exact ? floats : std::max(floats, s.floats + s.floats / 2);
      release_scratch(slot);
      s.ptr = static_cast<float*>(device_malloc(want * 4));
      s.floats = want;
    }
    return s.ptr;
  }

  static size_t mirror_bytes(size_t n) { return std::max<size_t>(n, 128) * sizeof(bf16); }

  // Every device allocation of the backend (arena, parameters, scratch, weight cache) goes through
  // here: a failure throws OutOfDeviceMemory, whose numbers let the caller say what would fit.
  void* device_malloc(size_t bytes) {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();  // cudaErrorMemoryAllocation is not sticky: clear it and report
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      throw OutOfDeviceMemory(fmt::format("CUDA out of memory allocating {:.1f} MiB ({:.1f} MiB free of {:.1f}): {}",
                                          bytes / 1048576.0, free_b / 1048576.0, total_b / 1048576.0,
                                          cudaGetErrorString(e)),
                              bytes, free_b, total_b, held_, act_);
    }
    held_ += bytes;
    peak_held_ = std::max(peak_held_, held_);
    return p;
  }
  void device_free(void* p, size_t bytes) {
    ESM2_CUDA_CHECK(cudaFree(p));
    held_ -= bytes;
  }

  // Small host tables (range descriptors) in device memory. The optimizer passes the same table every
  // step, so it is copied only when it changes; the copy is queued on the stream behind the kernels
  // still reading the previous one.
  const void* upload(Upload which, const void* data, size_t bytes) {
    Uploaded& u = uploads_[static_cast<int>(which)];
    const char* c = static_cast<const char*>(data);
    if (u.host.size() == bytes && std::equal(u.host.begin(), u.host.end(), c)) return u.dev;
    if (u.capacity < bytes) {
      if (u.dev) {
        ESM2_CUDA_CHECK(cudaStreamSynchronize(stream_));
        device_free(u.dev, u.capacity);
        u.dev = nullptr;
      }
      const size_t want = std::max(bytes, u.capacity * 2);
      u.capacity = 0;
      u.dev = device_malloc(want);
      u.capacity = want;
    }
    u.host.assign(c, c + bytes);
    // Pageable source: the call returns once the bytes are staged, so u.host may change afterwards.
    ESM2_CUDA_CHECK(cudaMemcpyAsync(u.dev, u.host.data(), bytes, cudaMemcpyHostToDevice, stream_));
    return u.dev;
  }

  // An operand of a GEMM in the activation dtype: F32 inputs in bf16 mode go through the weight cache.
  const void* operand(const void* p, DType dt, int64_t rows, int64_t cols, int64_t ld) {
    if (dt == act_) return p;
    ESM2_CHECK(dt == DType::F32 && act_ == DType::BF16, "cuda gemm: operand dtype {} with activations {}",
               dtype_name(dt), dtype_name(act_));
    const size_t n = rows == 0 ? 0 : static_cast<size_t>((rows - 1) * ld + cols);
    const float* key = static_cast<const float*>(p);
    Mirror& m = mirrors_[key];
    if (m.n != n) {
      if (m.bf) {
        ESM2_CUDA_CHECK(cudaStreamSynchronize(stream_));
        device_free(m.bf, mirror_bytes(m.n));
      }
      m.bf = nullptr;
      m.n = 0;
      m.bf = static_cast<bf16*>(device_malloc(mirror_bytes(n)));
      m.n = n;
      m.valid = false;
    }
    if (!m.valid) {
      cuda::launch_convert(m.bf, DType::BF16, p, DType::F32, n, stream_);
      m.valid = true;
    }
    return m.bf;
  }

  static int64_t pad16(int64_t n) { return (n + 15) / 16 * 16; }

  uint8_t* fp8_slot(Slot slot, int64_t bytes) {
    return reinterpret_cast<uint8_t*>(scratch(slot, static_cast<size_t>(bytes + 3) / 4));
  }
  // The scaling words (fp8_quantize.cuh) of a product's first activation operand, then at
  // kFp8ScaleWords those of its second. Reused by every product: the stream orders each use after the previous one.
  float* fp8_scale_words() {
    if (!fp8_scales_) fp8_scales_ = static_cast<float*>(device_malloc(256));
    return fp8_scales_;
  }

  // The E4M3 copy of the Linear weight W[rows, cols] at `w` (fp32 master), quantised now if stale.
  const Fp8Weight& fp8_weight(const float* w, int64_t rows, int64_t cols) {
    Fp8Weight& e = fp8_weights_[w];
    if (e.rows != rows || e.cols != cols) {
      if (e.q) {
        ESM2_CUDA_CHECK(cudaStreamSynchronize(stream_));
        device_free(e.q, e.bytes());
      }
      e = Fp8Weight{};
      e.rows = rows, e.cols = cols;
      e.q = static_cast<uint8_t*>(device_malloc(e.bytes()));
    }
    if (!e.valid) {
      const size_t n = static_cast<size_t>(rows * cols);
      cuda::launch_fp8_amax(e.scales(), w, DType::F32, n, stream_);
      cuda::launch_fp8_quantize(e.q, e.scales(), w, DType::F32, n, Fp8Format::E4M3, stream_);
      cuda::launch_fp8_quantize_transpose(e.q + n, rows, e.scales(), w, DType::F32, rows, cols, Fp8Format::E4M3,
                                          stream_);
      e.valid = true;
    }
    return e;
  }

  // x[rows, cols] (activation dtype) → FP8 in `slot`, row-wise (transpose = false: [rows, cols]) or
  // transposed with the rows padded to 16 ([cols, pad16(rows)]); the scale words at `sc` (amax, 1/scale).
  const uint8_t* fp8_activation(Slot slot, float* sc, const void* x, int64_t rows, int64_t cols, Fp8Format f,
                                bool transpose) {
    const size_t n = static_cast<size_t>(rows * cols);
    // Row-wise: room for pad16(rows) rows, which fp8_gemm_split_rows zeroes and reads when it needs them.
    uint8_t* q = fp8_slot(slot, cols * pad16(rows));
    cuda::launch_fp8_amax(sc, x, act_, n, stream_);
    if (transpose)
      cuda::launch_fp8_quantize_transpose(q, pad16(rows), sc, x, act_, rows, cols, f, stream_);
    else
      cuda::launch_fp8_quantize(q, sc, x, act_, n, f, stream_);
    return q;
  }

  // A Linear product (GemmRole) in FP8 with per-tensor current scaling: E4M3 for weights and activations,
  // E5M2 for the output gradient dy (TransformerEngine's HYBRID format). Returns false, before anything
  // reaches cuBLASLt, when the call's shape or layout is not one the FP8 kernels take (the bf16 GEMM then
  // computes it); a false from cuBLASLt itself leaves only scratch written.
  bool fp8_gemm(const GemmArgs& g, const Fp8Dy& dy) {
    lt_->clear_fp8_refusal();
    const bool packed = (g.lda == 0 || g.lda == (g.trans_a ? g.M : g.K)) &&
                        (g.ldb == 0 || g.ldb == (g.trans_b ? g.K : g.N)) && (g.ldc == 0 || g.ldc == g.N);
    if (!packed || g.alpha != 1.0f || g.M == 0 || g.N == 0 || g.K == 0) return false;
    constexpr Fp8Format E4 = Fp8Format::E4M3, E5 = Fp8Format::E5M2;
    float* sc = fp8_scale_words();
    Fp8Dy next_dy;  // what this product leaves for the next one (a wgrad: its quantised dy)
    cuda::LtFp8Gemm f;
    f.M = g.M, f.N = g.N, f.K = g.K, f.beta = g.beta;
    f.D = g.C, f.d_dtype = g.c_dtype, f.ldd = g.N;
    switch (g.role) {
      case GemmRole::LinearForward: {
        // y[M,N] = x[M,K]·W[N,K]ᵀ (+ b): both operands already K-contiguous.
        if (g.trans_a || !g.trans_b || g.a_dtype != act_ || g.b_dtype != DType::F32 || g.c_dtype != act_ ||
            g.K % 16 != 0 || g.N % 16 != 0)
          return false;
        const Fp8Weight& w = fp8_weight(static_cast<const float*>(g.B), g.N, g.K);
        f.A = fp8_activation(Slot::Fp8A, sc, g.A, g.M, g.K, E4, false), f.a_fmt = E4, f.lda = g.K, f.a_scale = sc + cuda::kFp8InvScaleWord;
        f.B = w.rowwise(), f.b_fmt = E4, f.ldb = g.K, f.b_scale = w.scales() + cuda::kFp8InvScaleWord;
        f.bias = g.bias;
        if (g.bias) f.bias_c = operand(g.bias, DType::F32, 1, g.N, g.N);
        f.fast_accum = true;
        break;
      }
      case GemmRole::LinearDgrad: {
        // dx[M,N] = dy[M,K]·W[K,N]: W's transposed copy [N,K] is the K-contiguous operand.
        if (g.trans_a || g.trans_b || g.a_dtype != act_ || g.b_dtype != DType::F32 || g.c_dtype != act_ || g.bias ||
            g.K % 16 != 0 || g.N % 16 != 0)
          return false;
        const Fp8Weight& w = fp8_weight(static_cast<const float*>(g.B), g.K, g.N);
        // dy as the wgrad just before quantised it (row-wise copy in Fp8Dy, its scale words still at sc), or now.
        if (dy.x == g.A && dy.rows == g.M && dy.cols == g.K) {
          f.A = dy.q;
          ++fp8_counts_.dy_reused;
        } else {
          f.A = fp8_activation(Slot::Fp8A, sc, g.A, g.M, g.K, E5, false);
        }
        f.a_fmt = E5, f.lda = g.K, f.a_scale = sc + cuda::kFp8InvScaleWord;
        f.B = w.colwise(), f.b_fmt = E4, f.ldb = g.K, f.b_scale = w.scales() + cuda::kFp8InvScaleWord;
        break;
      }
      case GemmRole::LinearWgrad: {
        // dW[M,N] += dy[K,M]ᵀ·x[K,N]: both transposed to token-contiguous rows, the token count padded
        // with zero columns to a multiple of 16 (adds exact zeros to every dot product).
        if (!g.trans_a || g.trans_b || g.a_dtype != act_ || g.b_dtype != act_ || g.c_dtype != DType::F32 || g.bias ||
            g.M % 16 != 0 || g.N % 16 != 0)
          return false;
        f.K = pad16(g.K);
        // dy[K,M] once for both of its products (linear_backward runs the dgrad on the same dy right after):
        // transposed into Fp8A for this one, row-wise into Fp8Dy for the dgrad.
        uint8_t* dy_rows = fp8_slot(Slot::Fp8Dy, g.M * pad16(g.K));
        uint8_t* dy_t = fp8_slot(Slot::Fp8A, g.M * f.K);
        cuda::launch_fp8_amax(sc, g.A, act_, static_cast<size_t>(g.K * g.M), stream_);
        cuda::launch_fp8_quantize_both(dy_rows, dy_t, f.K, sc, g.A, act_, g.K, g.M, E5, stream_);
        f.A = dy_t, f.a_fmt = E5, f.lda = f.K, f.a_scale = sc + cuda::kFp8InvScaleWord;
        f.B = fp8_activation(Slot::Fp8B, sc + cuda::kFp8ScaleWords, g.B, g.K, g.N, E4, true), f.b_fmt = E4, f.ldb = f.K;
        f.b_scale = sc + cuda::kFp8ScaleWords + cuda::kFp8InvScaleWord;
        invalidate(g.C, static_cast<size_t>(g.M * g.N) * 4);
        next_dy = Fp8Dy{g.A, g.K, g.M, dy_rows};
        break;
      }
      case GemmRole::Other: return false;
    }
    // Kept whether or not cuBLASLt takes this product: the copy and its scale words are written either way.
    fp8_dy_ = next_dy;
    if (lt_->run_fp8(f, stream_)) return true;
    // Forward and dgrad have the token count as M (cuBLASLt's n), which the layouts above leave free. Not every
    // reading of cuBLASLt's FP8 rules agrees that n may be any number: XLA pads every FP8 GEMM dimension to a
    // multiple of 16 "as required by cuBLASLt FP8 gemms", TransformerEngine has asked for M % 8 (and calls
    // that stricter than the kernels need). Untested on a GPU so far: if cuBLASLt refuses such an M, the
    // product still runs in FP8 as a 16-row-aligned part plus a 16-row tail instead of falling back to bf16.
    if (g.role != GemmRole::LinearWgrad && g.M % 16 != 0 && f.beta == 0.0f) return fp8_gemm_split_rows(f);
    return false;
  }

  // f (a forward or dgrad product whose A is the row-wise FP8 copy of fp8_activation, beta 0) as two products
  // whose row counts are multiples of 16: rows [0, m16) straight into D, then rows [m16, M) as a 16-row
  // product over A's zeroed padding rows into scratch, of which the real rows are copied to D. false when
  // cuBLASLt refuses those too (D may then hold part of the result; the bf16 GEMM overwrites all of it).
  bool fp8_gemm_split_rows(const cuda::LtFp8Gemm& f) {
    const int64_t m16 = f.M / 16 * 16, tail = f.M - m16;
    auto* a = static_cast<uint8_t*>(const_cast<void*>(f.A));
    ESM2_CUDA_CHECK(cudaMemsetAsync(a + f.M * f.lda, 0, static_cast<size_t>((16 - tail) * f.lda), stream_));
    if (m16 > 0) {
      cuda::LtFp8Gemm head = f;
      head.M = m16;
      if (!lt_->run_fp8(head, stream_)) return false;
    }
    const size_t row_bytes = static_cast<size_t>(f.N) * dtype_size(f.d_dtype);
    cuda::LtFp8Gemm last = f;
    last.M = 16;
    last.A = a + m16 * f.lda;
    last.D = fp8_slot(Slot::Fp8B, static_cast<int64_t>(16 * row_bytes));
    last.ldd = f.N;
    if (!lt_->run_fp8(last, stream_)) return false;
    ESM2_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(f.D) + static_cast<size_t>(m16) * row_bytes, last.D,
                                    static_cast<size_t>(tail) * row_bytes, cudaMemcpyDeviceToDevice, stream_));
    if (!fp8_split_noted_)
      std::fprintf(stderr,
                   "esm2: note: cuBLASLt took no FP8 GEMM with M=%lld rows (not a multiple of 16); such products run "
                   "as a 16-row-aligned part plus a padded 16-row tail\n",
                   static_cast<long long>(f.M));
    fp8_split_noted_ = true;
    ++fp8_counts_.split_rows;
    return true;
  }

  // A write to [dst, dst+bytes) of fp32 memory: cached bf16 and FP8 copies overlapping it are stale.
  void invalidate(const void* dst, size_t bytes) {
    invalidate_fp8(dst, bytes);
    if (mirrors_.empty()) return;
    const char* lo = static_cast<const char*>(dst);
    const char* hi = lo + bytes;
    for (auto& [k, m] : mirrors_) {
      const char* a = reinterpret_cast<const char*>(k);
      if (a < hi && a + m.n * 4 > lo) m.valid = false;
    }
  }
  void invalidate_fp8(const void* dst, size_t bytes) {
    if (fp8_weights_.empty()) return;
    const char* lo = static_cast<const char*>(dst);
    const char* hi = lo + bytes;
    for (auto& [k, w] : fp8_weights_) {
      const char* a = reinterpret_cast<const char*>(k);
      if (a < hi && a + w.rows * w.cols * 4 > lo) w.valid = false;
    }
  }
  void drop_mirrors(const void* base, size_t bytes) {
    const char* lo = static_cast<const char*>(base);
    const char* hi = lo + bytes;
    for (auto it = fp8_weights_.begin(); it != fp8_weights_.end();) {
      const char* a = reinterpret_cast<const char*>(it->first);
      if (a >= lo && a < hi) {
        ESM2_CUDA_CHECK(cudaStreamSynchronize(stream_));
        device_free(it->second.q, it->second.bytes());
        it = fp8_weights_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = mirrors_.begin(); it != mirrors_.end();) {
      const char* a = reinterpret_cast<const char*>(it->first);
      if (a >= lo && a < hi) {
        ESM2_CUDA_CHECK(cudaStreamSynchronize(stream_));
        device_free(it->second.bf, mirror_bytes(it->second.n));
        it = mirrors_.erase(it);
      } else {
        ++it;
      }
    }
  }

  DType act_;
  int device_ = 0;
  bool fp8_ = false;  // fp8-mixed: Linear GEMMs in FP8
  Fp8GemmCounts fp8_counts_;
  bool fp8_warned_ = false;
  bool fp8_split_noted_ = false;
  Fp8Dy fp8_dy_;  // see Fp8Dy
  float* fp8_scales_ = nullptr;  // fp8_scale_words()
  cudaStream_t stream_ = nullptr;
  void* host_word_ = nullptr;  // pinned, for scalar read-backs
  std::unique_ptr<cuda::LtRunner> lt_;

  // Attention route (docs/cuda.md): ESM2_ATTENTION=auto (the measured table in cudnn_preferred), mma
  // (the mma.sync kernels) or cudnn (cuDNN wherever the shape allows); ESM2_ATTENTION_NONDETERMINISTIC=1
  // lets cuDNN's backward accumulate dQ with atomics (faster; bits may differ between runs).
  enum class AttnRoute { Auto, Mma, Cudnn };
  static AttnRoute attention_route_from_env() {
    const char* v = std::getenv("ESM2_ATTENTION");
    if (!v || !*v || std::string(v) == "auto") return AttnRoute::Auto;
    if (std::string(v) == "mma") return AttnRoute::Mma;
    if (std::string(v) == "cudnn") return AttnRoute::Cudnn;
    fail("ESM2_ATTENTION={}: must be auto, mma or cudnn", v);
  }
  // ESM2_CUDNN_BACKWARD_GROUP: `auto` (-1) runs cuDNN's deterministic backward over groups of sequences when
  // the whole batch's workspace does not fit, instead of going to the mma kernels; N (a power of two >= 4)
  // does so from the start. Unset (0): neither. Opt-in until the grouped backward has run on a GPU.
  static int64_t backward_group_from_env() {
    const char* v = std::getenv("ESM2_CUDNN_BACKWARD_GROUP");
    if (!v || !*v) return 0;
    if (std::string(v) == "auto") return -1;
    char* end = nullptr;
    const long long n = std::strtoll(v, &end, 10);
    ESM2_CHECK(*end == '\0' && n >= 4 && (n & (n - 1)) == 0,
               "ESM2_CUDNN_BACKWARD_GROUP={}: must be auto or a power of two >= 4 (sequences per cuDNN backward call)",
               v);
    return n;
  }
  static bool nondeterministic_from_env() {
    const char* v = std::getenv("ESM2_ATTENTION_NONDETERMINISTIC");
    if (!v || !*v || std::string(v) == "0") return false;
    ESM2_CHECK(std::string(v) == "1", "ESM2_ATTENTION_NONDETERMINISTIC={}: must be 0 or 1", v);
    return true;
  }
  [[maybe_unused]] AttnRoute attn_route_ = attention_route_from_env();
  int64_t cudnn_calls_ = 0;
  [[maybe_unused]] bool attn_nondeterministic_ = nondeterministic_from_env();
  [[maybe_unused]] int64_t cudnn_group_env_ = backward_group_from_env();
#ifdef ESM2_HAVE_CUDNN
  // Which route `auto` takes per head dim, from one H100 run (bench/results/cuda/issue15-callB): cuDNN
  // made 650M (D 64) 10% and 150M (D 32) 9% faster per training step, 8M (D 16) 16% slower; 40 and 128
  // passed the same test against the CPU backend (the mma kernels pad 40 to 64); 24 was not run on cuDNN.
  static bool cudnn_preferred(int D) { return D == 32 || D == 40 || D == 64 || D == 128; }
  std::unique_ptr<cuda::CudnnAttention> cudnn_;
  bool cudnn_tried_ = false;
  // The cuDNN runner when this call goes through cuDNN, else nullptr (created on first use; a machine
  // where cuDNN cannot start says so once and keeps the mma kernels).
  cuda::CudnnAttention* cudnn_for(const AttentionShape& a) {
    if (cudnn_off_ || attn_route_ == AttnRoute::Mma || !cuda::CudnnAttention::supports(a, act_)) return nullptr;
    if (attn_route_ == AttnRoute::Auto && !cudnn_preferred(a.D)) return nullptr;
    if (!cudnn_tried_) {
      cudnn_tried_ = true;
      std::string why;
      cudnn_ = cuda::CudnnAttention::create(stream_, &why);
      if (!cudnn_) std::fprintf(stderr, "esm2: cuDNN attention unavailable (%s); using the mma kernels\n", why.c_str());
      if (cudnn_ && cudnn_group_env_ > 0) cudnn_->set_backward_group(cudnn_group_env_);
    }
    return cudnn_.get();
  }
  // Runs a plan lookup; a shape cuDNN finds no engine for goes to the mma kernels (said once per run;
  // both routes keep the same lse, so a forward and a backward of different routes still agree).
  template <class F>
  bool cudnn_plan_ok(F&& f) {
    try {
      f();
      return true;
    } catch (const Error& e) {
      if (!cudnn_warned_) std::fprintf(stderr, "esm2: %s; using the mma kernels for this shape\n", e.what());
      cudnn_warned_ = true;
      return false;
    }
  }
  bool cudnn_warned_ = false;
  // cuDNN's scratch (its plan's workspace grows with the padded sequence count times the longest
  // sequence: +4 GB for 650M at 16,384 tokens, +15 GB for 8M at 65,536) is not in the memory plan. Under
  // `auto`, the first call sizes the slot for the backward, the larger of the two, and must leave 1 GiB
  // free beyond the bf16 weight copies still to come; when it does not fit (then or on a later, larger
  // shape) the run says so once and keeps the mma kernels, so a micro-batch that fits with them still runs.
  bool cudnn_off_ = false;
  bool cudnn_sized_ = false;
  void* cudnn_scratch(cuda::CudnnAttention* c, const AttentionShape& a, size_t bytes) {
    if (cudnn_off_) return nullptr;
    // ESM2_ATTENTION=cudnn asked for cuDNN: its scratch is allocated like any other (out of memory is the
    // usual error).
    if (attn_route_ == AttnRoute::Cudnn) return scratch(Slot::Attention, (bytes + 3) / 4);
    Scratch& s = scratch_[static_cast<int>(Slot::Attention)];
    size_t need = bytes;
    if (!cudnn_sized_) {  // the first call sizes the slot for the backward too, the larger of the two
      cudnn_sized_ = true;
      cudnn_plan_ok([&] { need = std::max(bytes, c->backward_scratch_bytes(a, cudnn_deterministic(a))); });
    }
    if (s.floats * 4 >= need) return s.ptr;
    // Growing (first call, or a batch with more or longer sequences): exactly what is needed, kept only if
    // 1 GiB stays free beyond the bf16 weight copies still to come (the first attention call precedes most).
    if (cudnn_grow(need)) return s.ptr;
    // The deterministic backward's workspace is per sequence: try it over smaller and smaller groups of
    // sequences (same gradients) before giving up on cuDNN. The slot must hold the forward's scratch too.
    if (cudnn_group_env_ != 0 && cudnn_deterministic(a)) {
      // Halve the batch's sequence bucket, or the group in use if that is smaller (a group at least as
      // large as this batch is the whole batch: the size that did not fit).
      int64_t group = 1;
      while (group < a.S) group *= 2;
      if (c->backward_group() > 0) group = std::min(group, c->backward_group());
      for (group /= 2; group >= 4; group /= 2) {
        c->set_backward_group(group);
        size_t grouped = 0;
        if (!cudnn_plan_ok([&] { grouped = std::max(c->forward_scratch_bytes(a), c->backward_scratch_bytes(a, true)); }))
          break;
        if (s.floats * 4 >= grouped || cudnn_grow(grouped)) {
          std::fprintf(stderr,
                       "esm2: note: cuDNN attention's backward runs over groups of %lld sequences, so that its "
                       "scratch fits (%.0f MiB instead of %.0f)\n",
                       static_cast<long long>(group), grouped / 1048576.0, need / 1048576.0);
          return s.ptr;
        }
      }
    }
    cudnn_off_ = true;
    std::fprintf(stderr,
                 "esm2: note: cuDNN attention needs %.0f MiB of scratch that does not fit beside this run; it uses the "
                 "mma kernels from here on\n",
                 need / 1048576.0);
    return nullptr;
  }
  // The attention slot at exactly `need` bytes if that leaves 1 GiB free beyond the bf16 weight copies
  // still to come; else the slot is left empty and false.
  bool cudnn_grow(size_t need) {
    try {
      scratch(Slot::Attention, (need + 3) / 4, /*exact=*/true);
      size_t free_b = 0, total_b = 0;
      ESM2_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
      if (free_b >= (size_t{1} << 30) + pending_mirror_bytes()) return true;
      release_scratch(Slot::Attention);
    } catch (const OutOfDeviceMemory&) {
      // cudaMalloc's failure is not sticky, and the slot is empty (released before the allocation)
    }
    return false;
  }
  // An upper bound on the bf16 weight copies still to be made (operand() makes them on first use): half of
  // the allocation that holds the weights mirrored so far (the parameters), less the copies that exist.
  size_t pending_mirror_bytes() const {
    if (mirrors_.empty()) return 0;
    auto block = sizes_.upper_bound(static_cast<const void*>(mirrors_.begin()->first));
    if (block == sizes_.begin()) return 0;
    --block;
    const char* lo = static_cast<const char*>(block->first);
    const char* hi = lo + block->second;
    size_t made = 0;
    for (const auto& [k, m] : mirrors_) {
      const char* p = reinterpret_cast<const char*>(k);
      if (p >= lo && p < hi) made += mirror_bytes(m.n);
    }
    return block->second / 2 > made ? block->second / 2 - made : 0;
  }
  // The atomic backward gave wrong dQ/dK at head dim 40 on an H100 (cuDNN 9.14, 2026-12-07) while the
  // deterministic one matched: head dims that are not a multiple of 16 keep the deterministic one.
  bool cudnn_deterministic(const AttentionShape& a) const { return !attn_nondeterministic_ || a.D % 16 != 0; }
#endif
  Scratch scratch_[static_cast<int>(Slot::kCount)];
  Uploaded uploads_[static_cast<int>(Upload::kCount)];
  std::vector<double> per_range_;
  std::map<const float*, Mirror> mirrors_;
  std::map<const float*, Fp8Weight> fp8_weights_;
  std::map<const void*, size_t> sizes_;  // alloc()ed pointer → bytes
  size_t held_ = 0, peak_held_ = 0;       // bytes of every device_malloc, now and at most
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(DType activation_dtype, int device, bool fp8_linears) {
  return std::make_unique<CudaBackend>(activation_dtype, device, fp8_linears);
}

namespace {
CudaBackend& as_cuda(Backend& b) {
  auto* c = dynamic_cast<CudaBackend*>(&b);
  ESM2_CHECK(c != nullptr, "the {} backend has no CUDA stream (a CUDA backend is needed here)", b.name());
  return *c;
}
}  // namespace

void* cuda_backend_stream(Backend& b) { return as_cuda(b).stream(); }
int cuda_backend_device(Backend& b) { return as_cuda(b).device(); }
int64_t cuda_backend_cudnn_attention_calls(Backend& b) { return as_cuda(b).cudnn_attention_calls(); }
Fp8GemmCounts cuda_backend_fp8_gemm_counts(Backend& b) { return as_cuda(b).fp8_counts(); }

}  // namespace esm2
