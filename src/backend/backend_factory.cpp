#include "backend/backend_factory.h"

#include "core/error.h"
#include "core/registry.h"

namespace esm2 {

bool is_fp32_precision(std::string_view p) { return p == "32" || p == "fp32" || p == "32-true" || p == "fp32-mixed"; }
bool is_bf16_precision(std::string_view p) { return p == "bf16" || p == "bf16-mixed"; }
bool is_half_precision(std::string_view p) {
  return p == "bf16" || p == "bf16-mixed" || p == "16" || p == "fp16" || p == "16-mixed" || p == "fp16-mixed" ||
         p == "bf16-true";
}

namespace {
Registry<BackendRegistration>& backends() {
  static Registry<BackendRegistration> registry("backend");
  return registry;
}

// The accelerator `--backend auto` picks: the first registered one with a visible device.
const BackendRegistration* visible_accelerator() {
  for (const BackendRegistration& b : backends().entries())
    if (b.accelerator && b.device_count() > 0) return &b;
  return nullptr;
}
}  // namespace

void register_backend(BackendRegistration backend) { backends().add(std::move(backend)); }
const BackendRegistration* find_backend(std::string_view name) { return backends().find(name); }
std::vector<std::string> registered_backends() { return backends().names(); }

std::unique_ptr<Backend> make_backend(const std::string& which, const std::string& precision, int threads,
                                      int device) {
  ESM2_CHECK(precision == "auto" || is_fp32_precision(precision) || is_half_precision(precision),
             "unknown --precision '{}' (accepted: auto, 32, fp32, 32-true, fp32-mixed, bf16-mixed, bf16, 16, fp16, "
             "16-mixed, fp16-mixed)",
             precision);
  ESM2_CHECK(which == "auto" || which == "cpu" || which == "cuda", "unknown --backend '{}' (auto, cpu, cuda)", which);
  const BackendRegistration* chosen = which == "auto" ? visible_accelerator() : find_backend(which);
  if (which == "auto" && !chosen) chosen = find_backend("cpu");
  if (!chosen) {
    ESM2_CHECK(which != "cuda",
               "--backend cuda: this build has no CUDA backend (it is built when nvcc is found at configure time)");
    fail("--backend {}: this build has no such backend", which);
  }
  return chosen->make(precision, threads, device);
}

int gpu_for_local_rank(int local_rank) {
  const BackendRegistration* gpu = nullptr;
  for (const BackendRegistration& b : backends().entries())
    if (b.accelerator) {
      gpu = &b;
      break;
    }
  if (!gpu) return 0;
  const int n = gpu->device_count();
  if (n <= 1) return 0;
  ESM2_CHECK(local_rank < n, "local rank {} has no GPU of its own: {} visible on this node (one GPU per rank)",
             local_rank, n);
  return local_rank;
}

std::string precision_label(const Backend& b) {
  return b.activation_dtype() == DType::F32 ? "fp32" : "bf16-mixed";
}

}  // namespace esm2
