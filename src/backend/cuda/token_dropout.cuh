// ESM-2 token dropout (HF EsmEmbeddings): a per-sequence linear map, identical forward and backward.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace esm2::cuda {

// In place on x[T,C] (T = cu[S]): pad rows (and <mask> rows when rescaling) become 0; with rescale every
// other row becomes (x·(1-ratio_train)) / (1 - n_mask/n_real) of its sequence.
void launch_token_dropout(void* x, const int32_t* ids, const int32_t* cu, int S, int64_t C, int32_t mask_id,
                          int32_t pad_id, float ratio_train, bool rescale, DType dt, cudaStream_t s);

}  // namespace esm2::cuda
