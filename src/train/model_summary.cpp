#include "train/model_summary.h"

#include <fmt/format.h>

#include <map>
#include <regex>

namespace esm2 {

std::string format_param_count(double n) {
  if (n >= 1e9) return fmt::format("{:.1f} B", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.1f} M", n / 1e6);
  if (n >= 1e3) return fmt::format("{:.1f} K", n / 1e3);
  return fmt::format("{:.0f}", n);
}

std::string model_summary(const ModelConfig& cfg, const std::vector<ParamInfo>& params) {
  // module path = parameter name without its last component; encoder layer index folded.
  static const std::regex layer_re(R"(esm\.encoder\.layer\.\d+\.)");
  std::vector<std::string> order;
  std::map<std::string, size_t> counts;
  size_t total = 0;
  for (const auto& p : params) {
    std::string module = p.name.substr(0, p.name.rfind('.'));
    module = std::regex_replace(module, layer_re, fmt::format("esm.encoder.layer.[0-{}].", cfg.num_layers - 1));
    if (!counts.count(module)) order.push_back(module);
    counts[module] += p.numel;
    total += p.numel;
  }
  size_t width = 6;
  for (const auto& m : order) width = std::max(width, m.size());
  std::string out = fmt::format("  {:<{}}  {:>10}\n", "Module", width, "Params");
  for (const auto& m : order) {
    const bool per_layer = m.find("layer.[") != std::string::npos;
    out += fmt::format("  {:<{}}  {:>10}{}\n", m, width, format_param_count(double(counts[m])),
                       per_layer ? fmt::format("  ({} per layer)", format_param_count(double(counts[m]) / cfg.num_layers)) : "");
  }
  out += fmt::format("  Trainable params: {} ({} floats); layers {}, hidden {}, heads {} (head dim {}), ffn {}\n",
                     format_param_count(double(total)), total, cfg.num_layers, cfg.hidden_size,
                     cfg.num_attention_heads, cfg.head_dim(), cfg.ffn_hidden_size);
  return out;
}

}  // namespace esm2
