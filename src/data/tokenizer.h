// The ESM-2 vocabulary (33 tokens, fixed order shared with fair-esm and Hugging Face).
#pragma once
#include <array>
#include <cstdint>
#include <string_view>

namespace esm2 {

constexpr int kVocabSize = 33;
constexpr int32_t kCls = 0, kPad = 1, kEos = 2, kUnk = 3, kMask = 32;
constexpr int32_t kFirstAminoAcid = 4, kNumStandardAminoAcids = 20;  // ids 4..23
constexpr int32_t kIgnoreLabel = -100;

inline constexpr std::array<std::string_view, kVocabSize> kVocab = {
    "<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R",
    "T",     "I",     "D",     "P",     "K", "Q", "N", "F", "Y", "M", "H",
    "W",     "C",     "X",     "B",     "U", "Z", "O", ".", "-", "<null_1>", "<mask>"};

// Residue letter (either case) → token id; letters outside the vocabulary → <unk>;
// returns -1 for a byte that is not a letter (the caller reports the record).
inline int32_t residue_token(char c) {
  if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  if (c < 'A' || c > 'Z') return -1;
  constexpr std::string_view letters = "LAGVSERTIDPKQNFYMHWCXBUZO";
  auto pos = letters.find(c);
  return pos == std::string_view::npos ? kUnk : static_cast<int32_t>(kFirstAminoAcid + pos);
}

// Token ids that masking may never select.
inline bool is_special_token(int32_t t) { return t == kCls || t == kPad || t == kEos || t == kUnk || t == kMask; }

}  // namespace esm2
