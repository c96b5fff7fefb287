// Failure paths of `esm2 train`: checkpoint writes that fail (file-size limit standing in for a full
// disk, a read-only directory) and numerical faults injected with the test-only ESM2_FAULT_INJECT.
// Oracles are byte comparisons with an uninterrupted run of the same configuration.
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "core/atomic_dir.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "train/fault_injection.h"

using namespace esm2::testing;
namespace fs = std::filesystem;

namespace {

const std::string kTinyModel =
    kTinyModelShape + " --accumulate-grad-batches 1 --lr 1e-3 --warmup-steps 2"
    " --limit-val-batches 1 --log-every-n-steps 1 --threads 2 --no-report --no-tensorboard --num-steps 4";

class TrainFaults : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(scratch_dir("faults"));
    const fs::path corpus = *root_ / "corpus";
    const auto r = prepare_sample_corpus(corpus);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    common_ = new std::string(kTinyModel + " --train-data " + corpus.string() + " --valid-data " +
                              corpus.string() + " --result-dir " + root_->string());
    // The uninterrupted reference: a checkpoint after every step.
    const auto ref = run_cli("train" + *common_ + " --val-check-interval 1 --save-top-k -1 --experiment-name ref");
    ASSERT_EQ(ref.exit_code, 0) << ref.output;
  }
  static void TearDownTestSuite() {
    delete root_;
    delete common_;
  }
  static std::string ref_file(int step, const char* f) {
    return esm2::read_file(*root_ / "ref/checkpoints" / step_name(step) / f);
  }
  static std::string step_name(int step) {
    char b[32];
    std::snprintf(b, sizeof b, "step-%08d", step);
    return b;
  }
  static fs::path* root_;
  static std::string* common_;
};
fs::path* TrainFaults::root_ = nullptr;
std::string* TrainFaults::common_ = nullptr;

// Runs a shell command line (for `ulimit`), capturing stdout + stderr and the exit status.
CliResult run_shell(const std::string& cmd) {
  CliResult r;
  FILE* pipe = popen(("(" + cmd + ") 2>&1").c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  while (fgets(buf, sizeof buf, pipe)) r.output += buf;
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// ESM2_FAULT_INJECT for the children started within one scope.
struct ScopedFault {
  explicit ScopedFault(const char* spec) { setenv("ESM2_FAULT_INJECT", spec, 1); }
  ~ScopedFault() { unsetenv("ESM2_FAULT_INJECT"); }
};

std::string latest(const fs::path& ckpts) {
  std::string s = esm2::read_file(ckpts / "latest");
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

}  // namespace

TEST_F(TrainFaults, FileSizeLimitFailsCheckpointClearlyAndKeepsPreviousOne) {
  const fs::path ckpts = *root_ / "fsize/checkpoints";
  const std::string args = *common_ + " --val-check-interval 2 --experiment-name fsize";
  const auto first = run_cli("train" + args + " --early-stop-on-step 2");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const std::string before = esm2::read_file(ckpts / "step-00000002/model.safetensors");
  // 64 blocks of 512 bytes = 32 KiB: the logs fit, the ~150 KB weights file of step 4 does not.
  // esm2 ignores SIGXFSZ, so write() fails with EFBIG instead of the process being killed.
  const auto full = run_shell("ulimit -f 64; exec " + std::string(ESM2_BINARY) + " train" + args + " --resume-if-exists");
  EXPECT_NE(full.exit_code, 0) << full.output;
  EXPECT_LT(full.exit_code, 128) << "killed by a signal instead of reporting the error:\n" << full.output;
  EXPECT_NE(full.output.find("esm2: error: "), std::string::npos) << full.output;
  EXPECT_NE(full.output.find("step-00000004.tmp-"), std::string::npos) << "error must name the file:\n" << full.output;
  EXPECT_NE(full.output.find("File too large"), std::string::npos) << full.output;
  // The previous checkpoint is untouched and still the latest; no partial directory is left.
  EXPECT_EQ(latest(ckpts), "step-00000002");
  EXPECT_FALSE(fs::exists(ckpts / "step-00000004"));
  for (const auto& e : fs::directory_iterator(ckpts))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  EXPECT_TRUE(esm2::read_file(ckpts / "step-00000002/model.safetensors") == before);
  // Resuming from it without the limit ends exactly where the uninterrupted run did.
  const auto again = run_cli("train" + args + " --resume-if-exists");
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("step-00000002 (step 2)"), std::string::npos) << again.output;
  EXPECT_TRUE(esm2::read_file(ckpts / "step-00000004/model.safetensors") == ref_file(4, "model.safetensors"));
}

TEST_F(TrainFaults, ReadOnlyCheckpointDirectoryFailsClearly) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores directory permissions";
  const fs::path ckpts = *root_ / "readonly/checkpoints";
  const std::string args = *common_ + " --val-check-interval 2 --experiment-name readonly";
  const auto first = run_cli("train" + args + " --early-stop-on-step 2");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  fs::permissions(ckpts, fs::perms::owner_read | fs::perms::owner_exec);
  const auto ro = run_cli("train" + args + " --resume-if-exists");
  fs::permissions(ckpts, fs::perms::owner_all);
  EXPECT_NE(ro.exit_code, 0) << ro.output;
  EXPECT_NE(ro.output.find(ckpts.string()), std::string::npos) << ro.output;
  EXPECT_EQ(latest(ckpts), "step-00000002");
  const auto again = run_cli("train" + args + " --resume-if-exists");
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_TRUE(esm2::read_file(ckpts / "step-00000004/model.safetensors") == ref_file(4, "model.safetensors"));
}

