// `esm2 score` against Hugging Face transformers: tests/fixtures/score/tiny-hd64.json holds masked-marginal
// scores of a few single and multi mutants and the full L×20 single-mutant matrix, computed by
// scripts/make-score-fixture.py with transformers' EsmForMaskedLM in float64 on the committed HF fixture
// checkpoint it names. Ours runs the same checkpoint on the CPU backend in fp32.
// Tolerance: |ours − HF| ≤ 2e-4 + 1e-4·|HF| per score. Our fp32 logits of these fixture models differ from
// HF by ≤ 1e-4 relative (hf_conformance_test); a difference of two log-probs then errs by ~1e-5, while a
// wrong mask set, position offset, softmax over the wrong tokens or token-dropout scale moves scores by
// ≥ 1e-2. Skips (with the command that makes it) while the fixture file is absent.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli_runner.h"

namespace fs = std::filesystem;
using esm2::testing::run_cli;
using esm2::testing::scratch_dir;
using esm2::testing::source_dir;

namespace {

const fs::path kFixture = source_dir() / "tests/fixtures/score/tiny-hd64.json";
constexpr double kAbsTol = 2e-4, kRelTol = 1e-4;

std::vector<std::vector<std::string>> read_csv(const fs::path& p) {
  std::ifstream in(p);
  std::vector<std::vector<std::string>> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::vector<std::string> f;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) f.push_back(cell);
    rows.push_back(f);
  }
  return rows;
}

void expect_close(double ours, double hf, const std::string& what) {
  EXPECT_LE(std::abs(ours - hf), kAbsTol + kRelTol * std::abs(hf)) << what << ": esm2 " << ours << ", HF " << hf;
}

}  // namespace

TEST(ScoreFixture, MatchesTransformers) {
  if (!fs::exists(kFixture))
    GTEST_SKIP() << kFixture.string() << " is absent: make it where torch + transformers are installed with "
                 << "`python3 scripts/make-score-fixture.py` and commit it";
  nlohmann::json fx;
  {
    std::ifstream in(kFixture);
    fx = nlohmann::json::parse(in);
  }
  ASSERT_EQ(fx.at("format"), "esm2-score-fixture");
  const fs::path ckpt = source_dir() / fx.at("checkpoint").get<std::string>();
  ASSERT_TRUE(fs::exists(ckpt / "config.json")) << ckpt;
  const std::string wt = fx.at("wild_type");
  std::string mutations;
  for (const auto& v : fx.at("variants")) {
    if (!mutations.empty()) mutations += ',';
    mutations += v.at("variant").get<std::string>();
  }
  ASSERT_FALSE(mutations.empty());

  const fs::path dir = scratch_dir("score-fixture");
  const auto r = run_cli("score --checkpoint " + ckpt.string() + " --backend cpu --threads 1 --sequence " + wt +
                         " --mutations " + mutations + " --output " + (dir / "scores.csv").string() + " --matrix " +
                         (dir / "matrix.csv").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;

  // Variants, in the order given.
  const auto scores = read_csv(dir / "scores.csv");
  ASSERT_EQ(scores.size(), fx["variants"].size() + 1);
  EXPECT_EQ(scores[0], (std::vector<std::string>{"variant", "score"}));
  for (size_t i = 0; i < fx["variants"].size(); ++i) {
    const auto& v = fx["variants"][i];
    ASSERT_EQ(scores[i + 1].size(), 2u);
    EXPECT_EQ(scores[i + 1][0], v.at("variant").get<std::string>());
    expect_close(std::stod(scores[i + 1][1]), v.at("score").get<double>(), v.at("variant").get<std::string>());
  }

  // The single-mutant matrix: same columns, every entry.
  const auto mat = read_csv(dir / "matrix.csv");
  const auto& cols = fx.at("matrix_columns");
  const auto& hf = fx.at("matrix");
  ASSERT_EQ(hf.size(), wt.size());
  ASSERT_EQ(mat.size(), wt.size() + 1);
  ASSERT_EQ(mat[0].size(), cols.size() + 2);
  for (size_t k = 0; k < cols.size(); ++k) EXPECT_EQ(mat[0][k + 2], cols[k].get<std::string>());
  double worst = 0;
  for (size_t i = 0; i < wt.size(); ++i) {
    ASSERT_EQ(mat[i + 1].size(), cols.size() + 2);
    EXPECT_EQ(mat[i + 1][1], std::string(1, wt[i]));
    for (size_t k = 0; k < cols.size(); ++k) {
      const double ours = std::stod(mat[i + 1][k + 2]), ref = hf[i][k].get<double>();
      worst = std::max(worst, std::abs(ours - ref));
      expect_close(ours, ref, "matrix " + std::to_string(i + 1) + cols[k].get<std::string>());
    }
  }
  std::printf("score fixture: %zu variants + %zu x %zu matrix, max |esm2 - HF| = %.3g\n", fx["variants"].size(),
              wt.size(), cols.size(), worst);
}
