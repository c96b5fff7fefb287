// The CLI's error contract, driven through the real binary: every bad value is one line
// `esm2: error: …` on stderr naming the flag and the value, exit status 1, and nothing written.
// Most rows fail while parsing or validating, before any corpus is read, so the suite takes seconds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>

#include "cli_runner.h"
#include "core/atomic_dir.h"

using namespace esm2::testing;
namespace fs = std::filesystem;

namespace {

struct Row {
  std::string args, expect;
};

// A failure of the contract: exit 1 and exactly one output line, the error naming `expect`.
void expect_one_line_error(const CliResult& r, const std::string& args, const std::string& expect) {
  EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
  EXPECT_EQ(r.output.rfind("esm2: error: ", 0), 0u) << args << "\n" << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << args << "\n" << r.output;
  EXPECT_NE(r.output.find(expect), std::string::npos) << args << "\nexpected: " << expect << "\ngot: " << r.output;
}

fs::path hf_model() { return source_dir() / "tests/fixtures/hf/tiny-hd16/model"; }

class CliContract : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(scratch_dir("cli-contract"));
    ASSERT_EQ(prepare_sample_corpus(*root_ / "corpus").exit_code, 0);
  }
  static void TearDownTestSuite() { delete root_; }
  // A training command that would run: each row adds one bad value to it.
  static std::string train() {
    return "train" + kTinyModelShape + " --train-data " + (*root_ / "corpus").string() +
           " --num-steps 2 --backend cpu --threads 1 --result-dir " + (*root_ / "results").string() +
           " --experiment-name run";
  }
  static inline fs::path* root_ = nullptr;
};

TEST_F(CliContract, BadTrainingValuesAreRejectedNamingTheFlagAndNothingIsWritten) {
  const std::vector<Row> rows = {
      {" --micro-batch-tokens 0", "--micro-batch-tokens: 0 must be a finite number >= 1"},
      {" --micro-batch-tokens -5", "--micro-batch-tokens: -5 must be a finite number >= 1"},
      {" --micro-batch-size 0", "--micro-batch-size: 0 must be a finite number >= 1"},
      {" --lr inf", "--lr: inf must be a finite number >= 0"},
      {" --lr nan", "--lr: nan must be a finite number >= 0"},
      {" --lr 0", "--lr 0 must be a finite number > 0"},
      {" --threads -1", "--threads: -1 must be a finite number >= 0"},
      {" --max-time -5", "--max-time: -5 must be a finite number >= 0"},
      {" --seed -1", "--seed: -1 must be a whole number >= 0"},
      {" --mask-prob 2", "--mask-prob 2 is outside (0, 1]"},
      {" --mask-token-prob 0.9 --random-token-prob 0.2", "--mask-token-prob 0.9 + --random-token-prob 0.2"},
      {" --num-steps abc", "--num-steps"},
      {" --warmup-steps 2", "--warmup-steps 2 is not below the schedule's 2 steps"},
      {" --num-steps 1000 --warmup-steps 2000", "--warmup-steps 2000 is not below the schedule's 1000 steps"},
      {" --backend gpu", "--backend: gpu not in {auto,cpu,cuda}"},
      {" --precision fp8-mixed", "--precision fp8-mixed needs a Hopper-class (sm_90+) CUDA GPU"},
      {" --num-nodes 2", "--num-nodes 2: a multi-node job is started by srun or mpirun"},
      {" --bogus 1 --more", "train: unexpected arguments '--bogus' '1' '--more'"},
      {" --mask-prob 0", "--mask-prob 0 is outside (0, 1]"},
      {" --grad-reduce-in-fp32 --grad-reduce-dtype bf16", "--grad-reduce-in-fp32 and --grad-reduce-dtype BF16 contradict"},
      {" --experiment-name ..", "--experiment-name: '..' must be a plain name"},
      {" --experiment-name a/b", "--experiment-name: 'a/b' must be a plain name"},
      {" --threads 100000", "--threads: 100000 is too large (at most 4096)"},
      {" --num-layers 0", "--num-layers: 0 must be a finite number >= 1"},
      {" --seed 99999999999999999999999", "--seed: 99999999999999999999999 is too large"},
      {" --ddp-bucket-size 0", "--ddp-bucket-size: 0 must be a finite number >= 1"},
      {" --time-budget 0", "--time-budget: 0 must be a finite number > 0"},
      {" --val-check-interval 99999999999999999999", "--val-check-interval: 99999999999999999999 is too large"},
  };
  for (const auto& row : rows) {
    const auto r = run_cli(train() + row.args);
    expect_one_line_error(r, row.args, row.expect);
    EXPECT_FALSE(fs::exists(*root_ / "results")) << row.args << ": a refused start wrote its results directory";
  }
}

