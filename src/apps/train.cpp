// `esm2 train`: the reference's train_esm2 flags (bionemo-semantics.md), plus packing, presets and a
// config file. Every flag maps to one TrainConfig field (src/train/train_config.h).
#include <chrono>
#include <cmath>
#include <ctime>
#include <limits>
#include <nlohmann/json.hpp>

#include "apps/cli_checks.h"
#include "apps/command.h"
#include "apps/enum_option.h"
#include "backend/backend_factory.h"
#include "core/atomic_dir.h"
#include "core/error.h"
#include "comm/communicator.h"
#include "comm/local_launcher.h"
#include "io/hf_config.h"
#include "train/checkpoint.h"
#include "train/memory_plan.h"
#include "train/recipe.h"
#include "train/report.h"
#include "train/trainer.h"
#ifdef ESM2_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif
#ifdef ESM2_HAVE_NCCL
#include "comm/nccl/nccl_communicator.h"
#endif

namespace {

using esm2::TrainConfig;
namespace fs = std::filesystem;

// --gelu: ModelConfig::gelu_tanh.
constexpr esm2::EnumName<bool> kGeluNames[] = {{"erf", false}, {"tanh", true}};

struct TrainArgs {
  TrainConfig cfg;
  std::string preset = "demo";
  int num_layers = 0, hidden_size = 0, num_attention_heads = 0, ffn_hidden_size = 0;
  bool gelu_tanh = false, grad_reduce_in_fp32 = false;
  esm2::RecipeKind recipe = esm2::RecipeKind::Esm2Paper;
  double lr = 4e-4, min_lr = -1;
  int64_t warmup_steps = -1, scheduler_num_steps = -1;  // -1: see the flags' help
  bool tensorboard = true, no_report = false;
  bool save_best = true, save_last = true;
  int gpus = 0;       // --gpus / --num-gpus: GPUs (ranks) per node
  int num_nodes = 1;  // --num-nodes
};

// `esm2 train --gpus N`: this process becomes the launcher of N workers that re-run the same command
// line without --gpus, joined by NCCL through an id made here (docs/dist.md).
int launch_gpu_workers(const TrainArgs& a) {
#ifdef ESM2_HAVE_NCCL
  ESM2_CHECK(a.cfg.backend != esm2::BackendKind::Cpu, "train: --gpus {} needs the cuda backend (got --backend cpu); multi-process CPU "
             "training runs under mpirun/srun", a.gpus);
  const int visible = esm2::cuda_device_count();
  ESM2_CHECK(a.gpus <= visible, "train: --gpus {}: only {} GPU(s) visible on this node", a.gpus, visible);
  esm2::WorkerLaunch l;
  l.program = esm2::own_executable();
  l.argv = esm2::without_option(esm2::without_option(esm2::own_command_line(), "--gpus"), "--num-gpus");
  l.num_workers = a.gpus;
  // Made here, so this process runs NCCL's bootstrap root while the workers join.
  l.extra_env = {"ESM2_NCCL_ID=" + esm2::nccl_unique_id_hex()};
  return esm2::run_workers(l).exit_code;
#else
  esm2::fail("train: --gpus {}: this build has no NCCL (multi-GPU training needs the CUDA backend and libnccl-dev at "
             "configure time); CPU ranks train under mpirun/srun",
             a.gpus);
#endif
}

// The checkpoint whose weights the run starts from, in the trainer's order of precedence (a resumed
// run's latest checkpoint, else --restore-from-checkpoint-path, else --init-from-hf); empty if none.
fs::path starting_checkpoint(const TrainConfig& c) {
  if (c.resume_if_exists)
    if (auto latest = esm2::find_latest_checkpoint(fs::path(c.result_dir) / c.experiment_name / "checkpoints"))
      return *latest;
  if (!c.restore_from_checkpoint_path.empty()) return c.restore_from_checkpoint_path;
  return c.init_from;
}

// The model shape. Weights from a checkpoint fix it: its config.json decides (layers, sizes and the
// numerics options: GELU form, eps, rotary base, token dropout), so fine-tuning a published model
// needs no shape flags. A shape flag or --preset given explicitly must then agree with it; a
// conflict is an error naming both rather than a silently ignored flag. Without a checkpoint the
// preset and its overrides decide.
void model_config(const TrainArgs& a, const CLI::App& app, TrainConfig& cfg) {
  const fs::path from = starting_checkpoint(cfg);
  if (from.empty()) {
    cfg.model = esm2::model_preset(a.preset);
    if (a.num_layers) cfg.model.num_layers = a.num_layers;
    if (a.hidden_size) cfg.model.hidden_size = a.hidden_size;
    if (a.num_attention_heads) cfg.model.num_attention_heads = a.num_attention_heads;
    if (a.ffn_hidden_size) cfg.model.ffn_hidden_size = a.ffn_hidden_size;
    cfg.model.gelu_tanh = a.gelu_tanh;
    return;
  }
  ESM2_CHECK(fs::is_directory(from), "{}: checkpoint directory not found", from.string());
  cfg.model = esm2::read_hf_config(from / "config.json");
  const esm2::ModelConfig& m = cfg.model;
  auto agree = [&](const char* flag, int given, int have) {
    ESM2_CHECK(app.count(flag) == 0 || given == have,
               "train: {} {} conflicts with the checkpoint {}, whose model shape has {} {}; leave the flag out to use "
               "the checkpoint's shape",
               flag, given, from.string(), flag, have);
  };
  agree("--num-layers", a.num_layers, m.num_layers);
  agree("--hidden-size", a.hidden_size, m.hidden_size);
  agree("--num-attention-heads", a.num_attention_heads, m.num_attention_heads);
  agree("--ffn-hidden-size", a.ffn_hidden_size, m.ffn_hidden_size);
  if (app.count("--preset")) {
    const esm2::ModelConfig p = esm2::model_preset(a.preset);
    // Flags given next to the preset override it, as without a checkpoint.
    const int layers = a.num_layers ? a.num_layers : p.num_layers, hidden = a.hidden_size ? a.hidden_size : p.hidden_size;
    const int heads = a.num_attention_heads ? a.num_attention_heads : p.num_attention_heads;
    const int ffn = a.ffn_hidden_size ? a.ffn_hidden_size : p.ffn_hidden_size;
    ESM2_CHECK(layers == m.num_layers && hidden == m.hidden_size && heads == m.num_attention_heads && ffn == m.ffn_hidden_size,
               "train: --preset {} (layers {}, hidden {}, heads {}, ffn {}) conflicts with the checkpoint {} "
               "(layers {}, hidden {}, heads {}, ffn {}); leave --preset out to use the checkpoint's shape",
               a.preset, layers, hidden, heads, ffn, from.string(), m.num_layers, m.hidden_size, m.num_attention_heads,
               m.ffn_hidden_size);
  }
  ESM2_CHECK(app.count("--gelu") == 0 || a.gelu_tanh == m.gelu_tanh,
             "train: --gelu {} conflicts with the checkpoint {} (gelu {})", esm2::enum_name(kGeluNames, a.gelu_tanh),
             from.string(), esm2::enum_name(kGeluNames, m.gelu_tanh));
}

// The recipe's value for every optimisation and batch setting that no flag (or config-file key) gave,
// then the schedule from the lengths. --time-budget decides the length itself: --num-steps only caps
// it, and a schedule length of its own would contradict it (--max-time: validate_config).
void apply_recipe(const TrainArgs& a, const CLI::App& app, TrainConfig& cfg) {
  const auto unset = [&](const char* flag) { return app.count(flag) == 0; };
  // The row: --preset's, or (no --preset: the model comes from a checkpoint or the default) the preset
  // whose shape the model has, so that a resumed run without --preset keeps its recipe.
  const std::string preset = unset("--preset") ? esm2::preset_of_model(cfg.model, a.preset) : a.preset;
  const esm2::Recipe r = esm2::training_recipe(unset("--recipe") ? esm2::default_recipe(preset) : a.recipe, preset);
  cfg.recipe_label = r.label;
  const double lr = unset("--lr") ? r.lr : a.lr;
  cfg.schedule.max_lr = lr;
  cfg.schedule.min_lr = a.min_lr >= 0 ? a.min_lr : r.min_lr_ratio * lr;
  if (unset("--lr-schedule")) cfg.schedule.kind = r.schedule;
  if (unset("--lr-decay-fraction")) cfg.schedule.decay_fraction = r.decay_fraction;
  if (unset("--adam-beta1")) cfg.optim.beta1 = r.optim.beta1;
  if (unset("--adam-beta2")) cfg.optim.beta2 = r.optim.beta2;
  if (unset("--adam-eps")) cfg.optim.eps = r.optim.eps;
  if (unset("--weight-decay")) cfg.optim.weight_decay = r.optim.weight_decay;
  if (unset("--clip-grad")) cfg.optim.clip_grad = r.optim.clip_grad;
  esm2::DataConfig& d = cfg.data;
  if (unset("--micro-batch-tokens") && unset("--micro-batch-size") && unset("--accumulate-grad-batches")) {
    d.micro_batch_tokens = r.micro_batch_tokens;
    d.accumulate_grad_batches = r.accumulate_grad_batches;
  } else if (d.micro_batch_size == 0 && d.micro_batch_tokens == 0) {
    d.micro_batch_tokens = 16384;
  }
  if (cfg.time_budget_s > 0) {
    ESM2_CHECK(a.scheduler_num_steps <= 0, "train: --scheduler-num-steps conflicts with --time-budget, which sets the "
               "schedule's length from the measured throughput");
    if (unset("--num-steps")) cfg.num_steps = std::numeric_limits<int64_t>::max();
    if (a.warmup_steps >= 0) cfg.schedule.warmup_steps = a.warmup_steps;
    else cfg.warmup_rule = r.warmup;
    return;
  }
  cfg.schedule.total_steps = a.scheduler_num_steps > 0 ? a.scheduler_num_steps : cfg.num_steps;
  // The reference's 2000 warmup steps would keep a short run (the default 1000 steps) below its peak
  // learning rate throughout, so the recipes' warm-up is a share of the schedule.
  cfg.schedule.warmup_steps = a.warmup_steps >= 0 ? a.warmup_steps : r.warmup.steps(cfg.schedule.total_steps);
}

// A prepared corpus as the report describes it; counts from its manifest (left out when unreadable:
// opening the corpus reports that properly).
nlohmann::json dataset_info(const std::string& role, const fs::path& dir) {
  nlohmann::json d = {{"role", role}, {"path", dir.string()}};
  std::error_code ec;
  int64_t bytes = 0;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_regular_file(ec)) bytes += static_cast<int64_t>(e.file_size(ec));
  d["bytes"] = bytes;
  try {
    const auto m = nlohmann::json::parse(esm2::read_file(dir / "manifest.json"));
    for (const char* k : {"num_sequences", "num_clusters", "num_residues"})
      if (m.contains(k) && m[k].is_number_integer()) d[std::string(k).substr(4)] = m[k];
  } catch (const std::exception&) {
  }
  return d;
}

