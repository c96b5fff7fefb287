// ZeRO-1 AdamW: the fp32 Adam moments, and the update of the fp32 master weights, are sharded over
// the data-parallel ranks. The flat parameter buffer [N] is padded to Np = W·S (W ranks, S = ⌈N/W⌉);
// rank r owns elements [r·S, min((r+1)·S, N)). Per step: gradients are reduce-scattered (each rank
// receives the rank-ordered sum of its shard), the global norm is √(allreduce of the shards' Σg²),
// AdamW updates the own shard only (weight decay per element, by the tensor each element belongs
// to), and the updated shards are all-gathered into every rank's full parameter buffer.
// Moments per rank: 2·S floats instead of 2·N.
//
// Checkpoints hold FULL moments (gathered to rank 0), the same format as the replicated AdamW, so a
// checkpoint written at any DP size loads at any other: set_moments takes this rank's slice.
//
// Every buffer is backend memory and every collective takes backend pointers: the same code runs
// with MPI on the cpu backend (host memory) and NCCL on the cuda backend (device memory).
#pragma once
#include <vector>

#include "dist/communicator.h"
#include "train/optimizer.h"

namespace esm2 {

class ZeroAdamW final : public Optimizer {
 public:
  // `comm` must move buffers of the model's backend (MPI: cpu, NCCL: cuda).
  ZeroAdamW(Esm2Model& model, const OptimizerConfig& cfg, Communicator& comm);
  ~ZeroAdamW() override;
  ZeroAdamW(const ZeroAdamW&) = delete;
  ZeroAdamW& operator=(const ZeroAdamW&) = delete;

  void reduce_gradients() override;
  double grad_norm() override;
  using Optimizer::step;
  OptimizerStepStats step_with_norm(double lr, double grad_norm) override;
  int64_t steps_taken() const override { return t_; }
  void set_steps_taken(int64_t t) override { t_ = t; }
  void gather_for_checkpoint() override;
  void get_moments(std::span<float> exp_avg, std::span<float> exp_avg_sq) const override;
  void set_moments(std::span<const float> exp_avg, std::span<const float> exp_avg_sq) override;
  void reset() override;

  size_t shard_begin() const { return begin_; }
  size_t shard_end() const { return end_; }   // exclusive; begin_ == end_ for a rank past the end
  size_t shard_size() const { return shard_; }  // S (padded)

 private:
  // A piece of one parameter tensor inside this rank's shard.
  struct Range {
    size_t begin, end;  // flat-buffer offsets, [begin, end) ⊂ [begin_, end_)
    bool decay;
    bool owner;  // counts in the gradient norm (ParamInfo::owner)
  };

  Esm2Model& model_;
  Backend& backend_;
  OptimizerConfig cfg_;
  Communicator& comm_;
  size_t n_ = 0, shard_ = 0, begin_ = 0, end_ = 0;
  std::vector<Range> ranges_;              // this shard's tensor pieces, in flat order
  std::vector<TensorRange> shard_ranges_;  // the same pieces as offsets into the shard (the AdamW launch)
  // Backend memory. The padding tail [N, W·S) of staging_ is zero from allocation on: only the first
  // N elements are ever written from the model, and gathers copy zero padding back into it.
  float* m_ = nullptr;           // [S] this rank's moments (padding stays zero)
  float* v_ = nullptr;           // [S]
  float* grad_shard_ = nullptr;  // [S] reduced gradients of this shard
  float* staging_ = nullptr;     // [W·S] padded gradients / gathered parameters / gathered moments
  std::vector<float> full_m_, full_v_;  // host [N] on rank 0 after gather_for_checkpoint, else empty
  int64_t t_ = 0;
};

// The optimizer `esm2 train` uses: ZeRO-1 when the communicator has several ranks and
// `distributed` is set, else the replicated AdamW (all-reducing gradients when world > 1).
std::unique_ptr<Optimizer> make_optimizer(Esm2Model& model, const OptimizerConfig& cfg, Communicator& comm,
                                          bool distributed);

}  // namespace esm2