// The reference's --num-gpus/--num-nodes are checked against the ranks mpirun/srun started (here an
// Open MPI environment without MPI: the check comes before any communicator).
TEST_F(CliContract, LaunchFlagsMustAgreeWithTheLauncher) {
  setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  setenv("OMPI_COMM_WORLD_RANK", "0", 1);
  const auto r = run_cli(train() + " --num-gpus 1");
  const auto nodes = run_cli(train() + " --num-nodes 3");
  unsetenv("OMPI_COMM_WORLD_SIZE");
  unsetenv("OMPI_COMM_WORLD_RANK");
  expect_one_line_error(r, "--num-gpus 1", "--num-gpus 1 × --num-nodes 1 = 1 ranks, but the launcher started 2");
  expect_one_line_error(nodes, "--num-nodes 3", "--num-nodes 3 does not divide the 2 ranks");
  EXPECT_FALSE(fs::exists(*root_ / "results"));
}

TEST_F(CliContract, ParseErrorsFollowTheContract) {
  expect_one_line_error(run_cli(""), "(none)", "a command is required");
  expect_one_line_error(run_cli("nosuch --x"), "nosuch", "unknown command 'nosuch'");
  expect_one_line_error(run_cli("train"), "train", "train: --train-data is required");
  expect_one_line_error(run_cli("train --train-data x --lr"), "--lr", "--lr");
  expect_one_line_error(run_cli("eval --checkpoint " + hf_model().string() + " --fasta x.fa --micro-batch-tokens 0"),
                        "eval", "eval: --micro-batch-tokens: 0 must be a finite number >= 1");
  expect_one_line_error(run_cli("eval --checkpoint " + hf_model().string() + " --data " + (*root_ / "corpus").string() +
                                " --mask-prob 2"),
                        "eval --mask-prob", "--mask-prob 2 is outside (0, 1]");
  expect_one_line_error(run_cli("embed --checkpoint " + hf_model().string() + " --fasta x.fa --output y --layer -1"),
                        "embed --layer", "embed: --layer: -1 must be a finite number >= 0");
  expect_one_line_error(run_cli("eval --checkpoint " + hf_model().string() + " --data " + (*root_ / "corpus").string() +
                                " --precision fp8-mixed"),
                        "eval --precision", "--precision fp8-mixed is for training (train, bench)");
}

// A run that starts writes the report's "Run" table from the command line (2 tiny steps).
TEST_F(CliContract, ReportNamesHowTheRunWasMade) {
  const auto r = run_cli(train() + " --no-tensorboard --disable-checkpointing --experiment-name ok");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string html = esm2::read_file(*root_ / "results/ok/report.html");
  for (const char* want : {"<h2>Run</h2>", "source revision", "500 sequences, 500 clusters, 207,145 residues",
                           "2 layers, hidden 32, 2 heads, FFN 64", "num-steps=2", "wall time"})
    EXPECT_NE(html.find(want), std::string::npos) << want;
  fs::remove_all(*root_ / "results");
}

// A config file's key is checked against the command's options: `true` for an option that takes a value
// used to swallow the next flag as that value; a bad value names the file.
TEST_F(CliContract, ConfigFileKeysAreCheckedAndNamed) {
  const fs::path dir = *root_ / "configs";
  fs::create_directories(dir);
  const std::vector<std::pair<std::string, std::string>> rows = {
      {"{\"experiment-name\": true}", "key experiment-name: --experiment-name takes a value, not true"},
      {"{\"no-report\": \"maybe\"}", "--no-report is an on/off flag: give true or false, not 'maybe'"},
      {"{\"lr\": 0.001, \"lr\": 0.5}", "key lr is given twice"},
      {"[1, 2]", "a JSON array; a config file is a JSON object"},
      {"{\"bogus\": 1}", "--bogus is not an option of this command"},
      {"num-steps = four\n", "--num-steps: 'four' is not a number (set by "},
  };
  for (size_t i = 0; i < rows.size(); ++i) {
    std::string name = "c";
    name += std::to_string(i);
    const fs::path f = dir / name;
    esm2::write_file(f, rows[i].first);
    expect_one_line_error(run_cli(train() + " --config " + f.string() + " --no-tensorboard"), rows[i].first,
                          rows[i].second);
  }
  expect_one_line_error(run_cli(train() + " --config " + dir.string()), "a directory", "is a directory, not a config file");
  // A config file's resume-if-exists and a --force typed after it: the later applies (no error, no resume).
  esm2::write_file(dir / "resume.toml", "resume-if-exists = true\n");
  const auto r = run_cli(train() + " --config " + (dir / "resume.toml").string() + " --force --no-tensorboard --no-report");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("the later, --force, applies"), std::string::npos) << r.output;
  fs::remove_all(*root_ / "results");
  EXPECT_FALSE(fs::exists(*root_ / "results"));
}

