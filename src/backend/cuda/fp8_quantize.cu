#include <cuda_fp8.h>

#include <cfloat>

#include "backend/cuda/cuda_types.cuh"
#include "backend/cuda/fp8_quantize.cuh"
#include "backend/cuda/fp8_tiles.cuh"

namespace esm2::cuda {

namespace {

// Non-negative floats order like their bit patterns, so a float maximum is an unsigned atomicMax.
__global__ void amax_kernel_f32(const float* __restrict__ x, size_t n, unsigned* __restrict__ out) {
  float m = 0.0f;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if ((reinterpret_cast<uintptr_t>(x) & 15u) == 0) {
    const size_t nv = n / 4;
    for (size_t v = i; v < nv; v += stride) {
      const float4 p = reinterpret_cast<const float4*>(x)[v];
      m = fmaxf(m, fmaxf(fmaxf(fabsf(p.x), fabsf(p.y)), fmaxf(fabsf(p.z), fabsf(p.w))));
    }
    i += nv * 4;
  }
  for (; i < n; i += stride) m = fmaxf(m, fabsf(x[i]));
  m = warp_max(m);
  if ((threadIdx.x & 31) == 0) atomicMax(out, __float_as_uint(m));
}

__global__ void amax_kernel_bf16(const bf16* __restrict__ x, size_t n, unsigned* __restrict__ out) {
  float m = 0.0f;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if ((reinterpret_cast<uintptr_t>(x) & 15u) == 0) {
    const size_t nv = n / 8;
    for (size_t v = i; v < nv; v += stride) {
      const Pack16<bf16> p = reinterpret_cast<const Pack16<bf16>*>(x)[v];
#pragma unroll
      for (int k = 0; k < 8; ++k) m = fmaxf(m, fabsf(__bfloat162float(p.v[k])));
    }
    i += nv * 8;
  }
  for (; i < n; i += stride) m = fmaxf(m, fabsf(__bfloat162float(x[i])));
  m = warp_max(m);
  if ((threadIdx.x & 31) == 0) atomicMax(out, __float_as_uint(m));
}

using fp8::cvt1;
using fp8::cvt2;
using fp8::kWide;
using fp8::kWideThreads;

__device__ __forceinline__ float fp8_max_of(bool e5m2) { return fp8::max_of(e5m2); }
__device__ __forceinline__ float scale_for(float amax, float fmax) { return fp8::scale_for(amax, fmax); }

__device__ __forceinline__ void publish_inverse(float* scales, float scale) {
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0 && threadIdx.y == 0) scales[kFp8InvScaleWord] = fp8::inverse(scale);
}

template <class T>
__global__ void quantize_kernel(uint8_t* __restrict__ q, float* __restrict__ scales, const T* __restrict__ x, size_t n,
                                bool e5m2) {
  const float scale = scale_for(scales[0], fp8_max_of(e5m2));
  publish_inverse(scales, scale);
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  constexpr int kN = Pack16<T>::kN;  // 8 bf16 or 4 fp32 per 16-byte load
  if (((reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(q)) & 15u) == 0) {
    const size_t nv = n / kN;
    for (size_t v = i; v < nv; v += stride) {
      const Pack16<T> p = reinterpret_cast<const Pack16<T>*>(x)[v];
      unsigned out[kN / 2];
#pragma unroll
      for (int k = 0; k < kN / 2; ++k) out[k] = cvt2(to_f(p.v[2 * k]) * scale, to_f(p.v[2 * k + 1]) * scale, e5m2);
      if constexpr (kN == 8) {
        reinterpret_cast<uint2*>(q)[v] = make_uint2(out[0] | (out[1] << 16), out[2] | (out[3] << 16));
      } else {
        reinterpret_cast<unsigned*>(q)[v] = out[0] | (out[1] << 16);
      }
    }
    i += nv * kN;
  }
  for (; i < n; i += stride) q[i] = cvt1(to_f(x[i]) * scale, e5m2);
}

// ---- transposed quantisation ----
// The wide kernel (fp8_tiles.cuh: 64×64 tiles, pairs in, 4-code words out) for the GEMM operands, whose
// layouts always meet its preconditions; the simple kernel below takes everything else. With q it also
// writes the row-wise codes from the same tile (the output gradient, which dgrad needs row-wise).
template <class T>
__global__ void __launch_bounds__(kWideThreads) quantize_transpose_wide_kernel(uint8_t* __restrict__ qt, int64_t ldq,
                                                                      uint8_t* __restrict__ q,
                                                                      float* __restrict__ scales,
                                                                      const T* __restrict__ x, int64_t rows,
                                                                      int64_t cols, bool e5m2) {
  __shared__ float tile[kWide][kWide + 1];
  const float scale = scale_for(scales[0], fp8_max_of(e5m2));
  publish_inverse(scales, scale);
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kWide, c0 = static_cast<int64_t>(blockIdx.y) * kWide;
  const int t = static_cast<int>(threadIdx.x);
  fp8::wide_load(tile, x, rows, cols, scale, r0, c0, t);
  __syncthreads();
  fp8::wide_store(qt, ldq, tile, cols, e5m2, r0, c0, t);
  if (q) fp8::wide_store_rows(q, tile, rows, cols, e5m2, r0, c0, t);
}

constexpr int kTile = 32;

// The simple kernel: one 32×32 tile per block of 32×8 threads, a byte per thread and store.
template <class T>
__global__ void quantize_transpose_kernel(uint8_t* __restrict__ qt, int64_t ldq, float* __restrict__ scales,
                                          const T* __restrict__ x, int64_t rows, int64_t cols, bool e5m2) {
  __shared__ float tile[kTile][kTile + 1];
  const float scale = scale_for(scales[0], fp8_max_of(e5m2));
  publish_inverse(scales, scale);
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile, c0 = static_cast<int64_t>(blockIdx.y) * kTile;
  for (int j = threadIdx.y; j < kTile; j += blockDim.y) {
    const int64_t r = r0 + j, c = c0 + threadIdx.x;
    tile[j][threadIdx.x] = r < rows && c < cols ? to_f(x[r * cols + c]) * scale : 0.0f;
  }
  __syncthreads();
  for (int j = threadIdx.y; j < kTile; j += blockDim.y) {
    const int64_t c = c0 + j, r = r0 + threadIdx.x;
    if (c < cols && r < ldq) qt[c * ldq + r] = cvt1(tile[threadIdx.x][j], e5m2);
  }
}

}  // namespace

