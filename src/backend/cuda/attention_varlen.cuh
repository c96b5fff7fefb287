// Layout helpers around the attention kernels: cuDNN's ragged (THD) metadata with key compaction and the
// rotary embedding in and out of it, and the conversion between its padded softmax statistics and the
// backend's lse[H,T] (the zero padding of odd head dims is in attention_pad.cuh).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/backend.h"

namespace esm2::cuda {

// Key compaction for cuDNN's attention, whose mask is per sequence: the keys a sequence attends to (all
// but those with id == pad_id when a.ids is set) are packed into consecutive rows of a [Tkv, 2C] buffer
// ([k | v] per row), so a per-sequence key count expresses the key mask. For b in [0, B):
// seqlen_q[b] = length of sequence b, seqlen_kv[b] = its kept keys (both 0 for b >= S); for b in [0, B]:
// off_c[b] = cu[min(b,S)]·C, off_3c[b] = cu[min(b,S)]·3C, kv_start[b] = kept keys before sequence b,
// off_kv[b] = kv_start[b]·2C; kv_pos[t] = token t's row in the compacted buffer, −1 for a dropped key.
void launch_kv_compaction(int32_t* seqlen_q, int32_t* seqlen_kv, int32_t* off_c, int32_t* off_3c, int32_t* off_kv,
                          int32_t* kv_start, int32_t* kv_pos, const AttentionShape& a, int B, cudaStream_t s);
// q rotated (no scale) into q_out (rows of ld_q elements); for every kept key, k rotated and v copied into
// its compacted row kv[kv_pos[t]] = [rot(k) | v] (rows of 2C). bf16.
void launch_rotate_compact_qkv(void* q_out, int64_t ld_q, void* kv, const int32_t* kv_pos, const void* qkv,
                               const AttentionShape& a, cudaStream_t s);
// The adjoint of the two above for the gradients: dqkv[t] = [rotᵀ(dq[t]) | rotᵀ(dk) | dv], where dq is
// already in dqkv (rows of 3C) and (dk, dv) is dkv[kv_pos[t]] (rows of 2C), zero for a dropped key. bf16.
void launch_expand_unrotate_dqkv(void* dqkv, const void* dkv, const int32_t* kv_pos, const AttentionShape& a,
                                 cudaStream_t s);
// lse[h·T + cu[b] + i] = stats[(b·H + h)·sp + i] for i < len(b).
void launch_stats_to_lse(float* lse, const float* stats, const int32_t* cu, int S, int64_t T, int H, int sp,
                         cudaStream_t s);
// stats[(b·H + h)·sp + i] = lse[h·T + cu[b] + i] for i < len(b), 0 elsewhere (b < B, i < sp).
void launch_lse_to_stats(float* stats, const float* lse, const int32_t* cu, int S, int B, int64_t T, int H, int sp,
                         cudaStream_t s);
}  // namespace esm2::cuda