// A step whose masking selects no position is dropped with a warning and the run goes on (it used to end
// the run at that step on every resume); a run that failed before its first step does not block a rerun.
TEST_F(CliContract, NoLabelStepsAreSkippedAndFailedStartsLeaveNoRun) {
  const auto r = run_cli(train() + " --mask-prob 0.0005 --max-seq-length 12 --micro-batch-tokens 64 --num-steps 3 "
                                   "--warmup-steps 1 --no-tensorboard --no-report --experiment-name nolabels");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("skipped: the masking selected no position"), std::string::npos) << r.output;
  const std::string tb = train() + " --time-budget 0.01 --no-report --experiment-name tb";
  EXPECT_EQ(run_cli(tb).exit_code, 1);
  const auto again = run_cli(tb);
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_EQ(again.output.find("already holds a run"), std::string::npos) << again.output;
  fs::remove_all(*root_ / "results");
}

// As Lightning reads --limit-val-batches: "1.0" is the whole validation set, "1" one batch.
TEST_F(CliContract, LimitValBatchesOnePointZeroIsTheWholeSet) {
  const std::string base = train() + " --valid-data " + (*root_ / "corpus").string() +
                           " --num-steps 1 --no-tensorboard --no-report --disable-checkpointing";
  const auto all = run_cli(base + " --limit-val-batches 1.0 --experiment-name all");
  const auto big = run_cli(base + " --limit-val-batches 100000 --experiment-name big");
  const auto one = run_cli(base + " --limit-val-batches 1 --experiment-name one");
  for (const auto* r : {&all, &big, &one}) ASSERT_EQ(r->exit_code, 0) << r->output;
  auto batches = [](const std::string& out) {
    const size_t at = out.find(" batches\n");
    const size_t from = out.rfind(", ", at);
    return at == std::string::npos || from == std::string::npos ? std::string("?") : out.substr(from + 2, at - from - 2);
  };
  EXPECT_EQ(batches(all.output), batches(big.output)) << all.output;
  EXPECT_EQ(batches(one.output), "1") << one.output;
  EXPECT_NE(batches(all.output), "1");
  expect_one_line_error(run_cli(base + " --limit-val-batches 1.5"), "1.5", "--limit-val-batches must be a fraction in (0, 1]");
  fs::remove_all(*root_ / "results");
}

TEST_F(CliContract, HelpNamesTheProgramAndTheOnOffDefaults) {
  const auto r = run_cli("train --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.output.find("Usage: esm2 train [OPTIONS]"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("{false}"), std::string::npos) << "a negated flag's stored value reads as its default";
  EXPECT_NE(r.output.find("Keep the top-k checkpoints (default on)"), std::string::npos);
  const auto v = run_cli("--version");
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_EQ(v.output, std::string(ESM2_VERSION) + "\n");
}

// One overwrite rule for every command that writes: an existing output is an error (before the
// model is loaded) unless --force is given.
TEST_F(CliContract, ExistingOutputsAreReplacedOnlyWithForce) {
  const fs::path dir = *root_ / "outputs";
  fs::create_directories(dir);
  {
    std::ofstream(dir / "in.fasta") << ">a\nMKTAYIAKQR\n>b\nQISFVKSHFSRQ\n";
  }
  const std::string embed = "embed --threads 1 --checkpoint " + hf_model().string() + " --fasta " +
                            (dir / "in.fasta").string() + " --output " + (dir / "emb").string();
  ASSERT_EQ(run_cli(embed).exit_code, 0);
  const auto again = run_cli(embed);
  expect_one_line_error(again, "embed twice", "--output " + (dir / "emb").string() + ": already exists (pass --force");
  EXPECT_EQ(run_cli(embed + " --force").exit_code, 0);

  const std::string score = "score --threads 1 --checkpoint " + hf_model().string() +
                            " --sequence MKTAYIAKQR --mutations K2A --output " + (dir / "s.csv").string();
  ASSERT_EQ(run_cli(score).exit_code, 0);
  expect_one_line_error(run_cli(score), "score twice", "--output " + (dir / "s.csv").string() + ": already exists");
  EXPECT_EQ(run_cli(score + " --force").exit_code, 0);

  const std::string eval = "eval --threads 1 --checkpoint " + hf_model().string() + " --fasta " +
                           (dir / "in.fasta").string() + " --json " + (dir / "e.json").string();
  ASSERT_EQ(run_cli(eval).exit_code, 0);
  expect_one_line_error(run_cli(eval), "eval twice", "--json " + (dir / "e.json").string() + ": already exists");
}

}  // namespace
