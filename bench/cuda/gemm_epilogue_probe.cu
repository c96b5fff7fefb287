// Why the forward projections (x·Wᵀ + b, bf16 out) ran at half the rate of the input-gradient products of
// the same size (issue #6): times one cuBLASLt NT product of each ESM-2 650M projection shape with no
// epilogue, with the bias epilogue reading an fp32 bias and a bf16 bias, and with no epilogue followed by
// the bias-add kernel the backend used before (one 64-bit division per element). Prints, per variant,
// how many algorithms the heuristic offers, the first one's id and tile, and its TFLOP/s.
// Build and run on the GPU machine: nvcc -O2 -arch=sm_90a -o /tmp/probe bench/cuda/gemm_epilogue_probe.cu -lcublasLt
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CK(x)                                                                       \
  do {                                                                              \
    auto e_ = (x);                                                                  \
    if (static_cast<int>(e_) != 0) {                                                \
      std::printf("FAILED %s = %d (line %d)\n", #x, static_cast<int>(e_), __LINE__); \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (0)

__global__ void old_bias_add(__nv_bfloat16* C, const float* bias, int64_t M, int64_t N) {
  const size_t total = static_cast<size_t>(M) * N;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i % N;
    C[i] = __float2bfloat16_rn(__bfloat162float(C[i]) + bias[c]);
  }
}

enum Variant { kNone, kBiasF32, kBiasBf16, kNoneThenAdd };
const char* kNames[] = {"no epilogue", "bias epilogue fp32 bias", "bias epilogue bf16 bias",
                        "no epilogue + old bias_add"};

int main() {
  cublasLtHandle_t h;
  CK(cublasLtCreate(&h));
  const int64_t M = 16384;
  const int64_t shapes[][2] = {{5120, 1280}, {3840, 1280}, {1280, 5120}, {1280, 1280}};
  size_t ws_bytes = 32u << 20;
  void* ws;
  CK(cudaMalloc(&ws, ws_bytes));
  __nv_bfloat16 *X, *W, *Y, *bias16;
  float* bias32;
  CK(cudaMalloc(&X, M * 5120 * 2));
  CK(cudaMalloc(&W, 5120 * 5120 * 2));
  CK(cudaMalloc(&Y, M * 5120 * 2));
  CK(cudaMalloc(&bias16, 5120 * 2));
  CK(cudaMalloc(&bias32, 5120 * 4));
  CK(cudaMemset(X, 0, M * 5120 * 2));
  CK(cudaMemset(W, 0, 5120 * 5120 * 2));
  CK(cudaMemset(bias16, 0, 5120 * 2));
  CK(cudaMemset(bias32, 0, 5120 * 4));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  for (auto& sh : shapes) {
    const int64_t N = sh[0], K = sh[1];
    for (int v = 0; v < 4; ++v) {
      cublasLtMatmulDesc_t op;
      CK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
      CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
      CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
      if (v == kBiasF32 || v == kBiasBf16) {
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        const cudaDataType_t bt = v == kBiasF32 ? CUDA_R_32F : CUDA_R_16BF;
        const void* bp = v == kBiasF32 ? static_cast<const void*>(bias32) : static_cast<const void*>(bias16);
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
        CK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof(bp)));
      }
      cublasLtMatrixLayout_t la, lb, lc;
      CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, K, N, K));  // W [N,K] row-major = [K,N] col-major
      CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, K, M, K));  // X [M,K] row-major
      CK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, N, M, N));  // Y [M,N] row-major
      cublasLtMatmulPreference_t pref;
      CK(cublasLtMatmulPreferenceCreate(&pref));
      CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                              sizeof(ws_bytes)));
      cublasLtMatmulHeuristicResult_t res[8];
      int found = 0;
      const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, lc, lc, pref, 8, res, &found);
      std::printf("N=%lld K=%lld %-28s heuristic status %d, %d algos", (long long)N, (long long)K, kNames[v],
                  static_cast<int>(st), found);
      if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
        std::printf("\n");
        continue;
      }
      const float alpha = 1, beta = 0;
      for (int a = 0; a < found && a < 4; ++a) {
        int id = -1, tile = -1, stages = -1;
        size_t w;
        cublasLtMatmulAlgoConfigGetAttribute(&res[a].algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof(id), &w);
        cublasLtMatmulAlgoConfigGetAttribute(&res[a].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), &w);
        cublasLtMatmulAlgoConfigGetAttribute(&res[a].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(stages),
                                             &w);
        auto once = [&] {
          CK(cublasLtMatmul(h, op, &alpha, W, la, X, lb, &beta, Y, lc, Y, lc, &res[a].algo, ws, ws_bytes, 0));
          if (v == kNoneThenAdd) old_bias_add<<<65535u * 16u, 256>>>(Y, bias32, M, N);
        };
        for (int i = 0; i < 3; ++i) once();
        CK(cudaEventRecord(e0));
        const int reps = 20;
        for (int i = 0; i < reps; ++i) once();
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        const double tflops = 2.0 * M * N * K / (ms / reps * 1e-3) / 1e12;
        std::printf(" | #%d algo %d tile %d stages %d: %.3f ms %.0f TFLOP/s", a, id, tile, stages, ms / reps, tflops);
      }
      std::printf("\n");
      cublasLtMatmulPreferenceDestroy(pref);
      cublasLtMatrixLayoutDestroy(la);
      cublasLtMatrixLayoutDestroy(lb);
      cublasLtMatrixLayoutDestroy(lc);
      cublasLtMatmulDescDestroy(op);
    }
  }
  return 0;
}
