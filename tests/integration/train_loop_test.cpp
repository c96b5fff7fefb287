// The training loop's edge cases (issue 17): a diverging run (--lr 1e9 makes the weights NaN after
// the first real update) under --on-nonfinite stop and skip, a start that fails on its inputs, and
// the final throughput line. The oracle for "the kept state is good" is `esm2 eval` on it.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "core/atomic_dir.h"

using namespace esm2::testing;
namespace fs = std::filesystem;

namespace {

class TrainLoop : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(scratch_dir("train-loop"));
    corpus_ = new fs::path(*root_ / "corpus");
    const auto r = prepare_sample_corpus(*corpus_);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  static void TearDownTestSuite() {
    delete root_;
    delete corpus_;
  }
  // Step 1 has lr 0 (warmup 1): its weights are the finite initial ones. Step 2 applies lr 1e9.
  static CliResult train(const std::string& name, const std::string& extra) {
    return run_cli("train" + kTinyModelShape + " --threads 2 --no-tensorboard --accumulate-grad-batches 1" +
                   " --warmup-steps 1 --limit-val-batches 1 --log-every-n-steps 1 --lr 1e9 --save-top-k -1" +
                   " --train-data " + corpus_->string() + " --valid-data " + corpus_->string() + " --result-dir " +
                   root_->string() + " --experiment-name " + name + " " + extra);
  }
  static std::string latest(const std::string& name) {
    std::string s = esm2::read_file(*root_ / name / "checkpoints/latest");
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }
  // Validation loss of a checkpoint, by `esm2 eval` (NaN if it does not print one).
  static double eval_loss(const fs::path& ckpt) {
    const auto r = run_cli("eval --checkpoint " + ckpt.string() + " --data " + corpus_->string() +
                           " --threads 2 --max-seq-length 96 --micro-batch-tokens 1024 --limit-batches 1");
    const auto at = r.output.find("val_loss ");
    return r.exit_code == 0 && at != std::string::npos ? std::stod(r.output.substr(at + 9)) : std::nan("");
  }
  static fs::path* root_;
  static fs::path* corpus_;
};
fs::path* TrainLoop::root_ = nullptr;
fs::path* TrainLoop::corpus_ = nullptr;

}  // namespace

