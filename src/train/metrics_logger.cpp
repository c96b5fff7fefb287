#include "train/metrics_logger.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/jsonl.h"
#include "io/tensorboard.h"

namespace esm2 {

nlohmann::json metric_json(double v) {
  if (std::isfinite(v)) return v;
  return std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf";
}

double metric_value(const nlohmann::json& j) {
  if (j.is_null()) return std::nan("");
  if (j.is_string()) {
    const std::string& s = j.get_ref<const std::string&>();
    ESM2_CHECK(s == "nan" || s == "inf" || s == "-inf", "metric value \"{}\" is not a number", s);
    return s == "nan" ? std::nan("") : s == "inf" ? HUGE_VAL : -HUGE_VAL;
  }
  return j.get<double>();
}

MetricsLogger::MetricsLogger(const std::filesystem::path& run_dir, bool enabled, bool tensorboard, bool append)
    : enabled_(enabled) {
  if (!enabled_) return;
  jsonl_ = std::make_unique<JsonlWriter>(run_dir / "metrics.jsonl", append);
  if (tensorboard) tb_ = std::make_unique<TensorBoardWriter>(run_dir / "tensorboard");
}

MetricsLogger::~MetricsLogger() = default;

void MetricsLogger::log_step(const StepMetrics& m) {
  if (!enabled_) return;
  const double ppl = std::exp(m.loss);
  fmt::print("step {:>6}/{} | loss {:.4f} | ppl {:7.3f} | lr {:.3e} | grad norm {:.3f} | {:>9.0f} tok/s | pack {:.1f}% | ETA {}\n",
             m.step, m.num_steps, m.loss, ppl, m.lr, m.grad_norm, m.tokens_per_s, 100.0 * m.packing_efficiency,
             m.eta_s >= 3600 ? fmt::format("{}h{:02}m", int64_t(m.eta_s) / 3600, (int64_t(m.eta_s) / 60) % 60)
                             : fmt::format("{}m{:02}s", int64_t(m.eta_s) / 60, int64_t(m.eta_s) % 60));
  std::fflush(stdout);
  jsonl_->write({{"step", m.step},
                 {"train_loss", metric_json(m.loss)},
                 {"train_ppl", metric_json(ppl)},
                 {"lr", m.lr},
                 {"grad_norm", metric_json(m.grad_norm)},
                 {"tokens_per_s", m.tokens_per_s},
                 {"packing_efficiency", m.packing_efficiency},
                 {"consumed_tokens", m.consumed_tokens}});
  if (tb_) {
    tb_->add_scalar("train/loss", m.loss, m.step);
    tb_->add_scalar("train/perplexity", ppl, m.step);
    tb_->add_scalar("train/lr", m.lr, m.step);
    tb_->add_scalar("train/grad_norm", m.grad_norm, m.step);
    tb_->add_scalar("train/real_tokens_per_s", m.tokens_per_s, m.step);
    tb_->flush();
  }
}

void MetricsLogger::log_validation(int64_t step, double val_loss, int64_t num_labels, double seconds) {
  if (!enabled_) return;
  const double ppl = std::exp(val_loss);
  fmt::print("validation at step {}: loss {:.4f} | ppl {:.3f} ({} labelled tokens, {:.1f} s)\n", step, val_loss, ppl,
             num_labels, seconds);
  std::fflush(stdout);
  jsonl_->write({{"step", step}, {"val_loss", metric_json(val_loss)}, {"val_ppl", metric_json(ppl)}, {"val_labels", num_labels}});
  if (tb_) {
    tb_->add_scalar("val/loss", val_loss, step);
    tb_->add_scalar("val/perplexity", ppl, step);
    tb_->flush();
  }
}

}  // namespace esm2
