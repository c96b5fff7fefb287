#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "backend/backend_factory.h"
#include "core/atomic_dir.h"
#include "core/error.h"
#include "core/signals.h"
#include "data/corpus.h"
#include "data/train_data.h"
#include "parallel/parallel_layout.h"
#include "model/esm2.h"
#include "model/param_table.h"
#include "train/checkpoint.h"
#include "train/fault_injection.h"
#include "train/memory_plan.h"
#include "train/metrics_logger.h"
#include "train/model_summary.h"
#include "optim/optimizer.h"
#include "parallel/pipeline_schedule.h"
#include "train/report.h"
#include "optim/zero_optimizer.h"

namespace fs = std::filesystem;

namespace esm2 {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void validate_config(const TrainConfig& c, const Communicator& comm) {
  c.model.validate();
  c.data.validate();
  ESM2_CHECK(c.ddp_bucket_size >= 1, "train: --ddp-bucket-size must be >= 1 (got {})", c.ddp_bucket_size);
  ESM2_CHECK(!(c.force && c.resume_if_exists),
             "train: --force (replace the run) and --resume-if-exists (continue it) contradict each other: give one");
  ESM2_CHECK(!c.train_corpus.empty(), "train: --train-data (a corpus made by `esm2 prepare`) is required");
  ESM2_CHECK(c.num_steps >= 1, "train: --num-steps must be >= 1 (got {})", c.num_steps);
  ESM2_CHECK(c.val_check_interval >= 1, "train: --val-check-interval must be >= 1 (got {})", c.val_check_interval);
  ESM2_CHECK(c.log_every_n_steps >= 1, "train: --log-every-n-steps must be >= 1 (got {})", c.log_every_n_steps);
  ESM2_CHECK(c.data.max_seq_length <= c.model.max_position_embeddings,
             "train: --max-seq-length {} exceeds the model's max_position_embeddings {}", c.data.max_seq_length,
             c.model.max_position_embeddings);
  ESM2_CHECK(std::isfinite(c.schedule.max_lr) && c.schedule.max_lr > 0, "train: --lr {} must be a finite number > 0",
             c.schedule.max_lr);
  ESM2_CHECK(c.schedule.min_lr >= 0 && c.schedule.min_lr <= c.schedule.max_lr,
             "train: --min-lr must be in [0, --lr] (got {} with --lr {})", c.schedule.min_lr, c.schedule.max_lr);
  ESM2_CHECK(c.schedule.warmup_steps >= 0, "train: --warmup-steps must be >= 0");
  ESM2_CHECK(c.time_budget_s > 0 || c.schedule.warmup_steps < c.schedule.total_steps,
             "train: --warmup-steps {} is not below the schedule's {} steps (--num-steps, or --scheduler-num-steps): "
             "the learning rate would never reach --lr",
             c.schedule.warmup_steps, c.schedule.total_steps);
  ESM2_CHECK(c.schedule.decay_fraction > 0 && c.schedule.decay_fraction <= 1,
             "train: --lr-decay-fraction must be in (0, 1] (got {})", c.schedule.decay_fraction);
  ESM2_CHECK(std::isfinite(c.time_budget_s) && c.time_budget_s >= 0, "train: --time-budget must be >= 0 (got {})",
             c.time_budget_s);
  ESM2_CHECK(c.time_budget_s == 0 || c.max_time_s == 0,
             "train: give at most one of --time-budget (which already ends the run in time) and --max-time");
  ESM2_CHECK(c.optim.weight_decay >= 0, "train: --weight-decay must be >= 0");
  ESM2_CHECK(c.optim.beta1 >= 0 && c.optim.beta1 < 1 && c.optim.beta2 >= 0 && c.optim.beta2 < 1,
             "train: Adam betas must be in [0, 1)");
  ESM2_CHECK(c.limit_val_fraction ? c.limit_val_batches > 0 && c.limit_val_batches <= 1
                                  : c.limit_val_batches >= 1 && c.limit_val_batches == std::floor(c.limit_val_batches),
             "train: --limit-val-batches must be a fraction in (0, 1] (written with a point: 1.0 = the whole set) or a "
             "whole number of batches >= 1 (got {})", c.limit_val_batches);
  ESM2_CHECK(c.resume_if_exists || c.restore_from_checkpoint_path.empty() || c.init_from.empty(),
             "train: give at most one of --restore-from-checkpoint-path and --init-from-hf");
  // [pp] The grid itself (world = DP × TP × PP) is checked by make_parallel_groups.
  ESM2_CHECK(c.pipeline_parallel <= c.model.num_layers,
             "train: --pipeline-model-parallel-size {} exceeds the number of layers {} (a stage needs a layer)",
             c.pipeline_parallel, c.model.num_layers);
  (void)comm;
}

// Writes a small probe file so that an unwritable results directory fails at start, not at the
// first checkpoint after hours of training.
void check_writable(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  ESM2_CHECK(!ec, "{}: cannot create results directory: {}", dir.string(), ec.message());
  write_file(dir / ".write-probe", "ok\n");
  fs::remove(dir / ".write-probe", ec);
}

// The overwrite rule every writing command follows (docs/cli.md): a run directory that already holds a
// run (metrics or checkpoints) is continued only with --resume-if-exists and replaced only with --force;
// without either, starting over would mix two runs' checkpoints and metrics in one directory.
void claim_run_dir(const fs::path& dir, const TrainConfig& cfg) {
  // An empty metrics.jsonl is what a run that failed before its first step leaves: no run to protect.
  std::error_code ec;
  const bool has_metrics = fs::exists(dir / "metrics.jsonl") && fs::file_size(dir / "metrics.jsonl", ec) > 0;
  if (cfg.resume_if_exists || !(has_metrics || fs::exists(dir / "checkpoints"))) return;
  ESM2_CHECK(cfg.force, "{}: already holds a run; add --resume-if-exists to continue it or --force to replace it",
             dir.string());
  // --force removes the whole run directory: nothing this run reads may live there.
  for (const auto& [flag, in] : {std::pair<const char*, fs::path>{"--train-data", cfg.train_corpus},
                                 {"--valid-data", cfg.valid_corpus},
                                 {"--restore-from-checkpoint-path", cfg.restore_from_checkpoint_path},
                                 {"--init-from-hf", cfg.init_from}})
    ESM2_CHECK(in.empty() || !is_same_or_inside(in, dir),
               "{} {}: lies inside the run directory {} that --force would remove; move it out first", flag, in.string(),
               dir.string());
  fs::remove_all(dir, ec);
  ESM2_CHECK(!ec, "{}: cannot remove the previous run (--force): {}", dir.string(), ec.message());
}

struct Validation {
  std::vector<MicroBatch> batches;  // this rank's share, fixed masks
  int64_t global_batches = 0;
};

Validation make_validation(const Corpus& valid, const DataConfig& dc, double limit, bool fraction,
                           const Communicator& comm) {
  Validation v;
  int64_t limit_batches = -1;
  if (fraction) {
    // A fraction of the whole set, counted in global batches (dp_world micro-batches each).
    const auto all = validation_batches(valid, dc, -1, 0, 1);
    const int64_t global_total = (static_cast<int64_t>(all.size()) + comm.world_size() - 1) / comm.world_size();
    limit_batches = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(limit * static_cast<double>(global_total))));
  } else {
    limit_batches = static_cast<int64_t>(limit);
  }
  v.batches = validation_batches(valid, dc, limit_batches, comm.rank(), comm.world_size());
  v.global_batches = static_cast<int64_t>(v.batches.size());  // every rank gets one per global batch
  return v;
}

