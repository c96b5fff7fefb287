// Varlen rotary attention forward / backward on the CUDA backend (bf16), every attention route in one
// process: the mma.sync kernels, cuDNN's fused attention with its deterministic backward, and cuDNN with
// the atomic-dQ backward (ESM2_ATTENTION / ESM2_ATTENTION_NONDETERMINISTIC, read when a backend is made).
// Batches of 65,536 tokens: fixed-length rows (512, 1024) and the real length distribution of the bundled
// corpus (data/swissprot-sample/train.fasta.gz: residues + <cls>/<eos>, cropped to 1,024, shuffled with a
// fixed seed and packed in order). Hidden 1,280 (H = 1280 / D) at head dims 16, 32, 64, 128 (and 40).
//
// FLOPs are counted as FlashAttention does (non-causal): forward 4·L²·D per (sequence, head) — Q·Kᵀ and
// P·V, 2 FLOPs a multiply-add — summed over the batch's sequences with their own L; backward 2.5× the
// forward (five L²·D products against two); fwd+bwd 3.5×. Times: mean of 20 (--iters) back-to-back calls after 3
// warm-up calls, device synchronised before and after. Also printed: the relative L2 difference of each
// route's output and gradients from the mma kernels' (a sanity check, the tests are the oracle), and
// whether two backward calls on the same inputs gave the same bits.
// Usage: cuda_attention_bench [--quick] [--dims=16,64] [--iters=N]   (ESM2_ATTN_BENCH_FASTA: corpus file)
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "data/fasta.h"
#include "data/sequence_table.h"
#ifdef ESM2_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace {

#ifdef ESM2_HAVE_CUDA
constexpr int64_t kTokens = 65536;

struct Batch {
  std::string name;
  std::vector<int32_t> cu;
  int max_len = 0;
};

Batch fixed(int L) {
  Batch b{"fixed " + std::to_string(L), {0}, L};
  while (b.cu.back() + L <= kTokens) b.cu.push_back(b.cu.back() + L);
  return b;
}

Batch real(const std::string& fasta) {
  esm2::SequenceTable t;
  esm2::read_fasta(fasta, t);
  std::vector<int> lens;
  for (size_t i = 0; i < t.size(); ++i) lens.push_back(static_cast<int>(std::min<uint64_t>(t.length(i) + 2, 1024)));
  std::mt19937 g(1);
  std::shuffle(lens.begin(), lens.end(), g);
  Batch b{"real", {0}, 0};
  for (int L : lens) {
    if (b.cu.back() + L > kTokens) break;
    b.cu.push_back(b.cu.back() + L);
    b.max_len = std::max(b.max_len, L);
  }
  return b;
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& r) {
  double n = 0, d = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    n += (a[i] - r[i]) * static_cast<double>(a[i] - r[i]);
    d += r[i] * static_cast<double>(r[i]);
  }
  return std::sqrt(n / std::max(d, 1e-30));
}

struct Route {
  const char* name;
  const char* attention;
  const char* nondet;
};

// One backend per route: the route is read from the environment when the backend is made.
std::unique_ptr<esm2::Backend> make(const Route& r) {
  setenv("ESM2_ATTENTION", r.attention, 1);
  setenv("ESM2_ATTENTION_NONDETERMINISTIC", r.nondet, 1);
  auto be = esm2::make_cuda_backend(esm2::DType::BF16);
  unsetenv("ESM2_ATTENTION");
  unsetenv("ESM2_ATTENTION_NONDETERMINISTIC");
  return be;
}

