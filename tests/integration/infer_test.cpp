// `esm2 eval`, `esm2 embed`, `esm2 score` against independent oracles: our forward on one sequence
// at a time (no packing), log-softmax and means computed here by hand, one forward per masked
// position for pseudo-perplexity, and the trainer's own validation loss.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli_runner.h"
#include "core/atomic_dir.h"
#include "data/tokenizer.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "infer/inference.h"

using namespace esm2::testing;
namespace fs = std::filesystem;

namespace {

fs::path hf_model() { return source_dir() / "tests/fixtures/hf/tiny-hd16/model"; }
const std::string kCk = " --threads 2 --checkpoint " + hf_model().string();

// The first n records of the sample validation set, as a FASTA file.
fs::path sample_fasta(const fs::path& dir, size_t n, size_t max_residues = 0) {
  const auto recs = esm2::read_protein_fasta(source_dir() / "data/swissprot-sample/valid.fasta.gz");
  std::ofstream out(dir / "in.fasta");
  for (size_t i = 0; i < n && i < recs.size(); ++i) {
    out << ">" << recs[i].id << " description\n";
    size_t L = recs[i].residues.size();
    if (max_residues) L = std::min(L, max_residues);
    for (size_t r = 0; r < L; ++r) out << esm2::kVocab[recs[i].residues[r]] << (r % 60 == 59 ? "\n" : "");
    out << "\n";
  }
  return dir / "in.fasta";
}

std::vector<int32_t> tokens_of(const std::string& letters) {
  std::vector<int32_t> t;
  EXPECT_LT(esm2::tokenize_protein(letters, t), 0);
  return t;
}

// One sequence alone in a micro-batch: the unpacked reference the packed outputs must equal.
esm2::MicroBatch single(const std::vector<int32_t>& tokens) {
  esm2::MicroBatch mb;
  mb.input_ids = tokens;
  mb.labels.assign(tokens.size(), esm2::kIgnoreLabel);
  mb.cu_seqlens = {0, static_cast<int32_t>(tokens.size())};
  mb.sample_ids = {0};
  mb.max_seqlen = static_cast<int32_t>(tokens.size());
  mb.token_budget = mb.num_tokens();
  return mb;
}

std::vector<double> log_softmax(const float* row) {
  double mx = row[0];
  for (int v = 1; v < esm2::kVocabSize; ++v) mx = std::max(mx, double(row[v]));
  double s = 0;
  for (int v = 0; v < esm2::kVocabSize; ++v) s += std::exp(row[v] - mx);
  std::vector<double> out(esm2::kVocabSize);
  for (int v = 0; v < esm2::kVocabSize; ++v) out[v] = row[v] - mx - std::log(s);
  return out;
}

// log p(· | wild type with `masked` (0-based residue positions) masked) at residue position `at`.
std::vector<double> masked_lp(esm2::Esm2Model& model, const std::vector<int32_t>& wt, const std::vector<int>& masked,
                              int at) {
  std::vector<int32_t> t = esm2::with_specials(wt);
  for (int p : masked) t[p + 1] = esm2::kMask;
  std::vector<float> logits;
  model.forward_outputs(single(t), &logits, nullptr);
  return log_softmax(logits.data() + static_cast<size_t>(at + 1) * esm2::kVocabSize);
}

std::map<std::string, double> read_scores(const fs::path& csv) {
  std::map<std::string, double> out;
  std::ifstream in(csv);
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    const auto c = line.rfind(',');
    out[line.substr(0, c)] = std::stod(line.substr(c + 1));
  }
  return out;
}

class Infer : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { m_ = new esm2::InferenceModel(esm2::load_inference_model(hf_model(), esm2::BackendKind::Cpu, esm2::Precision::Auto, 2)); }
  static void TearDownTestSuite() { delete m_; }
  static esm2::Esm2Model& model() { return *m_->model; }
  static esm2::InferenceModel* m_;
};
esm2::InferenceModel* Infer::m_ = nullptr;

