#include "optim/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "comm/communicator.h"

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

void Optimizer::get_moments(std::span<float> exp_avg, std::span<float> exp_avg_sq) {
  ESM2_CHECK(exp_avg.size() == exp_avg_sq.size(), "get_moments: {} exp_avg and {} exp_avg_sq values", exp_avg.size(),
             exp_avg_sq.size());
  if (!exp_avg.empty()) {
    read_moments(Moment::ExpAvg, 0, exp_avg);
    read_moments(Moment::ExpAvgSq, 0, exp_avg_sq);
  }
  end_moment_reads();
}

void Optimizer::set_moments(std::span<const float> exp_avg, std::span<const float> exp_avg_sq) {
  const auto from = [](std::span<const float> v) {
    return [v](size_t begin, std::span<float> dst) {
      ESM2_CHECK(begin <= v.size() && dst.size() <= v.size() - begin, "set_moments: range [{}, {}) outside {} values",
                 begin, begin + dst.size(), v.size());
      std::copy_n(v.data() + begin, dst.size(), dst.data());
    };
  };
  load_moments(from(exp_avg), from(exp_avg_sq));
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

void AdamW::read_moments(Moment which, size_t local_begin, std::span<float> dst) {
  const size_t n = model_.num_params();
  ESM2_CHECK(local_begin <= n && dst.size() <= n - local_begin, "AdamW: moment range [{}, {}) outside the {} local values",
             local_begin, local_begin + dst.size(), n);
  const float* src = which == Moment::ExpAvg ? m_ : v_;
  backend_.copy_to_host(dst.data(), src + local_begin, dst.size() * sizeof(float));
}

void AdamW::load_moments(const LocalStateReader& exp_avg, const LocalStateReader& exp_avg_sq, size_t piece) {
  ESM2_CHECK(piece > 0, "AdamW: moment piece size must be positive");
  const size_t n = model_.num_params();
  std::vector<float> buf(std::min(piece, n));  // [piece] host staging
  for (float* dst : {m_, v_}) {
    const LocalStateReader& read = dst == m_ ? exp_avg : exp_avg_sq;
    for (size_t at = 0; at < n; at += buf.size()) {
      const std::span<float> part = std::span<float>(buf).first(std::min(buf.size(), n - at));
      read(at, part);
      backend_.copy_to_device(dst + at, part.data(), part.size() * sizeof(float));
    }
  }
}

void AdamW::reset() {
  const size_t bytes = model_.num_params() * sizeof(float);
  backend_.memset_zero(m_, bytes);
  backend_.memset_zero(v_, bytes);
  t_ = 0;
}

}  // namespace esm2
