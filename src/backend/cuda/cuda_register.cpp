#include "backend/backend_factory.h"
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

namespace esm2 {

void register_cuda_backend() {
  register_backend(
      {.name = "cuda",
       .accelerator = true,
       .device_count = cuda_device_count,
       .make = [](const std::string& precision, int, int device) -> std::unique_ptr<Backend> {
         // bf16-mixed is the GPU default; fp16 and pure-bf16 weights are not implemented, and asking for
         // them is an error rather than a silent substitution.
         ESM2_CHECK(precision == "auto" || is_fp32_precision(precision) || is_bf16_precision(precision),
                    "--precision {}: the CUDA backend computes in bf16-mixed (bf16 activations, fp32 weights) or "
                    "fp32; use --precision bf16-mixed or 32",
                    precision);
         return make_cuda_backend(is_fp32_precision(precision) ? DType::F32 : DType::BF16, device);
       }});
}

}  // namespace esm2