// Everything the report's "Run" table shows that only the command line knows.
nlohmann::json run_info(const CLI::App& app, const TrainConfig& cfg) {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char started[32];
  std::strftime(started, sizeof started, "%Y-%m-%dT%H:%M:%SZ", &tm);
  std::string command;
  for (const auto& arg : esm2::own_command_line()) command += (command.empty() ? "" : " ") + arg;
  nlohmann::json info = {
      {"started_utc", started},
      {"git_revision", ESM2_GIT_REVISION},
      {"command", command},
      {"model", fmt::format("{} layers, hidden {}, {} heads, FFN {}, {} parameters", cfg.model.num_layers,
                            cfg.model.hidden_size, cfg.model.num_attention_heads, cfg.model.ffn_hidden_size,
                            esm2::with_thousands(cfg.model.num_parameters()))},
      // The flags given (with a config file's): CLI11's listing of defaults prints on/off pairs and per-preset
      // defaults (the recipe) as their static default, which is not what the run used; the banner and the
      // report's other rows give the resolved values.
      {"flags", app.config_to_str(false, false)},
      {"datasets", nlohmann::json::array()}};
  info["datasets"].push_back(dataset_info("training", cfg.train_corpus));
  if (!cfg.valid_corpus.empty()) info["datasets"].push_back(dataset_info("validation", cfg.valid_corpus));
  return info;
}

