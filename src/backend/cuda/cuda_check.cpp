#include "backend/cuda/cuda_check.h"

#include "core/error.h"

namespace esm2::cuda {

void throw_cuda_error(cudaError_t e, const char* expr, const char* file, int line) {
  fail("CUDA error at {}:{}: {} ({}) in {}", file, line, cudaGetErrorString(e), cudaGetErrorName(e), expr);
}

namespace {
// cublasGetStatusString lives in libcublas, which this backend does not otherwise link.
const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}
}  // namespace

void throw_cublas_error(cublasStatus_t s, const char* expr, const char* file, int line) {
  fail("cuBLAS error at {}:{}: {} ({}) in {}", file, line, cublas_status_name(s), static_cast<int>(s), expr);
}

void throw_unsupported(const char* what, const char* file, int line) {
  fail("CUDA backend at {}:{}: {}", file, line, what);
}

}  // namespace esm2::cuda
