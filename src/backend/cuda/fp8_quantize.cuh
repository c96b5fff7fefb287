// Per-tensor current-scaling FP8 quantisation for the fp8-mixed GEMMs (docs/fp8.md). Everything stays
// on the device: the amax, the scale derived from it and its inverse (the GEMM's dequantisation
// factor) are written to device words, so no step waits on the host.
//
// Numerics, exactly those of the CPU oracle core/fp8.h: scale = fp8_max / amax (1 when amax is 0 or
// not finite, FLT_MAX when the quotient overflows), q = cvt.rn.satfinite(fp32(x · scale)),
// inv_scale = 1 / scale (IEEE division; the build does not use fast math).
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "core/fp8.h"

namespace esm2::cuda {

// One FP8 tensor's scaling words: scales[0] the amax, scales[kFp8InvScaleWord] the dequantisation factor
// 1/scale that the GEMM reads through CUBLASLT_MATMUL_DESC_{A,B}_SCALE_POINTER. That pointer must be
// 16-byte aligned: with the factor at scales + 1 (4 bytes in) cuBLASLt 13.1 answered every FP8 product
// NOT_SUPPORTED on an H100, while a probe with the same descriptors and algorithm and cudaMalloc'd scales
// ran (docs/fp8.md). A tensor's words take kFp8ScaleWords floats; keep `scales` itself 16-byte aligned.
constexpr int kFp8InvScaleWord = 4;
constexpr int kFp8ScaleWords = 8;

// scales[0] (=) = max |x| over x[n] (F32 or BF16, packed); the word is reset first. Deterministic
// (a maximum does not depend on the order it is taken in).
void launch_fp8_amax(float* scales, const void* x, DType xt, size_t n, cudaStream_t s);

// q[n] (=) = fp8(x[n] · scale), scale from the amax in scales[0]; scales[kFp8InvScaleWord] (=) = 1 / scale.
void launch_fp8_quantize(uint8_t* q, float* scales, const void* x, DType xt, size_t n, Fp8Format f, cudaStream_t s);

// The same quantisation, transposed: x[rows, cols] (packed) → qt[cols, ldq] with qt[c, r] = fp8(x[r, c] ·
// scale) for r < rows and 0 for rows <= r < ldq (the zero padding of the token dimension an FP8 GEMM
// reducing over it needs); scales[kFp8InvScaleWord] (=) = 1 / scale.
void launch_fp8_quantize_transpose(uint8_t* qt, int64_t ldq, float* scales, const void* x, DType xt, int64_t rows,
                                   int64_t cols, Fp8Format f, cudaStream_t s);

// Both of the above from one read of x (the output gradient dy, which dgrad needs row-wise and wgrad
// transposed): q[rows, cols] row-wise and qt[cols, ldq] transposed and zero-padded, the same codes as the
// two calls give; scales[kFp8InvScaleWord] (=) = 1 / scale.
void launch_fp8_quantize_both(uint8_t* q, uint8_t* qt, int64_t ldq, float* scales, const void* x, DType xt,
                              int64_t rows, int64_t cols, Fp8Format f, cudaStream_t s);

}  // namespace esm2::cuda
