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
    if (b < e) ranges_.push_back({b, e, decays(p, cfg_), p.owner});
  }
  m_.assign(shard_, 0.0f);
  v_.assign(shard_, 0.0f);
  grad_shard_.assign(shard_, 0.0f);
  staging_.assign(shard_ * w, 0.0f);
}

void ZeroAdamW::reduce_gradients() {
  // The padding tail of staging_ stays zero: only the first n_ elements are ever written.
  std::copy(model_.grad_data(), model_.grad_data() + n_, staging_.begin());
  comm_.reduce_scatter_sum(staging_.data(), grad_shard_.data(), shard_, "gradient reduce-scatter (ZeRO-1)");
}

double ZeroAdamW::grad_norm() {
  // Per-tensor pieces in flat order, as AdamW::grad_norm sums per tensor.
  double ss = 0;
  for (const auto& r : ranges_)
    if (r.owner) ss += backend_.sum_squares(grad_shard_.data() + (r.begin - begin_), r.end - r.begin);
  comm_.allreduce_sum(&ss, 1, "gradient norm all-reduce (ZeRO-1)");
  if (Communicator* mp = model_.parallel().mp; mp && mp->world_size() > 1)
    mp->allreduce_sum(&ss, 1, "gradient norm all-reduce (model parallel)");
  return std::sqrt(ss);
}

OptimizerStepStats ZeroAdamW::step_with_norm(double lr, double norm) {
  OptimizerStepStats st;
  st.grad_norm = norm;
  if (cfg_.clip_grad > 0) st.clip_coef = std::min(1.0, cfg_.clip_grad / (norm + 1e-6));
  ++t_;
  float* p = model_.param_data();
  for (const auto& r : ranges_) {
    AdamWStep s;
    s.lr = static_cast<float>(lr);
    s.beta1 = static_cast<float>(cfg_.beta1);
    s.beta2 = static_cast<float>(cfg_.beta2);
    s.eps = static_cast<float>(cfg_.eps);
    s.weight_decay = r.decay ? static_cast<float>(cfg_.weight_decay) : 0.0f;
    s.grad_scale = static_cast<float>(st.clip_coef);
    s.step = t_;
    const size_t o = r.begin - begin_;
    backend_.adamw_update(p + r.begin, grad_shard_.data() + o, m_.data() + o, v_.data() + o, r.end - r.begin, s);
  }
  // Own updated shard → everyone's full parameter buffer.
  std::copy(p + begin_, p + end_, staging_.begin() + static_cast<std::ptrdiff_t>(shard_ * size_t(comm_.rank())));
  comm_.allgather(staging_.data() + shard_ * size_t(comm_.rank()), staging_.data(), shard_,
                  "parameter all-gather (ZeRO-1)");
  std::copy(staging_.begin(), staging_.begin() + static_cast<std::ptrdiff_t>(n_), p);
  return st;
}

void ZeroAdamW::gather_for_checkpoint() {
  const bool root = comm_.is_root();
  std::vector<float> all(root ? shard_ * size_t(comm_.world_size()) : 0);
  comm_.gather(m_.data(), root ? all.data() : nullptr, shard_, 0, "optimizer state gather (checkpoint, exp_avg)");
  if (root) full_m_.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(n_));
  comm_.gather(v_.data(), root ? all.data() : nullptr, shard_, 0, "optimizer state gather (checkpoint, exp_avg_sq)");
  if (root) full_v_.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(n_));
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
  std::fill(m_.begin(), m_.end(), 0.0f);
  std::fill(v_.begin(), v_.end(), 0.0f);
  std::copy(exp_avg.begin() + static_cast<std::ptrdiff_t>(begin_), exp_avg.begin() + static_cast<std::ptrdiff_t>(end_),
            m_.begin());
  std::copy(exp_avg_sq.begin() + static_cast<std::ptrdiff_t>(begin_),
            exp_avg_sq.begin() + static_cast<std::ptrdiff_t>(end_), v_.begin());
}

void ZeroAdamW::reset() {
  std::fill(m_.begin(), m_.end(), 0.0f);
  std::fill(v_.begin(), v_.end(), 0.0f);
  t_ = 0;
}

std::unique_ptr<Optimizer> make_optimizer(Esm2Model& model, const OptimizerConfig& cfg, Communicator& comm,
                                          bool distributed) {
  // MPI moves host buffers: the replicated all-reduce and ZeRO-1 both read the model's buffers directly.
  ESM2_CHECK(comm.world_size() == 1 || model.backend().name() == "cpu",
             "train: multi-rank training over {} supports the cpu backend only (got {})", comm.name(),
             model.backend().name());
  if (distributed && comm.world_size() > 1) return std::make_unique<ZeroAdamW>(model, cfg, comm);
  return std::make_unique<AdamW>(model, cfg, &comm);
}

}  // namespace esm2
