// Checked CUDA / cuBLAS calls: a failure throws esm2::Error naming file:line, the call and the library's
// error string (never exit()). Host-only; usable from .cu and .cpp files alike. The throwing functions
// live in cuda_check.cpp so that kernel files never include fmt.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

namespace esm2::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t e, const char* expr, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t s, const char* expr, const char* file, int line);
[[noreturn]] void throw_unsupported(const char* what, const char* file, int line);

}  // namespace esm2::cuda

#define ESM2_CUDA_CHECK(expr)                                                              \
  do {                                                                                     \
    const cudaError_t esm2_e_ = (expr);                                                    \
    if (esm2_e_ != cudaSuccess) ::esm2::cuda::throw_cuda_error(esm2_e_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: configuration errors surface here, asynchronous faults at the next sync.
#define ESM2_CUDA_CHECK_LAUNCH() ESM2_CUDA_CHECK(cudaGetLastError())

#define ESM2_CUBLAS_CHECK(expr)                                                                    \
  do {                                                                                             \
    const cublasStatus_t esm2_s_ = (expr);                                                         \
    if (esm2_s_ != CUBLAS_STATUS_SUCCESS) ::esm2::cuda::throw_cublas_error(esm2_s_, #expr, __FILE__, __LINE__); \
  } while (0)
