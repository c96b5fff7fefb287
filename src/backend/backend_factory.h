// Chooses the backend from the user's --backend / --precision flags.
#pragma once
#include <memory>
#include <string>

#include "backend/backend.h"
#include "core/enum_names.h"

namespace esm2 {

enum class BackendKind { Auto, Cpu, Cuda };  // auto: CUDA when built and a GPU is visible, else CPU

inline constexpr EnumName<BackendKind> kBackendKindNames[] = {
    {"auto", BackendKind::Auto}, {"cpu", BackendKind::Cpu}, {"cuda", BackendKind::Cuda}};

// --precision, in the reference's (Lightning's) spellings. Only fp32 and bf16-mixed (bf16 activations,
// fp32 weights) are implemented; the others are named so that asking for them is a clear error.
enum class Precision { Auto, Fp32, Bf16Mixed, Fp16Mixed, Bf16True };

inline constexpr EnumName<Precision> kPrecisionNames[] = {
    {"auto", Precision::Auto},          {"32", Precision::Fp32},        {"fp32", Precision::Fp32},
    {"32-true", Precision::Fp32},       {"fp32-mixed", Precision::Fp32}, {"bf16-mixed", Precision::Bf16Mixed},
    {"bf16", Precision::Bf16Mixed},     {"16", Precision::Fp16Mixed},   {"fp16", Precision::Fp16Mixed},
    {"16-mixed", Precision::Fp16Mixed}, {"fp16-mixed", Precision::Fp16Mixed}, {"bf16-true", Precision::Bf16True}};

// The CPU backend computes in fp32 only: asking it for bf16/fp16 is an error, not a silent fallback.
// A CUDA request in a build without the CUDA backend is an error.
// `device`: the GPU a CUDA backend runs on (one per rank in multi-GPU training); ignored by the CPU.
std::unique_ptr<Backend> make_backend(BackendKind which, Precision precision, int threads, int device = 0);

// The GPU of a rank with local rank `local_rank` on its node: the local rank, or 0 when a launcher bound
// exactly one GPU to each process (one visible device). Throws esm2::Error when the node has fewer GPUs
// than ranks. 0 in a build without CUDA.
int gpu_for_local_rank(int local_rank);

// "fp32" or "bf16-mixed", for logs.
std::string precision_label(const Backend& b);

}  // namespace esm2