int run(bool quick, std::vector<int> dims, int iters) {
  if (esm2::cuda_device_count() == 0) {
    std::printf("no CUDA device: skipped\n");
    return 0;
  }
  const char* env = std::getenv("ESM2_ATTN_BENCH_FASTA");
  const std::string fasta = env ? env : std::string(ESM2_SOURCE_DIR) + "/data/swissprot-sample/train.fasta.gz";
  std::vector<Batch> batches = {real(fasta), fixed(1024), fixed(512)};
  {
    const Batch& r = batches[0];
    double l2 = 0;
    for (size_t s = 0; s + 1 < r.cu.size(); ++s) l2 += std::pow(r.cu[s + 1] - r.cu[s], 2.0);
    std::printf("real lengths: %zu sequences, %d tokens, longest %d, mean L %.1f, seq_eff (sum L^2 / sum L) %.1f\n",
                r.cu.size() - 1, r.cu.back(), r.max_len, r.cu.back() / double(r.cu.size() - 1), l2 / r.cu.back());
  }
  const Route routes[] = {{"mma", "mma", "0"}, {"cudnn", "cudnn", "0"}, {"cudnn-nondet", "cudnn", "1"}};
  std::map<std::string, std::unique_ptr<esm2::Backend>> bes;
  for (const Route& r : routes) bes[r.name] = make(r);
  if (dims.empty()) dims = quick ? std::vector<int>{64} : std::vector<int>{16, 32, 64, 128, 40};
  if (quick) iters = 5;
  std::printf("%-4s %-10s %-13s %9s %8s %9s %8s %10s %8s %9s %9s %5s\n", "D", "lengths", "route", "fwd ms", "fwd TF",
              "bwd ms", "bwd TF", "f+b ms", "f+b TF", "out err", "dqkv err", "bits");
  for (int D : dims) {
    for (const Batch& b : batches) {
      const int H = 1280 / D, S = static_cast<int>(b.cu.size()) - 1;
      const int64_t T = b.cu.back(), C = static_cast<int64_t>(H) * D;
      double fwd_flops = 0;
      for (int s = 0; s < S; ++s) fwd_flops += 4.0 * H * D * std::pow(b.cu[s + 1] - b.cu[s], 2.0);
      std::vector<float> inv(D / 2), qkv(T * 3 * C), dout(T * C);
      for (int i = 0; i < D / 2; ++i) inv[i] = 1.0f / std::pow(10000.0f, 2.0f * i / D);
      std::mt19937 g(7 + D);
      std::normal_distribution<float> n(0.0f, 1.0f);
      for (auto& x : qkv) x = n(g);
      for (auto& x : dout) x = n(g);
      std::vector<float> ref_out, ref_dqkv;
      for (const Route& r : routes) try {
        esm2::Backend& be = *bes[r.name];
        auto* cu_d = static_cast<int32_t*>(be.alloc(b.cu.size() * 4));
        auto* inv_d = static_cast<float*>(be.alloc(inv.size() * 4));
        be.copy_to_device(cu_d, b.cu.data(), b.cu.size() * 4);
        be.copy_to_device(inv_d, inv.data(), inv.size() * 4);
        void* qkv_d = be.alloc(be.act_bytes(qkv.size()));
        void* dout_d = be.alloc(be.act_bytes(dout.size()));
        void* out_d = be.alloc(be.act_bytes(T * C));
        void* dqkv_d = be.alloc(be.act_bytes(qkv.size()));
        auto* lse_d = static_cast<float*>(be.alloc(H * T * 4));
        be.act_from_host_f32(qkv_d, qkv.data(), qkv.size());
        be.act_from_host_f32(dout_d, dout.data(), dout.size());
        esm2::AttentionShape a;
        a.T = T, a.S = S, a.H = H, a.D = D, a.max_seqlen = b.max_len, a.cu_seqlens = cu_d, a.inv_freq = inv_d;
        const int64_t calls0 = esm2::cuda_backend_cudnn_attention_calls(be);
        auto time = [&](auto&& f) {
          for (int i = 0; i < 3; ++i) f();
          be.synchronize();
          const auto t0 = std::chrono::steady_clock::now();
          for (int i = 0; i < iters; ++i) f();
          be.synchronize();
          return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
        };
        const double tf = time([&] { be.attention_forward(out_d, lse_d, qkv_d, a); });
        const double tb = time([&] { be.attention_backward(dqkv_d, dout_d, qkv_d, out_d, lse_d, a); });
        const double tfb = time([&] {
          be.attention_forward(out_d, lse_d, qkv_d, a);
          be.attention_backward(dqkv_d, dout_d, qkv_d, out_d, lse_d, a);
        });
        std::vector<float> out(T * C), d1(qkv.size()), d2(qkv.size());
        be.act_to_host_f32(out.data(), out_d, out.size());
        be.act_to_host_f32(d1.data(), dqkv_d, d1.size());
        be.attention_backward(dqkv_d, dout_d, qkv_d, out_d, lse_d, a);
        be.act_to_host_f32(d2.data(), dqkv_d, d2.size());
        const bool same = std::memcmp(d1.data(), d2.data(), d1.size() * 4) == 0;
        const bool ran_cudnn = esm2::cuda_backend_cudnn_attention_calls(be) > calls0;
        const std::string name = std::string(r.name) + (std::strcmp(r.attention, "cudnn") == 0 && !ran_cudnn ? "(mma!)" : "");
        if (ref_out.empty()) ref_out = out, ref_dqkv = d1;
        std::printf("%-4d %-10s %-13s %9.3f %8.1f %9.3f %8.1f %10.3f %8.1f %9.2e %9.2e %5s\n", D, b.name.c_str(),
                    name.c_str(), tf * 1e3, fwd_flops / tf * 1e-12, tb * 1e3, 2.5 * fwd_flops / tb * 1e-12, tfb * 1e3,
                    3.5 * fwd_flops / tfb * 1e-12, rel_l2(out, ref_out), rel_l2(d1, ref_dqkv), same ? "same" : "DIFF");
        std::fflush(stdout);
        for (void* p : {static_cast<void*>(cu_d), static_cast<void*>(inv_d), qkv_d, dout_d, out_d, dqkv_d,
                        static_cast<void*>(lse_d)})
          be.free(p);
      } catch (const std::exception& e) {
        std::printf("%-4d %-10s %-13s failed: %s\n", D, b.name.c_str(), r.name, e.what());
      }
      if (quick) break;
    }
  }
  return 0;
}
#endif

}  // namespace

int main(int argc, char** argv) {
#ifdef ESM2_HAVE_CUDA
  try {
    bool quick = false;
    std::vector<int> dims;
    int iters = 20;
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--quick") {
        quick = true;
      } else if (arg.rfind("--dims=", 0) == 0) {
        for (size_t p = 7; p < arg.size();) {
          const size_t q = arg.find(',', p);
          dims.push_back(std::stoi(arg.substr(p, q - p)));
          p = q == std::string::npos ? arg.size() : q + 1;
        }
      } else if (arg.rfind("--iters=", 0) == 0) {
        iters = std::stoi(arg.substr(8));
      } else {
        std::fprintf(stderr, "cuda_attention_bench: unknown argument %s (--quick, --dims=16,64, --iters=N)\n",
                     argv[i]);
        return 1;
      }
    }
    return run(quick, dims, iters);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cuda_attention_bench: %s\n", e.what());
    return 1;
  }
#else
  (void)argc, (void)argv;
  std::printf("built without CUDA: skipped\n");
  return 0;
#endif
}
