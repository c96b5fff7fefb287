// RandomMaskStrategy rates on >= 1M positions against binomial tolerances, special tokens never
// selected, determinism per (seed, sample) and independence across seeds.
#include <gtest/gtest.h>

#include <array>
#include <cmath>

#include "data/masking.h"
#include "data/tokenizer.h"

using namespace esm2;

namespace {
// A sequence <cls> residues <eos> with a few <unk>, all 25 letter tokens represented.
std::vector<int32_t> make_sequence(int n, int salt) {
  std::vector<int32_t> t{kCls};
  for (int i = 0; i < n; ++i) t.push_back(i % 97 == 13 ? kUnk : kFirstAminoAcid + (i * 7 + salt) % 25);
  t.push_back(kEos);
  return t;
}
// |observed - expected| within 5 standard deviations of a binomial count.
void expect_rate(int64_t hits, int64_t trials, double p, const char* what) {
  double sd = std::sqrt(trials * p * (1 - p));
  EXPECT_NEAR(static_cast<double>(hits), trials * p, 5 * sd + 1) << what << ": " << hits << " of " << trials;
}
}  // namespace

TEST(Masking, RatesOverAMillionPositions) {
  for (MaskStrategy strategy : {MaskStrategy::AllTokens, MaskStrategy::AminoAcidsOnly}) {
    MaskConfig cfg;
    cfg.strategy = strategy;
    int64_t eligible = 0, selected = 0, masked = 0, changed = 0, unchanged_selected = 0;
    std::array<int64_t, kVocabSize> replaced{};  // tokens of selected positions neither <mask> nor original
    int64_t special_selected = 0;
    std::vector<int32_t> ids, labels;
    for (int s = 0; s < 2200; ++s) {
      auto t = make_sequence(500, s);
      ids.clear();
      labels.clear();
      mask_tokens(t, 42, s, cfg, ids, labels);
      ASSERT_EQ(ids.size(), t.size());
      ASSERT_EQ(count_masked(t, 42, s, cfg), static_cast<int64_t>(std::count_if(labels.begin(), labels.end(),
                                                                                [](int32_t l) { return l != kIgnoreLabel; })));
      for (size_t k = 0; k < t.size(); ++k) {
        bool special = is_special_token(t[k]);
        eligible += !special;
        if (labels[k] == kIgnoreLabel) {
          ASSERT_EQ(ids[k], t[k]);  // unselected positions are untouched
          continue;
        }
        special_selected += special;
        ASSERT_EQ(labels[k], t[k]);
        ++selected;
        if (ids[k] == kMask) ++masked;
        else if (ids[k] == t[k]) ++unchanged_selected;
        else {
          ++changed;
          ++replaced[ids[k]];
        }
      }
    }
    ASSERT_GE(eligible, 1'000'000);
    EXPECT_EQ(special_selected, 0);
    expect_rate(selected, eligible, 0.15, "selected");
    // The random 10% may land on <mask> (1/33, all tokens only) or on the original token (1/33;
    // amino acids only: 1/20 when the original is one of the 20 standard ones, 20 of the 25 letters here).
    const bool all = strategy == MaskStrategy::AllTokens;
    expect_rate(masked, selected, 0.8 + (all ? 0.1 / 33 : 0.0), "<mask> among selected");
    expect_rate(unchanged_selected, selected, 0.1 + (all ? 0.1 / 33 : 0.1 * (20.0 / 25) / 20), "kept among selected");
    if (strategy == MaskStrategy::AllTokens) {
      // Uniform over 33 ids: every id appears (special ones included), each near 1/33 of the draws.
      int64_t draws = changed;
      for (int id = 0; id < kVocabSize; ++id) {
        if (id != kMask) {  // braces: EXPECT_* expands to an if/else
          EXPECT_GT(replaced[id], draws / 32 / 2) << id;
        }
      }
    } else {
      for (int id = 0; id < kVocabSize; ++id) {
        bool aa = id >= kFirstAminoAcid && id < kFirstAminoAcid + kNumStandardAminoAcids;
        if (!aa) {
          EXPECT_EQ(replaced[id], 0) << id;
        } else {
          EXPECT_GT(replaced[id], 0) << id;
        }
      }
    }
  }
}

TEST(Masking, RandomTokenDistributionIsUniform) {
  // Chi-square over the replacement ids of a sequence of <L> tokens with 100% selection, 100% random.
  MaskConfig cfg{MaskStrategy::AllTokens, 1.0f, 0.0f, 1.0f};
  std::vector<int32_t> t(200'000, kFirstAminoAcid), ids, labels;
  mask_tokens(t, 7, 0, cfg, ids, labels);
  std::array<double, kVocabSize> n{};
  for (int32_t id : ids) n[id] += 1;
  double e = t.size() / 33.0, chi2 = 0;
  for (double c : n) chi2 += (c - e) * (c - e) / e;
  EXPECT_LT(chi2, 70.0);  // 32 degrees of freedom: P(chi2 > 70) < 1e-4
  cfg.strategy = MaskStrategy::AminoAcidsOnly;
  ids.clear();
  labels.clear();
  mask_tokens(t, 7, 0, cfg, ids, labels);
  std::array<double, kVocabSize> m{};
  for (int32_t id : ids) m[id] += 1;
  e = t.size() / 20.0;
  chi2 = 0;
  for (int id = 0; id < kVocabSize; ++id) {
    if (id < kFirstAminoAcid || id >= kFirstAminoAcid + kNumStandardAminoAcids) {
      EXPECT_EQ(m[id], 0) << id;
      continue;
    }
    chi2 += (m[id] - e) * (m[id] - e) / e;
  }
  EXPECT_LT(chi2, 50.0);  // 19 degrees of freedom
}

TEST(Masking, SpecialTokensAreNeverSelected) {
  MaskConfig cfg{MaskStrategy::AllTokens, 1.0f, 0.8f, 0.1f};
  std::vector<int32_t> t{kCls, kPad, kEos, kUnk, kMask, 5, kMask, kUnk, kEos}, ids, labels;
  for (int s = 0; s < 1000; ++s) {
    ids.clear();
    labels.clear();
    mask_tokens(t, 1, s, cfg, ids, labels);
    for (size_t k = 0; k < t.size(); ++k) {
      if (k == 5) {
        EXPECT_EQ(labels[k], 5);  // mask_prob 1: the one residue is always selected
      } else {
        EXPECT_EQ(labels[k], kIgnoreLabel);
        EXPECT_EQ(ids[k], t[k]);
      }
    }
  }
}

TEST(Masking, SameSeedAndSampleGiveTheSameMaskOtherSeedsDiffer) {
  MaskConfig cfg;
  auto t = make_sequence(1000, 3);
  auto run = [&](uint64_t seed, int64_t sample) {
    std::vector<int32_t> ids, labels;
    mask_tokens(t, seed, sample, cfg, ids, labels);
    return std::make_pair(ids, labels);
  };
  EXPECT_EQ(run(42, 17), run(42, 17));
  EXPECT_NE(run(42, 17).second, run(43, 17).second);
  EXPECT_NE(run(42, 17).second, run(42, 18).second);
  // The mask is keyed by the sample, not by where the tokens land: a prefix masks like the full run.
  std::vector<int32_t> ids, labels;
  mask_tokens(std::span(t).first(300), 42, 17, cfg, ids, labels);
  auto full = run(42, 17);
  EXPECT_TRUE(std::equal(labels.begin(), labels.end(), full.second.begin()));
}
