// Runs the esm2 binary from integration tests and captures its output and exit status.
#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

namespace esm2::testing {

struct CliResult {
  int exit_code = -1;
  std::string output;  // stdout + stderr
};

// A shell command line; what it prints on stdout is captured.
inline CliResult run_command(const std::string& cmd) {
  CliResult r;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  while (fgets(buf, sizeof buf, pipe)) r.output += buf;
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

inline CliResult run_cli(const std::string& args) { return run_command(std::string(ESM2_BINARY) + " " + args + " 2>&1"); }

inline std::filesystem::path source_dir() { return ESM2_SOURCE_DIR; }

// A fresh scratch directory for one test (removed at the start, kept after for inspection).
inline std::filesystem::path scratch_dir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() / ("esm2-test-" + name);
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

// The tiny model every integration test trains: seconds per run on 2 cores. Tests append their own
// batch, schedule and logging flags.
inline const std::string kTinyModelShape =
    " --preset demo --num-layers 2 --hidden-size 32 --num-attention-heads 2 --ffn-hidden-size 64"
    " --max-seq-length 96 --micro-batch-tokens 1024";

// `esm2 prepare` of the bundled validation sequences (500 real proteins) into `out`: the small real
// corpus the integration tests train and evaluate on.
inline CliResult prepare_sample_corpus(const std::filesystem::path& out) {
  return run_cli("prepare --fasta " + (source_dir() / "data/swissprot-sample/valid.fasta.gz").string() +
                 " --output " + out.string());
}

// Base of a test suite whose tests train on the sample corpus: prepared once per suite, in a scratch
// directory named after the suite (so suites in test binaries that run at the same time never share it).
class SampleCorpusTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string suite = ::testing::UnitTest::GetInstance()->current_test_suite()->name();
    corpus_ = scratch_dir(suite + "-corpus") / "valid";
    const auto r = prepare_sample_corpus(corpus_);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  static std::string data_args() { return " --train-data " + corpus_.string() + " --valid-data " + corpus_.string(); }
  static inline std::filesystem::path corpus_;
};

// step → train_loss from a run's metrics.jsonl (later lines win: a resumed run re-logs some steps).
inline std::map<int64_t, double> train_losses(const std::filesystem::path& run_dir) {
  std::map<int64_t, double> out;
  std::ifstream in(run_dir / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    if (j.contains("train_loss")) out[j["step"].get<int64_t>()] = j["train_loss"].get<double>();
  }
  return out;
}

}  // namespace esm2::testing
