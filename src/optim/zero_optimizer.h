// ZeRO-1 AdamW: the fp32 Adam moments, and the update of the fp32 master weights, are sharded over
// the data-parallel ranks, bucket by bucket (Megatron's distributed optimizer). The local flat buffer
// [N] is cut into buckets counted from its end (the LM head's gradients are final first, the
// embedding's last); bucket k = [b, e) is padded to W·s (W ranks, s = ⌈(e−b)/W⌉) and rank r owns its
// piece [b + r·s, min(b + (r+1)·s, e)). A rank's shard buffers (moments, reduced gradients) are
// its pieces of every bucket, concatenated.
//
// Per step: each bucket's gradients are reduce-scattered (rank-ordered sums) — with overlap, as soon as
// the backward of the step's last micro-batch has finished them (Esm2Model::set_grad_ready_hook), on
// the communicator's side stream while the backward goes on; the rest at reduce_gradients(). The
// global norm is √(allreduce of the shards' Σg²); AdamW updates the own pieces (weight decay per
// element, by the tensor each belongs to); each bucket's updated pieces are all-gathered into every
// rank's full parameter buffer at the end of the step (overlapping it with the next forward was
// measured slower, docs/dist.md). Moments per rank: 2·N/W floats instead of 2·N.
//
// Gradients travel as fp32 or bf16 (GradReduceOptions::wire): bf16 halves the traffic; each rank's
// gradient is rounded once and the sum is taken in fp32 (Communicator::reduce_scatter_sum_async).
// Overlap never changes a result: with or without it, the same buckets give bitwise the same step.
// Bucketing changes no gradient sum (with fp32 on the wire) and no update, only how the gradient
// norm's Σg² is grouped over ranks (its last bits; they matter where clipping is active).
//
// Checkpoints hold FULL moments, the same format as the replicated AdamW, so a checkpoint written at
// any DP size loads at any other. Save: dp rank 0 asks for one range of the local flat layout at a time
// (read_moments) and receives each owner's part of it, while the other dp ranks answer inside
// end_moment_reads(). Resume: each rank reads only its own pieces (load_moments). Neither holds more
// than a piece of host memory.
//
// Every buffer is backend memory and every collective takes backend pointers: the same code runs
// with MPI on the cpu backend (host memory) and NCCL on the cuda backend (device memory).
#pragma once
#include <functional>
#include <vector>

#include "comm/communicator.h"
#include "optim/optimizer.h"

namespace esm2 {

struct GradReduceOptions {
  // Elements per bucket (rounded up to a multiple of the DP size); Megatron's --ddp-bucket-size default.
  size_t bucket_elements = 40'000'000;
  DType wire = DType::F32;  // F32 or BF16
  bool overlap = true;      // reduce buckets during the backward (grad_ready_hook)
};

class ZeroAdamW final : public Optimizer {
 public:
  // `comm` must move buffers of the model's backend (MPI: cpu, NCCL: cuda).
  ZeroAdamW(Esm2Model& model, const OptimizerConfig& cfg, Communicator& comm, const GradReduceOptions& reduce = {});
  ~ZeroAdamW() override;
  ZeroAdamW(const ZeroAdamW&) = delete;
  ZeroAdamW& operator=(const ZeroAdamW&) = delete;

  std::function<void(size_t)> grad_ready_hook() override;
  void reduce_gradients() override;
  double grad_norm() override;
  using Optimizer::step;
  OptimizerStepStats step_with_norm(double lr, double grad_norm) override;
  int64_t steps_taken() const override { return t_; }
  void set_steps_taken(int64_t t) override { t_ = t; }
  // Collective over dp (see Optimizer): dp rank 0 broadcasts each request, then receives every other
  // owner's elements of it (point-to-point, rank order, through staging_).
  void read_moments(Moment which, size_t local_begin, std::span<float> dst) override;
  void end_moment_reads() override;
  void load_moments(const LocalStateReader& exp_avg, const LocalStateReader& exp_avg_sq,
                    size_t piece = kStatePieceElems) override;
  void reset() override;

  size_t num_buckets() const { return buckets_.size(); }
  size_t bucket_length() const { return bucket_len_; }  // --ddp-bucket-size rounded up to a multiple of W
  size_t shard_size() const { return shard_; }  // Σ over buckets of s (padded): this rank's shard buffers

 private:
  struct Bucket {
    size_t begin, end;          // [begin, end) of the local flat buffer
    size_t s;                   // each rank's piece, padded: ⌈(end − begin) / W⌉
    size_t shard_off;           // where this rank's piece sits in the shard buffers
    size_t stage_off;           // its [W·s] region of staging_
    size_t own_begin, own_end;  // this rank's piece in the flat buffer (empty for a rank past the end)
    std::vector<TensorRange> ranges;  // the tensors' parts in the piece, from own_begin (AdamW, decay)
  };
  void launch(const Bucket& b);
  // fn(bucket, lo, hi) for rank r's parts [lo, hi) of local range [b, e), in flat order.
  template <class Fn>
  void for_each_owned(size_t r, size_t b, size_t e, Fn&& fn) const;
  // One moment-read request on every dp rank: owners send their parts, rank 0 fills `dst`.
  void serve_read(Moment which, size_t local_begin, size_t n, std::span<float> dst);

  Esm2Model& model_;
  Backend& backend_;
  OptimizerConfig cfg_;
  Communicator& comm_;
  GradReduceOptions reduce_;
  size_t n_ = 0, shard_ = 0, bucket_len_ = 0;
  std::vector<Bucket> buckets_;            // in flat order; launched from the back
  size_t next_launch_ = 0;                 // buckets_[next_launch_, end) are launched (next_launch_ counts down)
  std::vector<TensorRange> owned_ranges_;  // shard offsets of the pieces that count in the gradient norm
  // Backend memory. The padding of every shard buffer stays zero (only own pieces are ever written),
  // and so does staging_'s padding (gathers copy that zero padding back into it).
  float* m_ = nullptr;           // [S] this rank's moments
  float* v_ = nullptr;           // [S]
  float* grad_shard_ = nullptr;  // [S] reduced gradients of this rank's pieces
  float* staging_ = nullptr;     // [Σ W·s] padded gradients (buckets not a multiple of W) / gathers
  int64_t t_ = 0;
};

// The optimizer `esm2 train` uses: ZeRO-1 when the communicator has several ranks and
// `distributed` is set, else the replicated AdamW (all-reducing gradients in fp32 when world > 1).
// Throws esm2::Error when `reduce` asks for bf16 gradients without ZeRO-1.
std::unique_ptr<Optimizer> make_optimizer(Esm2Model& model, const OptimizerConfig& cfg, Communicator& comm,
                                          bool distributed, const GradReduceOptions& reduce = {});

}  // namespace esm2
