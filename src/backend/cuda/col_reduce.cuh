// Device pieces of the deterministic column reductions (bias, LayerNorm weight/bias, embedding
// gradients): a block covers 32 columns × kColRows rows; its 8 warps take rows round-robin and their
// partial sums are combined in warp order, so results never depend on scheduling.
#pragma once
#include <cstdint>

namespace esm2::cuda {

constexpr int kColRows = 128;  // rows per chunk (one partial per chunk and column)

inline int64_t col_chunks(int64_t M) { return (M + kColRows - 1) / kColRows; }

// out[c] += Σ_k partial[k·N + c] in chunk order; one thread per column.
__global__ void finish_col_partials(float* __restrict__ out, const float* __restrict__ partial, int64_t chunks,
                                    int64_t N);

}  // namespace esm2::cuda
