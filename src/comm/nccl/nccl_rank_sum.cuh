// The arithmetic half of NcclCommunicator's deterministic reductions: after the exchange, the copies of
// this rank's shard are added in rank order on the GPU.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace esm2::nccl_detail {

// out[n] (=) = Σ over p = 0, 1, …, world−1, in that order, of src_p[n], where src_p = own for
// p == own_rank and recv + p·stride otherwise (recv: [world × stride], the peers' copies). Accumulates
// in float for float and bf16 (rounded once), in double for double. out may alias own.
// T: float, double or __nv_bfloat16.
template <class T>
void launch_rank_sum(T* out, const T* recv, size_t stride, const T* own, int own_rank, int world, size_t n,
                     cudaStream_t stream);

// The same sum of bf16 copies, widened and accumulated in fp32, written as fp32 (the bf16 gradient wire).
void launch_rank_sum_widen(float* out, const __nv_bfloat16* recv, size_t stride, const __nv_bfloat16* own, int own_rank,
                           int world, size_t n, cudaStream_t stream);
// out[n] = in[n] rounded to bf16 (nearest, ties to even; NaN stays NaN).
void launch_round_to_bf16(__nv_bfloat16* out, const float* in, size_t n, cudaStream_t stream);

}  // namespace esm2::nccl_detail