void launch_fp8_amax(float* scales, const void* x, DType xt, size_t n, cudaStream_t s) {
  ESM2_CUDA_CHECK(cudaMemsetAsync(scales, 0, sizeof(float), s));
  if (n == 0) return;
  const unsigned blocks = grid_for(n / 8 + 1, 256, 1024);
  auto* out = reinterpret_cast<unsigned*>(scales);
  if (xt == DType::F32)
    amax_kernel_f32<<<blocks, 256, 0, s>>>(static_cast<const float*>(x), n, out);
  else if (xt == DType::BF16)
    amax_kernel_bf16<<<blocks, 256, 0, s>>>(static_cast<const bf16*>(x), n, out);
  else
    throw_unsupported("fp8 amax: source must be F32 or BF16", __FILE__, __LINE__);
  ESM2_CUDA_CHECK_LAUNCH();
}

void launch_fp8_quantize(uint8_t* q, float* scales, const void* x, DType xt, size_t n, Fp8Format f, cudaStream_t s) {
  const bool e5m2 = f == Fp8Format::E5M2;
  dispatch_act(xt, [&](auto t) {
    using T = decltype(t);
    quantize_kernel<T><<<grid_for(n / Pack16<T>::kN + 1, 256, 4096), 256, 0, s>>>(q, scales,
                                                                                  static_cast<const T*>(x), n, e5m2);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

namespace {

// The wide kernel when x, qt (and q, if given) meet its preconditions; false (nothing launched) otherwise.
bool launch_wide(uint8_t* qt, int64_t ldq, uint8_t* q, float* scales, const void* x, DType xt, int64_t rows,
                 int64_t cols, bool e5m2, cudaStream_t s) {
  bool wide = false;
  dispatch_act(xt, [&](auto t) {
    using T = decltype(t);
    wide = cols % (q ? 4 : 2) == 0 && ldq % 4 == 0 && reinterpret_cast<uintptr_t>(x) % (2 * sizeof(T)) == 0 &&
           reinterpret_cast<uintptr_t>(qt) % 4 == 0 && reinterpret_cast<uintptr_t>(q) % 4 == 0;
    if (!wide) return;
    const dim3 grid(static_cast<unsigned>((ldq + kWide - 1) / kWide), static_cast<unsigned>((cols + kWide - 1) / kWide));
    quantize_transpose_wide_kernel<T><<<grid, kWideThreads, 0, s>>>(qt, ldq, q, scales, static_cast<const T*>(x), rows,
                                                                    cols, e5m2);
    ESM2_CUDA_CHECK_LAUNCH();
  });
  return wide;
}

}  // namespace

void launch_fp8_quantize_transpose(uint8_t* qt, int64_t ldq, float* scales, const void* x, DType xt, int64_t rows,
                                   int64_t cols, Fp8Format f, cudaStream_t s) {
  const bool e5m2 = f == Fp8Format::E5M2;
  if (launch_wide(qt, ldq, nullptr, scales, x, xt, rows, cols, e5m2, s)) return;
  dispatch_act(xt, [&](auto t) {
    using T = decltype(t);
    const dim3 grid(static_cast<unsigned>((ldq + kTile - 1) / kTile), static_cast<unsigned>((cols + kTile - 1) / kTile));
    quantize_transpose_kernel<T><<<grid, dim3(kTile, 8), 0, s>>>(qt, ldq, scales, static_cast<const T*>(x), rows, cols,
                                                                 e5m2);
    ESM2_CUDA_CHECK_LAUNCH();
  });
}

void launch_fp8_quantize_both(uint8_t* q, uint8_t* qt, int64_t ldq, float* scales, const void* x, DType xt,
                              int64_t rows, int64_t cols, Fp8Format f, cudaStream_t s) {
  if (launch_wide(qt, ldq, q, scales, x, xt, rows, cols, f == Fp8Format::E5M2, s)) return;
  // Any other layout: the two quantisers one after the other (the same codes, x read twice).
  launch_fp8_quantize_transpose(qt, ldq, scales, x, xt, rows, cols, f, s);
  launch_fp8_quantize(q, scales, x, xt, static_cast<size_t>(rows * cols), f, s);
}

}  // namespace esm2::cuda