// `comm`: the data-parallel group. With pipeline stages the batches go through the pipeline, whose
// loss every stage receives.
LossSum run_validation(Esm2Model& model, PipelineSchedule* pipeline, const Validation& v, Communicator& comm) {
  double acc[2] = {0, 0};
  if (pipeline) {
    const LossSum r = pipeline->forward_loss(v.batches);
    acc[0] = r.loss_sum;
    acc[1] = static_cast<double>(r.num_labels);
  } else {
    for (const auto& mb : v.batches) {
      const LossSum r = model.forward_loss(mb);
      acc[0] += r.loss_sum;
      acc[1] += static_cast<double>(r.num_labels);
    }
  }
  comm.allreduce_sum(acc, 2, "validation loss");
  return {acc[0], static_cast<int64_t>(acc[1])};
}

double mean_loss(const LossSum& v) { return v.loss_sum / static_cast<double>(v.num_labels); }

double monitored(const TrainConfig& cfg, double val_loss) {
  // val_ppl = exp(val_loss) orders checkpoints identically; stored as configured for the records.
  return cfg.metric_to_monitor == MonitorMetric::ValPpl ? std::exp(val_loss) : val_loss;
}

// Where training starts: this run's latest checkpoint (--resume-if-exists), another checkpoint
// (--restore-from-checkpoint-path), published weights (--init-from-hf), or a seeded initialisation.
struct StartPoint {
  TrainerState state;
  bool resumed = false;
  std::string note = "from scratch";
  // Tensors of the starting checkpoint that training does not touch (a published model's contact
  // head): carried into every checkpoint so fine-tuning loses nothing.
  std::map<std::string, RawTensor> extra_tensors;
};

StartPoint load_start_point(const TrainConfig& cfg, const fs::path& ckpt_root, Esm2Model& model, Optimizer& optim) {
  StartPoint s;
  std::optional<fs::path> resume_from;
  if (cfg.resume_if_exists) resume_from = find_latest_checkpoint(ckpt_root);
  if (resume_from) {
    load_checkpoint(*resume_from, model, &optim, &s.state, &s.extra_tensors);
    s.resumed = true;
    s.note = fmt::format("resumed from {} (step {})", resume_from->string(), s.state.step);
  } else if (!cfg.restore_from_checkpoint_path.empty()) {
    const fs::path p = cfg.restore_from_checkpoint_path;
    if (is_training_checkpoint(p)) {
      load_checkpoint(p, model, &optim, &s.state, &s.extra_tensors);
      s.note = fmt::format("restored from {} (step {})", p.string(), s.state.step);
    } else {
      load_checkpoint(p, model, nullptr, nullptr, &s.extra_tensors);
      s.note = fmt::format("weights from {} (fresh optimizer)", p.string());
    }
  } else if (!cfg.init_from.empty()) {
    load_checkpoint(cfg.init_from, model, nullptr, nullptr, &s.extra_tensors);
    s.note = fmt::format("weights from {} (fresh optimizer)", cfg.init_from);
  } else {
    model.init_weights(cfg.data.seed);
  }
  return s;
}

// Training throughput counts the steps only (forward, backward, reduction, optimizer); validation
// and checkpoints are in the run's wall time, reported beside it. The first step of a fresh run pays
// one-time allocation costs and is left out of the average.
class Throughput {
 public:
  void add_step(double seconds, int64_t tokens, bool timed) {
    if (timed) {
      total_tokens_ += static_cast<double>(tokens);
      total_seconds_ += seconds;
    }
    ema_step_s_ = ema_step_s_ == 0 ? seconds : 0.9 * ema_step_s_ + 0.1 * seconds;
    window_tokens_ += static_cast<double>(tokens);
    window_seconds_ += seconds;
  }
  // Tokens/s since the last call (one log interval).
  double take_window_tokens_per_s() {
    const double r = window_tokens_ / std::max(window_seconds_, 1e-9);
    window_tokens_ = window_seconds_ = 0;
    return r;
  }
  double eta_s(int64_t steps_left) const { return ema_step_s_ * static_cast<double>(steps_left); }
  double ema_step_s() const { return ema_step_s_; }
  double training_tokens_per_s() const { return total_seconds_ > 0 ? total_tokens_ / total_seconds_ : 0; }

