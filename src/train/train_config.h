// Everything `esm2 train` is configured with. Field names follow the reference's train_esm2 flags
// (bionemo-semantics.md); the CLI (src/apps/train.cpp) binds one flag to each field.
#pragma once
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "backend/backend_factory.h"
#include "core/dtype.h"
#include "core/enum_names.h"
#include "data/train_data.h"
#include "model/config.h"
#include "model/recompute.h"
#include "optim/optimizer_config.h"
#include "optim/schedule.h"
#include "train/recipe.h"

namespace esm2 {

// --on-nonfinite: what a step with a non-finite loss or gradient norm does.
enum class OnNonfinite { Stop, Skip };  // stop: save the last good state, exit 1; skip: drop the step
inline constexpr EnumName<OnNonfinite> kOnNonfiniteNames[] = {{"stop", OnNonfinite::Stop}, {"skip", OnNonfinite::Skip}};

// --metric-to-monitor-for-checkpoints (lower is better for both).
enum class MonitorMetric { ValLoss, ValPpl };
inline constexpr EnumName<MonitorMetric> kMonitorMetricNames[] = {{"val_loss", MonitorMetric::ValLoss},
                                                                  {"val_ppl", MonitorMetric::ValPpl}};

// --grad-reduce-dtype: the ZeRO-1 gradient reduce-scatter's type on the wire.
inline constexpr EnumName<DType> kGradReduceDtypeNames[] = {{"fp32", DType::F32}, {"bf16", DType::BF16}};

struct TrainConfig {
  // --- data (prepared corpora; see `esm2 prepare`) ---
  std::string train_corpus, valid_corpus;
  // Sequence lengths, masking, micro-batches and the seed (which also initialises the weights); its
  // rules are checked by DataConfig::validate. The CLI sets --micro-batch-tokens 16384 when neither
  // micro-batch flag is given.
  DataConfig data;

  // --- model ---
  std::string preset = "demo";
  ModelConfig model;  // preset, then overridden by --num-layers … flags
  std::string init_from;  // HF checkpoint dir to start from (fresh optimizer); --restore-from… handles ours

  // --- optimisation ---
  ScheduleConfig schedule;
  OptimizerConfig optim;
  int64_t num_steps = 1000;
  int64_t early_stop_on_step = -1;  // stop (with checkpoint) at this step though the schedule runs to num_steps
  OnNonfinite on_nonfinite = OnNonfinite::Stop;
  double max_time_s = 0;              // > 0: stop (validation + checkpoint) once this much wall time has passed
  // --time-budget: > 0 makes the whole run (start-up, validation, checkpoints) end within this many
  // seconds. The trainer times a few steps and a validation, then fixes the schedule's length to what
  // fits; num_steps only caps it. The plan is recorded in the trainer state, and a resumed run keeps it.
  double time_budget_s = 0;
  // With time_budget_s: the warm-up as a share of the planned length (unset: schedule.warmup_steps).
  std::optional<WarmupRule> warmup_rule;
  // Where time_budget_s is counted from (the CLI: before the backend starts); unset: the trainer's start.
  std::optional<std::chrono::steady_clock::time_point> started_at;
  std::string recipe_label;  // for the banner: which recipe filled the unset hyperparameters

  // --- validation / logging / checkpoints ---
  int64_t val_check_interval = 100;
  // As Lightning reads it: a whole number counts validation steps (one micro-batch per DP rank each); with
  // limit_val_fraction, a share in (0, 1] of the set (1.0 = all of it).
  double limit_val_batches = 1;
  bool limit_val_fraction = false;
  int64_t log_every_n_steps = 10;
  std::string result_dir = "results", experiment_name = "esm2";
  bool create_tensorboard_logger = true;
  bool resume_if_exists = false;
  bool force = false;  // replace an existing run in the run directory (without it, that is an error)
  std::string restore_from_checkpoint_path;
  int save_top_k = 2;
  bool save_last_checkpoint = true, save_best_checkpoint = true, disable_checkpointing = false;
  MonitorMetric metric_to_monitor = MonitorMetric::ValLoss;
  bool write_report = true;
  nlohmann::json run_info;  // how the run was made, for the report (ReportData::run_info)

  // --- execution ---
  BackendKind backend = BackendKind::Auto;
  Precision precision = Precision::Auto;
  int threads = 0;                   // CPU threads (0 = all cores)
  // Activations kept for the backward (model/recompute.h). selective costs one C×C GEMM per layer,
  // ~2.8% of a step's FLOPs, for 25% less activation memory (docs/cuda.md).
  Recompute recompute = Recompute::Selective;
  // --- data parallelism (docs/dist.md) ---
  bool distributed_optimizer = true;  // ZeRO-1 when world > 1; false: replicated AdamW + all-reduce
  double collective_timeout_s = 600;  // a collective unfinished after this aborts every rank
  // ZeRO-1 communication (src/optim/zero_optimizer.h, docs/dist.md): gradient buckets reduce-scattered
  // during the backward (--no-overlap-grad-reduce: after it), fp32 or bf16 on the wire (fp32 by
  // default: the reference's bf16 reduction gained nothing on 2×H100, bench/results/multi-gpu-2xH100/overlap/).
  bool overlap_grad_reduce = true;
  DType grad_reduce_dtype = DType::F32;   // F32 | BF16
  int64_t ddp_bucket_size = 40'000'000;    // elements per gradient bucket
  // --- model parallelism (docs/dist.md): world = DP × TP × PP ---
  int tensor_parallel = 1;    // --tensor-model-parallel-size
  int pipeline_parallel = 1;  // --pipeline-model-parallel-size
};

}  // namespace esm2