TEST_F(Infer, EmbedNpyEqualsUnpackedForwardAndMeanOfRows) {
  const fs::path dir = scratch_dir("infer-embed-npy");
  const fs::path fasta = sample_fasta(dir, 5);
  // A small budget forces several packed micro-batches.
  auto r = run_cli("embed" + kCk + " --fasta " + fasta.string() + " --output " + (dir / "out").string() +
                   " --per-residue --mean --layer 1 --micro-batch-tokens 600");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto mean = esm2::read_npy(dir / "out/mean.npy");
  const auto rows = esm2::read_npy(dir / "out/per_residue.npy");
  const auto off = esm2::read_npy(dir / "out/per_residue_offsets.npy");
  const auto recs = esm2::read_protein_fasta(fasta);
  const int H = model().config().hidden_size;
  ASSERT_EQ(mean.shape, (std::vector<int64_t>{5, H}));
  ASSERT_EQ(off.shape, (std::vector<int64_t>{6}));
  EXPECT_EQ(esm2::read_file(dir / "out/ids.txt").substr(0, recs[0].id.size() + 1), recs[0].id + "\n");
  for (size_t i = 0; i < recs.size(); ++i) {
    const auto L = static_cast<int64_t>(recs[i].residues.size());
    ASSERT_EQ(off.values[i + 1] - off.values[i], L);
    std::vector<float> repr;
    model().forward_outputs(single(esm2::with_specials(recs[i].residues)), nullptr, nullptr, 1, &repr);
    for (int h = 0; h < H; ++h) {
      double acc = 0;
      for (int64_t t = 0; t < L; ++t) {
        const double got = rows.values[(static_cast<size_t>(off.values[i]) + t) * H + h];
        ASSERT_NEAR(got, repr[(t + 1) * H + h], 2e-5) << recs[i].id << " residue " << t << " dim " << h;
        acc += got;
      }
      EXPECT_NEAR(mean.values[i * H + h], acc / double(L), 1e-5);
    }
  }
}

TEST_F(Infer, EmbedSafetensorsPaddedLogitsEqualForwardOutputs) {
  const fs::path dir = scratch_dir("infer-embed-st");
  const fs::path fasta = sample_fasta(dir, 4, 90);
  auto r = run_cli("embed" + kCk + " --fasta " + fasta.string() + " --output " + (dir / "e.safetensors").string() +
                   " --format safetensors --include-logits --micro-batch-tokens 200");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto f = esm2::SafetensorsFile::open(dir / "e.safetensors");
  const auto recs = esm2::read_protein_fasta(fasta);
  size_t lmax = 0;
  for (const auto& rec : recs) lmax = std::max(lmax, rec.residues.size() + 2);
  ASSERT_EQ(f.info("input_ids").dtype, esm2::DType::I64);
  ASSERT_EQ(f.info("input_ids").shape, (std::vector<int64_t>{4, int64_t(lmax)}));
  ASSERT_EQ(f.info("logits").shape, (std::vector<int64_t>{4, int64_t(lmax), 33}));
  EXPECT_TRUE(f.contains("mean"));
  const auto ids = f.bytes("input_ids");
  const auto mask = f.bytes("attention_mask");
  const auto logits = f.to_f32("logits");
  auto i64 = [](std::span<const std::byte> b, size_t k) {
    int64_t v;
    std::memcpy(&v, b.data() + k * 8, 8);
    return v;
  };
  for (size_t i = 0; i < recs.size(); ++i) {
    const auto t = esm2::with_specials(recs[i].residues);
    std::vector<float> want;
    model().forward_outputs(single(t), &want, nullptr);
    for (size_t p = 0; p < lmax; ++p) {
      const bool real = p < t.size();
      ASSERT_EQ(i64(ids, i * lmax + p), real ? t[p] : esm2::kPad);
      ASSERT_EQ(i64(mask, i * lmax + p), real ? 1 : 0);
      for (int v = 0; v < 33; ++v)
        ASSERT_NEAR(logits[(i * lmax + p) * 33 + v], real ? want[p * 33 + v] : 0.0f, 2e-5) << i << " " << p;
    }
  }
}

TEST_F(Infer, PseudoPerplexityEqualsOneForwardPerMaskedPosition) {
  const std::vector<std::string> seqs = {"MKTAYIAKQRQISFVKSHFS", "GSHMLEDPVDAFQ"};
  double total = 0;
  int64_t residues = 0;
  for (const auto& s : seqs) {
    const auto wt = tokens_of(s);
    double nll = 0;
    for (size_t p = 0; p < wt.size(); ++p) nll -= masked_lp(model(), wt, {int(p)}, int(p))[wt[p]];
    // Budget 64: several masked copies per micro-batch, the last batch partly filled.
    const auto got = esm2::pseudo_perplexity(model(), wt, 64);
    EXPECT_EQ(got.residues, int64_t(wt.size()));
    EXPECT_NEAR(got.nll_sum, nll, 1e-6 * std::abs(nll) + 1e-5);
    total += nll;
    residues += int64_t(wt.size());
  }
  const fs::path dir = scratch_dir("infer-pppl");
  esm2::write_file(dir / "two.fasta", ">a\n" + seqs[0] + "\n>b\n" + seqs[1] + "\n");
  auto r = run_cli("eval" + kCk + " --fasta " + (dir / "two.fasta").string() + " --pseudo-perplexity --json " +
                   (dir / "r.json").string() + " --per-sequence " + (dir / "s.csv").string() +
                   " --max-seq-length 64 --micro-batch-tokens 100");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = nlohmann::json::parse(esm2::read_file(dir / "r.json"));
  EXPECT_EQ(j["files"][0]["pseudo_perplexity_residues"], residues);
  EXPECT_NEAR(j["files"][0]["pseudo_perplexity"].get<double>(), std::exp(total / double(residues)), 1e-5);
  EXPECT_NE(esm2::read_file(dir / "s.csv").find(",a,1,20,"), std::string::npos);
}