 private:
  double ema_step_s_ = 0, window_tokens_ = 0, window_seconds_ = 0, total_tokens_ = 0, total_seconds_ = 0;
};

// One optimizer step's numbers, before the non-finite policy decides what to do with it.
struct StepOutcome {
  double loss = 0, grad_norm = 0, lr = 0, seconds = 0;
  StepBatch batch;
  DataPosition data_before;  // a stop on a non-finite step checkpoints the state before it
  bool finite() const { return std::isfinite(loss) && std::isfinite(grad_norm); }
};

// The report.html rows and series of a finished (or stopped) run, from the metric history that its
// checkpoints also carry. Non-finite values (a diverged run) are in the table, not in the plots.
ReportData report_of_run(const TrainConfig& cfg, const Backend& backend, const TrainerState& state,
                         const TrainResult& result, double wall_s) {
  ReportData rd;
  rd.title = fmt::format("esm2.cpp training report: {}", cfg.experiment_name);
  rd.run_info = cfg.run_info;
  rd.summary = {{"model", fmt::format("{} layers, hidden {}, heads {}, ffn {} ({} parameters)", cfg.model.num_layers,
                                      cfg.model.hidden_size, cfg.model.num_attention_heads, cfg.model.ffn_hidden_size,
                                      format_param_count(double(cfg.model.num_parameters())))},
                {"backend", fmt::format("{} ({})", backend.name(), precision_label(backend))},
                {"steps", with_thousands(state.step)},
                {"tokens trained", with_thousands(state.consumed_tokens)},
                {"training real tokens/s (steps only)", with_thousands(std::llround(result.real_tokens_per_s))},
                {"wall time (incl. validation, checkpoints)", fmt::format("{:.1f} s", wall_s)},
                {"last train loss", fmt::format("{:.4f}", result.last_train_loss)},
                {"last val loss / ppl", result.last_val_loss < 0 ? std::string("n/a")
                                                                : fmt::format("{:.4f} / {:.3f}", result.last_val_loss,
                                                                              std::exp(result.last_val_loss))}};
  auto add = [](std::vector<ReportPoint>& series, int64_t step, double v) {
    if (std::isfinite(v)) series.push_back({step, v});
  };
  for (const auto& h : state.history) {
    const int64_t s = h["step"].get<int64_t>();
    if (h.contains("train_loss")) {
      const double loss = metric_value(h["train_loss"]);
      add(rd.train_loss, s, loss);
      add(rd.train_ppl, s, std::exp(loss));
      add(rd.lr, s, h["lr"].get<double>());
      add(rd.tokens_per_s, s, h["tokens_per_s"].get<double>());
    }
    if (h.contains("val_loss")) {
      add(rd.val_loss, s, metric_value(h["val_loss"]));
      add(rd.val_ppl, s, metric_value(h["val_ppl"]));
    }
  }
  return rd;
}

// One training job: the parallel groups, data, model, optimizer and start point, set up in this
// order by the constructor; run() is the step loop.
class Trainer {
 public:
  Trainer(const TrainConfig& cfg, Communicator& comm, Backend& backend);
  TrainResult run();

 private:
  void print_banner() const;
  void plan_time_budget();
  void replan_time_budget();
  void slowest_rank(double (&m)[3], const char* what);
  void apply_budget(const BudgetPlan& p);
  double compute_gradients(const StepBatch& batch);
  StepOutcome train_step();
  void on_nonfinite_step(const StepOutcome& s);
  void log_step(const StepOutcome& s);
  std::pair<bool, bool> stop_decision() const;  // (out of time, signal), agreed by every rank
  void validate_and_checkpoint(bool do_validation, bool final_save);
  void validate_and_checkpoint_timed(bool do_validation, bool final_save);
  LossSum validate();
  void stop_nonfinite(const std::string& what);
  void write_run_report() const;
  double wall_s() const { return seconds_since(run_start_); }
  bool over_budget() const;
  int64_t stop_step(int64_t num_steps) const {
    return cfg_.early_stop_on_step > 0 ? std::min(cfg_.early_stop_on_step, num_steps) : num_steps;
  }

  const TrainConfig& cfg_;
  Communicator& comm_;
  Backend& backend_;
  const bool root_;
  const Clock::time_point job_start_;  // --time-budget counts from here
  const fs::path run_dir_, ckpt_root_;
  ParallelGroups groups_;
  Communicator& dp_;
  StopSignal stop_;
  std::shared_ptr<const Corpus> train_corpus_;
  TrainData data_;
  std::unique_ptr<Corpus> valid_corpus_;
  Validation validation_;
  Esm2Model model_;
  std::unique_ptr<PipelineSchedule> pipeline_;
  GradReduceOptions reduce_;
  std::unique_ptr<Optimizer> optim_;
  StartPoint start_;
  TrainerState& state_ = start_.state;
  std::unique_ptr<MetricsLogger> logger_;
  ScheduleConfig schedule_;  // cfg.schedule, with the length of a --time-budget plan
  int64_t last_step_;
  double eval_reserve_s_ = 0;  // --time-budget: the longest validation + checkpoint so far (or the plan's)
  // --time-budget's one re-plan (replan_time_budget): the step it happens after (0: none), and the wall
  // time of the steps since the second one, less their validations and checkpoints.
  int64_t replan_at_ = 0, replan_from_step_ = 0;
  Clock::time_point replan_t0_;
  double replan_eval_s_ = 0;
  const bool checkpointing_;
  const FaultInjection faults_ = fault_injection_from_env();  // test-only: empty unless ESM2_FAULT_INJECT is set
  Throughput throughput_;
  TrainResult result_;
  Clock::time_point run_start_;
};

GradReduceOptions grad_reduce_options(const TrainConfig& cfg) {
  GradReduceOptions r;
  r.bucket_elements = static_cast<size_t>(cfg.ddp_bucket_size);
  r.overlap = cfg.overlap_grad_reduce;
  r.wire = cfg.grad_reduce_dtype;
  return r;
}

