#include "data/train_data.h"

#include <algorithm>
#include <functional>

#include "core/error.h"

namespace esm2 {

namespace {

// Packing stops drawing after this many consecutive samples that fit in no micro-batch; those
// samples are deferred to the next step, not dropped. The cap bounds the deferred list and so how
// late a sample can be placed. Measured on the bundled corpus (max length 1024): 32/128 gives
// 99.9% efficiency at 16384 tokens and 97.9% at 1024 with samples placed at most ~500 draws late;
// 64/256 gains 0.05-0.3 points for twice the delay.
constexpr int kMaxConsecutiveMisses = 32;
constexpr size_t kMaxDeferred = 128;

using SampleFn = std::function<SampleRef(int64_t)>;

struct GlobalPlan {
  std::vector<std::vector<SampleRef>> bins;  // [G] samples in placement order
  std::vector<int64_t> budget;               // [G] token_budget of each bin
};

// Packed mode: deferred samples first, then the stream, each into the first bin with room.
GlobalPlan plan_packed(DataPosition& pos, int num_bins, int64_t budget, int min_tokens, int64_t end,
                       const SampleFn& sample) {
  GlobalPlan plan;
  plan.bins.resize(num_bins);
  plan.budget.assign(num_bins, budget);
  std::vector<int64_t> free(num_bins, budget);
  auto place = [&](const SampleRef& s) {
    for (int g = 0; g < num_bins; ++g)
      if (free[g] >= s.tokens()) {
        plan.bins[g].push_back(s);
        free[g] -= s.tokens();
        return true;
      }
    return false;
  };
  std::vector<int64_t> deferred;
  for (int64_t i : pos.deferred)
    if (!place(sample(i))) deferred.push_back(i);
  int misses = 0;
  while (pos.next_sample < end && misses < kMaxConsecutiveMisses && deferred.size() < kMaxDeferred) {
    if (*std::max_element(free.begin(), free.end()) < min_tokens) break;  // every bin is full
    SampleRef s = sample(pos.next_sample++);
    if (place(s)) {
      misses = 0;
    } else {
      ++misses;
      deferred.push_back(s.index);
    }
  }
  pos.deferred = std::move(deferred);
  return plan;
}

// Padded mode (the reference): micro_batch_size consecutive samples per bin.
GlobalPlan plan_padded(DataPosition& pos, int num_bins, int per_bin, int64_t end, const SampleFn& sample) {
  GlobalPlan plan;
  plan.bins.resize(num_bins);
  plan.budget.assign(num_bins, 0);
  std::vector<int64_t> order(pos.deferred);
  pos.deferred.clear();
  size_t k = 0;
  for (int g = 0; g < num_bins; ++g) {
    int32_t longest = 0;
    for (int j = 0; j < per_bin; ++j) {
      int64_t i;
      if (k < order.size()) {
        i = order[k++];
      } else if (pos.next_sample < end) {
        i = pos.next_sample++;
      } else {
        break;
      }
      plan.bins[g].push_back(sample(i));
      longest = std::max(longest, plan.bins[g].back().tokens());
    }
    plan.budget[g] = static_cast<int64_t>(per_bin) * longest;
  }
  return plan;
}

MicroBatch build_micro(const Corpus& corpus, const std::vector<SampleRef>& bin, int64_t budget, uint64_t seed,
                       const MaskConfig& mask) {
  MicroBatch mb;
  mb.token_budget = budget;
  mb.cu_seqlens.push_back(0);
  std::vector<int32_t> tokens;
  for (const SampleRef& s : bin) {
    tokens.clear();
    append_sample_tokens(corpus, s, tokens);
    mask_tokens(tokens, seed, s.index, mask, mb.input_ids, mb.labels);
    mb.cu_seqlens.push_back(static_cast<int32_t>(mb.input_ids.size()));
    mb.sample_ids.push_back(s.index);
    mb.max_seqlen = std::max(mb.max_seqlen, s.tokens());
  }
  return mb;
}

int64_t count_bin_labels(const Corpus& corpus, const std::vector<SampleRef>& bin, uint64_t seed,
                         const MaskConfig& mask) {
  int64_t n = 0;
  std::vector<int32_t> tokens;
  for (const SampleRef& s : bin) {
    tokens.clear();
    append_sample_tokens(corpus, s, tokens);
    n += count_masked(tokens, seed, s.index, mask);
  }
  return n;
}

GlobalPlan plan_step(DataPosition& pos, const DataConfig& cfg, int num_bins, int64_t end, const SampleFn& sample) {
  if (cfg.micro_batch_tokens > 0)
    return plan_packed(pos, num_bins, cfg.micro_batch_tokens, std::max(3, cfg.min_seq_length), end, sample);
  return plan_padded(pos, num_bins, cfg.micro_batch_size, end, sample);
}

}  // namespace

void DataConfig::validate() const {
  ESM2_CHECK(max_seq_length >= 3, "--max-seq-length {} is below 3 (<cls>, one residue, <eos>)", max_seq_length);
  ESM2_CHECK(min_seq_length >= 0, "--min-seq-length {} is negative", min_seq_length);
  ESM2_CHECK(min_seq_length <= max_seq_length, "--min-seq-length {} exceeds --max-seq-length {}", min_seq_length,
             max_seq_length);
  ESM2_CHECK(micro_batch_size >= 0, "--micro-batch-size {} is negative (sequences per micro-batch)", micro_batch_size);
  ESM2_CHECK(micro_batch_tokens >= 0, "--micro-batch-tokens {} is negative (tokens per micro-batch)",
             micro_batch_tokens);
  ESM2_CHECK((micro_batch_size > 0) != (micro_batch_tokens > 0),
             "give exactly one of --micro-batch-size (padded) and --micro-batch-tokens (packed); got {} and {}",
             micro_batch_size, micro_batch_tokens);
  ESM2_CHECK(micro_batch_tokens == 0 || micro_batch_tokens >= max_seq_length,
             "--micro-batch-tokens {} is below --max-seq-length {}: a full-length sequence would fit in no micro-batch",
             micro_batch_tokens, max_seq_length);
  ESM2_CHECK(micro_batch_tokens < (int64_t{1} << 31), "--micro-batch-tokens {} overflows int32 cu_seqlens",
             micro_batch_tokens);
  ESM2_CHECK(accumulate_grad_batches >= 1, "--accumulate-grad-batches {} is below 1", accumulate_grad_batches);
  ESM2_CHECK(mask_prob > 0 && mask_prob <= 1, "--mask-prob {} is outside (0, 1] (0 selects no position to learn from)",
             mask_prob);
  ESM2_CHECK(mask_token_prob >= 0 && random_token_prob >= 0 && mask_token_prob + random_token_prob <= 1.0f + 1e-6f,
             "--mask-token-prob {} + --random-token-prob {} must be non-negative and at most 1", mask_token_prob,
             random_token_prob);
}

nlohmann::json DataPosition::to_json() const { return {{"next_sample", next_sample}, {"deferred", deferred}}; }

DataPosition DataPosition::from_json(const nlohmann::json& j) {
  DataPosition p;
  try {
    p.next_sample = j.at("next_sample").get<int64_t>();
    p.deferred = j.at("deferred").get<std::vector<int64_t>>();
  } catch (const nlohmann::json::exception& e) {
    fail("data position: {}", e.what());
  }
  ESM2_CHECK(p.next_sample >= 0, "data position: next_sample {} is negative", p.next_sample);
  for (int64_t i : p.deferred)
    ESM2_CHECK(i >= 0 && i < p.next_sample, "data position: deferred sample {} was never drawn (next_sample {})", i,
               p.next_sample);
  return p;
}

TrainData::TrainData(std::shared_ptr<const Corpus> corpus, DataConfig cfg)
    : corpus_(corpus), cfg_((cfg.validate(), cfg)), sampler_(corpus, cfg.seed, cfg.max_seq_length, cfg.min_seq_length) {}

StepBatch TrainData::next_step(DataPosition& pos, int dp_rank, int dp_world) const {
  ESM2_CHECK(dp_world >= 1 && dp_rank >= 0 && dp_rank < dp_world, "bad data-parallel rank {} of {}", dp_rank, dp_world);
  const int accum = cfg_.accumulate_grad_batches;
  const int num_bins = dp_world * accum;
  GlobalPlan plan = plan_step(pos, cfg_, num_bins, INT64_MAX, [this](int64_t i) { return sampler_.sample(i); });
  StepBatch out;
  const MaskConfig mask = cfg_.mask();
  for (int g = 0; g < num_bins; ++g) {
    const auto& bin = plan.bins[g];
    out.global_num_sequences += static_cast<int64_t>(bin.size());
    for (const SampleRef& s : bin) out.global_num_tokens += s.tokens();
    out.global_token_slots += plan.budget[g];
    if (g / accum == dp_rank) {
      out.micro.push_back(build_micro(*corpus_, bin, plan.budget[g], cfg_.seed, mask));
      out.global_num_labels += out.micro.back().num_labels();
    } else {
      out.global_num_labels += count_bin_labels(*corpus_, bin, cfg_.seed, mask);
    }
  }
  return out;
}

std::vector<MicroBatch> validation_batches(const Corpus& valid, const DataConfig& cfg, int64_t limit_batches,
                                           int dp_rank, int dp_world) {
  cfg.validate();
  ESM2_CHECK(dp_world >= 1 && dp_rank >= 0 && dp_rank < dp_world, "bad data-parallel rank {} of {}", dp_rank, dp_world);
  const int64_t n = static_cast<int64_t>(valid.num_clusters());
  for (int64_t c = 0; c < n; ++c)
    ESM2_CHECK(!valid.cluster_members(c).empty(), "{}: validation cluster {} has no member", valid.path().string(), c);
  auto sample = [&](int64_t i) {
    uint32_t seq = valid.cluster_members(static_cast<size_t>(i))[0];
    return crop_sample(i, seq, valid.length(seq), kValidationSeed, cfg.max_seq_length);
  };
  const MaskConfig mask = cfg.mask();
  std::vector<MicroBatch> out;
  DataPosition pos;
  for (int64_t b = 0; limit_batches < 0 || b < limit_batches; ++b) {
    if (pos.next_sample >= n && pos.deferred.empty()) break;
    GlobalPlan plan = plan_step(pos, cfg, dp_world, n, sample);
    out.push_back(build_micro(valid, plan.bins[dp_rank], plan.budget[dp_rank], kValidationSeed, mask));
  }
  return out;
}

}  // namespace esm2
