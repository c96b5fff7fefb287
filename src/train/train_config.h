// Everything `esm2 train` is configured with. Field names follow the reference's train_esm2 flags
// (bionemo-semantics.md); the CLI (src/apps/train.cpp) binds one flag to each field.
#pragma once
#include <cstdint>
#include <string>

#include "model/config.h"
#include "model/recompute.h"
#include "optim/optimizer_config.h"
#include "optim/schedule.h"

namespace esm2 {

struct TrainConfig {
  // --- data (prepared corpora; see `esm2 prepare`) ---
  std::string train_corpus, valid_corpus;
  int max_seq_length = 1024, min_seq_length = 0;
  std::string mask_strategy = "all_tokens";  // all_tokens | amino_acids_only
  float mask_prob = 0.15f, mask_token_prob = 0.8f, random_token_prob = 0.1f;
  int micro_batch_size = 0;         // padded/reference mode: sequences per micro-batch
  int64_t micro_batch_tokens = 0;   // packed mode: token budget per micro-batch (default when neither given)
  int accumulate_grad_batches = 1;
  uint64_t seed = 42;

  // --- model ---
  std::string preset = "demo";
  ModelConfig model;  // preset, then overridden by --num-layers … flags
  std::string init_from;  // HF checkpoint dir to start from (fresh optimizer); --restore-from… handles ours

  // --- optimisation ---
  ScheduleConfig schedule;
  OptimizerConfig optim;
  int64_t num_steps = 1000;
  int64_t early_stop_on_step = -1;  // stop (with checkpoint) at this step though the schedule runs to num_steps
  std::string on_nonfinite = "stop";  // stop | skip
  double max_time_s = 0;              // > 0: stop (validation + checkpoint) once this much wall time has passed

  // --- validation / logging / checkpoints ---
  int64_t val_check_interval = 100;
  double limit_val_batches = 1.0;   // >= 1 and integral: number of batches; in (0,1): fraction of the set
  int64_t log_every_n_steps = 10;
  std::string result_dir = "results", experiment_name = "esm2";
  bool create_tensorboard_logger = true;
  bool resume_if_exists = false;
  std::string restore_from_checkpoint_path;
  int save_top_k = 2;
  bool save_last_checkpoint = true, save_best_checkpoint = true, disable_checkpointing = false;
  std::string metric_to_monitor = "val_loss";  // val_loss | val_ppl (lower is better)
  bool write_report = true;

  // --- execution ---
  std::string backend = "auto";      // auto | cpu | cuda
  std::string precision = "auto";    // auto | 32 | fp32 | bf16-mixed …
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
  std::string grad_reduce_dtype = "fp32";  // fp32 | bf16
  int64_t ddp_bucket_size = 40'000'000;    // elements per gradient bucket
  // --- model parallelism (docs/dist.md): world = DP × TP × PP ---
  int tensor_parallel = 1;    // --tensor-model-parallel-size
  int pipeline_parallel = 1;  // --pipeline-model-parallel-size
};

}  // namespace esm2