// The recompute mode, then (with pipeline stages) the 1F1B schedule over the model.
std::unique_ptr<PipelineSchedule> configure_schedule(Esm2Model& model, const TrainConfig& cfg, int pp_size) {
  model.set_recompute(cfg.recompute);
  return pp_size > 1 ? std::make_unique<PipelineSchedule>(model) : nullptr;  // [pp]
}

std::unique_ptr<Corpus> open_valid_corpus(const TrainConfig& cfg) {
  return cfg.valid_corpus.empty() ? nullptr : std::make_unique<Corpus>(Corpus::open(cfg.valid_corpus));
}

// Nothing is written until every input (corpora, starting checkpoint) has been opened: a failed start
// leaves no run directory behind.
Trainer::Trainer(const TrainConfig& cfg, Communicator& comm, Backend& backend)
    : cfg_((validate_config(cfg, comm), cfg)),
      comm_(comm),
      backend_(backend),
      root_(comm.is_root()),
      job_start_(cfg.started_at.value_or(Clock::now())),
      run_dir_(fs::path(cfg.result_dir) / cfg.experiment_name),
      ckpt_root_(run_dir_ / "checkpoints"),
      // [dist] DP × TP × PP grid (src/parallel/parallel_layout.h): data is split over DP only; every rank
      // of a DP replica's tensor/pipeline group sees the same batch.
      groups_(make_parallel_groups(comm, cfg.tensor_parallel, cfg.pipeline_parallel)),
      dp_(*groups_.dp),
      train_corpus_(std::make_shared<const Corpus>(Corpus::open(cfg.train_corpus))),
      data_(train_corpus_, cfg.data),
      valid_corpus_(open_valid_corpus(cfg)),
      validation_(valid_corpus_ ? make_validation(*valid_corpus_, cfg.data, cfg.limit_val_batches, cfg.limit_val_fraction, dp_) : Validation{}),
      model_(cfg.model, backend, ModelParallel{groups_.tp.get(), groups_.pp.get(), groups_.mp.get()}),
      pipeline_(configure_schedule(model_, cfg, groups_.pp_size)),
      reduce_(grad_reduce_options(cfg)),
      // [dist] ZeRO-1 (moments sharded over ranks) when world > 1, unless --no-distributed-optimizer.
      optim_(make_optimizer(model_, cfg.optim, dp_, cfg.distributed_optimizer, reduce_)),
      start_(load_start_point(cfg, ckpt_root_, model_, *optim_)),
      schedule_(cfg.schedule),
      last_step_(stop_step(cfg.num_steps)),
      checkpointing_(!cfg.disable_checkpointing) {
  // A run planned by --time-budget keeps its schedule when it continues (exact resume), whatever the
  // flags of the continuing command. A --time-budget plan starts at step 0: a checkpoint of a run
  // without one has no budget to continue.
  if (state_.budget) {
    apply_budget(*state_.budget);
    eval_reserve_s_ = state_.budget->eval_s;
  } else {
    ESM2_CHECK(cfg.time_budget_s == 0 || state_.step == 0,
               "train: --time-budget plans a schedule from step 0, but this run starts at step {} from a checkpoint "
               "of a run without --time-budget; continue it with --num-steps (and --max-time to bound the call)",
               state_.step);
  }
  if (root_) {
    claim_run_dir(run_dir_, cfg_);
    check_writable(run_dir_);
  }
  comm_.barrier("results directory check");
  logger_ = std::make_unique<MetricsLogger>(run_dir_, root_, cfg.create_tensorboard_logger, state_.step > 0);
}

void Trainer::print_banner() const {
  if (!root_) return;
  const Optimizer& optim = *optim_;
  const DataConfig& dc = cfg_.data;
  fmt::print("esm2 train: {} on {} ({}), {} rank(s); {}\n", cfg_.experiment_name, backend_.name(),
             precision_label(backend_), comm_.world_size(), start_.note);
  // [dist]
  fmt::print("parallel layout: DP {} × TP {} × PP {} ({} communicator), optimizer {}\n", groups_.dp_size,
             groups_.tp_size, groups_.pp_size, comm_.name(),
             groups_.dp_size > 1 && cfg_.distributed_optimizer ? "ZeRO-1 (moments sharded over ranks)"
                                                               : "AdamW (replicated)");
  if (const auto* zero = dynamic_cast<const ZeroAdamW*>(&optim))
    fmt::print("gradient reduce-scatter: {} bucket(s) of ≤ {} parameters, {} on the wire, {}\n", zero->num_buckets(),
               zero->bucket_length(), reduce_.wire == DType::BF16 ? "bf16" : "fp32",
               zero->num_buckets() > 1 && reduce_.overlap && !pipeline_ ? "overlapped with the backward"
                                                                       : "after the backward");
  if (pipeline_) {  // [pp]
    std::string split;
    for (int st = 0; st < groups_.pp_size; ++st) {
      const auto [b, e] = pipeline_stage_layers(cfg_.model.num_layers, groups_.pp_size, st);
      split += fmt::format("{}{}", st ? "+" : "", e - b);
    }
    fmt::print("pipeline parallel: PP size {}, layers per stage {} (1F1B schedule)\n", groups_.pp_size, split);
  }
  fmt::print("{}", model_summary(cfg_.model, model_.full_params_info()));
  if (groups_.tp_size == 1 && groups_.pp_size == 1)  // the plan is of the whole model on one rank
    fmt::print("{}", format_memory_plan(plan_memory(cfg_.model, micro_batch_token_budget(cfg_), cfg_.recompute,
                                                    backend_.activation_dtype(), workspace_query(backend_))));
  fmt::print("train corpus: {} ({} sequences, {} clusters); validation: {}\n", cfg_.train_corpus,
             train_corpus_->num_sequences(), train_corpus_->num_clusters(),
             valid_corpus_ ? fmt::format("{} sequences, {} batches", valid_corpus_->num_sequences(),
                                         validation_.global_batches)
                           : std::string("none"));
  // Global batch = micro × world × accumulation / (TP × PP): model-parallel ranks share their batch.
  const bool planned_later = cfg_.time_budget_s > 0 && !state_.budget;
  fmt::print("batch: {} × {} DP rank(s) × {} accumulation; max length {}; lr {} (min {}, {}, {}){}\n",
             dc.micro_batch_tokens > 0 ? fmt::format("{} tokens (packed)", dc.micro_batch_tokens)
                                       : fmt::format("{} sequences", dc.micro_batch_size),
             groups_.dp_size, dc.accumulate_grad_batches, dc.max_seq_length, schedule_.max_lr, schedule_.min_lr,
             planned_later ? fmt::format("warmup and steps from the {} s time budget", cfg_.time_budget_s)
                           : fmt::format("warmup {}, {} steps", schedule_.warmup_steps, schedule_.total_steps),
             schedule_kind_name(schedule_.kind),
             cfg_.recipe_label.empty() ? std::string() : fmt::format("; recipe {}", cfg_.recipe_label));
  fmt::print("AdamW: beta1 {}, beta2 {}, eps {}, weight decay {}, clip {}{}\n", cfg_.optim.beta1, cfg_.optim.beta2,
             cfg_.optim.eps, cfg_.optim.weight_decay, cfg_.optim.clip_grad,
             schedule_.kind == ScheduleKind::WarmupStableDecay
                 ? fmt::format("; lr decay over the last {} of the steps", schedule_.decay_fraction)
                 : std::string());
  std::fflush(stdout);
}

