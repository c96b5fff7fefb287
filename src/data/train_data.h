// The per-step data interface of the trainer: sampling (sampler.h), masking (masking.h) and
// packing into THD micro-batches (batch.h). Every rank computes the same global plan for a step
// from (corpus, config, DataPosition) alone — lengths and masks, no communication — takes its
// share, and advances the position identically, so resuming needs only the DataPosition.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "data/batch.h"
#include "data/corpus.h"
#include "data/masking.h"
#include "data/sampler.h"

namespace esm2 {

struct DataConfig {
  uint64_t seed = 42;
  int max_seq_length = 1024;  // tokens incl. <cls>/<eos>; longer sequences get a random window
  int min_seq_length = 0;     // tokens incl. <cls>/<eos>; shorter members are never drawn
  MaskStrategy mask_strategy = MaskStrategy::AllTokens;
  float mask_prob = 0.15f, mask_token_prob = 0.8f, random_token_prob = 0.1f;
  int micro_batch_size = 0;        // padded mode (reference): this many sequences per micro-batch
  int64_t micro_batch_tokens = 0;  // packed mode: token budget per micro-batch (exactly one of the two > 0)
  int accumulate_grad_batches = 1;

  MaskConfig mask() const { return {mask_strategy, mask_prob, mask_token_prob, random_token_prob}; }
  // Throws naming the offending field.
  void validate() const;
};

struct DataPosition {  // everything needed to resume the data stream exactly
  int64_t next_sample = 0;
  std::vector<int64_t> deferred;  // samples drawn but not yet placed (packed mode), placed first next step
  nlohmann::json to_json() const;
  static DataPosition from_json(const nlohmann::json& j);
  bool operator==(const DataPosition&) const = default;
};

struct StepBatch {
  std::vector<MicroBatch> micro;   // THIS rank's micro-batches: exactly accumulate_grad_batches of them
  int64_t global_num_labels = 0;   // labelled positions over the WHOLE global batch (all ranks)
  int64_t global_num_tokens = 0;   // real tokens over the whole global batch
  int64_t global_num_sequences = 0;
  int64_t global_token_slots = 0;  // sum of token_budget over all micro-batches of all ranks
};

class TrainData {
 public:
  TrainData(std::shared_ptr<const Corpus> corpus, DataConfig cfg);
  // The global batch of one optimizer step = dp_world × accumulate micro-batches; rank r gets
  // micro-batches [r·accumulate, (r+1)·accumulate) of the global plan. The plan depends only on
  // dp_world × accumulate, so (world 2, accumulate 1) splits exactly what (world 1, accumulate 2) sees.
  StepBatch next_step(DataPosition& pos, int dp_rank, int dp_world) const;
  const ClusterSampler& sampler() const { return sampler_; }
  const DataConfig& config() const { return cfg_; }

 private:
  std::shared_ptr<const Corpus> corpus_;
  DataConfig cfg_;
  ClusterSampler sampler_;
};

// The validation masks use this seed whatever the training seed, so every evaluation of every run
// sees the same masked positions and validation losses are comparable across runs.
constexpr uint64_t kValidationSeed = 0x5eed'0f'7a11dull;

// Validation: sequence i of the validation corpus (the first member of cluster i, in order), cropped
// and masked with kValidationSeed, packed like training. A global batch is dp_world micro-batches
// (accumulation does not apply); at most limit_batches of them (< 0: all). Returns this rank's
// micro-batches; every rank gets the same number, so the last ones may be empty (no sequences).
std::vector<MicroBatch> validation_batches(const Corpus& valid, const DataConfig& cfg, int64_t limit_batches,
                                           int dp_rank, int dp_world);

}  // namespace esm2
