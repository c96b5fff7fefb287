// `esm2 bench`: throughput of full training steps (forward + backward + AdamW) on real data, in
// REAL tokens/s (no padding counted; performance.md), achieved FLOP/s and, on CPU, the ratio to the
// sgemm rate OpenBLAS reaches on the model's dominant GEMM shape on the same machine.
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "apps/cli_checks.h"
#include "apps/command.h"
#include "apps/enum_option.h"
#include "backend/backend.h"
#include "backend/backend_factory.h"
#include "backend/timing_backend.h"
#include "core/atomic_dir.h"
#include "core/error.h"
#include "data/corpus.h"
#include "data/train_data.h"
#include "model/esm2.h"
#include "train/memory_plan.h"
#include "optim/optimizer.h"

#include <cblas.h>

namespace {

using Clock = std::chrono::steady_clock;

struct BenchArgs {
  std::string data, preset = "8M", json_out;
  esm2::BackendKind backend = esm2::BackendKind::Auto;
  esm2::Precision precision = esm2::Precision::Auto;
  esm2::Recompute recompute = esm2::Recompute::Selective;
  esm2::MaskStrategy mask_strategy = esm2::MaskStrategy::AllTokens;
  int64_t micro_batch_tokens = 16384;
  int max_seq_length = 1024, steps = 5, warmup = 1, threads = 0;
  double peak_tflops = 0;
  bool profile = false, force = false;
};

// Σ over sequences of L² / Σ L: the attention length each token sees on average (performance.md).
double attention_seq_eff(const esm2::StepBatch& b) {
  double sq = 0, n = 0;
  for (const auto& mb : b.micro)
    for (size_t s = 0; s + 1 < mb.cu_seqlens.size(); ++s) {
      const double L = mb.cu_seqlens[s + 1] - mb.cu_seqlens[s];
      sq += L * L;
      n += L;
    }
  return n > 0 ? sq / n : 0;
}

// sgemm GFLOP/s for C[M,N] = A[M,K]·B[K,N]ᵀ, the shape of the FFN-in projection over a micro-batch.
double sgemm_gflops(int64_t M, int64_t N, int64_t K) {
  std::vector<float> A(M * K), B(N * K), C(M * N);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& x : A) x = u(rng);
  for (auto& x : B) x = u(rng);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.f, A.data(), K, B.data(), K, 0.f, C.data(), N);
  const int reps = 3;
  const auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.f, A.data(), K, B.data(), K, 0.f, C.data(), N);
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  return 2.0 * M * N * K * reps / s / 1e9;
}

