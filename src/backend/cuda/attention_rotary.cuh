// Rotary embedding applied once per call for the tensor-core attention kernels: q and k of every token
// and head rotated (q also scaled by D^-0.5) into bf16 scratch, so the kernels' tile loads are plain
// 16-byte copies.
#pragma once
#include <cuda_runtime.h>

#include "backend/backend.h"

namespace esm2::cuda {

// qr[T,C], kr[T,C] (bf16) from qkv[T,3C] (bf16); positions restart at each cu_seqlens boundary.
void launch_rotate_qk(void* qr, void* kr, const void* qkv, const AttentionShape& a, float q_scale, cudaStream_t s);

}  // namespace esm2::cuda