// Forward/backward over a step's micro-batches into freshly zeroed gradients; returns the loss sum.
double Trainer::compute_gradients(const StepBatch& batch) {
  model_.zero_grads();
  const float grad_scale = 1.0f / static_cast<float>(batch.global_num_labels);
  double loss_acc = 0;
  if (pipeline_) {
    loss_acc = pipeline_->train_step(batch.micro, grad_scale).loss_sum;  // [pp] 1F1B; loss on every stage
  } else {
    // [dist] The last micro-batch's backward starts the gradient reduction as buckets finish.
    for (size_t i = 0; i < batch.micro.size(); ++i) {
      if (i + 1 == batch.micro.size()) model_.set_grad_ready_hook(optim_->grad_ready_hook());
      loss_acc += model_.forward_backward(batch.micro[i], grad_scale).loss_sum;
    }
    model_.set_grad_ready_hook(nullptr);
  }
  return loss_acc;
}

void Trainer::apply_budget(const BudgetPlan& p) {
  schedule_.total_steps = p.num_steps;
  schedule_.warmup_steps = p.warmup_steps;
  last_step_ = stop_step(p.num_steps);
}

// [dist] Each number as the largest over the ranks, so that every rank plans alike and the plan holds for
// the slowest (the stop guard stops all ranks when any one is out of time). Every rank adds its values
// into its own slots of zeros, so the sums are exact and identical everywhere.
void Trainer::slowest_rank(double (&m)[3], const char* what) {
  const int n = comm_.world_size();
  if (n <= 1) return;
  std::vector<double> all(static_cast<size_t>(3 * n), 0.0);
  std::copy(m, m + 3, all.begin() + 3 * comm_.rank());
  comm_.allreduce_sum(all.data(), all.size(), what);
  for (int i = 0; i < 3; ++i) {
    m[i] = all[static_cast<size_t>(i)];
    for (int r = 1; r < n; ++r) m[i] = std::max(m[i], all[static_cast<size_t>(3 * r + i)]);
  }
}

// --time-budget: times a step (forward, backward, reduction, gradient norm) and a validation pass, then
// fixes the schedule's length to what the rest of the budget holds. The timed steps change nothing:
// the first real step recomputes the gradients and the data position is rewound, so the run trains
// exactly as a --num-steps run of the planned length would (tested).
void Trainer::plan_time_budget() {
  constexpr int kUntimed = 1, kTimed = 3;  // the first step pays one-time allocations and plans
  const DataPosition start = state_.data;
  double timed_s = 0;
  for (int i = 0; i < kUntimed + kTimed; ++i) {
    const auto t0 = Clock::now();
    const StepBatch batch = data_.next_step(state_.data, groups_.dp_rank, groups_.dp_size);
    compute_gradients(batch);
    optim_->reduce_gradients();
    (void)optim_->grad_norm();  // reads the norm on the host: the step's device work is done
    if (i >= kUntimed) timed_s += seconds_since(t0);
  }
  state_.data = start;
  double val_s = 0;
  if (valid_corpus_) {
    const auto t0 = Clock::now();
    validate();
    val_s = seconds_since(t0);
  }
  // A checkpoint is not timed (it would leave one behind): weights and both moments in fp32 at an
  // assumed 0.5 GB/s. Any slower save raises the reserve the run keeps for its last one.
  const double ckpt_s =
      checkpointing_ ? 0.05 + 12.0 * static_cast<double>(cfg_.model.num_parameters()) / 0.5e9 : 0.0;
  double m[3] = {timed_s / kTimed, val_s, seconds_since(job_start_)};
  slowest_rank(m, "time budget plan");
  const double step_s = std::max(m[0], 1e-6), eval_s = m[1] + ckpt_s, elapsed = m[2];
  const double budget = cfg_.time_budget_s;
  // Left unplanned: the report and exit, and jitter in the step time.
  const double usable = budget - elapsed - (0.5 + 0.02 * budget);
  const int64_t vci = cfg_.val_check_interval;
  const auto cost = [&](int64_t n) { return static_cast<double>(n) * step_s + static_cast<double>((n + vci - 1) / vci) * eval_s; };
  int64_t n = 0;
  if (usable > 0) {
    const double fit = std::floor(usable / (step_s + eval_s / static_cast<double>(vci)));
    n = static_cast<int64_t>(std::min(fit, static_cast<double>(cfg_.num_steps)));
    while (n > 0 && cost(n) > usable) --n;
  }
  ESM2_CHECK(n >= 1,
             "train: --time-budget {} s holds no training step: {:.1f} s went to start-up and timing, a step takes "
             "{:.3f} s and a validation + checkpoint {:.2f} s",
             budget, elapsed, step_s, eval_s);
  const int64_t warmup = cfg_.warmup_rule ? cfg_.warmup_rule->steps(n) : cfg_.schedule.warmup_steps;
  ESM2_CHECK(warmup < n, "train: --time-budget {} s holds {} steps, not more than --warmup-steps {}; give a longer "
             "budget or fewer warm-up steps", budget, n, warmup);
  state_.budget = BudgetPlan{budget, n, warmup, step_s, eval_s};
  apply_budget(*state_.budget);
  eval_reserve_s_ = eval_s;
  // A schedule whose learning rate up to its decay does not depend on its length (warmup_stable_decay,
  // constant) can take a new length once the steps have been timed in the run itself: see
  // replan_time_budget. At a fifth of the plan, after the warm-up, before the decay.
  if (schedule_.kind == ScheduleKind::WarmupStableDecay || schedule_.kind == ScheduleKind::Constant) {
    const int64_t at = std::max(warmup + 1, (n + 4) / 5);
    if (at + 1 < n && at >= 4 && learning_rate(schedule_, at) == schedule_.max_lr) replan_at_ = at;
  }
  if (root_) {
    fmt::print("time budget {} s: {:.1f} s start-up and timing; a step {:.4f} s, a validation + checkpoint {:.2f} s "
               "→ {} steps (warmup {}{}), about {:.0f} s of training\n",
               budget, elapsed, step_s, eval_s, n, warmup, n == cfg_.num_steps ? ", capped by --num-steps" : "",
               cost(n));
    std::fflush(stdout);
  }
}

