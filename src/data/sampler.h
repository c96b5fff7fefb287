// Epoch-permuted cluster sampling, a pure function of (seed, sample index):
//   sample i → epoch e = i / C', position p = i % C' (C' = eligible clusters);
//   cluster = perm_e(p), a Fisher–Yates permutation keyed by Philox(seed, ClusterPermutation, e);
//   member  = uniform over the cluster's eligible members, Philox(seed, MemberChoice, i);
//   crop    = a random window of max_seq_length-2 residues, Philox(seed, Crop, i), when the sequence
//             with <cls>/<eos> exceeds max_seq_length. <cls> and <eos> are always kept (the reference
//             crops after adding them and usually loses <eos>: a quirk we do not copy).
// Members shorter than min_seq_length tokens (incl. <cls>/<eos>) are ineligible, and clusters left
// with no eligible member are dropped here, once (the reference pads short sequences instead).
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "data/corpus.h"

namespace esm2 {

// One drawn sequence: residues [start, start + residues) of corpus sequence `sequence`.
struct SampleRef {
  int64_t index = 0;  // global sample index (the masking key)
  uint32_t sequence = 0;
  uint32_t start = 0;
  uint32_t residues = 0;
  int32_t tokens() const { return static_cast<int32_t>(residues) + 2; }
};

// The crop rule shared by training and validation: the whole sequence when it fits, else a window
// at an offset drawn from Philox(seed, Crop, sample_index).
SampleRef crop_sample(int64_t sample_index, uint32_t sequence, uint64_t length, uint64_t seed, int max_seq_length);

// Appends <cls> residues <eos> of `s` to `out`.
void append_sample_tokens(const Corpus& corpus, const SampleRef& s, std::vector<int32_t>& out);

class ClusterSampler {
 public:
  ClusterSampler(std::shared_ptr<const Corpus> corpus, uint64_t seed, int max_seq_length, int min_seq_length);

  SampleRef sample(int64_t i) const;
  size_t num_eligible_clusters() const { return eligible_offsets_.size() - 1; }
  // True when the sampler reads the corpus's cluster tables in place (no filtered copy).
  bool zero_copy() const { return filtered_offsets_.empty(); }
  size_t num_dropped_clusters() const { return corpus_->num_clusters() - num_eligible_clusters(); }
  // The cluster (corpus index) that sample i is drawn from.
  uint32_t cluster_of(int64_t i) const;
  const Corpus& corpus() const { return *corpus_; }

 private:
  std::shared_ptr<const std::vector<uint32_t>> permutation(uint64_t epoch) const;

  std::shared_ptr<const Corpus> corpus_;
  uint64_t seed_;
  int max_seq_length_;
  // When min_seq_length excludes no member and no cluster is empty (the usual case), the eligible
  // tables are the corpus's own memory-mapped cluster tables: nothing is copied or scanned per member,
  // so a corpus of 10^8 members starts in a moment. Otherwise they point into filtered copies.
  std::span<const uint64_t> eligible_offsets_;  // [C'+1]
  std::span<const uint32_t> eligible_members_;  // [M'] sequence indices
  std::vector<uint32_t> eligible_cluster_;      // [C'] corpus cluster index; empty: the identity
  std::vector<uint64_t> filtered_offsets_;
  std::vector<uint32_t> filtered_members_;
  // Permutations of the two most recently used epochs: packing revisits deferred samples of the
  // previous epoch right after a boundary.
  mutable std::mutex mu_;
  mutable std::vector<std::pair<uint64_t, std::shared_ptr<const std::vector<uint32_t>>>> cache_;
};

}  // namespace esm2
