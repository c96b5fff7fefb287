// A Backend that forwards to another and measures every op: `esm2 bench --profile` uses it to say
// where a training step's time goes (the per-kernel table issue #6 asks for where a target is missed,
// without depending on Nsight Systems, which the GPU machine lacks).
//
// Each op is bracketed by synchronize() so that asynchronous GPU work is charged to the op that
// launched it. That removes the overlap of host and device work, so the profiled step is slower than
// a plain one: read the shares, not the sum. GEMMs are keyed by shape so that each projection shows up
// with its achieved FLOP/s.
#pragma once
#include <chrono>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "backend/backend.h"

namespace esm2 {

class TimingBackend final : public Backend {
 public:
  explicit TimingBackend(Backend& inner) : in_(inner) {}

  struct Entry {
    std::string op;
    int64_t calls = 0;
    double seconds = 0;
    double flops = 0;  // GEMMs: 2·M·N·K per call; 0 where not counted
  };
  // Sorted by time, largest first.
  std::vector<Entry> report() const;
  double total_seconds() const;
  void reset() { entries_.clear(); }
  // Measure only while enabled (warm-up steps are not profiled).
  void set_enabled(bool on) { enabled_ = on; }

  std::string name() const override { return in_.name(); }
  DType activation_dtype() const override { return in_.activation_dtype(); }
  bool fp8_linears() const override { return in_.fp8_linears(); }
  void* alloc(size_t bytes) override { return in_.alloc(bytes); }
  void free(void* p) override { in_.free(p); }
  void copy_to_device(void* dst, const void* src, size_t bytes) override;
  void copy_to_host(void* dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void memset_zero(void* dst, size_t bytes) override;
  void act_to_host_f32(float* dst, const void* src, size_t n) override;
  void act_from_host_f32(void* dst, const float* src, size_t n) override;
  void synchronize() override { in_.synchronize(); }
  size_t device_bytes_in_use() const override { return in_.device_bytes_in_use(); }
  DeviceMemory device_memory() override { return in_.device_memory(); }
  size_t workspace_bytes(const WorkspaceShape& shape) const override { return in_.workspace_bytes(shape); }
  void gemm(const GemmArgs& g) override;
  void bias_backward(float* db, const void* dy, int64_t M, int64_t N) override;
  void add(void* out, const void* a, const void* b, size_t n) override;
  void embedding_forward(void* out, const int32_t* ids, const float* wte, int64_t T, int64_t C) override;
  void embedding_backward(float* dwte, const void* dout, const int32_t* ids, int64_t T, int64_t C) override;
  void token_dropout_forward(void* x, const int32_t* ids, const int32_t* cu, int S, int64_t C, int32_t mask_id,
                             int32_t pad_id, float ratio, bool rescale) override;
  void token_dropout_backward(void* dx, const int32_t* ids, const int32_t* cu, int S, int64_t C, int32_t mask_id,
                              int32_t pad_id, float ratio, bool rescale) override;
  void layernorm_forward(void* out, float* mean, float* rstd, const void* x, const float* w, const float* b, int64_t T,
                         int64_t C, float eps) override;
  void layernorm_backward(void* dx, float* dw, float* db, const void* dout, const void* x, const float* w,
                          const float* mean, const float* rstd, int64_t T, int64_t C) override;
  void attention_forward(void* out, float* lse, const void* qkv, const AttentionShape& a) override;
  void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out, const float* lse,
                          const AttentionShape& a) override;
  void gelu_forward(void* out, const void* x, size_t n, bool tanh_approx) override;
  void gelu_backward(void* dx, const void* dout, const void* x, size_t n, bool tanh_approx) override;
  void add_layernorm_forward(void* sum, void* out, float* mean, float* rstd, const void* a, const void* b,
                             const float* w, const float* bias, int64_t T, int64_t C, float eps) override;
  void gelu_backward_bias(void* dx, float* db, const void* dout, const void* x, int64_t M, int64_t N,
                          bool tanh_approx) override;
  void gather_rows(void* out, const void* x, const int32_t* idx, int64_t R, int64_t C) override;
  void scatter_add_rows(void* dx, const void* dout, const int32_t* idx, int64_t R, int64_t C) override;
  void cross_entropy_forward(float* loss, const void* logits, const int32_t* labels, int64_t R, int64_t V) override;
  void cross_entropy_backward(void* dlogits, const void* logits, const int32_t* labels, int64_t R, int64_t V,
                              float dloss) override;
  void adamw_update(float* p, const float* g, float* m, float* v, size_t n, const AdamWStep& s) override;
  double sum_squares(const float* x, size_t n) override;
  double sum_squares_ranges(const float* base, const TensorRange* ranges, size_t count) override;
  void adamw_update_ranges(float* p, const float* g, float* m, float* v, const TensorRange* ranges, size_t count,
                           const AdamWStep& s) override;
  void scale(float* x, float a, size_t n) override;

 private:
  // Runs f between two synchronisations and charges the time to `op`. The closing synchronisation
  // runs in the normal path (not in a destructor), so an asynchronous device error surfaces as the
  // usual exception; an op that throws is not charged.
  template <class F>
  auto timed(const std::string& op, double flops, F&& f) {
    if (!enabled_) return f();
    in_.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    if constexpr (std::is_void_v<decltype(f())>) {
      f();
      in_.synchronize();
      charge(op, flops, t0);
    } else {
      auto r = f();
      in_.synchronize();
      charge(op, flops, t0);
      return r;
    }
  }
  void charge(const std::string& op, double flops, std::chrono::steady_clock::time_point t0) {
    Entry& e = entries_[op];
    e.op = op;
    e.calls += 1;
    e.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    e.flops += flops;
  }

  Backend& in_;
  bool enabled_ = true;
  std::map<std::string, Entry> entries_;
};

}  // namespace esm2
