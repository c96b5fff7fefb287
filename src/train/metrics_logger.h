// Where training metrics go: one console line per log interval, metrics.jsonl (one JSON object per
// line) and TensorBoard event files under <run>/tensorboard/. Only the root rank writes.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

namespace esm2 {

class JsonlWriter;
class TensorBoardWriter;

struct StepMetrics {
  int64_t step = 0, num_steps = 0, consumed_tokens = 0;
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, packing_efficiency = 0, eta_s = 0;
};

// A metric as JSON. JSON has no NaN or infinity, and nlohmann writes them as null, which a reader
// cannot tell from a missing value: a diverged run's values are written as the strings "nan", "inf"
// and "-inf" instead.
nlohmann::json metric_json(double v);
// The value of a metric written by metric_json (NaN for null, which older runs wrote).
double metric_value(const nlohmann::json& j);

class MetricsLogger {
 public:
  // append: continue the metrics file of a resumed run instead of starting it afresh.
  MetricsLogger(const std::filesystem::path& run_dir, bool enabled, bool tensorboard, bool append);
  ~MetricsLogger();
  void log_step(const StepMetrics& m);
  void log_validation(int64_t step, double val_loss, int64_t num_labels, double seconds);

 private:
  bool enabled_;
  std::unique_ptr<JsonlWriter> jsonl_;
  std::unique_ptr<TensorBoardWriter> tb_;
};

}  // namespace esm2
