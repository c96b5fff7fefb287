// Fused AdamW (torch.optim.AdamW semantics, fp32 master weights and moments) over many tensors of flat
// buffers in one launch, also refreshing the bf16 copy of each weight the GEMMs read, so no separate
// cast pass follows the optimizer step.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backend/backend.h"

namespace esm2::cuda {

constexpr int kAdamWTile = 4096;  // elements per block; a tile never spans two tensors

// One tensor of the update, in device memory. Blocks first_block .. first_block + tiles(n) - 1 update it.
struct AdamWRangeDesc {
  size_t offset = 0, n = 0;
  __nv_bfloat16* mirror = nullptr;  // [n] bf16 copy of p[offset, offset + n) to rewrite, or null
  uint32_t first_block = 0;
  uint32_t decay = 0;  // 1: the step's weight decay applies
};

inline uint32_t adamw_tiles(size_t n) { return static_cast<uint32_t>((n + kAdamWTile - 1) / kAdamWTile); }

// p, g, m, v: flat fp32 buffers; ranges: [count] device descriptors with first_block prefix sums,
// total_blocks = Σ tiles.
void launch_adamw_ranges(float* p, const float* g, float* m, float* v, const AdamWRangeDesc* ranges, int count,
                         uint32_t total_blocks, const AdamWStep& st, cudaStream_t s);

}  // namespace esm2::cuda
