#include <cmath>

#include "backend/cuda/adamw.cuh"
#include "backend/cuda/cuda_types.cuh"

namespace esm2::cuda {

namespace {
__global__ void adamw_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, bf16* __restrict__ pb, size_t n, float grad_scale, float decay,
                             float step_size, float bc2_sqrt, float b1c, float beta2, float b2c, float eps) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float gi = g[i] * grad_scale;
    float pi = p[i] * decay;
    const float mi = m[i] + b1c * (gi - m[i]);
    const float vi = v[i] * beta2 + b2c * gi * gi;
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    pi -= step_size * (mi / denom);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if (pb) pb[i] = __float2bfloat16_rn(pi);
  }
}
}  // namespace

void launch_adamw(float* p, const float* g, float* m, float* v, __nv_bfloat16* p_bf16, size_t n, const AdamWStep& st,
                  cudaStream_t s) {
  if (n == 0) return;
  // Scalars exactly as the CPU backend (and torch's single-tensor AdamW) computes them.
  const double bc1 = 1.0 - std::pow(static_cast<double>(st.beta1), static_cast<double>(st.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(st.beta2), static_cast<double>(st.step));
  const float decay = static_cast<float>(1.0 - static_cast<double>(st.lr) * st.weight_decay);
  const float step_size = static_cast<float>(st.lr / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  adamw_kernel<<<grid_for(n, 256), 256, 0, s>>>(p, g, m, v, p_bf16, n, st.grad_scale, decay, step_size, bc2_sqrt,
                                                1.0f - st.beta1, st.beta2, 1.0f - st.beta2, st.eps);
  ESM2_CUDA_CHECK_LAUNCH();
}

}  // namespace esm2::cuda
