// Crash consistency: `esm2 train` is SIGKILLed 20 times at random points (during steps, validation
// and checkpoint writes; a checkpoint every step) and restarted with --resume-if-exists each time.
// Every restart must resume from the last COMPLETE checkpoint (the one `latest` named when the process
// died, never a partial temp directory), and the final weights and optimizer moments must equal an
// uninterrupted run's byte for byte.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <thread>

#include "cli_runner.h"
#include "core/atomic_dir.h"
#include "io/safetensors.h"

using namespace esm2::testing;
namespace fs = std::filesystem;

namespace {

const std::string kTinyModel =
    kTinyModelShape + " --accumulate-grad-batches 1 --lr 1e-3 --warmup-steps 2"
    " --limit-val-batches 1 --log-every-n-steps 1 --threads 1 --no-report --no-tensorboard";
constexpr int kSteps = 60;
constexpr int kKills = 20;

using Clock = std::chrono::steady_clock;

pid_t spawn(const std::string& args, const fs::path& log) {
  const std::string cmd = "exec " + std::string(ESM2_BINARY) + args + " >" + log.string() + " 2>&1";
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

// The checkpoint `latest` names, checked complete and loadable; "" when there is none yet.
std::string latest_complete_checkpoint(const fs::path& ckpts) {
  if (!fs::exists(ckpts / "latest")) return "";
  const std::string name = trim(esm2::read_file(ckpts / "latest"));
  const fs::path dir = ckpts / name;
  EXPECT_TRUE(fs::is_directory(dir)) << "latest names a missing directory " << name;
  // Full header validation of both tensor files plus the state: a torn write fails here.
  EXPECT_NO_THROW(esm2::SafetensorsFile::open(dir / "model.safetensors")) << name;
  EXPECT_NO_THROW(esm2::SafetensorsFile::open(dir / "trainer_state/optimizer.safetensors")) << name;
  const auto st = nlohmann::json::parse(esm2::read_file(dir / "trainer_state/state.json"));
  char expect[32];
  std::snprintf(expect, sizeof expect, "step-%08lld", static_cast<long long>(st.at("step").get<int64_t>()));
  EXPECT_EQ(name, expect);
  return name;
}

int count_entries(const fs::path& ckpts, const std::string& marker) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(ckpts, ec))
    if (e.path().filename().string().find(marker) != std::string::npos) ++n;
  return n;
}

}  // namespace

TEST(CrashConsistency, TwentySigkillsResumeFromLastCompleteCheckpointBitwise) {
  const fs::path root = scratch_dir("crash");
  const fs::path corpus = root / "corpus";
  const auto prep = prepare_sample_corpus(corpus);
  ASSERT_EQ(prep.exit_code, 0) << prep.output;
  const std::string common = " train" + kTinyModel + " --train-data " + corpus.string() + " --valid-data " +
                             corpus.string() + " --num-steps " + std::to_string(kSteps) +
                             " --val-check-interval 1 --save-top-k 1 --result-dir " + root.string();

  const auto t0 = Clock::now();
  const auto ref = run_cli(common.substr(1) + " --experiment-name ref");
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  // Seconds per step including its checkpoint (and the process start, spread over the steps).
  const double step_s = std::chrono::duration<double>(Clock::now() - t0).count() / kSteps;

  const fs::path run = root / "killed";
  const fs::path ckpts = run / "checkpoints";
  std::mt19937_64 rng(20261125);
  std::uniform_real_distribution<double> extra(0.0, 1.5);
  int kills = 0, during_checkpoint_write = 0, restarts_resumed = 0;
  std::string expected = "";  // checkpoint the next start must resume from ("" = from scratch)
  for (int k = 0; k < kKills; ++k) {
    const fs::path log = root / ("kill-" + std::to_string(k) + ".log");
    const uintmax_t metrics_before = fs::exists(run / "metrics.jsonl") ? fs::file_size(run / "metrics.jsonl") : 0;
    const pid_t pid = spawn(common + " --experiment-name killed --resume-if-exists", log);
    ASSERT_GT(pid, 0);
    // Let this run start training (its first metrics record), then kill it at a random point
    // within the next 1.5 steps: inside a step, validation, or a checkpoint write.
    for (int i = 0; i < 3000; ++i) {
      if (fs::exists(run / "metrics.jsonl") && fs::file_size(run / "metrics.jsonl") > metrics_before) break;
      if (waitpid(pid, nullptr, WNOHANG) == pid) FAIL() << "run " << k << " exited early:\n" << esm2::read_file(log);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(extra(rng) * step_s));
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    if (WIFEXITED(status)) {  // the run completed before the kill landed: all steps done
      ASSERT_EQ(WEXITSTATUS(status), 0) << esm2::read_file(log);
      break;
    }
    ASSERT_EQ(WTERMSIG(status), SIGKILL);
    ++kills;

    // This run must have started where the previous kill left the last complete checkpoint.
    const std::string out = esm2::read_file(log);
    if (expected.empty()) {
      EXPECT_NE(out.find("from scratch"), std::string::npos) << "kill " << k << "\n" << out;
    } else {
      EXPECT_NE(out.find("resumed from " + (ckpts / expected).string() + " "), std::string::npos)
          << "kill " << k << ": expected a resume from " << expected << "\n" << out;
      ++restarts_resumed;
    }
    EXPECT_EQ(out.find(".tmp-"), std::string::npos) << out;
    if (count_entries(ckpts, ".tmp-") + count_entries(ckpts, ".old-") > 0) ++during_checkpoint_write;
    expected = latest_complete_checkpoint(ckpts);
    if (::testing::Test::HasFailure()) return;
  }

  // The last start runs to the end.
  const auto fin = run_cli(common.substr(1) + " --experiment-name killed --resume-if-exists");
  ASSERT_EQ(fin.exit_code, 0) << fin.output;
  if (!expected.empty()) {
    EXPECT_NE(fin.output.find("resumed from " + (ckpts / expected).string() + " "), std::string::npos) << fin.output;
  }
  EXPECT_EQ(count_entries(ckpts, ".tmp-"), 0) << "a killed writer's temp directory was not cleaned";
  EXPECT_EQ(count_entries(ckpts, ".old-"), 0);
  char last[32];
  std::snprintf(last, sizeof last, "step-%08d", kSteps);
  for (const char* f : {"model.safetensors", "trainer_state/optimizer.safetensors"}) {
    const auto a = esm2::read_file(root / "ref/checkpoints" / last / f);
    const auto b = esm2::read_file(ckpts / last / f);
    EXPECT_TRUE(a == b) << f << " differs between the uninterrupted and the 20x killed run";
  }
  std::printf("crash test: %d kills, %d of them during a checkpoint write, %d restarts resumed; %.3f s/step\n",
              kills, during_checkpoint_write, restarts_resumed, step_s);
  // Random kill points must actually have hit checkpoint writes, or the test proves less than it says.
  EXPECT_EQ(kills, kKills) << "the run finished before all kills landed";
  EXPECT_GE(during_checkpoint_write, 1);
  EXPECT_GE(restarts_resumed, kKills / 2);
}
