// TEST-ONLY fault injection for the trainer, driven by the environment variable ESM2_FAULT_INJECT.
// It exists so that tests can prove how training reacts to numerical faults (--on-nonfinite) without
// hunting for data that happens to overflow. Production runs leave the variable unset; then the
// trainer behaves exactly as without this hook.
//
//   ESM2_FAULT_INJECT=nonfinite_grad@N[,N...]   poison the gradient with NaN at step N (0-based,
//                                               the step index the trainer's warnings print)
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

namespace esm2 {

struct FaultInjection {
  std::vector<int64_t> nonfinite_grad_steps;
  bool poison_grad_at(int64_t step) const;
};

// Parses a spec as above; an unknown fault or a malformed step is an esm2::Error (a typo must not
// silently turn a fault test into a passing no-op).
FaultInjection parse_fault_injection(std::string_view spec);
// The spec in ESM2_FAULT_INJECT, or no faults when it is unset or empty.
FaultInjection fault_injection_from_env();

}  // namespace esm2
