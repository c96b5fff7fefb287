// The CUDA backend: one GPU, one stream. Activations in BF16 (bf16-mixed) or F32; parameters,
// gradients and AdamW moments stay fp32; GEMMs go through cuBLASLt with fp32 accumulation and read bf16
// copies of the fp32 master weights, kept by the backend and refreshed by the fused AdamW step.
// This header is plain C++ (no CUDA headers) so that C++-only code (apps, tests) can include it.
#pragma once
#include <cstdint>
#include <memory>

#include "backend/backend.h"

namespace esm2 {

// Number of CUDA devices visible (0 when there is no driver or no GPU; never throws).
int cuda_device_count();

// activation_dtype: DType::BF16 (bf16-mixed) or DType::F32. Throws esm2::Error without a usable GPU.
// fp8_linears (fp8-mixed, BF16 activations only): the GEMMs of the encoder's linears run in FP8
// (docs/fp8.md); throws esm2::Error on a GPU before Hopper (sm_90).
std::unique_ptr<Backend> make_cuda_backend(DType activation_dtype, int device = 0, bool fp8_linears = false);

// The stream (a cudaStream_t) and the device every op of a CUDA backend runs on, for work that must be
// ordered with the backend's kernels (NCCL collectives on its buffers). Throws esm2::Error if `b` is
// not a CUDA backend.
void* cuda_backend_stream(Backend& b);
int cuda_backend_device(Backend& b);
// Attention calls (forward and backward) a CUDA backend has run through cuDNN's fused attention (0 when
// built without cuDNN); tests use it to know which route ran.
int64_t cuda_backend_cudnn_attention_calls(Backend& b);
// GEMMs a fp8-mixed CUDA backend has run in FP8, and Linear GEMMs it had to run in bf16 instead (a shape
// or layout cuBLASLt's FP8 kernels do not take); tests use them to know which path ran.
// dy_reused: dgrads that took the output gradient the wgrad before them had quantised.
// split_rows: FP8 products run as a 16-row-aligned part plus a padded tail because cuBLASLt refused their
// row count (counted in fp8 too).
struct Fp8GemmCounts {
  int64_t fp8 = 0, bf16_fallback = 0, split_rows = 0, dy_reused = 0;
};
Fp8GemmCounts cuda_backend_fp8_gemm_counts(Backend& b);

// Adds the cuda backend to the registry (backend/backend_factory.h); the build's generated
// builtin_components.cpp calls it.
void register_cuda_backend();

}  // namespace esm2
