// Which FP8 cuBLASLt configurations run on this machine (diagnosis for issue 19).
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cstdio>
#include <cstring>
#include <vector>
#define CK(x) do { auto e = (x); if (e != 0) { printf("  %s -> %d\n", #x, (int)e); } } while (0)
struct Cfg { const char* name; cudaDataType_t a, b, c, d; bool scales, fast, bias; int m, n, k; bool c_eq_d; };
int main() {
  cublasLtHandle_t h; cublasLtCreate(&h);
  printf("cublasLt version %zu, cudart %zu\n", cublasLtGetVersion(), cublasLtGetCudartVersion());
  void *A, *B, *C, *D, *W, *bias; float *sa, *sb;
  size_t big = 64 << 20, ws = 32 << 20;
  cudaMalloc(&A, big); cudaMalloc(&B, big); cudaMalloc(&C, big); cudaMalloc(&D, big); cudaMalloc(&W, ws);
  cudaMalloc(&bias, 1 << 20); cudaMalloc(&sa, 4); cudaMalloc(&sb, 4);
  cudaMemset(A, 0, big); cudaMemset(B, 0, big); cudaMemset(C, 0, big); cudaMemset(D, 0, big); cudaMemset(bias, 0, 1 << 20);
  float one = 1; cudaMemcpy(sa, &one, 4, cudaMemcpyHostToDevice); cudaMemcpy(sb, &one, 4, cudaMemcpyHostToDevice);
  auto E4 = CUDA_R_8F_E4M3, E5 = CUDA_R_8F_E5M2, BF = CUDA_R_16BF, F32 = CUDA_R_32F;
  std::vector<Cfg> cfgs = {
    {"sample-like e4 e4 C bf16 D bf16 scales", E4, E4, BF, BF, true, false, false, 256, 256, 256, true},
    {"C != D", E4, E4, BF, BF, true, false, false, 256, 256, 256, false},
    {"no scales", E4, E4, BF, BF, false, false, false, 256, 256, 256, true},
    {"fast accum", E4, E4, BF, BF, true, true, false, 256, 256, 256, true},
    {"bias epilogue", E4, E4, BF, BF, true, true, true, 256, 256, 256, true},
    {"D fp32 C fp32", E4, E4, F32, F32, true, false, false, 256, 256, 256, true},
    {"e4 x e5, D bf16", E4, E5, BF, BF, true, false, false, 256, 256, 256, true},
    {"e5 x e4, D bf16", E5, E4, BF, BF, true, false, false, 256, 256, 256, true},
    {"e4 x e5, D fp32", E4, E5, F32, F32, true, false, false, 256, 256, 256, true},
    {"e5 x e4, D fp32", E5, E4, F32, F32, true, false, false, 256, 256, 256, true},
    {"n=200 (test's M)", E4, E4, BF, BF, true, true, false, 192, 200, 128, true},
    {"m=192 n=200 k=128 bias", E4, E4, BF, BF, true, true, true, 192, 200, 128, true},
    {"test wgrad m128 n192 k208 D fp32", E5, E4, F32, F32, true, false, false, 128, 192, 208, true},
    {"650M fwd m1280 n16384 k1280", E4, E4, BF, BF, true, true, false, 1280, 16384, 1280, true},
  };
  for (auto& c : cfgs) {
    cublasLtMatmulDesc_t op; cublasLtMatrixLayout_t la, lb, lc; cublasLtMatmulPreference_t pref;
    cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t));
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof(n));
    if (c.scales) {
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof(sa));
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof(sb));
    }
    int8_t fast = c.fast; cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, 1);
    if (c.bias) {
      cublasLtEpilogue_t e = CUBLASLT_EPILOGUE_BIAS; cudaDataType_t bt = c.d;
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof(e));
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt));
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias));
    }
    cublasLtMatrixLayoutCreate(&la, c.a, c.k, c.m, c.k);
    cublasLtMatrixLayoutCreate(&lb, c.b, c.k, c.n, c.k);
    cublasLtMatrixLayoutCreate(&lc, c.d, c.m, c.n, c.m);
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulHeuristicResult_t r[4] = {}; int found = 0;
    auto hs = cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, lc, lc, pref, 4, r, &found);
    float alpha = 1, beta = 0;
    int st = -1;
    if (hs == 0 && found > 0) st = cublasLtMatmul(h, op, &alpha, A, la, B, lb, &beta, c.c_eq_d ? D : C, lc, D, lc, &r[0].algo, W, ws, 0);
    cudaError_t ce = cudaDeviceSynchronize();
    printf("%-40s heuristic %d found %d ws %zu matmul %d (%s) cuda %d\n", c.name, (int)hs, found,
           found ? r[0].workspaceSize : 0, st, st >= 0 ? cublasLtGetStatusString((cublasStatus_t)st) : "-", (int)ce);
    cublasLtMatmulPreferenceDestroy(pref); cublasLtMatrixLayoutDestroy(lc); cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(la); cublasLtMatmulDescDestroy(op);
  }
  return 0;
}
