#include "backend/backend_factory.h"

#include "core/error.h"
#include "core/registry.h"

namespace esm2 {

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

std::unique_ptr<Backend> make_backend(BackendKind which, Precision precision, int threads, int device) {
  const BackendRegistration* chosen =
      which == BackendKind::Auto ? visible_accelerator() : find_backend(enum_name(kBackendKindNames, which));
  if (which == BackendKind::Auto && !chosen) chosen = find_backend("cpu");
  if (!chosen) {
    ESM2_CHECK(which != BackendKind::Cuda,
               "--backend cuda: this build has no CUDA backend (it is built when nvcc is found at configure time)");
    fail("--backend {}: this build has no such backend", enum_name(kBackendKindNames, which));
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
  if (b.fp8_linears()) return "fp8-mixed";
  return b.activation_dtype() == DType::F32 ? "fp32" : "bf16-mixed";
}

}  // namespace esm2
