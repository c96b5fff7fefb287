// Varlen rotary attention forward + backward on the CUDA backend (bf16): TFLOP/s at head dim 64 (the
// 650M/3B shape) and the other ESM-2 head dims, on packed rows of equal-length sequences.
// FLOPs counted as FlashAttention does: forward 4·L²·D per (sequence, head), backward 2.5× that.
#include <benchmark/benchmark.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/backend.h"
#ifdef ESM2_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace {

void BM_CudaAttentionFwdBwd(benchmark::State& state) {
#ifndef ESM2_HAVE_CUDA
  state.SkipWithError("built without CUDA");
  return;
#else
  if (esm2::cuda_device_count() == 0) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const int D = static_cast<int>(state.range(0)), L = static_cast<int>(state.range(1));
  const int H = 1280 / D, S = 65536 / L;
  const int64_t T = static_cast<int64_t>(S) * L, C = static_cast<int64_t>(H) * D;
  auto be = esm2::make_cuda_backend(esm2::DType::BF16);
  std::vector<int32_t> cu(S + 1), ids(T, 5);
  for (int s = 0; s <= S; ++s) cu[s] = s * L;
  std::vector<float> inv(D / 2), qkv(T * 3 * C), dout(T * C);
  for (int i = 0; i < D / 2; ++i) inv[i] = 1.0f / std::pow(10000.0f, 2.0f * i / D);
  std::mt19937 g(1);
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (auto& x : qkv) x = n(g);
  for (auto& x : dout) x = n(g);
  auto* cu_d = static_cast<int32_t*>(be->alloc(cu.size() * 4));
  auto* ids_d = static_cast<int32_t*>(be->alloc(ids.size() * 4));
  auto* inv_d = static_cast<float*>(be->alloc(inv.size() * 4));
  be->copy_to_device(cu_d, cu.data(), cu.size() * 4);
  be->copy_to_device(ids_d, ids.data(), ids.size() * 4);
  be->copy_to_device(inv_d, inv.data(), inv.size() * 4);
  void* qkv_d = be->alloc(be->act_bytes(qkv.size()));
  void* dout_d = be->alloc(be->act_bytes(dout.size()));
  void* out_d = be->alloc(be->act_bytes(T * C));
  void* dqkv_d = be->alloc(be->act_bytes(qkv.size()));
  auto* lse_d = static_cast<float*>(be->alloc(H * T * 4));
  be->act_from_host_f32(qkv_d, qkv.data(), qkv.size());
  be->act_from_host_f32(dout_d, dout.data(), dout.size());
  esm2::AttentionShape a;
  a.T = T, a.S = S, a.H = H, a.D = D, a.max_seqlen = L, a.cu_seqlens = cu_d, a.ids = ids_d, a.inv_freq = inv_d;
  be->attention_forward(out_d, lse_d, qkv_d, a);  // warm-up
  be->attention_backward(dqkv_d, dout_d, qkv_d, out_d, lse_d, a);
  be->synchronize();
  for (auto _ : state) {
    be->attention_forward(out_d, lse_d, qkv_d, a);
    be->attention_backward(dqkv_d, dout_d, qkv_d, out_d, lse_d, a);
    be->synchronize();
  }
  const double flops = 3.5 * 4.0 * S * H * static_cast<double>(L) * L * D;
  state.counters["TFLOPs"] = benchmark::Counter(flops * 1e-12, benchmark::Counter::kIsIterationInvariantRate);
  for (void* p : {static_cast<void*>(cu_d), static_cast<void*>(ids_d), static_cast<void*>(inv_d), qkv_d, dout_d,
                  out_d, dqkv_d, static_cast<void*>(lse_d)})
    be->free(p);
#endif
}
BENCHMARK(BM_CudaAttentionFwdBwd)
    ->Args({64, 512})
    ->Args({64, 1024})
    ->Args({16, 512})
    ->Args({32, 512})
    ->Args({128, 512})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
BENCHMARK_MAIN();
