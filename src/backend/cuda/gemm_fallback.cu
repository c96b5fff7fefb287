#include "backend/cuda/cuda_types.cuh"
#include "backend/cuda/gemm_fallback.cuh"

namespace esm2::cuda {

namespace {

constexpr int kTile = 16;

template <class TA, class TB, class TC>
__global__ void gemm_fallback_kernel(LtGemm g) {
  __shared__ float As[kTile][kTile + 1], Bs[kTile][kTile + 1];
  const TA* A = static_cast<const TA*>(g.A);
  const TB* B = static_cast<const TB*>(g.B);
  TC* C = static_cast<TC*>(g.C);
  const int64_t i = blockIdx.y * static_cast<int64_t>(kTile) + threadIdx.y;  // row of C
  const int64_t j = blockIdx.x * static_cast<int64_t>(kTile) + threadIdx.x;  // column of C
  float acc = 0.0f;
  for (int64_t k0 = 0; k0 < g.K; k0 += kTile) {
    // As[ty][tx] = op(A)[i, k0+tx]; Bs[ty][tx] = op(B)[k0+ty, j]
    const int64_t ka = k0 + threadIdx.x, kb = k0 + threadIdx.y;
    float a = 0.0f, b = 0.0f;
    if (i < g.M && ka < g.K) a = to_f(g.trans_a ? A[ka * g.lda + i] : A[i * g.lda + ka]);
    if (j < g.N && kb < g.K) b = to_f(g.trans_b ? B[j * g.ldb + kb] : B[kb * g.ldb + j]);
    As[threadIdx.y][threadIdx.x] = a;
    Bs[threadIdx.y][threadIdx.x] = b;
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTile; ++k) acc += As[threadIdx.y][k] * Bs[k][threadIdx.x];
    __syncthreads();
  }
  if (i >= g.M || j >= g.N) return;
  TC* c = C + i * g.ldc + j;
  float v = g.alpha * acc;
  if (g.beta != 0.0f) v += g.beta * to_f(*c);
  if (g.bias) v += g.bias[j];
  *c = from_f<TC>(v);
}

}  // namespace

void launch_gemm_fallback(const LtGemm& g, cudaStream_t s) {
  const dim3 grid((g.N + kTile - 1) / kTile, (g.M + kTile - 1) / kTile), block(kTile, kTile);
  dispatch_act(g.a_dtype, [&](auto ta) {
    dispatch_act(g.b_dtype, [&](auto tb) {
      dispatch_act(g.c_dtype, [&](auto tc) {
        gemm_fallback_kernel<decltype(ta), decltype(tb), decltype(tc)><<<grid, block, 0, s>>>(g);
        ESM2_CUDA_CHECK_LAUNCH();
      });
    });
  });
}

}  // namespace esm2::cuda
