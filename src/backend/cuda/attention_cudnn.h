// cuDNN's fused flash attention (the runtime-fused SDPA engine that TransformerEngine uses) for the
// packed (THD) batch: ragged offsets from cu_seqlens, a per-sequence padding mask, bf16 in and out,
// fp32 softmax statistics. Built only when CMake finds cuDNN 9 (ESM2_HAVE_CUDNN); the mma.sync kernels
// stay the fallback and the test oracle.
//
// Rotary is applied outside the graph: q is rotated into bf16 scratch and the keys a sequence attends to
// (all of them, or those whose id is not pad_id when the shape has ids) are rotated and packed with their
// values into consecutive [k | v] rows (launch_rotate_compact_qkv), so the per-sequence key count of
// cuDNN's padding mask expresses the pad-key mask; the graph scales the scores by D^-0.5; the backward
// writes dQ into dqkv and (dK, dV) into the compacted rows, and launch_expand_unrotate_dqkv applies the
// rotary adjoint and puts dK/dV back at their tokens (zero for a masked key). cuDNN's statistics (max + log Σexp, natural log, of
// the scaled scores) live in a [B,H,s] padded scratch and are converted to and from the backend's lse[H,T].
//
// Execution plans are built once per (pass, D, H, B bucket, s bucket, backward algorithm): the batch
// dimension B is the sequence count rounded up to a power of two (extra sequences have length 0) and s
// the longest sequence rounded up to a power of two ≥ 128, so a run builds a handful of plans.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string>

#include "backend/backend.h"

namespace esm2::cuda {

class CudnnAttention {
 public:
  // nullptr (with the reason in *why) when the cuDNN library cannot be used here (version < 9, no handle).
  static std::unique_ptr<CudnnAttention> create(cudaStream_t stream, std::string* why);
  virtual ~CudnnAttention() = default;

  // Whether this shape can go through cuDNN: bf16, head dim a multiple of 8 up to 128, offsets that fit
  // int32 (pad keys, a.ids, are handled by key compaction).
  static bool supports(const AttentionShape& a, DType dt);

  // Scratch bytes for a call (builds and caches the plan on first use; throws esm2::Error if cuDNN
  // finds no engine for the graph).
  virtual size_t forward_scratch_bytes(const AttentionShape& a) = 0;
  virtual size_t backward_scratch_bytes(const AttentionShape& a, bool deterministic) = 0;
  // Semantics of Backend::attention_forward / attention_backward; scratch of the size above (256-byte
  // aligned). deterministic = false allows the faster backward that accumulates dQ with atomics.
  virtual void forward(void* out, float* lse, const void* qkv, const AttentionShape& a, void* scratch) = 0;
  virtual void backward(void* dqkv, const void* dout, const void* qkv, const void* out, const float* lse,
                        const AttentionShape& a, bool deterministic, void* scratch) = 0;
  // The deterministic backward's plan workspace grows with the padded sequence count (~90–120 MB per
  // sequence of up to 1,024 tokens measured on an H100): with `sequences` (a power of two ≥ 4; 0 = off) it
  // runs over groups of that many sequences, one plan execution each, so its workspace is that of one
  // group. Each sequence's attention is independent of the others, so the groups compute the same
  // gradients. Takes effect for the sizes and calls that follow.
  virtual void set_backward_group(int64_t sequences) = 0;
  virtual int64_t backward_group() const = 0;
};

}  // namespace esm2::cuda
