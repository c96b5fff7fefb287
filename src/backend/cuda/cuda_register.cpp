#include "backend/backend_factory.h"
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

namespace esm2 {

void register_cuda_backend() {
  register_backend(
      {.name = "cuda",
       .accelerator = true,
       .device_count = cuda_device_count,
       .make = [](Precision precision, int, int device) -> std::unique_ptr<Backend> {
         // bf16-mixed is the GPU default; fp16 and pure-bf16 weights are not supported, and asking for
         // them is an error rather than a silent substitution.
         ESM2_CHECK(precision == Precision::Auto || precision == Precision::Fp32 || precision == Precision::Bf16Mixed ||
                        precision == Precision::Fp8Mixed,
                    "--precision {}: the CUDA backend computes in bf16-mixed (bf16 activations, fp32 weights), "
                    "fp8-mixed (Hopper) or fp32; use --precision bf16-mixed or 32",
                    enum_name(kPrecisionNames, precision));
         return make_cuda_backend(precision == Precision::Fp32 ? DType::F32 : DType::BF16, device,
                                  precision == Precision::Fp8Mixed);
       }});
}

}  // namespace esm2