// --time-budget, once, a fifth of the way in: the plan came from a few steps timed at start-up, which
// misjudge the steady state (on an H100, 8M's steps ran 14% faster than timed, so a 30 s budget ended
// after 21 s). The steps since the second one give the real rate; the schedule's length becomes what
// the rest of the budget holds, as long as the steps so far stay before the new decay, so the run is
// still exactly the --num-steps run of the final length with the plan's warm-up (the final plan is what
// the checkpoints record). Only in the call that made the plan: a resumed run keeps the recorded one.
void Trainer::replan_time_budget() {
  replan_at_ = 0;
  BudgetPlan& p = *state_.budget;
  const int64_t now = state_.step, timed = now - replan_from_step_;
  if (timed <= 0) return;
  double m[3] = {(seconds_since(replan_t0_) - replan_eval_s_) / static_cast<double>(timed), eval_reserve_s_,
                 seconds_since(job_start_)};
  slowest_rank(m, "time budget re-plan");
  const double step_s = std::max(m[0], 1e-6), eval_s = m[1], elapsed = m[2];
  const double usable = p.budget_s - elapsed - (0.5 + 0.02 * p.budget_s);
  const int64_t vci = cfg_.val_check_interval;
  // The steps after now, the validations at multiples of the interval and the final one.
  // (A validation due at step now itself runs after this re-plan, so [now, n].)
  const auto cost = [&](int64_t n) {
    const int64_t evals = n / vci - (now - 1) / vci + (n % vci != 0 ? 1 : 0);
    return static_cast<double>(n - now) * step_s + static_cast<double>(evals) * eval_s;
  };
  int64_t n = now;
  if (usable > 0) {
    const double fit = std::floor(usable / (step_s + eval_s / static_cast<double>(vci)));
    n = now + static_cast<int64_t>(std::min(fit, static_cast<double>(cfg_.num_steps - now)));
    while (n > now && cost(n) > usable) --n;
  }
  ScheduleConfig next = schedule_;
  next.total_steps = n;
  // Too short for the steps so far to stay before the decay: keep the plan (the guard still stops in time).
  if (n == p.num_steps || n <= now + 1 || learning_rate(next, now) != schedule_.max_lr) return;
  if (root_) {
    fmt::print("time budget: the steps ran at {:.4f} s (planned {:.4f} s) → {} steps instead of {}\n", step_s,
               p.step_s, n, p.num_steps);
    std::fflush(stdout);
  }
  p.num_steps = n;
  p.step_s = step_s;
  apply_budget(p);
}

// --time-budget's guard: the steps were planned from a short timing; if they run slower, the run stops
// early enough for its last validation and checkpoint (with a schedule cut short).
bool Trainer::over_budget() const {
  if (cfg_.time_budget_s <= 0 || state_.step >= last_step_) return false;
  return seconds_since(job_start_) + throughput_.ema_step_s() + eval_reserve_s_ > cfg_.time_budget_s;
}

// Forward/backward over the step's micro-batches and the gradient reduction; the optimizer update is
// left to the caller, which first applies the non-finite policy.
StepOutcome Trainer::train_step() {
  const auto t0 = Clock::now();
  StepOutcome s;
  s.data_before = state_.data;
  s.batch = data_.next_step(state_.data, groups_.dp_rank, groups_.dp_size);
  if (s.batch.global_num_labels == 0) {
    // The masking selected no position in the whole step (possible with a small --mask-prob and short
    // sequences): there is no loss to learn from. The step is dropped like a skipped non-finite one, on
    // every rank alike (the count is global), and the run goes on; its data position has advanced, so a
    // resumed run drops the same step.
    ++state_.skipped_steps;
    if (root_) fmt::print("warning: step {} skipped: the masking selected no position (--mask-prob {}); {} skipped so far\n",
                          state_.step, cfg_.data.mask_prob, state_.skipped_steps);
    s.loss = std::nan("");
    s.lr = learning_rate(schedule_, state_.step);
    s.seconds = seconds_since(t0);
    return s;
  }
  double loss_acc = compute_gradients(s.batch);
  // Test-only fault, injected before the reduction so that it reaches what the optimizer reads
  // (ZeRO-1 reads its reduced shard, not the model's gradient buffer).
  if (faults_.poison_grad_at(state_.step)) {
    const float nan = std::nanf("");
    backend_.copy_to_device(model_.grad_data(), &nan, sizeof nan);
  }
  optim_->reduce_gradients();  // [dist] all-reduce, or ZeRO-1 reduce-scatter
  if (dp_.world_size() > 1) dp_.allreduce_sum(&loss_acc, 1, "loss all-reduce");
  s.loss = loss_acc / static_cast<double>(s.batch.global_num_labels);
  s.lr = learning_rate(schedule_, state_.step);
  s.grad_norm = optim_->grad_norm();
  if (s.finite()) optim_->step_with_norm(s.lr, s.grad_norm);
  else on_nonfinite_step(s);
  s.seconds = seconds_since(t0);
  return s;
}