esm2::apps::RunFn setup_bench(CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  app.add_option("--data", a->data, "Corpus directory (made by `esm2 prepare`) whose length distribution is used")->required();
  app.add_option("--preset", a->preset, "Model preset")->capture_default_str();
  app.add_option("--micro-batch-tokens", a->micro_batch_tokens, "Packed token budget per step")
      ->check(esm2::apps::at_least(1))->capture_default_str();
  app.add_option("--max-seq-length", a->max_seq_length, "Longest sequence (tokens)")
      ->check(esm2::apps::at_least(3))->capture_default_str();
  app.add_option("--steps", a->steps, "Timed steps")->check(esm2::apps::at_least(1))->capture_default_str();
  app.add_option("--warmup", a->warmup, "Untimed warm-up steps")->check(esm2::apps::at_least(0))->capture_default_str();
  esm2::apps::add_enum_option(app, "--backend", a->backend, esm2::kBackendKindNames, "auto, cpu or cuda");
  esm2::apps::add_enum_option(app, "--precision", a->precision, esm2::kPrecisionNames, "auto, 32, bf16-mixed, fp8-mixed (Hopper GPU)");
  app.add_option("--threads", a->threads, "CPU threads (0: all cores)")->check(esm2::apps::in_range(0, esm2::apps::kMaxThreads))->capture_default_str();
  app.add_option("--peak-tflops", a->peak_tflops, "Peak dense TFLOP/s of the device for MFU (GPU default 989, H100 bf16)")
      ->check(esm2::apps::positive());
  esm2::apps::add_enum_option(app, "--recompute", a->recompute, esm2::kRecomputeNames,
                              "Activations recomputed in the backward: none, selective or full");
  esm2::apps::add_enum_option(app, "--random-mask-strategy", a->mask_strategy, esm2::kMaskStrategyNames,
                              "As in `esm2 train`: all_tokens (a random replacement can be <pad>, whose key the "
                              "attention masks) or amino_acids_only");
  app.add_option("--json", a->json_out, "Write the results as JSON to this file");
  esm2::apps::add_force_flag(app, a->force);
  app.add_flag("--profile", a->profile,
               "Also time every backend op of the timed steps (each op synchronised: the shares are meaningful, the "
               "profiled step is slower) and print the table; throughput is measured on separate unprofiled steps");
  // backend_owner outlives run(): the out-of-memory message below asks it for its workspaces.
  auto run = [a](std::unique_ptr<esm2::Backend>& backend_owner) -> int {
    ESM2_CHECK(a->steps >= 1, "bench: --steps must be >= 1");
    esm2::apps::check_output_free(a->json_out, a->force, "--json");
    backend_owner = esm2::make_backend(a->backend, a->precision, a->threads);
    // The model always talks to the timing wrapper; it measures only while enabled (the profile pass).
    esm2::TimingBackend timing(*backend_owner);
    timing.set_enabled(false);
    esm2::Backend* backend = &timing;
    esm2::ModelConfig mc = esm2::model_preset(a->preset);
    const esm2::Recompute recompute = a->recompute;
    const esm2::MemoryPlan plan = esm2::plan_memory(mc, a->micro_batch_tokens, recompute, backend->activation_dtype(),
                                                    esm2::workspace_query(*backend_owner));
    fmt::print("{}", esm2::format_memory_plan(plan));
    std::fflush(stdout);
    auto corpus = std::make_shared<const esm2::Corpus>(esm2::Corpus::open(a->data));
    esm2::DataConfig dc;
    dc.max_seq_length = a->max_seq_length;
    dc.micro_batch_tokens = a->micro_batch_tokens;
    dc.mask_strategy = a->mask_strategy;
    esm2::TrainData data(corpus, dc);
    esm2::Esm2Model model(mc, *backend);
    model.set_recompute(recompute);
    model.init_weights(1);
    esm2::AdamW optim(model, esm2::OptimizerConfig{});
    esm2::DataPosition pos;
    double tokens = 0, seconds = 0, flops = 0;
    size_t peak_device = 0;
    const int profiled = a->profile ? a->steps : 0;
    double profiled_tokens = 0;
    for (int i = 0; i < a->warmup + a->steps + profiled; ++i) {
      const bool profiling = i >= a->warmup + a->steps;
      timing.set_enabled(profiling);
      backend->synchronize();
      const auto t0 = Clock::now();  // batch building (sampling, masking, packing) is part of a step
      esm2::StepBatch b = data.next_step(pos, 0, 1);
      model.zero_grads();
      const float scale = 1.0f / static_cast<float>(b.global_num_labels);
      for (const auto& mb : b.micro) {
        model.forward_backward(mb, scale);
        peak_device = std::max(peak_device, backend->device_bytes_in_use());
      }
      optim.step(1e-4);
      backend->synchronize();
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      if (profiling) profiled_tokens += static_cast<double>(b.global_num_tokens);
      if (i >= a->warmup && !profiling) {
        tokens += static_cast<double>(b.global_num_tokens);
        seconds += s;
        flops += static_cast<double>(b.global_num_tokens) * mc.train_flops_per_token(attention_seq_eff(b));
      }
    }
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    nlohmann::json out = {{"preset", a->preset},
                          {"backend", backend->name()},
                          {"precision", esm2::precision_label(*backend)},
                          {"parameters", mc.num_parameters()},
                          {"micro_batch_tokens", a->micro_batch_tokens},
                          {"recompute", esm2::recompute_name(recompute)},
                          {"random_mask_strategy", esm2::enum_name(esm2::kMaskStrategyNames, a->mask_strategy)},
                          {"activation_mib", static_cast<double>(model.activation_bytes()) / 1048576.0},
                          {"plan_total_mib", static_cast<double>(plan.total()) / 1048576.0},
                          {"steps", a->steps},
                          {"real_tokens_per_s", tokens / seconds},
                          {"step_seconds", seconds / a->steps},
                          {"achieved_tflops", flops / seconds / 1e12},
                          {"peak_host_rss_mib", static_cast<double>(ru.ru_maxrss) / 1024.0}};
    if (peak_device > 0) out["peak_device_memory_mib"] = static_cast<double>(peak_device) / 1048576.0;
    std::string line = fmt::format("bench {} on {} ({}, --recompute {}): {:.0f} real tokens/s, {:.3f} s/step, "
                                   "{:.1f} GFLOP/s achieved",
                                   a->preset, backend->name(), esm2::precision_label(*backend),
                                   esm2::recompute_name(recompute), tokens / seconds, seconds / a->steps,
                                   flops / seconds / 1e9);
    const esm2::DeviceMemory dm = backend->device_memory();
    if (dm.total > 0) {
      // the most the backend itself had allocated, comparable with the plan (the CUDA context is outside both)
      out["peak_backend_held_mib"] = static_cast<double>(dm.peak_held) / 1048576.0;
      out["device_total_mib"] = static_cast<double>(dm.total) / 1048576.0;
      line += fmt::format("; backend peak {:.0f} MiB (plan {:.0f} MiB)", dm.peak_held / 1048576.0,
                          plan.total() / 1048576.0);
    }
    if (backend->name() == "cpu") {
      const double g = sgemm_gflops(a->micro_batch_tokens, mc.ffn_hidden_size, mc.hidden_size);
      out["sgemm_gflops_dominant_shape"] = g;
      out["fraction_of_sgemm"] = flops / seconds / 1e9 / g;
      line += fmt::format("; sgemm {}x{}x{}: {:.1f} GFLOP/s → {:.0f}% of sgemm", a->micro_batch_tokens,
                          mc.ffn_hidden_size, mc.hidden_size, g, 100.0 * flops / seconds / 1e9 / g);
    }
    if (a->peak_tflops > 0) {
      out["mfu"] = flops / seconds / 1e12 / a->peak_tflops;
      line += fmt::format("; MFU {:.1f}%", 100.0 * flops / seconds / 1e12 / a->peak_tflops);
    }
    if (peak_device > 0) line += fmt::format("; device memory {:.0f} MiB", static_cast<double>(peak_device) / 1048576.0);
    fmt::print("{}\n", line);
    if (a->profile) {
      const double total = timing.total_seconds();
      fmt::print("profile of {} step(s), {:.0f} real tokens; each op synchronised (sum {:.3f} s/step):\n", profiled,
                 profiled_tokens, total / profiled);
      fmt::print("  {:>6} {:>9} {:>8} {:>9}  {}\n", "share", "ms/step", "calls", "TFLOP/s", "op");
      nlohmann::json prof = nlohmann::json::array();
      for (const auto& e : timing.report()) {
        const double tf = e.flops > 0 ? e.flops / e.seconds / 1e12 : 0;
        fmt::print("  {:>5.1f}% {:>9.3f} {:>8.1f} {:>9}  {}\n", 100.0 * e.seconds / total, 1e3 * e.seconds / profiled,
                   double(e.calls) / profiled, tf > 0 ? fmt::format("{:.2f}", tf) : std::string("-"), e.op);
        prof.push_back({{"op", e.op}, {"seconds_per_step", e.seconds / profiled}, {"calls_per_step", double(e.calls) / profiled},
                        {"share", e.seconds / total}, {"tflops", tf}});
      }
      out["profile"] = prof;
      out["profile_seconds_per_step"] = total / profiled;
    }
    if (!a->json_out.empty()) esm2::write_file_atomically(a->json_out, out.dump(2) + "\n");
    return 0;
  };
  // A device allocation failure becomes one line saying which micro-batch fits (memory_plan.h).
  return [a, run]() -> int {
    std::unique_ptr<esm2::Backend> backend;
    try {
      return run(backend);
    } catch (const esm2::OutOfDeviceMemory& e) {
      const esm2::WorkspaceQuery none = [](const esm2::WorkspaceShape&) { return size_t{0}; };
      throw esm2::Error(esm2::out_of_memory_message(e, esm2::model_preset(a->preset), a->micro_batch_tokens,
                                                    a->recompute, backend ? esm2::workspace_query(*backend) : none));
    }
  };
}

}  // namespace

ESM2_COMMAND(bench, "bench", "Measure training throughput (real tokens/s, FLOP/s) on a corpus's length distribution", setup_bench);
