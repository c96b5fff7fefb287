// Options shared by the inference subcommands (eval, embed, score): which checkpoint, where it runs.
#pragma once
#include <CLI/CLI.hpp>
#include <filesystem>
#include <string>

#include "apps/cli_checks.h"
#include "apps/enum_option.h"
#include "backend/backend_factory.h"
#include "infer/inference.h"

namespace esm2::apps {

struct InferOptions {
  std::filesystem::path checkpoint;
  BackendKind backend = BackendKind::Auto;
  Precision precision = Precision::Auto;
  int threads = 0;
  int64_t micro_batch_tokens = 16384;
  bool force = false;  // replace existing outputs

  void add_to(CLI::App& app) {
    app.add_option("--checkpoint", checkpoint,
                   "Model directory: an esm2.cpp training checkpoint (step-*) or any Hugging Face ESM-2 directory")
        ->required();
    app.add_option("--micro-batch-tokens", micro_batch_tokens,
                   "Token budget of one packed forward pass (a longer sequence gets a pass of its own)")
        ->check(at_least(1))->capture_default_str();
    add_enum_option(app, "--backend", backend, kBackendKindNames,
                    "auto (CUDA if built and a GPU is present, else CPU), cpu or cuda");
    add_enum_option(app, "--precision", precision, kPrecisionNames, "auto, 32 or bf16-mixed (CUDA only)");
    app.add_option("--threads", threads, "CPU threads (0: all cores)")->check(esm2::apps::in_range(0, esm2::apps::kMaxThreads))->capture_default_str();
    add_force_flag(app, force);
  }
  InferenceModel load() const { return load_inference_model(checkpoint, backend, precision, threads); }
};

}  // namespace esm2::apps
