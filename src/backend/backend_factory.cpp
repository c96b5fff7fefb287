#include "backend/backend_factory.h"

#include "core/error.h"

#ifdef ESM2_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace esm2 {

namespace {
bool is_fp32(const std::string& p) { return p == "32" || p == "fp32" || p == "32-true" || p == "fp32-mixed"; }
bool is_bf16(const std::string& p) { return p == "bf16" || p == "bf16-mixed"; }
bool is_half(const std::string& p) {
  return p == "bf16" || p == "bf16-mixed" || p == "16" || p == "fp16" || p == "16-mixed" || p == "fp16-mixed" ||
         p == "bf16-true";
}
}  // namespace

std::unique_ptr<Backend> make_backend(const std::string& which, const std::string& precision, int threads,
                                      int device) {
  ESM2_CHECK(precision == "auto" || is_fp32(precision) || is_half(precision),
             "unknown --precision '{}' (accepted: auto, 32, fp32, 32-true, fp32-mixed, bf16-mixed, bf16, 16, fp16, "
             "16-mixed, fp16-mixed)",
             precision);
  ESM2_CHECK(which == "auto" || which == "cpu" || which == "cuda", "unknown --backend '{}' (auto, cpu, cuda)", which);
#ifdef ESM2_HAVE_CUDA
  // auto: the GPU when one is visible. bf16-mixed is the GPU default; fp16 and pure-bf16 weights are not
  // implemented, and asking for them is an error rather than a silent substitution.
  if (which == "cuda" || (which == "auto" && cuda_device_count() > 0)) {
    ESM2_CHECK(precision == "auto" || is_fp32(precision) || is_bf16(precision),
               "--precision {}: the CUDA backend computes in bf16-mixed (bf16 activations, fp32 weights) or fp32; "
               "use --precision bf16-mixed or 32",
               precision);
    return make_cuda_backend(is_fp32(precision) ? DType::F32 : DType::BF16, device);
  }
#else
  (void)device;
  if (which == "cuda")
    fail("--backend cuda: this build has no CUDA backend (it is built when nvcc is found at configure time)");
#endif
  // auto and cpu: the CPU backend.
  ESM2_CHECK(!is_half(precision),
             "--precision {}: the CPU backend computes in fp32 only; use --precision 32 (or auto)", precision);
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