TEST_F(TrainFaults, NonfiniteSkipSkipsCountsAndContinues) {
  const fs::path ckpts = *root_ / "skip/checkpoints";
  CliResult r;
  {
    ScopedFault fault("nonfinite_grad@2");
    r = run_cli("train" + *common_ + " --val-check-interval 1 --save-top-k -1 --on-nonfinite skip --experiment-name skip");
  }
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("warning: step 2 skipped: non-finite"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("1 skipped so far"), std::string::npos) << r.output;
  // Only step 2 was poisoned: steps 0 and 1 are the reference's.
  EXPECT_TRUE(esm2::read_file(ckpts / "step-00000002/model.safetensors") == ref_file(2, "model.safetensors"));
  // The skipped step changed nothing (weights, Adam moments and Adam's step count): after 3 steps the
  // state is the reference's after 2.
  EXPECT_TRUE(esm2::read_file(ckpts / "step-00000003/model.safetensors") == ref_file(2, "model.safetensors"));
  EXPECT_TRUE(esm2::read_file(ckpts / "step-00000003/trainer_state/optimizer.safetensors") ==
              ref_file(2, "trainer_state/optimizer.safetensors"));
  // Training went on after the skip and the count is in the trainer state.
  EXPECT_FALSE(esm2::read_file(ckpts / "step-00000004/model.safetensors") == ref_file(2, "model.safetensors"));
  const auto st = nlohmann::json::parse(esm2::read_file(ckpts / "step-00000004/trainer_state/state.json"));
  EXPECT_EQ(st.at("skipped_steps").get<int64_t>(), 1);
  EXPECT_EQ(st.at("step").get<int64_t>(), 4);
  EXPECT_EQ(st.at("optimizer_steps").get<int64_t>(), 3);
}

TEST_F(TrainFaults, NonfiniteStopSavesLastGoodStateAndFails) {
  const fs::path ckpts = *root_ / "stop/checkpoints";
  // Checkpoints every 3 steps: step 2's exists only if the stop path wrote it.
  const std::string args = *common_ + " --val-check-interval 3 --experiment-name stop";
  CliResult r;
  {
    ScopedFault fault("nonfinite_grad@2");
    r = run_cli("train" + args + " --on-nonfinite stop");
  }
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("esm2: error: train: non-finite gradient at step 2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("after saving the last good state to " + (ckpts / "step-00000002").string()), std::string::npos)
      << r.output;
  // The loss was finite: the message says how to find where the gradient went non-finite.
  EXPECT_NE(r.output.find("resume it with ESM2_CHECK_FINITE=1"), std::string::npos) << r.output;
  EXPECT_EQ(latest(ckpts), "step-00000002");
  EXPECT_TRUE(esm2::read_file(ckpts / "step-00000002/model.safetensors") == ref_file(2, "model.safetensors"));
  EXPECT_TRUE(esm2::read_file(ckpts / "step-00000002/trainer_state/optimizer.safetensors") ==
              ref_file(2, "trainer_state/optimizer.safetensors"));
  EXPECT_FALSE(fs::exists(ckpts / "step-00000003"));
  // With the fault gone, resuming from the saved state finishes exactly like the reference.
  const auto again = run_cli("train" + args + " --resume-if-exists");
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("step-00000002 (step 2)"), std::string::npos) << again.output;
  EXPECT_TRUE(esm2::read_file(ckpts / "step-00000004/model.safetensors") == ref_file(4, "model.safetensors"));
}

TEST(FaultInjectionSpec, ParsesStepsAndRejectsTypos) {
  EXPECT_TRUE(esm2::parse_fault_injection("").nonfinite_grad_steps.empty());
  const auto f = esm2::parse_fault_injection("nonfinite_grad@5,0");
  EXPECT_EQ(f.nonfinite_grad_steps, (std::vector<int64_t>{5, 0}));
  EXPECT_TRUE(f.poison_grad_at(5));
  EXPECT_TRUE(f.poison_grad_at(0));
  EXPECT_FALSE(f.poison_grad_at(1));
  EXPECT_THROW(esm2::parse_fault_injection("nonfinite_gradient@5"), esm2::Error);
  EXPECT_THROW(esm2::parse_fault_injection("nonfinite_grad@"), esm2::Error);
  EXPECT_THROW(esm2::parse_fault_injection("nonfinite_grad@5x"), esm2::Error);
  EXPECT_THROW(esm2::parse_fault_injection("nonfinite_grad@-1"), esm2::Error);
}