// --on-nonfinite skip: the update is dropped and counted. stop: the weights (not yet updated) are
// saved as the last good state if they are finite (their loss, and their validation loss when
// there is validation data); otherwise the previous checkpoint stays the last good one.
void Trainer::on_nonfinite_step(const StepOutcome& s) {
  if (cfg_.on_nonfinite == OnNonfinite::Skip) {
    ++state_.skipped_steps;
    if (root_) fmt::print("warning: step {} skipped: non-finite loss/gradient (loss {}, grad norm {}); {} skipped so far\n",
                          state_.step, s.loss, s.grad_norm, state_.skipped_steps);
    return;
  }
  state_.data = s.data_before;
  const std::string what = fmt::format("{} at step {} (loss {}, grad norm {})",
                                       std::isfinite(s.loss) ? "gradient" : "loss", state_.step, s.loss, s.grad_norm);
  const bool good = std::isfinite(s.loss) && (!valid_corpus_ || std::isfinite(mean_loss(validate())));
  if (checkpointing_ && good) {
    save_checkpoint(ckpt_root_, checkpoint_dir_name(state_.step), model_, *optim_, groups_.dp_rank == 0, state_, cfg_,
                    start_.extra_tensors);  // [dist] collective
    comm_.barrier("non-finite stop checkpoint");
    if (root_) write_run_report();
    comm_.barrier("non-finite stop report");
    // A finite loss with a non-finite gradient went wrong inside the backward: resuming this state repeats
    // the step bitwise, and ESM2_CHECK_FINITE names the op (docs/reliability.md).
    fail("train: non-finite {}; stopped after saving the last good state to {}{}", what,
         (ckpt_root_ / checkpoint_dir_name(state_.step)).string(),
         std::isfinite(s.loss) ? " (to find the op where it starts: resume it with ESM2_CHECK_FINITE=1 in the environment)"
                               : "");
  }
  stop_nonfinite(what);
}

// Writes the report and ends the job with the error, naming the checkpoint that stays the last good
// state. [dist] Every rank gets here together; the error ends the job on every rank (abort_job), so
// the others wait for rank 0's report.
void Trainer::stop_nonfinite(const std::string& what) {
  if (root_) write_run_report();
  comm_.barrier("non-finite stop report");
  const auto latest = checkpointing_ ? find_latest_checkpoint(ckpt_root_) : std::nullopt;
  fail("train: non-finite {}; stopped; {}", what,
       latest ? fmt::format("the last good state is {} (no checkpoint of this state was saved)", latest->string())
              : std::string("no good state was saved"));
}

void Trainer::log_step(const StepOutcome& s) {
  result_.last_train_loss = s.loss;
  if (state_.step % cfg_.log_every_n_steps != 0 && state_.step != last_step_) return;
  StepMetrics m;
  m.step = state_.step;
  m.loss = s.loss;
  m.lr = s.lr;
  m.grad_norm = s.grad_norm;
  m.tokens_per_s = throughput_.take_window_tokens_per_s();
  m.packing_efficiency = s.batch.global_token_slots > 0 ? static_cast<double>(s.batch.global_num_tokens) /
                                                              static_cast<double>(s.batch.global_token_slots)
                                                        : 0.0;
  m.eta_s = throughput_.eta_s(last_step_ - state_.step);
  m.consumed_tokens = state_.consumed_tokens;
  m.num_steps = last_step_;
  logger_->log_step(m);
  state_.history.push_back({{"step", m.step}, {"train_loss", metric_json(s.loss)}, {"lr", s.lr},
                            {"grad_norm", metric_json(s.grad_norm)}, {"tokens_per_s", m.tokens_per_s}});
}

std::pair<bool, bool> Trainer::stop_decision() const {
  bool out_of_time = (cfg_.max_time_s > 0 && wall_s() >= cfg_.max_time_s) || over_budget();
  bool signal = stop_.requested();
  if (comm_.world_size() > 1) {
    // [dist] Clocks and signals are per rank: every rank must take the same decision this step.
    double flags[2] = {out_of_time ? 1.0 : 0.0, signal ? 1.0 : 0.0};
    comm_.allreduce_sum(flags, 2, "stop decision all-reduce");
    out_of_time = flags[0] > 0;
    signal = flags[1] > 0;
  }
  return {out_of_time, signal};
}

LossSum Trainer::validate() {
  const LossSum v = run_validation(model_, pipeline_.get(), validation_, dp_);
  ESM2_CHECK(v.num_labels > 0, "validation: no labelled positions in the validation batches");
  return v;
}

// A non-finite validation loss goes through --on-nonfinite like a training one: the state is never
// checkpointed (so never the best or latest good state); stop ends the run, skip goes on.
void Trainer::validate_and_checkpoint(bool do_validation, bool final_save) {
  const auto t_start = Clock::now();
  validate_and_checkpoint_timed(do_validation, final_save);
  const double took = seconds_since(t_start);
  eval_reserve_s_ = std::max(eval_reserve_s_, took);
  replan_eval_s_ += took;
}

