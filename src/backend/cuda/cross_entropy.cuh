// Masked cross-entropy over logits[R,V] (activation dtype), fp32 log-sum-exp and loss.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace esm2::cuda {

// loss[r] (=) = logsumexp(logits[r,:]) - logits[r, labels[r]]; 0 where labels[r] < 0.
void launch_cross_entropy_forward(float* loss, const void* logits, const int32_t* labels, int64_t R, int64_t V,
                                  DType dt, cudaStream_t s);
// dlogits[R,V] (=) = dloss·(softmax - onehot); zero rows where labels[r] < 0.
void launch_cross_entropy_backward(void* dlogits, const void* logits, const int32_t* labels, int64_t R, int64_t V,
                                   float dloss, DType dt, cudaStream_t s);

}  // namespace esm2::cuda
