#include "train/zero_optimizer.h"

#include <algorithm>
#include <cmath>

#include "backend/backend.h"
#include "core/error.h"

namespace esm2 {

ZeroAdamW::ZeroAdamW(Esm2Model& model, const OptimizerConfig& cfg, Communicator& comm,
                     const GradReduceOptions& reduce)
    : model_(model), backend_(model.backend()), cfg_(cfg), comm_(comm), reduce_(reduce) {
  ESM2_CHECK(reduce_.wire == DType::F32 || reduce_.wire == DType::BF16,
             "ZeRO-1: gradients can travel as F32 or BF16, not {}", dtype_name(reduce_.wire));
  const size_t w = static_cast<size_t>(comm_.world_size()), r = static_cast<size_t>(comm_.rank());
  n_ = model_.num_params();
  // Buckets counted from the end, each a multiple of W long so that it reduce-scatters straight from
  // the gradient buffer; only the first (the embedding's, reduced last anyway) may need padding.
  const size_t len = std::max<size_t>(w, (std::max<size_t>(reduce_.bucket_elements, 1) + w - 1) / w * w);
  bucket_len_ = len;
  std::vector<std::pair<size_t, size_t>> spans;
  for (size_t e = n_; e > 0;) {
    const size_t b = e > len ? e - len : 0;
    spans.push_back({b, e});
    e = b;
  }
  std::reverse(spans.begin(), spans.end());
  size_t stage = 0;
  for (const auto& [b, e] : spans) {
    Bucket k;
    k.begin = b;
    k.end = e;
    k.s = (e - b + w - 1) / w;
    k.shard_off = shard_;
    k.stage_off = stage;
    k.own_begin = std::min(e, b + r * k.s);
    k.own_end = std::min(e, k.own_begin + k.s);
    shard_ += k.s;
    stage += w * k.s;
    // This rank's pieces of each tensor: from the start of its piece (the AdamW launch of this bucket)
    // and as offsets into the shard buffers (the gradient norm).
    for (const auto& p : model_.params_info()) {
      const size_t lo = std::max(k.own_begin, p.offset), hi = std::min(k.own_end, p.offset + p.numel);
      if (lo >= hi) continue;
      k.ranges.push_back({lo - k.own_begin, hi - lo, decays(p, cfg_)});
      if (p.owner) owned_ranges_.push_back({k.shard_off + (lo - k.own_begin), hi - lo, false});
    }
    buckets_.push_back(k);
  }
  next_launch_ = buckets_.size();
  // alloc() zero-initialises: moments start at zero, the padding stays zero.
  m_ = static_cast<float*>(backend_.alloc(shard_ * sizeof(float)));
  v_ = static_cast<float*>(backend_.alloc(shard_ * sizeof(float)));
  grad_shard_ = static_cast<float*>(backend_.alloc(shard_ * sizeof(float)));
  staging_ = static_cast<float*>(backend_.alloc(stage * sizeof(float)));
}

ZeroAdamW::~ZeroAdamW() {
  backend_.free(m_);
  backend_.free(v_);
  backend_.free(grad_shard_);
  backend_.free(staging_);
}

void ZeroAdamW::launch(const Bucket& b) {
  const size_t w = static_cast<size_t>(comm_.world_size());
  const float* in = model_.grad_data() + b.begin;
  if (b.end - b.begin != w * b.s) {  // padded: the copy leaves staging's zero tail in place
    backend_.copy(staging_ + b.stage_off, in, (b.end - b.begin) * sizeof(float));
    in = staging_ + b.stage_off;
  }
  comm_.reduce_scatter_sum_async(in, grad_shard_ + b.shard_off, b.s, reduce_.wire, "gradient reduce-scatter (ZeRO-1)");
}

std::function<void(size_t)> ZeroAdamW::grad_ready_hook() {
  if (!reduce_.overlap || buckets_.size() < 2) return nullptr;
  // Buckets finish from the back; every rank runs the same backward, so all issue the same order.
  return [this](size_t ready_from) {
    while (next_launch_ > 0 && buckets_[next_launch_ - 1].begin >= ready_from) launch(buckets_[--next_launch_]);
  };
}

void ZeroAdamW::reduce_gradients() {
  while (next_launch_ > 0) launch(buckets_[--next_launch_]);
  comm_.wait_async();
  next_launch_ = buckets_.size();
}

double ZeroAdamW::grad_norm() {
  double ss = backend_.sum_squares_ranges(grad_shard_, owned_ranges_.data(), owned_ranges_.size());
  comm_.allreduce_sum(&ss, 1, "gradient norm all-reduce (ZeRO-1)");
  if (Communicator* mp = model_.parallel().mp; mp && mp->world_size() > 1)
    mp->allreduce_sum(&ss, 1, "gradient norm all-reduce (model parallel)");
  return std::sqrt(ss);
}

OptimizerStepStats ZeroAdamW::step_with_norm(double lr, double norm) {
  const OptimizerStepStats st = clip_stats(cfg_, norm);
  ++t_;
  float* p = model_.param_data();
  const AdamWStep args = adamw_step_args(cfg_, lr, st.clip_coef, t_);
  const size_t r = static_cast<size_t>(comm_.rank());
  for (const auto& b : buckets_) {
    // The own piece is updated in place, then all-gathered in place in staging_ (its slot r·s is the
    // gather's input). The gathered bucket reaches the parameters through Backend::copy, so a backend
    // that caches converted weights (CUDA's bf16 copies) sees the write; a collective writing into the
    // parameters directly would bypass it.
    backend_.adamw_update_ranges(p + b.own_begin, grad_shard_ + b.shard_off, m_ + b.shard_off, v_ + b.shard_off,
                                 b.ranges.data(), b.ranges.size(), args);
    float* slot = staging_ + b.stage_off + r * b.s;
    backend_.copy(slot, p + b.own_begin, (b.own_end - b.own_begin) * sizeof(float));
    comm_.allgather(slot, staging_ + b.stage_off, b.s, "parameter all-gather (ZeRO-1)");
    backend_.copy(p + b.begin, staging_ + b.stage_off, (b.end - b.begin) * sizeof(float));
  }
  return st;
}

void ZeroAdamW::gather_for_checkpoint() {
  // staging_ is free between steps: it receives the gathered pieces on rank 0.
  const bool root = comm_.is_root();
  for (int which = 0; which < 2; ++which) {
    const float* src = which == 0 ? m_ : v_;
    std::vector<float>& full = which == 0 ? full_m_ : full_v_;
    if (root) full.resize(n_);
    for (const auto& b : buckets_) {
      comm_.gather(src + b.shard_off, root ? staging_ + b.stage_off : nullptr, b.s, 0,
                   which == 0 ? "optimizer state gather (checkpoint, exp_avg)"
                              : "optimizer state gather (checkpoint, exp_avg_sq)");
      if (root) backend_.copy_to_host(full.data() + b.begin, staging_ + b.stage_off, (b.end - b.begin) * sizeof(float));
    }
  }
}

void ZeroAdamW::get_moments(std::span<float> exp_avg, std::span<float> exp_avg_sq) const {
  ESM2_ASSERT(exp_avg.size() == n_ && exp_avg_sq.size() == n_);
  ESM2_CHECK(full_m_.size() == n_, "ZeRO-1 optimizer: full moments requested on rank {} without gather_for_checkpoint",
             comm_.rank());
  std::copy(full_m_.begin(), full_m_.end(), exp_avg.begin());
  std::copy(full_v_.begin(), full_v_.end(), exp_avg_sq.begin());
}

void ZeroAdamW::set_moments(std::span<const float> exp_avg, std::span<const float> exp_avg_sq) {
  ESM2_ASSERT(exp_avg.size() == n_ && exp_avg_sq.size() == n_);
  backend_.memset_zero(m_, shard_ * sizeof(float));
  backend_.memset_zero(v_, shard_ * sizeof(float));
  for (const auto& b : buckets_) {
    const size_t bytes = (b.own_end - b.own_begin) * sizeof(float);
    backend_.copy_to_device(m_ + b.shard_off, exp_avg.data() + b.own_begin, bytes);
    backend_.copy_to_device(v_ + b.shard_off, exp_avg_sq.data() + b.own_begin, bytes);
  }
}

void ZeroAdamW::reset() {
  backend_.memset_zero(m_, shard_ * sizeof(float));
  backend_.memset_zero(v_, shard_ * sizeof(float));
  t_ = 0;
}

std::unique_ptr<Optimizer> make_optimizer(Esm2Model& model, const OptimizerConfig& cfg, Communicator& comm,
                                          bool distributed, const GradReduceOptions& reduce) {
  // Both optimizers pass backend buffers to the communicator; make_communicator pairs MPI with the
  // cpu backend and NCCL with the cuda backend.
  if (distributed && comm.world_size() > 1) return std::make_unique<ZeroAdamW>(model, cfg, comm, reduce);
  ESM2_CHECK(reduce.wire == DType::F32 || comm.world_size() == 1,
             "train: bf16 gradient reduction needs the distributed optimizer (drop --no-distributed-optimizer, "
             "or reduce in fp32 with --grad-reduce-dtype fp32)");
  return std::make_unique<AdamW>(model, cfg, &comm);
}

}  // namespace esm2
