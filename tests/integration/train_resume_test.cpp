// End-to-end: `esm2 prepare` + `esm2 train` on the bundled real data. Exact resume (bitwise), SIGTERM
// handling and the trainer's bad-input errors.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli_runner.h"
#include "core/atomic_dir.h"

using namespace esm2::testing;
namespace fs = std::filesystem;

namespace {

// A small model and short sequences keep each run to a few seconds on 2 cores.
const std::string kTinyModel =
    kTinyModelShape + " --accumulate-grad-batches 2 --lr 1e-3 --warmup-steps 2"
    " --limit-val-batches 2 --log-every-n-steps 1 --threads 2 --no-report";

class TrainCli : public SampleCorpusTest {
 protected:
};

}  // namespace

TEST_F(TrainCli, ResumeIsBitwiseExact) {
  const fs::path root = scratch_dir("resume");
  const std::string common =
      kTinyModel + data_args() + " --num-steps 6 --val-check-interval 3 --result-dir " + root.string();
  auto full = run_cli("train" + common + " --experiment-name full");
  ASSERT_EQ(full.exit_code, 0) << full.output;
  auto part1 = run_cli("train" + common + " --experiment-name split --early-stop-on-step 3");
  ASSERT_EQ(part1.exit_code, 0) << part1.output;
  ASSERT_TRUE(fs::exists(root / "split/checkpoints/step-00000003/model.safetensors"));
  ASSERT_FALSE(fs::exists(root / "split/checkpoints/step-00000006"));
  auto part2 = run_cli("train" + common + " --experiment-name split --resume-if-exists");
  ASSERT_EQ(part2.exit_code, 0) << part2.output;
  EXPECT_NE(part2.output.find("resumed from"), std::string::npos) << part2.output;

  // Identical weights and optimizer moments after 6 steps, byte for byte.
  for (const char* f : {"model.safetensors", "trainer_state/optimizer.safetensors"}) {
    const auto a = esm2::read_file(root / "full/checkpoints/step-00000006" / f);
    const auto b = esm2::read_file(root / "split/checkpoints/step-00000006" / f);
    EXPECT_EQ(a.size(), b.size()) << f;
    EXPECT_TRUE(a == b) << f << " differs between the uninterrupted and the resumed run";
  }
  // Identical per-step losses, including the steps after the resume.
  const auto la = train_losses(root / "full"), lb = train_losses(root / "split");
  ASSERT_EQ(la.size(), 6u);
  for (const auto& [step, loss] : la) {
    ASSERT_TRUE(lb.count(step)) << "step " << step;
    EXPECT_EQ(loss, lb.at(step)) << "step " << step;
  }
  // Training moved the weights: the run is not trivially equal.
  const auto w3 = esm2::read_file(root / "split/checkpoints/step-00000003/model.safetensors");
  const auto w6 = esm2::read_file(root / "split/checkpoints/step-00000006/model.safetensors");
  EXPECT_FALSE(w3 == w6);
}

TEST_F(TrainCli, SigtermCheckpointsAndResumesExactly) {
  const fs::path root = scratch_dir("sigterm");
  const std::string common =
      kTinyModel + data_args() + " --num-steps 300 --val-check-interval 100 --result-dir " + root.string();
  const auto ref = run_cli("train" + common + " --experiment-name ref");
  ASSERT_EQ(ref.exit_code, 0) << ref.output;

  const std::string cmd = std::string(ESM2_BINARY) + " train" + common + " --experiment-name killed";
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    freopen("/dev/null", "w", stdout);
    execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait until training is under way (the first metrics line), then ask it to stop.
  const fs::path metrics = root / "killed/metrics.jsonl";
  for (int i = 0; i < 600 && !(fs::exists(metrics) && fs::file_size(metrics) > 0); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by a signal instead of exiting cleanly";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  const auto losses = train_losses(root / "killed");
  ASSERT_FALSE(losses.empty());
  const int64_t stopped_at = losses.rbegin()->first;
  ASSERT_LT(stopped_at, 300) << "the run finished before the signal arrived; the test proves nothing";
  char name[32];
  std::snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(stopped_at));
  ASSERT_TRUE(fs::exists(root / "killed/checkpoints" / name / "model.safetensors")) << name;

  const auto resumed = run_cli("train" + common + " --experiment-name killed --resume-if-exists");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_TRUE(esm2::read_file(root / "ref/checkpoints/step-00000300/model.safetensors") ==
              esm2::read_file(root / "killed/checkpoints/step-00000300/model.safetensors"));
}

TEST_F(TrainCli, BadInputIsOneClearError) {
  const fs::path root = scratch_dir("badinput");
  struct Case {
    std::string args, expect;
  };
  const std::vector<Case> cases = {
      {" --hidden-size 30 --num-attention-heads 4", "not divisible"},
      {" --hidden-size 36 --num-attention-heads 4", "must be even"},
      {" --train-data /nonexistent/corpus", "/nonexistent/corpus"},
      {" --result-dir /proc/esm2-not-writable", "esm2-not-writable"},
      {" --micro-batch-tokens 64", "--micro-batch-tokens 64 is below --max-seq-length 96"},
      {" --precision bf16-mixed --backend cpu", "fp32 only"},
  };
  for (const auto& c : cases) {
    const auto r = run_cli("train" + kTinyModel + data_args() + " --num-steps 3 --val-check-interval 3 --result-dir " + root.string() +
                           " --experiment-name bad" + c.args);
    EXPECT_NE(r.exit_code, 0) << c.args;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.args << "\n" << r.output;
  }
  // A checkpoint of another shape is refused with both shapes named.
  const auto ok = run_cli("train" + kTinyModel + data_args() + " --num-steps 3 --val-check-interval 3 --result-dir " +
                          root.string() + " --experiment-name small");
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  const auto other = run_cli("train" + kTinyModel + data_args() + " --hidden-size 64 --num-steps 3 --val-check-interval 3 --result-dir " +
                             root.string() + " --experiment-name big --restore-from-checkpoint-path " +
                             (root / "small/checkpoints/step-00000003").string());
  EXPECT_NE(other.exit_code, 0);
  EXPECT_NE(other.output.find("shape"), std::string::npos) << other.output;
}
