// AdamW with decoupled weight decay on Linear weight matrices only, global-norm gradient clipping,
// fp32 moments. The arithmetic runs on the backend (Backend::adamw_update / sum_squares); this class
// owns the moment buffers and the per-tensor policy (which tensors decay).
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "model/esm2.h"
#include "optim/optimizer_config.h"
#include "parallel/model_state.h"

namespace esm2 {

class Backend;
class Communicator;

enum class Moment { ExpAvg, ExpAvgSq };  // Adam's m and v

struct OptimizerStepStats {
  double grad_norm = 0;   // global L2 norm before clipping
  double clip_coef = 1;   // factor applied to the gradients (1 = not clipped)
};

// The per-tensor weight-decay policy: Linear weight matrices, plus the embedding matrix if configured.
bool decays(const ParamInfo& info, const OptimizerConfig& cfg);

// One step's shared arithmetic for AdamW and ZeroAdamW: the clipping coefficient of
// torch.nn.utils.clip_grad_norm_ (max_norm / (norm + 1e-6), applied only when < 1) and the backend's
// AdamW arguments for step t (weight decay applies where a TensorRange says so).
OptimizerStepStats clip_stats(const OptimizerConfig& cfg, double grad_norm);
AdamWStep adamw_step_args(const OptimizerConfig& cfg, double lr, double clip_coef, int64_t t);

// What the trainer and checkpoints need of an optimizer; AdamW (replicated) and ZeroAdamW
// (src/optim/zero_optimizer.h, moments sharded over data-parallel ranks) implement it.
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // Overlapped gradient reduction: what to install with Esm2Model::set_grad_ready_hook for the
  // backward of a step's last micro-batch (null: reduce everything in reduce_gradients()).
  virtual std::function<void(size_t)> grad_ready_hook() { return nullptr; }
  // Collective: sums the ranks' gradients into what step() reads (the full buffer, or this rank's shard).
  virtual void reduce_gradients() = 0;
  // Global gradient norm (collective under ZeRO-1).
  virtual double grad_norm() = 0;
  virtual OptimizerStepStats step_with_norm(double lr, double grad_norm) = 0;
  OptimizerStepStats step(double lr) { return step_with_norm(lr, grad_norm()); }
  virtual int64_t steps_taken() const = 0;
  virtual void set_steps_taken(int64_t t) = 0;
  // Checkpoints move the moments a piece at a time, in the model's local flat layout (this rank's part
  // of the model), so no rank ever holds them at local size in host memory.
  // Save: elements [local_begin, local_begin + dst.size()) of one moment into host memory, on the rank
  // that writes (data-parallel rank 0). ZeRO-1 fetches them from the dp ranks that own them; those ranks
  // must be inside end_moment_reads() meanwhile.
  virtual void read_moments(Moment which, size_t local_begin, std::span<float> dst) = 0;
  // Collective over the data-parallel ranks: dp rank 0 calls it after its last read_moments; every
  // other dp rank calls it instead of reading, answers those reads, and returns with dp rank 0.
  virtual void end_moment_reads() {}
  // Resume: each rank reads only the moments it keeps (local flat offsets), through a host piece of at
  // most `piece` elements, straight into its buffers (a checkpoint of any DP size loads at any other).
  virtual void load_moments(const LocalStateReader& exp_avg, const LocalStateReader& exp_avg_sq,
                            size_t piece = kStatePieceElems) = 0;
  // Local-size conveniences (tests, small models). get_moments is collective like a save: dp rank 0
  // passes spans of num_params() elements, the other dp ranks empty spans.
  void get_moments(std::span<float> exp_avg, std::span<float> exp_avg_sq);
  void set_moments(std::span<const float> exp_avg, std::span<const float> exp_avg_sq);
  virtual void reset() = 0;  // zero moments, t = 0
};

// Replicated AdamW: every rank holds all moments. With a communicator of world > 1,
// reduce_gradients all-reduces the full gradient buffer.
class AdamW final : public Optimizer {
 public:
  AdamW(Esm2Model& model, const OptimizerConfig& cfg, Communicator* comm = nullptr);
  ~AdamW() override;
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  void reduce_gradients() override;
  // Global gradient norm (fp64 accumulation over every tensor).
  double grad_norm() override;
  using Optimizer::step;
  // One update with learning rate `lr` (step counter t advances by one: bias correction uses t),
  // clipping by an already-known norm (needed earlier to detect non-finite gradients).
  OptimizerStepStats step_with_norm(double lr, double grad_norm) override;

  int64_t steps_taken() const override { return t_; }
  void set_steps_taken(int64_t t) override { t_ = t; }
  // Every rank holds all moments: reads are local copies, loads read everything.
  void read_moments(Moment which, size_t local_begin, std::span<float> dst) override;
  void load_moments(const LocalStateReader& exp_avg, const LocalStateReader& exp_avg_sq,
                    size_t piece = kStatePieceElems) override;
  void reset() override;

 private:
  Esm2Model& model_;
  Backend& backend_;
  OptimizerConfig cfg_;
  Communicator* comm_;
  float* m_ = nullptr;  // backend memory, [num_params]
  float* v_ = nullptr;
  std::vector<TensorRange> ranges_;  // one per tensor, with its decay flag (fixed at construction)
  int64_t t_ = 0;
};

}  // namespace esm2
