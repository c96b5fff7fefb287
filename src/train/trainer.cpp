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
  ESM2_CHECK(!c.train_corpus.empty(), "train: --train-data (a corpus made by `esm2 prepare`) is required");
  ESM2_CHECK(c.num_steps >= 1, "train: --num-steps must be >= 1 (got {})", c.num_steps);
  ESM2_CHECK(c.val_check_interval >= 1, "train: --val-check-interval must be >= 1 (got {})", c.val_check_interval);
  ESM2_CHECK(c.log_every_n_steps >= 1, "train: --log-every-n-steps must be >= 1 (got {})", c.log_every_n_steps);
  ESM2_CHECK(c.data.max_seq_length <= c.model.max_position_embeddings,
             "train: --max-seq-length {} exceeds the model's max_position_embeddings {}", c.data.max_seq_length,
             c.model.max_position_embeddings);
  ESM2_CHECK(c.schedule.max_lr > 0, "train: --lr must be > 0");
  ESM2_CHECK(c.schedule.min_lr >= 0 && c.schedule.min_lr <= c.schedule.max_lr,
             "train: --min-lr must be in [0, --lr] (got {} with --lr {})", c.schedule.min_lr, c.schedule.max_lr);
  ESM2_CHECK(c.schedule.warmup_steps >= 0, "train: --warmup-steps must be >= 0");
  ESM2_CHECK(c.optim.weight_decay >= 0, "train: --weight-decay must be >= 0");
  ESM2_CHECK(c.optim.beta1 >= 0 && c.optim.beta1 < 1 && c.optim.beta2 >= 0 && c.optim.beta2 < 1,
             "train: Adam betas must be in [0, 1)");
  ESM2_CHECK(c.limit_val_batches > 0, "train: --limit-val-batches must be > 0 (got {})", c.limit_val_batches);
  ESM2_CHECK(c.limit_val_batches < 1 || c.limit_val_batches == std::floor(c.limit_val_batches),
             "train: --limit-val-batches must be a fraction in (0,1) or a whole number of batches (got {})",
             c.limit_val_batches);
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

struct Validation {
  std::vector<MicroBatch> batches;  // this rank's share, fixed masks
  int64_t global_batches = 0;
};

Validation make_validation(const Corpus& valid, const DataConfig& dc, double limit, const Communicator& comm) {
  Validation v;
  int64_t limit_batches = -1;
  if (limit < 1.0) {
    // A fraction of the whole set, counted in global batches (dp_world micro-batches each).
    const auto all = validation_batches(valid, dc, -1, 0, 1);
    const int64_t global_total = (static_cast<int64_t>(all.size()) + comm.world_size() - 1) / comm.world_size();
    limit_batches = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(limit * static_cast<double>(global_total))));
  } else {
    limit_batches = static_cast<int64_t>(limit);
  }
  v.batches = validation_batches(valid, dc, limit_batches, comm.rank(), comm.world_size());
  v.global_batches = limit_batches;
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

