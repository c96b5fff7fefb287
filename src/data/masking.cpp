#include "data/masking.h"

#include "core/philox.h"
#include "data/tokenizer.h"

namespace esm2 {

namespace {
// Token t's selection uniform is word t of the sample's stream (four tokens per Philox block); the
// replacement token of a "random" position comes from words at kReplacementBase + t, a counter range
// no sequence reaches, so counting labels costs a quarter of a Philox block per token.
constexpr uint64_t kReplacementBase = uint64_t{1} << 40;
}  // namespace

void mask_tokens(std::span<const int32_t> tokens, uint64_t seed, int64_t sample_index, const MaskConfig& cfg,
                 std::vector<int32_t>& input_ids, std::vector<int32_t>& labels) {
  const float t_mask = cfg.mask_prob * cfg.mask_token_prob;
  const float t_random = cfg.mask_prob * (cfg.mask_token_prob + cfg.random_token_prob);
  const float t_keep = cfg.mask_prob;
  PhiloxStream rng{seed, RngStream::Masking, static_cast<uint64_t>(sample_index)};
  Philox4 block{};
  for (size_t t = 0; t < tokens.size(); ++t) {
    const int32_t tok = tokens[t];
    if ((t & 3) == 0) block = rng.draw(t >> 2);
    float u = philox_uniform(block[t & 3]);
    if (is_special_token(tok) || u >= t_keep) {
      input_ids.push_back(tok);
      labels.push_back(kIgnoreLabel);
      continue;
    }
    int32_t out = tok;
    if (u < t_mask) {
      out = kMask;
    } else if (u < t_random) {
      uint32_t w = rng.word(kReplacementBase + t);
      out = cfg.strategy == MaskStrategy::AllTokens
                ? static_cast<int32_t>(philox_below(w, kVocabSize))
                : kFirstAminoAcid + static_cast<int32_t>(philox_below(w, kNumStandardAminoAcids));
    }
    input_ids.push_back(out);
    labels.push_back(tok);
  }
}

int64_t count_masked(std::span<const int32_t> tokens, uint64_t seed, int64_t sample_index, const MaskConfig& cfg) {
  PhiloxStream rng{seed, RngStream::Masking, static_cast<uint64_t>(sample_index)};
  int64_t n = 0;
  Philox4 block{};
  for (size_t t = 0; t < tokens.size(); ++t) {
    if ((t & 3) == 0) block = rng.draw(t >> 2);
    n += !is_special_token(tokens[t]) && philox_uniform(block[t & 3]) < cfg.mask_prob;
  }
  return n;
}

}  // namespace esm2
