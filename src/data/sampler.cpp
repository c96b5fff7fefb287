#include "data/sampler.h"

#include <numeric>

#include "core/error.h"
#include "core/philox.h"
#include "data/tokenizer.h"

namespace esm2 {

SampleRef crop_sample(int64_t sample_index, uint32_t sequence, uint64_t length, uint64_t seed, int max_seq_length) {
  SampleRef s;
  s.index = sample_index;
  s.sequence = sequence;
  const uint64_t window = static_cast<uint64_t>(max_seq_length) - 2;
  if (length <= window) {
    s.residues = static_cast<uint32_t>(length);
    return s;
  }
  uint64_t choices = length - window + 1;
  ESM2_ASSERT(choices < (1ull << 32));
  uint32_t bits = PhiloxStream{seed, RngStream::Crop, static_cast<uint64_t>(sample_index)}.word(0);
  s.start = philox_below(bits, static_cast<uint32_t>(choices));
  s.residues = static_cast<uint32_t>(window);
  return s;
}

void append_sample_tokens(const Corpus& corpus, const SampleRef& s, std::vector<int32_t>& out) {
  auto seq = corpus.sequence(s.sequence).subspan(s.start, s.residues);
  out.push_back(kCls);
  out.insert(out.end(), seq.begin(), seq.end());
  out.push_back(kEos);
}

ClusterSampler::ClusterSampler(std::shared_ptr<const Corpus> corpus, uint64_t seed, int max_seq_length,
                               int min_seq_length)
    : corpus_(std::move(corpus)), seed_(seed), max_seq_length_(max_seq_length) {
  ESM2_CHECK(corpus_ != nullptr, "sampler: no corpus");
  ESM2_CHECK(max_seq_length >= 3, "max_seq_length {} is below 3 (<cls>, one residue, <eos>)", max_seq_length);
  ESM2_CHECK(min_seq_length <= max_seq_length, "min_seq_length {} exceeds max_seq_length {}", min_seq_length,
             max_seq_length);
  auto offsets = corpus_->cluster_offsets();
  bool all_eligible = static_cast<int64_t>(corpus_->min_length()) + 2 >= min_seq_length;
  for (size_t c = 0; all_eligible && c < corpus_->num_clusters(); ++c) all_eligible = offsets[c] < offsets[c + 1];
  if (all_eligible) {
    eligible_offsets_ = offsets;
    eligible_members_ = corpus_->all_cluster_members();
    return;
  }
  filtered_offsets_.push_back(0);
  for (size_t c = 0; c < corpus_->num_clusters(); ++c) {
    for (uint32_t m : corpus_->cluster_members(c))
      if (static_cast<int64_t>(corpus_->length(m)) + 2 >= min_seq_length) filtered_members_.push_back(m);
    if (filtered_members_.size() > filtered_offsets_.back()) {
      eligible_cluster_.push_back(static_cast<uint32_t>(c));
      filtered_offsets_.push_back(filtered_members_.size());
    }
  }
  ESM2_CHECK(!eligible_cluster_.empty(), "{}: no cluster has a member of at least min_seq_length {} tokens",
             corpus_->path().string(), min_seq_length);
  eligible_offsets_ = filtered_offsets_;
  eligible_members_ = filtered_members_;
}

std::shared_ptr<const std::vector<uint32_t>> ClusterSampler::permutation(uint64_t epoch) const {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [e, p] : cache_)
    if (e == epoch) return p;
  const size_t n = num_eligible_clusters();
  auto perm = std::make_shared<std::vector<uint32_t>>(n);
  std::iota(perm->begin(), perm->end(), 0u);
  PhiloxStream rng{seed_, RngStream::ClusterPermutation, epoch};
  for (size_t k = n - 1, draw = 0; k >= 1; --k, ++draw) {
    uint32_t j = philox_below(rng.word(draw), static_cast<uint32_t>(k + 1));
    std::swap((*perm)[k], (*perm)[j]);
  }
  if (cache_.size() == 2) cache_.erase(cache_.begin());
  cache_.emplace_back(epoch, perm);
  return perm;
}

uint32_t ClusterSampler::cluster_of(int64_t i) const {
  ESM2_ASSERT(i >= 0);
  const uint64_t n = num_eligible_clusters();
  auto perm = permutation(static_cast<uint64_t>(i) / n);
  uint32_t e = (*perm)[static_cast<uint64_t>(i) % n];
  return eligible_cluster_.empty() ? e : eligible_cluster_[e];
}

SampleRef ClusterSampler::sample(int64_t i) const {
  ESM2_ASSERT(i >= 0);
  const uint64_t n = num_eligible_clusters();
  auto perm = permutation(static_cast<uint64_t>(i) / n);
  uint32_t e = (*perm)[static_cast<uint64_t>(i) % n];
  uint64_t lo = eligible_offsets_[e], count = eligible_offsets_[e + 1] - lo;
  uint32_t bits = PhiloxStream{seed_, RngStream::MemberChoice, static_cast<uint64_t>(i)}.word(0);
  uint32_t seq = eligible_members_[lo + philox_below(bits, static_cast<uint32_t>(count))];
  return crop_sample(i, seq, corpus_->length(seq), seed_, max_seq_length_);
}

}  // namespace esm2
