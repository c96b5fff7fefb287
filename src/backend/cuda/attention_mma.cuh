// Warp-level tensor-core pieces for the bf16 attention kernels (sm_80+ mma.sync m16n8k16, fp32
// accumulators), included by attention_forward.cu and attention_backward.cu only.
//
// Fragment conventions (PTX ISA, mma.m16n8k16 .bf16): a thread (lane) holds accumulator elements
// c[0..1] at row lane/4, columns 2·(lane%4)+{0,1} of its 16×8 tile and c[2..3] at row lane/4 + 8.
// Shared tiles are row-major bf16 with a row stride of D + 8 elements (16 bytes of padding keep the
// eight rows an ldmatrix reads on different banks).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda::mma {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// A fragment (16×16, row-major in shared memory at rows r0.., columns k0..).
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const bf16* tile, int ld, int r0, int k0) {
  const int lane = threadIdx.x & 31;
  const bf16* p = tile + (r0 + (lane & 15)) * ld + k0 + (lane >> 4) * 8;
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
               : "r"(smem_addr(p)));
}

// B fragment (k16×n8) from a tile stored as rows n, columns k (e.g. K rows for Q·Kᵀ).
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[2], const bf16* tile, int ld, int n0, int k0) {
  const int lane = threadIdx.x & 31;
  const bf16* p = tile + (n0 + (lane & 7)) * ld + k0 + ((lane >> 3) & 1) * 8;
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(b[0]), "=r"(b[1])
               : "r"(smem_addr(p)));
}

// B fragment (k16×n8) from a tile stored as rows k, columns n (e.g. V rows for P·V): transposing load.
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[2], const bf16* tile, int ld, int k0, int n0) {
  const int lane = threadIdx.x & 31;
  const bf16* p = tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0;
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(b[0]), "=r"(b[1])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// The A fragment for k-chunk kk of a 16×(8·N) accumulator (tiles 2kk and 2kk+1), rounded to bf16.
template <int N>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c)[N][4], int kk) {
  a[0] = pack_bf16(c[2 * kk][0], c[2 * kk][1]);
  a[1] = pack_bf16(c[2 * kk][2], c[2 * kk][3]);
  a[2] = pack_bf16(c[2 * kk + 1][0], c[2 * kk + 1][1]);
  a[3] = pack_bf16(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}

// rows r0 .. r0+R-1 (row stride ld_g elements in global memory) → shared tile (stride D + 8); rows at or
// beyond n are zero. 16-byte copies: D·2 bytes per row is a multiple of 16 for the dims used here.
template <int D, int R, int NT>
__device__ __forceinline__ void load_rows(bf16* tile, const bf16* g, int64_t ld_g, int r0, int n) {
  constexpr int kChunks = D / 8;  // 8 bf16 per 16-byte chunk
  for (int idx = threadIdx.x; idx < R * kChunks; idx += NT) {
    const int r = idx / kChunks, c = idx % kChunks;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r0 + r < n) v = *reinterpret_cast<const uint4*>(g + static_cast<int64_t>(r0 + r) * ld_g + c * 8);
    *reinterpret_cast<uint4*>(tile + r * (D + 8) + c * 8) = v;
  }
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

}  // namespace esm2::cuda::mma