void Trainer::validate_and_checkpoint_timed(bool do_validation, bool final_save) {
  double val_loss = std::nan("");
  if (do_validation && valid_corpus_) {
    const auto t0 = Clock::now();
    const LossSum v = validate();
    val_loss = mean_loss(v);
    logger_->log_validation(state_.step, val_loss, v.num_labels, seconds_since(t0));
    state_.history.push_back({{"step", state_.step}, {"val_loss", metric_json(val_loss)},
                              {"val_ppl", metric_json(std::exp(val_loss))}});
    result_.last_val_loss = val_loss;
    if (!std::isfinite(val_loss)) {
      if (cfg_.on_nonfinite == OnNonfinite::Stop) stop_nonfinite(fmt::format("validation loss at step {} ({})", state_.step, val_loss));
      if (root_) fmt::print("warning: validation at step {} is non-finite; this state is not checkpointed\n", state_.step);
      return;
    }
    if (result_.best_val_loss < 0 || val_loss < result_.best_val_loss) result_.best_val_loss = val_loss;
  }
  if (!checkpointing_) return;
  if (!(cfg_.save_last_checkpoint || cfg_.save_best_checkpoint) && !final_save) return;
  const std::string name = checkpoint_dir_name(state_.step);
  if (root_) {
    // Recorded before saving so that the checkpoint's own state lists it (a resumed run prunes it later).
    auto& list = state_.checkpoints;
    list.erase(std::remove_if(list.begin(), list.end(), [&](const CheckpointRecord& r) { return r.name == name; }),
               list.end());
    list.push_back({name, state_.step, std::isnan(val_loss) ? val_loss : monitored(cfg_, val_loss)});
  }
  // [dist] collective: ZeRO-1 moments to dp rank 0, then the model-parallel pieces to world rank 0
  // while it writes.
  save_checkpoint(ckpt_root_, name, model_, *optim_, groups_.dp_rank == 0, state_, cfg_, start_.extra_tensors);
  if (!root_) return;
  prune_checkpoints(ckpt_root_, state_, cfg_.save_best_checkpoint ? cfg_.save_top_k : 0,
                    cfg_.save_last_checkpoint || final_save);
}

void Trainer::write_run_report() const {
  if (!cfg_.write_report) return;
  const std::string warn = write_report(run_dir_, report_of_run(cfg_, backend_, state_, result_, wall_s()));
  if (!warn.empty()) fmt::print("warning: {}\n", warn);
}

TrainResult Trainer::run() {
  print_banner();
  run_start_ = Clock::now();
  if (cfg_.time_budget_s > 0 && !state_.budget) plan_time_budget();
  if (root_ && start_.resumed && state_.step >= last_step_)
    fmt::print("esm2 train: the run is at step {}, where this call stops ({} {}): nothing to train\n", state_.step,
               cfg_.early_stop_on_step > 0 && cfg_.early_stop_on_step < cfg_.num_steps ? "--early-stop-on-step"
                                                                                        : "--num-steps",
               last_step_);
  while (state_.step < last_step_) {
    const StepOutcome s = train_step();
    state_.step += 1;
    state_.consumed_tokens += s.batch.global_num_tokens;
    throughput_.add_step(s.seconds, s.batch.global_num_tokens, state_.step > 1 || start_.resumed);
    log_step(s);
    if (replan_at_ > 0) {
      if (state_.step == 2) replan_t0_ = Clock::now(), replan_from_step_ = 2, replan_eval_s_ = 0;
      if (state_.step == replan_at_) replan_time_budget();
    }
    const auto [out_of_time, signal] = stop_decision();
    const bool val_due = state_.step % cfg_.val_check_interval == 0;
    const bool at_end = state_.step == last_step_ || out_of_time;
    if (val_due || at_end || signal) validate_and_checkpoint(val_due || at_end, at_end || signal);
    const std::string saved_note = checkpointing_ ? "checkpoint saved" : "no checkpoint (--disable-checkpointing)";
    if (out_of_time && state_.step < last_step_) {
      if (root_) {
        if (cfg_.time_budget_s > 0)
          fmt::print("esm2 train: steps slower than planned: stopped at step {} of {} to end within the --time-budget "
                     "of {:.0f} s; {}\n", state_.step, last_step_, cfg_.time_budget_s, saved_note);
        else
          fmt::print("esm2 train: --max-time {:.0f} s reached at step {}; {}, stopping\n",
                     cfg_.max_time_s, state_.step, saved_note);
      }
      break;
    }
    if (signal) {
      result_.stopped_by_signal = true;
      // The stop is agreed over all ranks: the signal may have reached another rank only.
      if (root_)
        fmt::print("esm2 train: {} received at step {}; {}, exiting\n",
                   stop_.signal_number() ? fmt::format("signal {}", stop_.signal_number())
                                         : std::string("a stop signal (on another rank)"),
                   state_.step, saved_note);
      break;
    }
  }
  result_.steps_done = state_.step;
  result_.real_tokens_per_s = throughput_.training_tokens_per_s();
  result_.wall_time_s = wall_s();
  if (root_) {
    if (cfg_.write_report) write_run_report();
    fmt::print("esm2 train: done at step {}; training {:.0f} real tokens/s (steps only); wall time {:.1f} s "
               "(incl. validation and checkpoints){}\n",
               state_.step, result_.real_tokens_per_s, result_.wall_time_s,
               cfg_.write_report ? "; report " + (run_dir_ / "report.html").string() : std::string());
  }
  return result_;
}

}  // namespace

int64_t micro_batch_token_budget(const TrainConfig& c) {
  return c.data.micro_batch_tokens > 0 ? c.data.micro_batch_tokens
                                       : static_cast<int64_t>(c.data.micro_batch_size) * c.data.max_seq_length;
}

TrainResult run_training(const TrainConfig& cfg, Communicator& comm) {
  std::unique_ptr<Backend> backend = make_backend(cfg.backend, cfg.precision, cfg.threads);
  return run_training(cfg, comm, *backend);
}

TrainResult run_training(const TrainConfig& cfg, Communicator& comm, Backend& backend) {
  return Trainer(cfg, comm, backend).run();
}

}  // namespace esm2
