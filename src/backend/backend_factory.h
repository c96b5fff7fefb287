// Chooses the backend from the user's --backend / --precision flags.
#pragma once
#include <memory>
#include <string>

#include "backend/backend.h"

namespace esm2 {

// which: auto | cpu | cuda. precision: auto | 32 | fp32 | 32-true | bf16-mixed | bf16 | … (the
// reference's spellings). The CPU backend computes in fp32 only: asking it for bf16/fp16 is an
// error, not a silent fallback. A CUDA request in a build without the CUDA backend is an error.
// `device`: the GPU a CUDA backend runs on (one per rank in multi-GPU training); ignored by the CPU.
std::unique_ptr<Backend> make_backend(const std::string& which, const std::string& precision, int threads,
                                      int device = 0);

// The GPU of a rank with local rank `local_rank` on its node: the local rank, or 0 when a launcher bound
// exactly one GPU to each process (one visible device). Throws esm2::Error when the node has fewer GPUs
// than ranks. 0 in a build without CUDA.
int gpu_for_local_rank(int local_rank);

// "fp32" or "bf16-mixed", for logs.
std::string precision_label(const Backend& b);

}  // namespace esm2