TEST_F(Infer, EvalLossEqualsTrainerValidationLoss) {
  const fs::path root = scratch_dir("infer-eval");
  const fs::path corpus = root / "valid";
  auto r = prepare_sample_corpus(corpus);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_cli("train --train-data " + corpus.string() + " --valid-data " + corpus.string() + " --init-from-hf " +
              hf_model().string() +
              " --max-seq-length 64 --micro-batch-tokens 512 --seed 7 --lr 1e-3 --warmup-steps 1 --num-steps 2 --mask-prob 0.3"
              " --val-check-interval 2 --limit-val-batches 3 --threads 2 --no-report --no-tensorboard --result-dir " +
              root.string() + " --experiment-name run");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  double trainer_loss = -1;
  std::ifstream in(root / "run/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    if (j.contains("val_loss")) trainer_loss = j["val_loss"].get<double>();
  }
  ASSERT_GT(trainer_loss, 0);
  const fs::path ck = root / "run/checkpoints/step-00000002";
  r = run_cli("eval --threads 2 --checkpoint " + ck.string() + " --data " + corpus.string() +
              " --limit-batches 3 --max-seq-length 64 --micro-batch-tokens 512 --mask-prob 0.3 --json " +
              (root / "e.json").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = nlohmann::json::parse(esm2::read_file(root / "e.json"));
  EXPECT_NEAR(j["files"][0]["val_loss"].get<double>(), trainer_loss, 1e-6 * trainer_loss);
  // And the untrained fixture gives a different loss: the checkpoint's weights were used.
  r = run_cli("eval" + kCk + " --data " + corpus.string() +
              " --limit-batches 3 --max-seq-length 64 --micro-batch-tokens 512 --mask-prob 0.3 --json " + (root / "f.json").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto f = nlohmann::json::parse(esm2::read_file(root / "f.json"));
  EXPECT_GT(std::abs(f["files"][0]["val_loss"].get<double>() - trainer_loss), 1e-4);

  // A corpus of another format version is refused by name.
  fs::copy(corpus, root / "old", fs::copy_options::recursive);
  auto man = nlohmann::json::parse(esm2::read_file(root / "old/manifest.json"));
  man["format_version"] = 99;
  esm2::write_file(root / "old/manifest.json", man.dump());
  r = run_cli("eval" + kCk + " --data " + (root / "old").string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("version"), std::string::npos) << r.output;
}

TEST_F(Infer, ScoresEqualHandComputedMaskedMarginals) {
  const std::string seq = "MKTAYIAKQRQISFVKSHFSRQ";
  const auto wt = tokens_of(seq);
  const fs::path dir = scratch_dir("infer-score");
  auto r = run_cli("score" + kCk + " --sequence " + seq + " --mutations \"K2A,Y5W,S13P:F14L,M1C\" --output " +
                   (dir / "s.csv").string() + " --matrix " + (dir / "m.csv").string() + " --micro-batch-tokens 80");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto got = read_scores(dir / "s.csv");
  auto single_score = [&](int pos1, char mut) {
    const auto lp = masked_lp(model(), wt, {pos1 - 1}, pos1 - 1);
    return lp[esm2::residue_token(mut)] - lp[wt[pos1 - 1]];
  };
  EXPECT_NEAR(got.at("K2A"), single_score(2, 'A'), 1e-5);
  EXPECT_NEAR(got.at("Y5W"), single_score(5, 'W'), 1e-5);
  EXPECT_NEAR(got.at("M1C"), single_score(1, 'C'), 1e-5);
  // Double mutant: both positions masked in the same forward pass.
  const auto a = masked_lp(model(), wt, {12, 13}, 12), b = masked_lp(model(), wt, {12, 13}, 13);
  const double dbl = a[esm2::residue_token('P')] - a[wt[12]] + b[esm2::residue_token('L')] - b[wt[13]];
  EXPECT_NEAR(got.at("S13P:F14L"), dbl, 1e-5);
  EXPECT_GT(std::abs(dbl - single_score(13, 'P') - single_score(14, 'L')), 1e-6);

  // The matrix: every entry is the single-mutant score; the wild type's own column is 0.
  std::ifstream in(dir / "m.csv");
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "position,wt,L,A,G,V,S,E,R,T,I,D,P,K,Q,N,F,Y,M,H,W,C");
  int rows = 0;
  while (std::getline(in, line)) {
    std::stringstream ss(line);
    std::string cell;
    std::getline(ss, cell, ',');
    const int pos = std::stoi(cell);
    std::getline(ss, cell, ',');
    EXPECT_EQ(cell, std::string(1, seq[pos - 1]));
    const auto lp = masked_lp(model(), wt, {pos - 1}, pos - 1);
    for (int k = 0; k < 20; ++k) {
      std::getline(ss, cell, ',');
      EXPECT_NEAR(std::stod(cell), lp[4 + k] - lp[wt[pos - 1]], 1e-5) << "position " << pos << " aa " << k;
    }
    ++rows;
  }
  EXPECT_EQ(rows, int(seq.size()));

  // A DMS table: its rows are kept and scored through the named column (quoted fields allowed).
  esm2::write_file(dir / "dms.csv", "id,mutant,DMS_score\n\"x,1\",K2A,0.5\ny,S13P:F14L,-1\n");
  r = run_cli("score" + kCk + " --sequence " + seq + " --dms " + (dir / "dms.csv").string() + " --output " +
              (dir / "d.csv").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto d = read_scores(dir / "d.csv");
  EXPECT_NEAR(d.at("\"x,1\",K2A,0.5"), got.at("K2A"), 1e-8);
  EXPECT_NEAR(d.at("y,S13P:F14L,-1"), got.at("S13P:F14L"), 1e-8);

  // The wild type taken from a FASTA record by id gives the same scores.
  esm2::write_file(dir / "wt.fasta", ">other\nGGGSSS\n>target some text\n" + seq.substr(0, 10) + "\n" + seq.substr(10) + "\n");
  r = run_cli("score" + kCk + " --fasta " + (dir / "wt.fasta").string() + " --id target --mutations K2A --output " +
              (dir / "f.csv").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NEAR(read_scores(dir / "f.csv").at("K2A"), got.at("K2A"), 1e-8);
  r = run_cli("score" + kCk + " --fasta " + (dir / "wt.fasta").string() + " --mutations K2A");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("2 records; name the one to use with --id"), std::string::npos) << r.output;
}

TEST(InferErrors, BadInputsNameTheRecordOrMutation) {
  const fs::path dir = scratch_dir("infer-errors");
  auto r = run_cli("score" + kCk + " --sequence MKTAY --mutations K2A,T3G,A4Q:Q9A");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("mutation 'A4Q:Q9A'"), std::string::npos) << r.output;
  r = run_cli("score" + kCk + " --sequence MKTAY --mutations K2A,A3G");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("mutation 'A3G': the sequence has T at position 3, not A"), std::string::npos) << r.output;

  esm2::write_file(dir / "bad.fasta", ">ok\nMKTAY\n>bad1 x\nMKJTAY\n>empty\n\n>ok2\nGGS\n");
  r = run_cli("embed" + kCk + " --fasta " + (dir / "bad.fasta").string() + " --output " + (dir / "o").string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("record 'bad1'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("'J'"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "o"));
  r = run_cli("embed" + kCk + " --fasta " + (dir / "bad.fasta").string() + " --output " + (dir / "o") .string() +
              " --skip-invalid");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("skipped 2 invalid records"), std::string::npos) << r.output;
  EXPECT_EQ(esm2::read_file(dir / "o/ids.txt"), "ok\nok2\n");

  r = run_cli("embed --threads 2 --checkpoint " + (dir / "nope").string() + " --fasta " + (dir / "bad.fasta").string() +
              " --output " + (dir / "o2").string() + " --skip-invalid");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("checkpoint directory not found"), std::string::npos) << r.output;
}

TEST(Npy, HeaderIsAlignedAndRoundTrips) {
  const fs::path dir = scratch_dir("infer-npy");
  const std::vector<float> v = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f};
  const int64_t shape[] = {2, 3};
  const std::string b = esm2::npy_bytes(std::span<const float>(v), shape);
  EXPECT_EQ(b.compare(0, 8, std::string("\x93NUMPY\x01\x00", 8)), 0);
  EXPECT_EQ((b.size() - v.size() * 4) % 64, 0u);
  EXPECT_NE(b.find("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"), std::string::npos);
  esm2::write_file(dir / "a.npy", b);
  const auto a = esm2::read_npy(dir / "a.npy");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.values[2], 3.25);
  const std::vector<int64_t> o = {0, 5, 9};
  const int64_t s1[] = {3};
  EXPECT_NE(esm2::npy_bytes(std::span<const int64_t>(o), s1).find("'shape': (3,), }"), std::string::npos);
}

}  // namespace