double monitored(const TrainConfig& cfg, double val_loss) {
  // val_ppl = exp(val_loss) orders checkpoints identically; stored as configured for the records.
  return cfg.metric_to_monitor == MonitorMetric::ValPpl ? std::exp(val_loss) : val_loss;
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
  validate_config(cfg, comm);
  const bool root = comm.is_root();
  const fs::path run_dir = fs::path(cfg.result_dir) / cfg.experiment_name;
  const fs::path ckpt_root = run_dir / "checkpoints";
  if (root) check_writable(run_dir);
  comm.barrier("results directory check");
  // [dist] DP × TP × PP grid (src/parallel/parallel_layout.h): data is split over DP only; every rank of a
  // DP replica's tensor/pipeline group sees the same batch.
  ParallelGroups groups = make_parallel_groups(comm, cfg.tensor_parallel, cfg.pipeline_parallel);
  Communicator& dp = *groups.dp;
  const bool dp_root = groups.dp_rank == 0;

  StopSignal stop;

  // ---- data ----
  auto train_corpus = std::make_shared<const Corpus>(Corpus::open(cfg.train_corpus));
  const DataConfig& dc = cfg.data;
  TrainData data(train_corpus, dc);
  std::unique_ptr<Corpus> valid_corpus;
  Validation validation;
  if (!cfg.valid_corpus.empty()) {
    valid_corpus = std::make_unique<Corpus>(Corpus::open(cfg.valid_corpus));
    validation = make_validation(*valid_corpus, dc, cfg.limit_val_batches, dp);
  }

  // ---- model, optimizer, state ----
  Esm2Model model(cfg.model, backend, ModelParallel{groups.tp.get(), groups.pp.get(), groups.mp.get()});
  model.set_recompute(cfg.recompute);
  // [pp] 1F1B over the pipeline group when the layers are split into stages.
  const std::unique_ptr<PipelineSchedule> pipeline =
      groups.pp_size > 1 ? std::make_unique<PipelineSchedule>(model) : nullptr;
  // [dist] ZeRO-1 (moments sharded over ranks) when world > 1, unless --no-distributed-optimizer.
  GradReduceOptions reduce;
  reduce.bucket_elements = static_cast<size_t>(cfg.ddp_bucket_size);
  reduce.overlap = cfg.overlap_grad_reduce;
  reduce.wire = cfg.grad_reduce_dtype;
  const std::unique_ptr<Optimizer> optim_owner =
      make_optimizer(model, cfg.optim, dp, cfg.distributed_optimizer, reduce);
  Optimizer& optim = *optim_owner;
  TrainerState state;
  std::string start_note = "from scratch";
  std::optional<fs::path> resume_from;
  // Tensors of the starting checkpoint that training does not touch (a published model's contact
  // head): carried into every checkpoint so fine-tuning loses nothing.
  std::map<std::string, RawTensor> extra_tensors;
  if (cfg.resume_if_exists) resume_from = find_latest_checkpoint(ckpt_root);
  if (resume_from) {
    load_checkpoint(*resume_from, model, &optim, &state, &extra_tensors);
    start_note = fmt::format("resumed from {} (step {})", resume_from->string(), state.step);
  } else if (!cfg.restore_from_checkpoint_path.empty()) {
    const fs::path p = cfg.restore_from_checkpoint_path;
    if (is_training_checkpoint(p)) {
      load_checkpoint(p, model, &optim, &state, &extra_tensors);
      start_note = fmt::format("restored from {} (step {})", p.string(), state.step);
    } else {
      load_checkpoint(p, model, nullptr, nullptr, &extra_tensors);
      start_note = fmt::format("weights from {} (fresh optimizer)", p.string());
    }
  } else if (!cfg.init_from.empty()) {
    load_checkpoint(cfg.init_from, model, nullptr, nullptr, &extra_tensors);
    start_note = fmt::format("weights from {} (fresh optimizer)", cfg.init_from);
  } else {
    model.init_weights(cfg.data.seed);
  }

  MetricsLogger logger(run_dir, root, cfg.create_tensorboard_logger, state.step > 0);
  if (root) {
    fmt::print("esm2 train: {} on {} ({}), {} rank(s); {}\n", cfg.experiment_name, backend.name(),
               precision_label(backend), comm.world_size(), start_note);
    // [dist]
    fmt::print("parallel layout: DP {} × TP {} × PP {} ({} communicator), optimizer {}\n", groups.dp_size,
               groups.tp_size, groups.pp_size, comm.name(),
               groups.dp_size > 1 && cfg.distributed_optimizer ? "ZeRO-1 (moments sharded over ranks)"
                                                                  : "AdamW (replicated)");
    if (const auto* zero = dynamic_cast<const ZeroAdamW*>(&optim))
      fmt::print("gradient reduce-scatter: {} bucket(s) of ≤ {} parameters, {} on the wire, {}\n",
                 zero->num_buckets(), zero->bucket_length(), reduce.wire == DType::BF16 ? "bf16" : "fp32",
                 zero->num_buckets() > 1 && reduce.overlap && !pipeline ? "overlapped with the backward"
                                                                       : "after the backward");
    if (pipeline) {  // [pp]
      std::string split;
      for (int st = 0; st < groups.pp_size; ++st) {
        const auto [b, e] = pipeline_stage_layers(cfg.model.num_layers, groups.pp_size, st);
        split += fmt::format("{}{}", st ? "+" : "", e - b);
      }
      fmt::print("pipeline parallel: PP size {}, layers per stage {} (1F1B schedule)\n", groups.pp_size, split);
    }
    fmt::print("{}", model_summary(cfg.model, model.full_params_info()));
    if (groups.tp_size == 1 && groups.pp_size == 1)  // the plan is of the whole model on one rank
      fmt::print("{}", format_memory_plan(plan_memory(cfg.model, micro_batch_token_budget(cfg), cfg.recompute,
                                                      backend.activation_dtype())));
    fmt::print("train corpus: {} ({} sequences, {} clusters); validation: {}\n", cfg.train_corpus,
               train_corpus->num_sequences(), train_corpus->num_clusters(),
               valid_corpus ? fmt::format("{} sequences, {} batches", valid_corpus->num_sequences(),
                                          validation.global_batches)
                            : std::string("none"));
    // Global batch = micro × world × accumulation / (TP × PP): model-parallel ranks share their batch.
    fmt::print("batch: {} × {} DP rank(s) × {} accumulation; max length {}; lr {} (min {}, warmup {}, {} steps, {})\n",
               dc.micro_batch_tokens > 0 ? fmt::format("{} tokens (packed)", dc.micro_batch_tokens)
                                         : fmt::format("{} sequences", dc.micro_batch_size),
               groups.dp_size, dc.accumulate_grad_batches, dc.max_seq_length, cfg.schedule.max_lr,
               cfg.schedule.min_lr, cfg.schedule.warmup_steps, cfg.schedule.total_steps,
               schedule_kind_name(cfg.schedule.kind));
    std::fflush(stdout);
  }

  TrainResult result;
  const int64_t last_step = cfg.early_stop_on_step > 0 ? std::min(cfg.early_stop_on_step, cfg.num_steps) : cfg.num_steps;
  const bool checkpointing = !cfg.disable_checkpointing;
  double ema_step_s = 0;
  double tokens_since_log = 0, seconds_since_log = 0, total_tokens_timed = 0, total_seconds_timed = 0;
  const auto run_start = Clock::now();
  const FaultInjection faults = fault_injection_from_env();  // test-only: empty unless ESM2_FAULT_INJECT is set

  auto validate_and_checkpoint = [&](bool do_validation, bool final_save) {
    double val_loss = std::nan("");
    if (do_validation && valid_corpus) {
      const auto t0 = Clock::now();
      const LossSum v = run_validation(model, pipeline.get(), validation, dp);
      ESM2_CHECK(v.num_labels > 0, "validation: no labelled positions in the validation batches");
      val_loss = v.loss_sum / static_cast<double>(v.num_labels);
      result.last_val_loss = val_loss;
      if (result.best_val_loss < 0 || val_loss < result.best_val_loss) result.best_val_loss = val_loss;
      logger.log_validation(state.step, val_loss, v.num_labels, seconds_since(t0));
      nlohmann::json h = {{"step", state.step}, {"val_loss", val_loss}, {"val_ppl", std::exp(val_loss)}};
      state.history.push_back(h);
    }
    if (!checkpointing) return;
    if (!(cfg.save_last_checkpoint || cfg.save_best_checkpoint) && !final_save) return;
    const std::string name = checkpoint_dir_name(state.step);
    if (root) {
      // Recorded before saving so that the checkpoint's own state lists it (a resumed run prunes it later).
      state.checkpoints.erase(std::remove_if(state.checkpoints.begin(), state.checkpoints.end(),
                                             [&](const CheckpointRecord& r) { return r.name == name; }),
                              state.checkpoints.end());
      state.checkpoints.push_back({name, state.step, std::isnan(val_loss) ? val_loss : monitored(cfg, val_loss)});
    }
    // [dist] collective: ZeRO-1 moments to dp rank 0, then the model-parallel pieces to world rank 0
    // while it writes.
    save_checkpoint(ckpt_root, name, model, optim, dp_root, state, cfg, extra_tensors);
    if (!root) return;
    prune_checkpoints(ckpt_root, state, cfg.save_best_checkpoint ? cfg.save_top_k : 0,
                      cfg.save_last_checkpoint || final_save);
  };

  while (state.step < last_step) {
    const auto t0 = Clock::now();
    const DataPosition data_before = state.data;  // a stop on a non-finite step checkpoints the state before it
    StepBatch batch = data.next_step(state.data, groups.dp_rank, groups.dp_size);
    ESM2_CHECK(batch.global_num_labels > 0, "train: step {} has no labelled positions", state.step);
    model.zero_grads();
    const float grad_scale = 1.0f / static_cast<float>(batch.global_num_labels);
    double loss_acc = 0;
    if (pipeline) {
      loss_acc = pipeline->train_step(batch.micro, grad_scale).loss_sum;  // [pp] 1F1B; loss on every stage
    } else {
      // [dist] The last micro-batch's backward starts the gradient reduction as buckets finish.
      for (size_t i = 0; i < batch.micro.size(); ++i) {
        if (i + 1 == batch.micro.size()) model.set_grad_ready_hook(optim.grad_ready_hook());
        loss_acc += model.forward_backward(batch.micro[i], grad_scale).loss_sum;
      }
      model.set_grad_ready_hook(nullptr);
    }
    // Test-only fault, injected before the reduction so that it reaches what the optimizer reads
    // (ZeRO-1 reads its reduced shard, not the model's gradient buffer).
    if (faults.poison_grad_at(state.step)) {
      const float nan = std::nanf("");
      backend.copy_to_device(model.grad_data(), &nan, sizeof nan);
    }
    optim.reduce_gradients();  // [dist] all-reduce, or ZeRO-1 reduce-scatter
    if (dp.world_size() > 1) dp.allreduce_sum(&loss_acc, 1, "loss all-reduce");
    const double loss = loss_acc / static_cast<double>(batch.global_num_labels);
    const double lr = learning_rate(cfg.schedule, state.step);
    const double gnorm = optim.grad_norm();
    const bool finite = std::isfinite(loss) && std::isfinite(gnorm);
    if (!finite) {
      if (cfg.on_nonfinite == OnNonfinite::Stop) {
        state.data = data_before;
        if (checkpointing) {
          // The weights are still those of the last good step: save them for inspection/resume.
          save_checkpoint(ckpt_root, checkpoint_dir_name(state.step), model, optim, dp_root, state, cfg,
                          extra_tensors);  // [dist] collective
          // [dist] The error below ends the job on every rank (abort_job): the other ranks must not get
          // there while rank 0 is still writing.
          comm.barrier("non-finite stop checkpoint");
        }
        fail("train: non-finite {} at step {} (loss {}, grad norm {}); stopped{}", std::isfinite(loss) ? "gradient" : "loss",
             state.step, loss, gnorm,
             checkpointing ? fmt::format(" after saving the last good state to {}",
                                         (ckpt_root / checkpoint_dir_name(state.step)).string())
                           : "");
      }
      ++state.skipped_steps;
      if (root) fmt::print("warning: step {} skipped: non-finite loss/gradient (loss {}, grad norm {}); {} skipped so far\n",
                           state.step, loss, gnorm, state.skipped_steps);
    } else {
      optim.step_with_norm(lr, gnorm);
    }
    state.step += 1;
    state.consumed_tokens += batch.global_num_tokens;
    const double step_s = seconds_since(t0);
    if (state.step > 1 || resume_from) {  // the first step pays one-time allocation costs
      total_tokens_timed += static_cast<double>(batch.global_num_tokens);
      total_seconds_timed += step_s;
    }
    ema_step_s = ema_step_s == 0 ? step_s : 0.9 * ema_step_s + 0.1 * step_s;
    tokens_since_log += static_cast<double>(batch.global_num_tokens);
    seconds_since_log += step_s;
    result.last_train_loss = loss;

    if (state.step % cfg.log_every_n_steps == 0 || state.step == last_step) {
      StepMetrics m;
      m.step = state.step;
      m.loss = loss;
      m.lr = lr;
      m.grad_norm = gnorm;
      m.tokens_per_s = tokens_since_log / std::max(seconds_since_log, 1e-9);
      m.packing_efficiency = batch.global_token_slots > 0
                                 ? static_cast<double>(batch.global_num_tokens) / static_cast<double>(batch.global_token_slots)
                                 : 0.0;
      m.eta_s = ema_step_s * static_cast<double>(last_step - state.step);
      m.consumed_tokens = state.consumed_tokens;
      m.num_steps = last_step;
      logger.log_step(m);
      state.history.push_back({{"step", m.step}, {"train_loss", loss}, {"lr", lr}, {"grad_norm", gnorm},
                               {"tokens_per_s", m.tokens_per_s}});
      tokens_since_log = seconds_since_log = 0;
    }

    const bool val_due = state.step % cfg.val_check_interval == 0;
    bool out_of_time = cfg.max_time_s > 0 && seconds_since(run_start) >= cfg.max_time_s;
    bool stopping = stop.requested();
    if (comm.world_size() > 1) {
      // [dist] Clocks and signals are per rank: every rank must take the same decision this step.
      double flags[2] = {out_of_time ? 1.0 : 0.0, stopping ? 1.0 : 0.0};
      comm.allreduce_sum(flags, 2, "stop decision all-reduce");
      out_of_time = flags[0] > 0;
      stopping = flags[1] > 0;
    }
    const bool at_end = state.step == last_step || out_of_time;
    if (val_due || at_end || stopping) validate_and_checkpoint(val_due || at_end, at_end || stopping);
    if (out_of_time && state.step < last_step) {
      if (root) fmt::print("esm2 train: --max-time {:.0f} s reached at step {}; checkpoint saved, stopping\n",
                           cfg.max_time_s, state.step);
      break;
    }
    if (stopping) {
      result.stopped_by_signal = true;
      if (root) fmt::print("esm2 train: signal {} received; checkpoint at step {} saved, exiting\n", stop.signal_number(), state.step);
      break;
    }
  }
  result.steps_done = state.step;
  result.real_tokens_per_s = total_seconds_timed > 0 ? total_tokens_timed / total_seconds_timed : 0;

  if (root && cfg.write_report) {
    ReportData rd;
    rd.title = fmt::format("esm2.cpp training report: {}", cfg.experiment_name);
    rd.summary = {{"model", fmt::format("{} layers, hidden {}, heads {}, ffn {} ({} parameters)", cfg.model.num_layers,
                                        cfg.model.hidden_size, cfg.model.num_attention_heads, cfg.model.ffn_hidden_size,
                                        format_param_count(double(cfg.model.num_parameters())))},
                  {"backend", fmt::format("{} ({})", backend.name(), precision_label(backend))},
                  {"steps", fmt::format("{}", state.step)},
                  {"tokens trained", fmt::format("{}", state.consumed_tokens)},
                  {"real tokens/s", fmt::format("{:.0f}", result.real_tokens_per_s)},
                  {"last train loss", fmt::format("{:.4f}", result.last_train_loss)},
                  {"last val loss / ppl", result.last_val_loss >= 0 ? fmt::format("{:.4f} / {:.3f}", result.last_val_loss,
                                                                                  std::exp(result.last_val_loss))
                                                                    : std::string("n/a")}};
    for (const auto& h : state.history) {
      const int64_t s = h["step"].get<int64_t>();
      if (h.contains("train_loss")) {
        rd.train_loss.push_back({s, h["train_loss"].get<double>()});
        rd.train_ppl.push_back({s, std::exp(h["train_loss"].get<double>())});
        rd.lr.push_back({s, h["lr"].get<double>()});
        rd.tokens_per_s.push_back({s, h["tokens_per_s"].get<double>()});
      }
      if (h.contains("val_loss")) {
        rd.val_loss.push_back({s, h["val_loss"].get<double>()});
        rd.val_ppl.push_back({s, h["val_ppl"].get<double>()});
      }
    }
    const std::string warn = write_report(run_dir, rd);
    if (!warn.empty()) fmt::print("warning: {}\n", warn);
    fmt::print("esm2 train: done at step {}; real tokens/s {:.0f}; report {}\n", state.step, result.real_tokens_per_s,
               (run_dir / "report.html").string());
  }
  return result;
}

}  // namespace esm2
