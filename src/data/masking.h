// RandomMaskStrategy: per token one uniform u from Philox(seed, Masking, sample index), so a
// sample's mask does not depend on which rank, micro-batch or position it lands in.
//   u < p·mask_token_prob                        → <mask>
//   u < p·(mask_token_prob + random_token_prob)  → a random token
//   u < p                                        → kept
// (p = mask_prob; reference 0.15 / 0.8 / 0.1, so thresholds 0.12 / 0.135 / 0.15). Special tokens
// (<cls> <pad> <eos> <unk> <mask>) are never selected. labels = original id where selected, else -100.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "core/enum_names.h"

namespace esm2 {

enum class MaskStrategy {
  AllTokens,       // random replacement from all 33 ids (reference default; may yield special tokens)
  AminoAcidsOnly,  // from the 20 standard amino acids (ids 4..23)
};

inline constexpr EnumName<MaskStrategy> kMaskStrategyNames[] = {{"all_tokens", MaskStrategy::AllTokens},
                                                                 {"amino_acids_only", MaskStrategy::AminoAcidsOnly}};

struct MaskConfig {
  MaskStrategy strategy = MaskStrategy::AllTokens;
  float mask_prob = 0.15f, mask_token_prob = 0.8f, random_token_prob = 0.1f;
};

// Appends the masked ids and the labels of one sequence's tokens ([n], <cls> … <eos>).
void mask_tokens(std::span<const int32_t> tokens, uint64_t seed, int64_t sample_index, const MaskConfig& cfg,
                 std::vector<int32_t>& input_ids, std::vector<int32_t>& labels);

// How many positions mask_tokens would select (the labelled count), without building the outputs.
int64_t count_masked(std::span<const int32_t> tokens, uint64_t seed, int64_t sample_index, const MaskConfig& cfg);

}  // namespace esm2