// The issue's repro: the only validation is non-finite. Today it exits 0 with `latest` on that state
// and writes "val_loss":null, which `esm2 report` rejects.
TEST_F(TrainLoop, NonfiniteValidationStopsWithoutSavingItAndTheReportReadsTheMetrics) {
  const auto r = train("nanval", "--num-steps 2 --val-check-interval 2");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("esm2: error: train: non-finite validation loss at step 2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("no good state was saved"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(*root_ / "nanval/checkpoints/latest"));
  EXPECT_TRUE(fs::exists(*root_ / "nanval/report.html")) << "the stopped run's report must be written";
  const std::string metrics = esm2::read_file(*root_ / "nanval/metrics.jsonl");
  EXPECT_EQ(metrics.find("null"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find(R"("val_loss":"nan")"), std::string::npos) << metrics;
  const auto rep = run_cli("report " + (*root_ / "nanval").string());
  EXPECT_EQ(rep.exit_code, 0) << rep.output;
}

// Validation after every step: step 1's state is good, step 2's is not. The run stops at step 2 and
// the last good state stays step 1, whose weights evaluate to a finite loss.
TEST_F(TrainLoop, NonfiniteValidationKeepsThePreviousGoodState) {
  const auto r = train("keep", "--num-steps 4 --val-check-interval 1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("the last good state is " + (*root_ / "keep/checkpoints/step-00000001").string()),
            std::string::npos)
      << r.output;
  EXPECT_EQ(latest("keep"), "step-00000001");
  EXPECT_FALSE(fs::exists(*root_ / "keep/checkpoints/step-00000002"));
  EXPECT_TRUE(std::isfinite(eval_loss(*root_ / "keep/checkpoints/step-00000001")));
  EXPECT_TRUE(fs::exists(*root_ / "keep/report.html"));
}

// No validation before the divergence: step 3's loss is non-finite, so the weights it was computed
// with are not a good state either. Today they are saved as "the last good state".
TEST_F(TrainLoop, NonfiniteLossSavesNoStateThatIsNotFinite) {
  const auto r = train("nanloss", "--num-steps 4 --val-check-interval 100");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("esm2: error: train: non-finite loss at step 2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("no good state was saved"), std::string::npos) << r.output;
  const fs::path ckpts = *root_ / "nanloss/checkpoints";
  if (fs::exists(ckpts)) {
    for (const auto& e : fs::directory_iterator(ckpts)) {
      if (e.is_directory()) {
        EXPECT_TRUE(std::isfinite(eval_loss(e.path()))) << e.path();
      }
    }
  }
  EXPECT_TRUE(fs::exists(*root_ / "nanloss/report.html"));
}

// --on-nonfinite skip: non-finite validations are logged and never checkpointed; the run finishes.
TEST_F(TrainLoop, NonfiniteValidationUnderSkipIsNeverCheckpointed) {
  const auto r = train("skip", "--num-steps 3 --val-check-interval 1 --on-nonfinite skip");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("warning: validation at step 2 is non-finite"), std::string::npos) << r.output;
  EXPECT_EQ(latest("skip"), "step-00000001");
  EXPECT_FALSE(fs::exists(*root_ / "skip/checkpoints/step-00000002"));
  EXPECT_FALSE(fs::exists(*root_ / "skip/checkpoints/step-00000003"));
  const auto rep = run_cli("report " + (*root_ / "skip").string());
  EXPECT_EQ(rep.exit_code, 0) << rep.output;
}

TEST_F(TrainLoop, FailedStartCreatesNothing) {
  const fs::path results = *root_ / "never";
  const auto r = run_cli("train" + kTinyModelShape + " --num-steps 1 --train-data " + (*root_ / "nonexistent").string() +
                         " --result-dir " + results.string() + " --experiment-name e");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("nonexistent"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(results)) << "a failed start must not leave a run directory";
}

// The final line reports training throughput (step time only) and the wall time (which also holds
// validation and checkpoints) separately, each labelled.
TEST_F(TrainLoop, FinalLineSeparatesTrainingThroughputFromWallTime) {
  const auto r = run_cli("train" + kTinyModelShape + " --threads 2 --no-tensorboard --num-steps 3 --warmup-steps 1" +
                         " --val-check-interval 2 --limit-val-batches 1 --train-data " + corpus_->string() +
                         " --valid-data " + corpus_->string() + " --result-dir " + root_->string() +
                         " --experiment-name finite");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto at = r.output.find("esm2 train: done at step 3; training ");
  ASSERT_NE(at, std::string::npos) << r.output;
  const std::string line = r.output.substr(at, r.output.find('\n', at) - at);
  EXPECT_NE(line.find(" real tokens/s (steps only); wall time "), std::string::npos) << line;
  EXPECT_NE(line.find(" s (incl. validation and checkpoints)"), std::string::npos) << line;
}

// One overwrite rule for every writing command: a second fresh start into a run directory that holds a
// run is refused (the first run's checkpoints untouched), --resume-if-exists continues it and --force
// replaces it (nothing of the first run left).
TEST_F(TrainLoop, ExistingRunIsContinuedOrReplacedOnlyWhenAsked) {
  const std::string args = "--num-steps 3 --val-check-interval 3 --lr 1e-3";
  const auto first = train("twice", args);
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const fs::path run = *root_ / "twice";
  ASSERT_EQ(latest("twice"), "step-00000003");
  const std::string bytes = esm2::read_file(run / "checkpoints/step-00000003/model.safetensors");

  const auto again = train("twice", args);
  EXPECT_EQ(again.exit_code, 1) << again.output;
  EXPECT_NE(again.output.find("esm2: error: " + run.string() + ": already holds a run; add --resume-if-exists"),
            std::string::npos)
      << again.output;
  EXPECT_EQ(esm2::read_file(run / "checkpoints/step-00000003/model.safetensors"), bytes);

  const auto resumed = train("twice", args + " --resume-if-exists");
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos) << resumed.output;

  esm2::write_file(run / "marker", "from the first run\n");
  const auto replaced = train("twice", "--num-steps 2 --val-check-interval 2 --lr 1e-3 --force");
  EXPECT_EQ(replaced.exit_code, 0) << replaced.output;
  EXPECT_FALSE(fs::exists(run / "marker"));
  EXPECT_FALSE(fs::exists(run / "checkpoints/step-00000003"));
  EXPECT_EQ(latest("twice"), "step-00000002");
}
