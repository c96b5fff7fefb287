#include "backend/backend_factory.h"

#include "core/error.h"

#ifdef ESM2_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace esm2 {

std::unique_ptr<Backend> make_backend(BackendKind which, Precision precision, int threads, int device) {
#ifdef ESM2_HAVE_CUDA
  // auto: the GPU when one is visible. bf16-mixed is the GPU default; fp16 and pure-bf16 weights are not
  // implemented, and asking for them is an error rather than a silent substitution.
  if (which == BackendKind::Cuda || (which == BackendKind::Auto && cuda_device_count() > 0)) {
    ESM2_CHECK(precision == Precision::Auto || precision == Precision::Fp32 || precision == Precision::Bf16Mixed,
               "--precision {}: the CUDA backend computes in bf16-mixed (bf16 activations, fp32 weights) or fp32; "
               "use --precision bf16-mixed or 32",
               enum_name(kPrecisionNames, precision));
    return make_cuda_backend(precision == Precision::Fp32 ? DType::F32 : DType::BF16, device);
  }
#else
  (void)device;
  if (which == BackendKind::Cuda)
    fail("--backend cuda: this build has no CUDA backend (it is built when nvcc is found at configure time)");
#endif
  // auto and cpu: the CPU backend.
  ESM2_CHECK(precision == Precision::Auto || precision == Precision::Fp32,
             "--precision {}: the CPU backend computes in fp32 only; use --precision 32 (or auto)",
             enum_name(kPrecisionNames, precision));
  return make_cpu_backend(threads);
}

int gpu_for_local_rank(int local_rank) {
#ifdef ESM2_HAVE_CUDA
  const int n = cuda_device_count();
  if (n <= 1) return 0;
  ESM2_CHECK(local_rank < n, "local rank {} has no GPU of its own: {} visible on this node (one GPU per rank)",
             local_rank, n);
  return local_rank;
#else
  (void)local_rank;
  return 0;
#endif
}

std::string precision_label(const Backend& b) {
  return b.activation_dtype() == DType::F32 ? "fp32" : "bf16-mixed";
}

}  // namespace esm2
