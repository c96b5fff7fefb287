#include "train/fault_injection.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <string>

#include "core/error.h"

namespace esm2 {

bool FaultInjection::poison_grad_at(int64_t step) const {
  return std::find(nonfinite_grad_steps.begin(), nonfinite_grad_steps.end(), step) != nonfinite_grad_steps.end();
}

FaultInjection parse_fault_injection(std::string_view spec) {
  FaultInjection f;
  if (spec.empty()) return f;
  constexpr std::string_view kGrad = "nonfinite_grad@";
  ESM2_CHECK(spec.substr(0, kGrad.size()) == kGrad, "ESM2_FAULT_INJECT: unknown fault '{}' (supported: nonfinite_grad@N[,N...])",
             spec);
  std::string_view rest = spec.substr(kGrad.size());
  while (true) {
    const size_t comma = rest.find(',');
    const std::string_view item = rest.substr(0, comma);
    int64_t step = -1;
    const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), step);
    ESM2_CHECK(ec == std::errc() && end == item.data() + item.size() && step >= 0,
               "ESM2_FAULT_INJECT: '{}' is not a step number in '{}'", item, spec);
    f.nonfinite_grad_steps.push_back(step);
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return f;
}

FaultInjection fault_injection_from_env() {
  const char* v = std::getenv("ESM2_FAULT_INJECT");
  return parse_fault_injection(v ? std::string_view(v) : std::string_view());
}

}  // namespace esm2
