#include "backend/backend_factory.h"
#include "backend/cpu/cpu_backend.h"
#include "core/error.h"

namespace esm2 {

void register_cpu_backend() {
  register_backend({.name = "cpu",
                    .accelerator = false,
                    .device_count = [] { return 1; },
                    .make = [](const std::string& precision, int threads, int) -> std::unique_ptr<Backend> {
                      ESM2_CHECK(!is_half_precision(precision),
                                 "--precision {}: the CPU backend computes in fp32 only; use --precision 32 (or auto)",
                                 precision);
                      return make_cpu_backend(threads);
                    }});
}

}  // namespace esm2
