// Row-major GEMM through cuBLASLt: D = alpha·op(A)·op(B) + beta·C (+ bias[N] per row), C and D the same
// buffer. bf16 or fp32 operands, fp32 accumulation; the algorithm is cached per shape.
//
// Algorithm pick: cuBLASLt's first heuristic answer (h0) is often not its fastest for the thin shapes
// of small models (N or K = 320). At the first GEMM of a shape class (the shape with M rounded up to a
// power of two) the runner times the heuristic's candidates on the call's own operands and keeps the
// fastest of those whose output is bitwise that of h0 — so the pick never changes a result, and runs
// stay bitwise reproducible whatever the timings. A later M of the class uses the pick only when its
// own h0 is the same algorithm as the tuned one's (else its h0). Weight-gradient products (transposed A,
// K = the step's token count) are not tuned.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/fp8.h"

namespace esm2::cuda {

struct LtGemm {
  bool trans_a = false, trans_b = false;
  int64_t M = 0, N = 0, K = 0;
  float alpha = 1.0f, beta = 0.0f;
  const void* A = nullptr;
  DType a_dtype = DType::F32;
  int64_t lda = 0;
  const void* B = nullptr;
  DType b_dtype = DType::F32;
  int64_t ldb = 0;
  void* C = nullptr;
  DType c_dtype = DType::F32;
  int64_t ldc = 0;
  const float* bias = nullptr;  // [N] fp32 or null
  // [N] the same bias rounded to c_dtype (bf16), or null: what the bias epilogue reads for bf16 outputs.
  const void* bias_c = nullptr;
};

// An FP8 product in the one layout Hopper's FP8 kernels take (row-major terms: both operands K-contiguous):
// D[M,N] (=, or + beta·D) = alpha · (a_scale·A)[M,K] · (b_scale·B)[N,K]ᵀ (+ bias[N] on every row).
// A and B hold FP8 codes; a_scale / b_scale are device words (the dequantisation factors 1/scale).
// Requirements (cuBLASLt on sm_90): K, N, lda, ldb multiples of 16, 16-byte aligned pointers, not both
// operands E5M2; D BF16 or F32.
struct LtFp8Gemm {
  int64_t M = 0, N = 0, K = 0;
  float alpha = 1.0f, beta = 0.0f;
  const void* A = nullptr;
  Fp8Format a_fmt = Fp8Format::E4M3;
  int64_t lda = 0;
  const float* a_scale = nullptr;
  const void* B = nullptr;
  Fp8Format b_fmt = Fp8Format::E4M3;
  int64_t ldb = 0;
  const float* b_scale = nullptr;
  void* D = nullptr;
  DType d_dtype = DType::BF16;
  int64_t ldd = 0;
  const float* bias = nullptr;  // [N] fp32 or null (added by a separate pass when the epilogue is refused)
  const void* bias_c = nullptr;  // [N] the bias in d_dtype, for the epilogue, or null
  // cuBLASLt's fast accumulation (no periodic promotion of the tensor cores' partial sums to fp32):
  // TransformerEngine's default for the forward product only.
  bool fast_accum = false;
};

class LtRunner {
 public:
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // cuBLASLt's workspace, allocated once

  LtRunner();
  ~LtRunner();
  LtRunner(const LtRunner&) = delete;
  LtRunner& operator=(const LtRunner&) = delete;
  void run(const LtGemm& g, cudaStream_t s);
  // false (nothing enqueued) when cuBLASLt offers no algorithm for this FP8 product; the caller then
  // computes it another way. Deterministic: cuBLASLt's first heuristic answer, cached per shape.
  bool run_fp8(const LtFp8Gemm& g, cudaStream_t s);
  // Why the last run_fp8 that returned false refused (the rule it broke, or cuBLASLt's status), for the
  // caller's warning: the first GPU run refused every FP8 product without saying why.
  const std::string& fp8_refusal() const { return fp8_refusal_; }
  void clear_fp8_refusal() { fp8_refusal_.clear(); }

 private:
  // How the bias reaches the output: not through cuBLASLt, or its epilogue reading the bias in the
  // output's dtype (bias_c), or in fp32.
  enum class BiasMode { None, OutputType, F32 };
  // Returns false when cuBLASLt has no algorithm for this combination.
  bool try_run(const LtGemm& g, BiasMode bias, cudaStream_t s);

  // The algorithm for this call given cuBLASLt's candidates `res` for it (res[0] = h0).
  cublasLtMatmulAlgo_t choose(const LtGemm& g, const std::vector<int64_t>& key, cublasLtMatmulDesc_t op,
                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                              const cublasLtMatmulHeuristicResult_t* res, int found, cudaStream_t s);
  struct Tuned {
    cublasLtMatmulAlgo_t h0{}, best{};
  };
  Tuned tune(const LtGemm& g, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
             cublasLtMatrixLayout_t c, const cublasLtMatmulHeuristicResult_t* res, int found, cudaStream_t s);

  cublasLtHandle_t handle_ = nullptr;
  bool pick_ = false;  // ESM2_GEMM_PICK=1: time the candidates of a shape class (not bitwise across resume)
  std::map<std::vector<int64_t>, Tuned> tuned_;  // by shape class (key with M rounded up to a power of two)
  void* workspace_ = nullptr;

  size_t workspace_bytes_ = 0;
  struct Cached {
    bool ok = false;
    cublasLtMatmulAlgo_t algo{};
    std::string why;  // FP8: the refusal, when !ok
  };
  std::string fp8_refusal_;
  std::map<std::vector<int64_t>, Cached> cache_;
  std::map<std::vector<int64_t>, Cached> fp8_cache_;
  bool try_run_fp8(const LtFp8Gemm& g, bool epilogue_bias, cudaStream_t s);
};

}  // namespace esm2::cuda
