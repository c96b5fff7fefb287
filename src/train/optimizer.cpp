#include "train/optimizer.h"

#include <cmath>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "dist/communicator.h"

namespace esm2 {

bool decays(const ParamInfo& info, const OptimizerConfig& cfg) {
  const bool is_embedding = info.name == "esm.embeddings.word_embeddings.weight";
  return info.weight_decay || (is_embedding && cfg.decay_embeddings);
}

OptimizerStepStats clip_stats(const OptimizerConfig& cfg, double grad_norm) {
  OptimizerStepStats st;
  st.grad_norm = grad_norm;
  if (cfg.clip_grad > 0) st.clip_coef = std::min(1.0, cfg.clip_grad / (grad_norm + 1e-6));
  return st;
}

AdamWStep adamw_step_args(const OptimizerConfig& cfg, double lr, double clip_coef, int64_t t) {
  AdamWStep s;
  s.lr = static_cast<float>(lr);
  s.beta1 = static_cast<float>(cfg.beta1);
  s.beta2 = static_cast<float>(cfg.beta2);
  s.eps = static_cast<float>(cfg.eps);
  s.weight_decay = static_cast<float>(cfg.weight_decay);
  s.grad_scale = static_cast<float>(clip_coef);
  s.step = t;
  return s;
}

AdamW::AdamW(Esm2Model& model, const OptimizerConfig& cfg, Communicator* comm)
    : model_(model), backend_(model.backend()), cfg_(cfg), comm_(comm) {
  for (const auto& info : model_.params_info()) ranges_.push_back({info.offset, info.numel, decays(info, cfg_)});
  const size_t bytes = model_.num_params() * sizeof(float);
  m_ = static_cast<float*>(backend_.alloc(bytes));
  v_ = static_cast<float*>(backend_.alloc(bytes));
}

AdamW::~AdamW() {
  backend_.free(m_);
  backend_.free(v_);
}

double AdamW::grad_norm() {
  // Per-tensor partial sums added in table order: deterministic regardless of backend threading.
  std::vector<TensorRange> owned;
  for (const auto& p : model_.params_info())
    if (p.owner) owned.push_back({p.offset, p.numel, false});
  double ss = backend_.sum_squares_ranges(model_.grad_data(), owned.data(), owned.size());
  // Model-parallel ranks hold different tensors (or shards): the norm covers the whole model.
  if (Communicator* mp = model_.parallel().mp; mp && mp->world_size() > 1)
    mp->allreduce_sum(&ss, 1, "gradient norm all-reduce (model parallel)");
  return std::sqrt(ss);
}

void AdamW::reduce_gradients() {
  if (comm_ && comm_->world_size() > 1) comm_->allreduce_sum(model_.grad_data(), model_.num_params(), "gradient all-reduce");
}

OptimizerStepStats AdamW::step_with_norm(double lr, double norm) {
  const OptimizerStepStats st = clip_stats(cfg_, norm);
  ++t_;
  backend_.adamw_update_ranges(model_.param_data(), model_.grad_data(), m_, v_, ranges_.data(), ranges_.size(),
                               adamw_step_args(cfg_, lr, st.clip_coef, t_));
  return st;
}

void AdamW::get_moments(std::span<float> exp_avg, std::span<float> exp_avg_sq) const {
  const size_t n = model_.num_params();
  ESM2_ASSERT(exp_avg.size() == n && exp_avg_sq.size() == n);
  backend_.copy_to_host(exp_avg.data(), m_, n * sizeof(float));
  backend_.copy_to_host(exp_avg_sq.data(), v_, n * sizeof(float));
}

void AdamW::set_moments(std::span<const float> exp_avg, std::span<const float> exp_avg_sq) {
  const size_t n = model_.num_params();
  ESM2_ASSERT(exp_avg.size() == n && exp_avg_sq.size() == n);
  backend_.copy_to_device(m_, exp_avg.data(), n * sizeof(float));
  backend_.copy_to_device(v_, exp_avg_sq.data(), n * sizeof(float));
}

void AdamW::reset() {
  const size_t bytes = model_.num_params() * sizeof(float);
  backend_.memset_zero(m_, bytes);
  backend_.memset_zero(v_, bytes);
  t_ = 0;
}

}  // namespace esm2
