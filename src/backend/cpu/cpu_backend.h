// The fp32 CPU backend: the readable reference implementation of every op (and the oracle for other
// backends). Dense products go to OpenBLAS cblas_sgemm; everything else is plain loops parallelised
// with OpenMP over rows, columns or (sequence, head) pairs so that no two threads ever sum into the
// same value (determinism without atomics).
#pragma once
#include <vector>

#include "backend/backend.h"

namespace esm2 {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int num_threads);
  std::string name() const override { return "cpu"; }
  DType activation_dtype() const override { return DType::F32; }
  int num_threads() const { return num_threads_; }

  void* alloc(size_t bytes) override;
  void free(void* p) override;
  void copy_to_device(void* dst, const void* host_src, size_t bytes) override;
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void memset_zero(void* dst, size_t bytes) override;
  void act_to_host_f32(float* host_dst, const void* src, size_t n) override;
  void act_from_host_f32(void* dst, const float* host_src, size_t n) override;

  void gemm(const GemmArgs& g) override;
  void bias_backward(float* db, const void* dy, int64_t M, int64_t N) override;
  void add(void* out, const void* a, const void* b, size_t n) override;

  void embedding_forward(void* out, const int32_t* ids, const float* wte, int64_t T, int64_t C) override;
  void embedding_backward(float* dwte, const void* dout, const int32_t* ids, int64_t T, int64_t C) override;
  void token_dropout_forward(void* x, const int32_t* ids, const int32_t* cu_seqlens, int S, int64_t C,
                             int32_t mask_id, int32_t pad_id, float mask_ratio_train, bool rescale) override;
  void token_dropout_backward(void* dx, const int32_t* ids, const int32_t* cu_seqlens, int S, int64_t C,
                              int32_t mask_id, int32_t pad_id, float mask_ratio_train, bool rescale) override;

  void layernorm_forward(void* out, float* mean, float* rstd, const void* x, const float* w, const float* b,
                         int64_t T, int64_t C, float eps) override;
  void layernorm_backward(void* dx, float* dw, float* db, const void* dout, const void* x, const float* w,
                          const float* mean, const float* rstd, int64_t T, int64_t C) override;

  void attention_forward(void* out, float* lse, const void* qkv, const AttentionShape& a) override;
  void attention_backward(void* dqkv, const void* dout, const void* qkv, const void* out, const float* lse,
                          const AttentionShape& a) override;

  void gelu_forward(void* out, const void* x, size_t n, bool tanh_approx) override;
  void gelu_backward(void* dx, const void* dout, const void* x, size_t n, bool tanh_approx) override;

  void gather_rows(void* out, const void* x, const int32_t* idx, int64_t R, int64_t C) override;
  void scatter_add_rows(void* dx, const void* dout, const int32_t* idx, int64_t R, int64_t C) override;

  void cross_entropy_forward(float* loss, const void* logits, const int32_t* labels, int64_t R, int64_t V) override;
  void cross_entropy_backward(void* dlogits, const void* logits, const int32_t* labels, int64_t R, int64_t V,
                              float dloss) override;

  void adamw_update(float* p, const float* g, float* m, float* v, size_t n, const AdamWStep& s) override;
  double sum_squares(const float* x, size_t n) override;
  void scale(float* x, float a, size_t n) override;

 private:
  // Per-thread scratch of the attention kernels, grown on demand (never per token).
  float* thread_scratch(int thread, size_t floats);
  // Rotary cos/sin table [max_seqlen, D/2] for the current call.
  void build_rotary_table(const AttentionShape& a);

  int num_threads_;
  std::vector<std::vector<float>> scratch_;
  std::vector<float> rot_cos_, rot_sin_;
};

// Adds the cpu backend to the registry (backend/backend_factory.h); the build's generated
// builtin_components.cpp calls it.
void register_cpu_backend();

}  // namespace esm2
