// CPU throughput: (a) cblas_sgemm at the dominant GEMM shapes of the 8M preset on a 16K-token
// micro-batch, (b) one full forward_backward of the 8M preset on a 16K-token packed micro-batch of
// UniRef-like lengths. Reported as GFLOP/s (and tokens/s) so (b) can be compared with (a): the
// target is a training step at >= 50% of the sgemm rate.
//
//   ./build/cpu_step_bench [--benchmark_filter=Sgemm|Step]   (threads: ESM2_BENCH_THREADS, default all)
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cmath>
#include <cstdlib>
#include <random>

#include "backend/backend.h"
#include "data/tokenizer.h"
#include "model/esm2.h"

using namespace esm2;

namespace {

int bench_threads() {
  const char* s = std::getenv("ESM2_BENCH_THREADS");
  return s ? std::atoi(s) : 0;
}

constexpr int64_t kTokens = 16384;

// C[M,N] = op(A)·op(B) with the transposes the model uses: forward (x·Wᵀ), input grad (dy·W),
// weight grad (dyᵀ·x).
void BM_Sgemm(benchmark::State& st) {
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  const bool ta = st.range(3), tb = st.range(4);
  auto be = make_cpu_backend(bench_threads());
  std::vector<float> A(M * K, 0.01f), B(K * N, 0.02f), C(M * N);
  GemmArgs g;
  g.trans_a = ta, g.trans_b = tb, g.M = M, g.N = N, g.K = K;
  g.A = A.data(), g.B = B.data(), g.C = C.data();
  be->gemm(g);
  for (auto _ : st) {
    be->gemm(g);
    benchmark::DoNotOptimize(C.data());
  }
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
// 8M: d = 320, ffn = 1280, T = 16384
BENCHMARK(BM_Sgemm)
    ->ArgNames({"M", "N", "K", "tA", "tB"})
    ->Args({kTokens, 960, 320, 0, 1})    // qkv forward
    ->Args({kTokens, 1280, 320, 0, 1})   // fc forward
    ->Args({kTokens, 320, 1280, 0, 1})   // proj forward
    ->Args({kTokens, 320, 320, 0, 1})    // out-proj forward
    ->Args({kTokens, 320, 960, 0, 0})    // qkv input grad
    ->Args({960, 320, kTokens, 1, 0})    // qkv weight grad
    ->Args({1280, 320, kTokens, 1, 0})   // fc weight grad
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// A packed micro-batch of exactly kTokens tokens: UniRef50-like log-normal lengths (median ≈ 270
// residues), cropped to 1022 residues, 15% of residues selected (80% <mask>, 10% random, 10% kept).
MicroBatch realistic_batch(uint32_t seed, double* seq_eff) {
  std::mt19937 g(seed);
  std::lognormal_distribution<double> len(std::log(270.0), 0.7);
  std::uniform_real_distribution<double> u(0, 1);
  std::uniform_int_distribution<int> aa(kFirstAminoAcid, kFirstAminoAcid + kNumStandardAminoAcids - 1);
  MicroBatch mb;
  mb.cu_seqlens = {0};
  double sq = 0;
  while (mb.num_tokens() < kTokens) {
    int64_t n = std::clamp<int64_t>(static_cast<int64_t>(len(g)), 20, 1022) + 2;
    n = std::min(n, kTokens - mb.num_tokens());
    for (int64_t i = 0; i < n; ++i) {
      int32_t id = i == 0 ? kCls : (i == n - 1 ? kEos : aa(g)), label = kIgnoreLabel;
      if (i > 0 && i < n - 1 && u(g) < 0.15) {
        label = id;
        const double r = u(g);
        id = r < 0.8 ? kMask : (r < 0.9 ? aa(g) : id);
      }
      mb.input_ids.push_back(id);
      mb.labels.push_back(label);
    }
    mb.cu_seqlens.push_back(static_cast<int32_t>(mb.num_tokens()));
    mb.max_seqlen = std::max<int32_t>(mb.max_seqlen, static_cast<int32_t>(n));
    sq += static_cast<double>(n) * n;
  }
  mb.token_budget = kTokens;
  *seq_eff = sq / kTokens;
  return mb;
}

void BM_Step8M(benchmark::State& st) {
  auto be = make_cpu_backend(bench_threads());
  const ModelConfig cfg = model_preset("8M");
  Esm2Model m(cfg, *be);
  m.init_weights(1);
  double seq_eff = 0;
  const MicroBatch mb = realistic_batch(7, &seq_eff);
  m.zero_grads();
  m.forward_backward(mb, 1.0f / mb.num_labels());  // warm-up: sizes the activation arena
  for (auto _ : st) m.forward_backward(mb, 1.0f / mb.num_labels());
  const double flops = cfg.train_flops_per_token(seq_eff) * kTokens;
  st.counters["tokens/s"] = benchmark::Counter(kTokens, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["GFLOP/s"] =
      benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["sequences"] = static_cast<double>(mb.num_sequences());
  st.counters["act_MiB"] = static_cast<double>(m.activation_bytes()) / (1 << 20);
}
BENCHMARK(BM_Step8M)->Unit(benchmark::kSecond)->Iterations(3)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
