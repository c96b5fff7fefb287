// The training loop of `esm2 train`: data → forward/backward over the micro-batches of a step →
// (data-parallel reduction) → clipping + AdamW → schedule; validation, logging, checkpoints, resume.
#pragma once
#include <memory>

#include "comm/communicator.h"
#include "train/train_config.h"

namespace esm2 {

class Backend;

struct TrainResult {
  int64_t steps_done = 0;          // optimizer steps completed (global step counter at exit)
  double last_train_loss = 0;
  double last_val_loss = -1;       // -1 when no validation ran; NaN/inf when it diverged
  double best_val_loss = -1;
  bool stopped_by_signal = false;
  double real_tokens_per_s = 0;    // training throughput: step time only, after the first step
  double wall_time_s = 0;          // the step loop's wall time, validation and checkpoints included
};

// Most tokens one micro-batch can hold: --micro-batch-tokens, or --micro-batch-size × --max-seq-length.
int64_t micro_batch_token_budget(const TrainConfig& cfg);

// Runs the whole job. Throws esm2::Error for bad configuration/input, or when training stops on a
// non-finite loss (after saving the last good state).
TrainResult run_training(const TrainConfig& cfg, Communicator& comm);
// The same on a backend made by the caller (multi-GPU: on this rank's GPU, before the communicator
// that moves its buffers).
TrainResult run_training(const TrainConfig& cfg, Communicator& comm, Backend& backend);

}  // namespace esm2
