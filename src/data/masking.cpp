#include "data/masking.h"

#include "core/philox.h"
#include "data/tokenizer.h"

namespace esm2 {

void mask_tokens(std::span<const int32_t> tokens, uint64_t seed, int64_t sample_index, const MaskConfig& cfg,
                 std::vector<int32_t>& input_ids, std::vector<int32_t>& labels) {
  const float t_mask = cfg.mask_prob * cfg.mask_token_prob;
  const float t_random = cfg.mask_prob * (cfg.mask_token_prob + cfg.random_token_prob);
  const float t_keep = cfg.mask_prob;
  PhiloxStream rng{seed, RngStream::Masking, static_cast<uint64_t>(sample_index)};
  for (size_t t = 0; t < tokens.size(); ++t) {
    const int32_t tok = tokens[t];
    Philox4 w = rng.draw(t);  // w[0]: the selection uniform, w[1]: the random replacement
    float u = philox_uniform(w[0]);
    if (is_special_token(tok) || u >= t_keep) {
      input_ids.push_back(tok);
      labels.push_back(kIgnoreLabel);
      continue;
    }
    int32_t out = tok;
    if (u < t_mask) {
      out = kMask;
    } else if (u < t_random) {
      out = cfg.strategy == MaskStrategy::AllTokens
                ? static_cast<int32_t>(philox_below(w[1], kVocabSize))
                : kFirstAminoAcid + static_cast<int32_t>(philox_below(w[1], kNumStandardAminoAcids));
    }
    input_ids.push_back(out);
    labels.push_back(tok);
  }
}

int64_t count_masked(std::span<const int32_t> tokens, uint64_t seed, int64_t sample_index, const MaskConfig& cfg) {
  PhiloxStream rng{seed, RngStream::Masking, static_cast<uint64_t>(sample_index)};
  int64_t n = 0;
  for (size_t t = 0; t < tokens.size(); ++t)
    n += !is_special_token(tokens[t]) && philox_uniform(rng.draw(t)[0]) < cfg.mask_prob;
  return n;
}

}  // namespace esm2
