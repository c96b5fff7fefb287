// AdamW with decoupled weight decay on Linear weight matrices only, global-norm gradient clipping,
// fp32 moments. The arithmetic runs on the backend (Backend::adamw_update / sum_squares); this class
// owns the moment buffers and the per-tensor policy (which tensors decay).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "model/esm2.h"
#include "train/train_config.h"

namespace esm2 {

class Backend;

struct OptimizerStepStats {
  double grad_norm = 0;   // global L2 norm before clipping
  double clip_coef = 1;   // factor applied to the gradients (1 = not clipped)
};

class AdamW {
 public:
  AdamW(Esm2Model& model, const OptimizerConfig& cfg);
  ~AdamW();
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // Global gradient norm (fp64 accumulation over every tensor).
  double grad_norm();
  // One update with learning rate `lr` (step counter t advances by one: bias correction uses t).
  OptimizerStepStats step(double lr);
  // Also apply clipping computed from an already-known norm (used when the norm was needed earlier
  // to detect non-finite gradients).
  OptimizerStepStats step_with_norm(double lr, double grad_norm);

  int64_t steps_taken() const { return t_; }
  void set_steps_taken(int64_t t) { t_ = t; }
  // Host copies of the moments in the model's flat parameter layout (for checkpoints).
  void get_moments(std::span<float> exp_avg, std::span<float> exp_avg_sq) const;
  void set_moments(std::span<const float> exp_avg, std::span<const float> exp_avg_sq);
  void reset();  // zero moments, t = 0

 private:
  Esm2Model& model_;
  Backend& backend_;
  OptimizerConfig cfg_;
  float* m_ = nullptr;  // backend memory, [num_params]
  float* v_ = nullptr;
  int64_t t_ = 0;
};

}  // namespace esm2
