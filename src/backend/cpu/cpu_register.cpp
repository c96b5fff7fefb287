#include "backend/backend_factory.h"
#include "backend/cpu/cpu_backend.h"
#include "core/error.h"

namespace esm2 {

void register_cpu_backend() {
  register_backend({.name = "cpu",
                    .accelerator = false,
                    .device_count = [] { return 1; },
                    .make = [](Precision precision, int threads, int) -> std::unique_ptr<Backend> {
                      ESM2_CHECK(precision != Precision::Fp8Mixed, "{}; the CPU backend computes in fp32",
                                 kFp8NeedsHopper);
                      ESM2_CHECK(precision == Precision::Auto || precision == Precision::Fp32,
                                 "--precision {}: the CPU backend computes in fp32 only; use --precision 32 (or auto)",
                                 enum_name(kPrecisionNames, precision));
                      return make_cpu_backend(threads);
                    }});
}

}  // namespace esm2
