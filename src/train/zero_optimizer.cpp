#include "train/zero_optimizer.h"

#include <algorithm>
#include <cmath>

#include "backend/backend.h"
#include "core/error.h"

namespace esm2 {

ZeroAdamW::ZeroAdamW(Esm2Model& model, const OptimizerConfig& cfg, Communicator& comm)
    : model_(model), backend_(model.backend()), cfg_(cfg), comm_(comm) {
  const size_t w = static_cast<size_t>(comm_.world_size());
  n_ = model_.num_params();
  shard_ = (n_ + w - 1) / w;
  begin_ = std::min(n_, shard_ * static_cast<size_t>(comm_.rank()));
  end_ = std::min(n_, begin_ + shard_);
  for (const auto& p : model_.params_info()) {
    const size_t b = std::max(begin_, p.offset), e = std::min(end_, p.offset + p.numel);
    if (b < e) {
      ranges_.push_back({b, e, decays(p, cfg_), p.owner});
      shard_ranges_.push_back({b - begin_, e - b, decays(p, cfg_)});
    }
  }
  // alloc() zero-initialises: moments start at zero, the staging padding stays zero.
  m_ = static_cast<float*>(backend_.alloc(shard_ * sizeof(float)));
  v_ = static_cast<float*>(backend_.alloc(shard_ * sizeof(float)));
  grad_shard_ = static_cast<float*>(backend_.alloc(shard_ * sizeof(float)));
  staging_ = static_cast<float*>(backend_.alloc(shard_ * w * sizeof(float)));
}

ZeroAdamW::~ZeroAdamW() {
  backend_.free(m_);
  backend_.free(v_);
  backend_.free(grad_shard_);
  backend_.free(staging_);
}

void ZeroAdamW::reduce_gradients() {
  backend_.copy(staging_, model_.grad_data(), n_ * sizeof(float));
  comm_.reduce_scatter_sum(staging_, grad_shard_, shard_, "gradient reduce-scatter (ZeRO-1)");
}

double ZeroAdamW::grad_norm() {
  // Per-tensor pieces in flat order, as AdamW::grad_norm sums per tensor.
  std::vector<TensorRange> owned;
  for (const auto& r : ranges_)
    if (r.owner) owned.push_back({r.begin - begin_, r.end - r.begin, false});
  double ss = backend_.sum_squares_ranges(grad_shard_, owned.data(), owned.size());
  comm_.allreduce_sum(&ss, 1, "gradient norm all-reduce (ZeRO-1)");
  if (Communicator* mp = model_.parallel().mp; mp && mp->world_size() > 1)
    mp->allreduce_sum(&ss, 1, "gradient norm all-reduce (model parallel)");
  return std::sqrt(ss);
}

OptimizerStepStats ZeroAdamW::step_with_norm(double lr, double norm) {
  const OptimizerStepStats st = clip_stats(cfg_, norm);
  ++t_;
  float* p = model_.param_data();
  backend_.adamw_update_ranges(p + begin_, grad_shard_, m_, v_, shard_ranges_.data(), shard_ranges_.size(),
                               adamw_step_args(cfg_, lr, st.clip_coef, t_));
  // Own updated shard → everyone's full parameter buffer. The gather lands in staging_ and reaches the
  // parameters through Backend::copy, so a backend that caches converted weights (CUDA's bf16 copies)
  // sees the write; a collective writing into the parameters directly would bypass it.
  float* own = staging_ + shard_ * size_t(comm_.rank());
  backend_.copy(own, p + begin_, (end_ - begin_) * sizeof(float));
  comm_.allgather(own, staging_, shard_, "parameter all-gather (ZeRO-1)");
  backend_.copy(p, staging_, n_ * sizeof(float));
  return st;
}

void ZeroAdamW::gather_for_checkpoint() {
  // staging_ is free between steps: it receives the gathered shards on rank 0.
  const bool root = comm_.is_root();
  comm_.gather(m_, root ? staging_ : nullptr, shard_, 0, "optimizer state gather (checkpoint, exp_avg)");
  if (root) {
    full_m_.resize(n_);
    backend_.copy_to_host(full_m_.data(), staging_, n_ * sizeof(float));
  }
  comm_.gather(v_, root ? staging_ : nullptr, shard_, 0, "optimizer state gather (checkpoint, exp_avg_sq)");
  if (root) {
    full_v_.resize(n_);
    backend_.copy_to_host(full_v_.data(), staging_, n_ * sizeof(float));
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
  backend_.copy_to_device(m_, exp_avg.data() + begin_, (end_ - begin_) * sizeof(float));
  backend_.copy_to_device(v_, exp_avg_sq.data() + begin_, (end_ - begin_) * sizeof(float));
}

void ZeroAdamW::reset() {
  backend_.memset_zero(m_, shard_ * sizeof(float));
  backend_.memset_zero(v_, shard_ * sizeof(float));
  t_ = 0;
}

std::unique_ptr<Optimizer> make_optimizer(Esm2Model& model, const OptimizerConfig& cfg, Communicator& comm,
                                          bool distributed) {
  // Both optimizers pass backend buffers to the communicator; make_communicator pairs MPI with the
  // cpu backend and NCCL with the cuda backend.
  if (distributed && comm.world_size() > 1) return std::make_unique<ZeroAdamW>(model, cfg, comm);
  return std::make_unique<AdamW>(model, cfg, &comm);
}

}  // namespace esm2
