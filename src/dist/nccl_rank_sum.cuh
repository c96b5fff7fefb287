// The arithmetic half of NcclCommunicator's deterministic reductions: after the exchange, the copies of
// this rank's shard are added in rank order on the GPU.
#pragma once
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

}  // namespace esm2::nccl_detail
