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
std::unique_ptr<Backend> make_cuda_backend(DType activation_dtype, int device = 0);

// The stream (a cudaStream_t) and the device every op of a CUDA backend runs on, for work that must be
// ordered with the backend's kernels (NCCL collectives on its buffers). Throws esm2::Error if `b` is
// not a CUDA backend.
void* cuda_backend_stream(Backend& b);
int cuda_backend_device(Backend& b);
// Attention calls (forward and backward) a CUDA backend has run through cuDNN's fused attention (0 when
// built without cuDNN); tests use it to know which route ran.
int64_t cuda_backend_cudnn_attention_calls(Backend& b);

// Adds the cuda backend to the registry (backend/backend_factory.h); the build's generated
// builtin_components.cpp calls it.
void register_cuda_backend();

}  // namespace esm2
