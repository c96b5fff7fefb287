// The contract between the data pipeline and the model: a packed micro-batch (THD layout).
// Sequences are concatenated; attention never crosses a boundary in cu_seqlens. Positions for
// rotary restart at 0 at every sequence start (the <cls> token).
#pragma once
#include <cstdint>
#include <vector>

namespace esm2 {

struct MicroBatch {
  std::vector<int32_t> input_ids;   // [T] token ids after masking (<cls> … <eos> per sequence)
  std::vector<int32_t> labels;      // [T] original id at positions selected for the loss, -100 elsewhere
  std::vector<int32_t> cu_seqlens;  // [S+1] prefix sums of sequence lengths; front 0, back T
  std::vector<int64_t> sample_ids;  // [S] global sample index of each sequence (for debugging/tests)
  int32_t max_seqlen = 0;           // longest sequence in this micro-batch
  int64_t token_budget = 0;         // slots of this micro-batch (packing: --micro-batch-tokens;
                                    // padded mode: micro_batch_size × longest) for efficiency stats

  int64_t num_tokens() const { return static_cast<int64_t>(input_ids.size()); }
  int64_t num_sequences() const { return cu_seqlens.empty() ? 0 : static_cast<int64_t>(cu_seqlens.size()) - 1; }
  int64_t num_labels() const {
    int64_t n = 0;
    for (int32_t l : labels) n += (l != -100);
    return n;
  }
};

}  // namespace esm2
