// Device-side helpers shared by the kernels: activation element types (fp32 or bf16, arithmetic always
// in fp32), warp reductions, and the host-side dispatch from DType to a template instance.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backend/cuda/cuda_check.h"
#include "core/dtype.h"

namespace esm2::cuda {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// 16 bytes of activations (8 bf16 or 4 fp32): one vector load or store per thread, so memory-bound
// kernels move full 128-byte lines per warp instruction.
template <class T>
struct alignas(16) Pack16 {
  static constexpr int kN = 16 / static_cast<int>(sizeof(T));
  T v[kN];
};

// Whether every pointer is 16-byte aligned (the vector paths' precondition).
inline bool aligned16(const void* a, const void* b = nullptr, const void* c = nullptr) {
  return ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) | reinterpret_cast<uintptr_t>(c)) & 15u) ==
         0;
}

// Calls f(T{}) with T = float for DType::F32 and bf16 for DType::BF16 (the activation types).
template <class F>
void dispatch_act(DType dt, F&& f) {
  if (dt == DType::F32)
    f(float{});
  else if (dt == DType::BF16)
    f(bf16{});
  else
    throw_unsupported("activation dtype must be F32 or BF16", __FILE__, __LINE__);
}

// Grid size for a grid-stride loop over n elements.
inline unsigned grid_for(size_t n, int threads, size_t cap = 65535u * 16u) {
  size_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > cap) b = cap;
  return static_cast<unsigned>(b);
}

}  // namespace esm2::cuda