esm2::apps::RunFn setup_train(CLI::App& app) {
  using esm2::apps::add_enum_option;
  using esm2::apps::at_least;
  auto a = std::make_shared<TrainArgs>();
  TrainConfig& c = a->cfg;
  esm2::DataConfig& d = c.data;

  // Data
  app.add_option("--train-data", c.train_corpus, "Training corpus directory (made by `esm2 prepare`)")
      ->group("Data")->required();
  app.add_option("--valid-data", c.valid_corpus, "Validation corpus directory (made by `esm2 prepare`)")->group("Data");
  app.add_option("--max-seq-length", d.max_seq_length, "Longest sequence in tokens incl. <cls>/<eos>; longer ones are randomly cropped")
      ->group("Data")->capture_default_str();
  app.add_option("--min-seq-length", d.min_seq_length, "Sequences shorter than this (tokens) are not sampled")
      ->group("Data")->capture_default_str();
  app.add_option("--micro-batch-tokens", d.micro_batch_tokens, "Packed mode: token budget per micro-batch (default: the recipe's when no batch flag is given, else 16384 when --micro-batch-size is not given)")
      ->group("Data")->check(at_least(1));
  app.add_option("--micro-batch-size", d.micro_batch_size, "Reference mode: sequences per micro-batch (padded batches; compute skips the padding)")
      ->group("Data")->check(at_least(1));
  app.add_option("--accumulate-grad-batches", d.accumulate_grad_batches, "Micro-batches per optimizer step and rank (default: the recipe's when no batch flag is given, else 1)")
      ->group("Data");
  add_enum_option(app, "--random-mask-strategy", d.mask_strategy, esm2::kMaskStrategyNames,
                  "Random replacement tokens: all_tokens (33-token vocab) or amino_acids_only")
      ->group("Data");
  app.add_option("--mask-prob", d.mask_prob, "Fraction of positions selected for the loss")->group("Data")->capture_default_str();
  app.add_option("--mask-token-prob", d.mask_token_prob, "Of the selected: fraction replaced by <mask>")->group("Data")->capture_default_str();
  app.add_option("--random-token-prob", d.random_token_prob, "Of the selected: fraction replaced by a random token")->group("Data")->capture_default_str();
  app.add_option("--seed", d.seed, "Seed of sampling, masking and initialisation (a whole number >= 0)")
      ->group("Data")->check(esm2::apps::unsigned_integer())->capture_default_str();

  // Model
  app.add_option("--preset", a->preset, "Model shape: demo, 8M, esm2_t6_8M, 35M, 150M, 650M, 3B, 15B (a checkpoint to start from decides the shape; "
                 "an explicit conflicting preset or shape flag is an error)")
      ->group("Model")->capture_default_str();
  app.add_option("--num-layers", a->num_layers, "Override the preset's number of layers (with a checkpoint to start from: its config.json decides the shape)")->group("Model")->check(at_least(1));
  app.add_option("--hidden-size", a->hidden_size, "Override the preset's hidden size")->group("Model")->check(at_least(1));
  app.add_option("--num-attention-heads", a->num_attention_heads, "Override the preset's attention heads")->group("Model")->check(at_least(1));
  app.add_option("--ffn-hidden-size", a->ffn_hidden_size, "Override the preset's FFN size")->group("Model")->check(at_least(1));
  add_enum_option(app, "--gelu", a->gelu_tanh, kGeluNames, "GELU form: erf (HF/fair-esm, default) or tanh (Megatron)")
      ->group("Model");
  app.add_option("--init-from-hf", c.init_from, "Start from the weights of a Hugging Face ESM-2 checkpoint directory (fresh optimizer)")
      ->group("Model");

  // Optimisation
  // The recipe fills every hyperparameter below that no flag sets (src/train/recipe.h, docs/recipes.md).
  add_enum_option(app, "--recipe", a->recipe, esm2::kRecipeNames,
                  "Defaults of the optimisation flags and the batch: esm2-paper (the reference's recipe) or short-run "
                  "(per preset, for short runs: docs/recipes.md); explicit flags win (default: short-run for 8M, "
                  "whose row a sweep measured, else esm2-paper)")
      ->group("Optimization")->default_str("short-run for 8M, else esm2-paper");
  app.add_option("--num-steps", c.num_steps, "Optimizer steps (default 1000; with --time-budget: a cap on the planned steps)")
      ->group("Optimization")->check(at_least(1));
  app.add_option("--time-budget", c.time_budget_s,
                 "Wall seconds for the whole run (start-up, validation, checkpoints): times a few steps and a "
                 "validation, sets the schedule's length to what fits and records it (a resumed run keeps it)")
      ->group("Optimization")->check(esm2::apps::positive());
  app.add_option("--lr", a->lr, "Peak learning rate (default: the recipe's)")->group("Optimization")->check(at_least(0));
  app.add_option("--min-lr", a->min_lr, "Final learning rate (default lr/10)")->group("Optimization")->check(at_least(0));
  app.add_option("--warmup-steps", a->warmup_steps,
                 "Linear warmup steps; must be below the schedule's steps (default: the recipe's share of the "
                 "schedule: esm2-paper a tenth, at most the reference's 2000)")
      ->group("Optimization")->check(at_least(0));
  app.add_option("--scheduler-num-steps", a->scheduler_num_steps, "Steps over which the lr decays (default --num-steps)")
      ->group("Optimization")->check(at_least(1));
  add_enum_option(app, "--lr-schedule", c.schedule.kind, esm2::kScheduleKindNames,
                  "warmup_anneal_decay_hold (reference), cosine, warmup_stable_decay or constant (default: the recipe's)")
      ->group("Optimization")->default_str("");
  app.add_option("--lr-decay-fraction", c.schedule.decay_fraction,
                 "warmup_stable_decay: share of the schedule's steps in the final linear decay (default: the recipe's)")
      ->group("Optimization");
  app.add_option("--weight-decay", c.optim.weight_decay, "Decoupled AdamW weight decay on weight matrices (default: the recipe's)")
      ->group("Optimization")->check(at_least(0));
  app.add_flag("--decay-embeddings", c.optim.decay_embeddings, "Also apply weight decay to the embedding matrix")->group("Optimization");
  app.add_option("--adam-beta1", c.optim.beta1, "AdamW beta1 (default: the recipe's)")->group("Optimization");
  app.add_option("--adam-beta2", c.optim.beta2, "AdamW beta2 (default: the recipe's)")->group("Optimization");
  app.add_option("--adam-eps", c.optim.eps, "AdamW epsilon (default: the recipe's)")->group("Optimization")->check(at_least(0));
  app.add_option("--clip-grad", c.optim.clip_grad, "Global gradient-norm clipping threshold, 0 disables (default: the recipe's)")
      ->group("Optimization")->check(at_least(0));
  app.add_option("--early-stop-on-step", c.early_stop_on_step, "Stop (with a checkpoint) at this step; the schedule still spans --num-steps")
      ->group("Optimization")->check(at_least(1));
  app.add_option("--max-time", c.max_time_s, "Stop after this many seconds of training (validation and checkpoint first); 0: no limit")
      ->group("Optimization")->check(at_least(0));
  add_enum_option(app, "--on-nonfinite", c.on_nonfinite, esm2::kOnNonfiniteNames,
                  "Non-finite loss, gradient or validation loss: stop (keep the last finite state, write the report, exit 1) "
                  "or skip (drop the step; never checkpoint a non-finite validation)")
      ->group("Optimization");

  // Validation, logging, checkpoints
  app.add_option("--val-check-interval", c.val_check_interval, "Validate (and checkpoint) every N steps")
      ->group("Checkpoints and logs")->check(at_least(1))->capture_default_str();
  // Lightning's reading, which the reference's users rely on: "1.0" is the whole set, "1" one batch.
  app.add_option_function<std::string>(
         "--limit-val-batches",
         [&c](const std::string& s) {
           c.limit_val_fraction = s.find_first_of(".eE") != std::string::npos;
           c.limit_val_batches = std::strtod(s.c_str(), nullptr);
         },
         "Validation: a whole number of validation steps (one micro-batch per data-parallel rank each), or a share "
         "of the set written with a point, in (0, 1] (1.0 = the whole set)")
      ->default_str("1")
      ->group("Checkpoints and logs")
      ->check(at_least(0));
  app.add_option("--log-every-n-steps", c.log_every_n_steps, "Progress line / metrics every N steps")
      ->group("Checkpoints and logs")->check(at_least(1))->capture_default_str();
  app.add_option("--result-dir", c.result_dir, "Directory for runs")->group("Checkpoints and logs")->capture_default_str();
  app.add_option("--experiment-name", c.experiment_name, "Run name: results go to <result-dir>/<experiment-name>")
      ->group("Checkpoints and logs")->check(esm2::apps::run_name())->capture_default_str();
  app.add_flag("--resume-if-exists", c.resume_if_exists, "Resume from the run's latest checkpoint if there is one")
      ->group("Checkpoints and logs");
  app.add_flag("--force", c.force,
               "Replace an existing run in <result-dir>/<experiment-name> (without it, or --resume-if-exists, "
               "an existing run is an error)")
      ->group("Checkpoints and logs");
  app.add_option("--restore-from-checkpoint-path", c.restore_from_checkpoint_path,
                 "Start from this checkpoint: a training checkpoint restores optimizer, step and data position; "
                 "a Hugging Face model directory gives weights only")
      ->group("Checkpoints and logs");
  app.add_option("--save-top-k", c.save_top_k, "Keep the k best checkpoints by the monitored metric (-1: all)")
      ->group("Checkpoints and logs")->check(at_least(-1))->capture_default_str();
  app.add_flag("--save-best-checkpoint,!--no-save-best-checkpoint", a->save_best, "Keep the top-k checkpoints (default on)")
      ->group("Checkpoints and logs");
  app.add_flag("--save-last-checkpoint,!--no-save-last-checkpoint", a->save_last, "Keep the latest checkpoint (default on)")
      ->group("Checkpoints and logs");
  app.add_flag("--disable-checkpointing", c.disable_checkpointing, "Write no checkpoints")->group("Checkpoints and logs");
  add_enum_option(app, "--metric-to-monitor-for-checkpoints", c.metric_to_monitor, esm2::kMonitorMetricNames,
                  "val_loss or val_ppl (lower is better)")
      ->group("Checkpoints and logs");
  app.add_flag("--create-tensorboard-logger,!--no-tensorboard", a->tensorboard,
               "TensorBoard event files under <run>/tensorboard (default on)")
      ->group("Checkpoints and logs");
  app.add_flag("--no-report", a->no_report, "Do not write report.html and the PNG curves at the end")->group("Checkpoints and logs");

  // Execution
  add_enum_option(app, "--backend", c.backend, esm2::kBackendKindNames,
                  "auto (CUDA if built and a GPU is present, else CPU), cpu or cuda")
      ->group("Execution");
  add_enum_option(app, "--precision", c.precision, esm2::kPrecisionNames, "auto, 32/fp32 (CPU and GPU), bf16-mixed (GPU), fp8-mixed (Hopper GPU)")
      ->group("Execution");
  app.add_option("--threads", c.threads, "CPU threads (0: all cores)")->group("Execution")->check(esm2::apps::in_range(0, esm2::apps::kMaxThreads))->capture_default_str();
  add_enum_option(app, "--recompute", c.recompute, esm2::kRecomputeNames,
                  "Activations recomputed in the backward: none, selective (LayerNorms + attention residual; "
                  "~3% FLOPs, 25% less activation memory) or full (the layer up to the FFN; ~22% FLOPs)")
      ->group("Execution");
  // [dist] data parallelism over MPI (docs/dist.md)
  app.add_flag("!--no-distributed-optimizer", c.distributed_optimizer,
               "With several ranks: replicated AdamW + gradient all-reduce instead of ZeRO-1 (sharded moments)")
      ->group("Execution");
  app.add_flag("!--no-overlap-grad-reduce", c.overlap_grad_reduce,
               "ZeRO-1: reduce-scatter all gradient buckets after the backward instead of overlapping each "
               "with the rest of the backward (GPUs; MPI on CPUs is synchronous either way)")
      ->group("Execution");
  CLI::Option* reduce_dtype =
      add_enum_option(app, "--grad-reduce-dtype", c.grad_reduce_dtype, esm2::kGradReduceDtypeNames,
                      "ZeRO-1 gradient reduce-scatter on the wire: fp32 (exact rank-ordered sums), or bf16 (half the "
                      "traffic, for slow interconnects; each rank's gradient rounded once, summed in fp32)")
          ->group("Execution");
  (void)reduce_dtype;
  app.add_flag("--grad-reduce-in-fp32", a->grad_reduce_in_fp32, "The reference's spelling of --grad-reduce-dtype fp32")
      ->group("Execution");
  app.add_option("--ddp-bucket-size", c.ddp_bucket_size,
                 "Parameters per ZeRO-1 gradient bucket (rounded up to a multiple of the DP size)")
      ->group("Execution")->check(at_least(1))->capture_default_str();
  app.add_option("--gpus,--num-gpus", a->gpus,
                 "Train on N GPUs of this node: starts N worker processes joined by NCCL (no MPI needed); "
                 "global batch = micro-batch × N × accumulation. Under mpirun/srun (which start the ranks) it is "
                 "checked against the ranks started per node instead")
      ->group("Execution")->check(at_least(1));
  app.add_option("--num-nodes", a->num_nodes,
                 "Nodes of the job (the reference's flag): more than 1 needs mpirun/srun, and --num-gpus × --num-nodes "
                 "must equal the ranks they started")
      ->group("Execution")->check(at_least(1))->capture_default_str();
  app.add_option("--collective-timeout", c.collective_timeout_s,
                 "Seconds a collective may take before every rank is aborted (\"rank R: timed out in <what>\")")
      ->group("Execution")->check(at_least(1e-3))->capture_default_str();
  app.add_option("--tensor-model-parallel-size", c.tensor_parallel,
                 "Tensor-parallel ranks per model replica (heads and FFN columns split; docs/dist.md)")
      ->group("Execution")->check(at_least(1))->capture_default_str();
  app.add_option("--pipeline-model-parallel-size", c.pipeline_parallel,
                 "Pipeline stages per model replica (layers split, uneven counts allowed; 1F1B schedule)")
      ->group("Execution")->check(at_least(1))->capture_default_str();

  return [a, app_ptr = &app]() -> int {
    // --time-budget counts the start-up too: the backend (CUDA context) and the corpora come next.
    const auto started = std::chrono::steady_clock::now();
    TrainConfig cfg = a->cfg;
    cfg.preset = a->preset;
    if (a->grad_reduce_in_fp32) {
      ESM2_CHECK(app_ptr->get_option("--grad-reduce-dtype")->count() == 0 || cfg.grad_reduce_dtype == esm2::DType::F32,
                 "train: --grad-reduce-in-fp32 and --grad-reduce-dtype {} contradict each other: give one",
                 esm2::dtype_name(cfg.grad_reduce_dtype));
      cfg.grad_reduce_dtype = esm2::DType::F32;
    }
    if (cfg.force && cfg.resume_if_exists) {
      // One of them from a config file, the other typed after it: the later one wins, as for any option.
      std::string last;
      for (const CLI::Option* o : app_ptr->parse_order())
        if (o->check_name("--force") || o->check_name("--resume-if-exists")) last = o->get_name();
      (last == "--force" ? cfg.resume_if_exists : cfg.force) = false;
      std::printf("esm2 train: --force and --resume-if-exists both given; the later, %s, applies\n", last.c_str());
    }
    model_config(*a, *app_ptr, cfg);
    cfg.run_info = run_info(*app_ptr, cfg);
    apply_recipe(*a, *app_ptr, cfg);
    cfg.started_at = started;
    cfg.create_tensorboard_logger = a->tensorboard;
    cfg.save_best_checkpoint = a->save_best;
    cfg.save_last_checkpoint = a->save_last;
    cfg.write_report = !a->no_report;
    // [dist] `--gpus N` starts the workers and waits; a worker (ESM2_RANK set) trains. A config file
    // naming gpus reaches the workers too: there it must agree with the world they were started in.
    const esm2::LaunchInfo launch = esm2::detect_launch();
    // A one-task launcher environment (sbatch/salloc set SLURM_NTASKS=1 without srun) is a single process:
    // --gpus may start its workers there.
    const bool worker = launch.launcher == "esm2 --gpus";
    const bool under_parallel_launcher = launch.multi_process() && launch.world != 1 && !worker;
    if (under_parallel_launcher) {
      // The reference's --num-gpus/--num-nodes describe the job the launcher started: a command line
      // ported from train_esm2 runs unchanged when they agree with it, and stops at once when not.
      const std::string started = fmt::format("the launcher started {} ({} is set)", launch.world, launch.launcher);
      ESM2_CHECK(a->gpus == 0 || a->gpus * a->num_nodes == launch.world,
                 "train: --num-gpus {} × --num-nodes {} = {} ranks, but {}; make them agree (one rank per GPU) or "
                 "leave them out",
                 a->gpus, a->num_nodes, a->gpus * a->num_nodes, started);
      ESM2_CHECK(launch.world % a->num_nodes == 0, "train: --num-nodes {} does not divide the {} ranks: {}",
                 a->num_nodes, launch.world, started);
    } else {
      ESM2_CHECK(a->num_nodes == 1,
                 "train: --num-nodes {}: a multi-node job is started by srun or mpirun (one rank per GPU), but this "
                 "process was started alone",
                 a->num_nodes);
      if (a->gpus > 0 && !worker) return launch_gpu_workers(*a);
      ESM2_CHECK(a->gpus == 0 || a->gpus == launch.world, "train: --gpus {} in a worker of a {}-GPU launch", a->gpus,
                 launch.world);
    }
    // NCCL under `--gpus` or mpirun/srun with the cuda backend, MPI with the cpu backend, else one local
    // rank. Each rank's GPU is its local rank, so the backend comes first. An error on one rank ends
    // the whole job: the others would otherwise wait in their next collective.
    const int gpu = launch.multi_process() && cfg.backend != esm2::BackendKind::Cpu ? esm2::gpu_for_local_rank(launch.local_rank) : 0;
    const std::unique_ptr<esm2::Backend> backend = esm2::make_backend(cfg.backend, cfg.precision, cfg.threads, gpu);
    const std::unique_ptr<esm2::Communicator> comm = esm2::make_communicator(cfg.collective_timeout_s, backend.get());
    // A device allocation failure becomes one line saying which micro-batch fits (memory_plan.h).
    // Checkpoints are written atomically, so the last one stays intact; the error exits 1.
    auto train = [&] {
      try {
        esm2::run_training(cfg, *comm, *backend);
      } catch (const esm2::OutOfDeviceMemory& e) {
        // The plan models one rank holding the whole model with replicated AdamW; with several ranks
        // (ZeRO-1 shards, TP/PP parts, communication buffers) its "largest that fits" would mislead.
        if (comm->world_size() > 1)
          throw esm2::Error(fmt::format("rank {}: {}; lower --micro-batch-tokens or use --recompute full (the memory "
                                        "plan covers a single GPU holding the whole model, not this {}-rank layout)",
                                        comm->rank(), e.what(), comm->world_size()));
        throw esm2::Error(
            esm2::out_of_memory_message(e, cfg.model, esm2::micro_batch_token_budget(cfg), cfg.recompute,
                                        esm2::workspace_query(*backend)));
      }
    };
    if (comm->world_size() == 1) {
      train();
      return 0;
    }
    try {
      train();
    } catch (const std::exception& e) {
      fmt::print(stderr, "error: rank {}: {}\n", comm->rank(), e.what());
      std::fflush(stderr);
      esm2::abort_job(*comm, 1);
      throw;
    }
    return 0;
  };
}

}  // namespace

ESM2_COMMAND(train, "train", "Pretrain (or continue training) an ESM-2 model with masked language modelling", setup_train);
