// The `esm2 train --gpus N` launcher without GPUs: its workers here are /bin/sh scripts that check
// their environment, fail, get killed or ignore SIGTERM, so every failure path runs on a CPU-only CI
// machine. Also the CLI's refusal of --gpus where it cannot work (no NCCL or no GPU here).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fmt/format.h>

#include <fstream>
#include <thread>

#include "../../integration/cli_runner.h"
#include "comm/local_launcher.h"

using namespace esm2;
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

WorkerLaunch sh(int n, const std::string& script) {
  WorkerLaunch l;
  l.program = "/bin/sh";
  l.argv = {"sh", "-c", script};
  l.num_workers = n;
  l.grace_s = 5;
  return l;
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

bool contains(const std::vector<std::string>& msgs, const std::string& needle) {
  for (const auto& m : msgs)
    if (m.find(needle) != std::string::npos) return true;
  return false;
}

}  // namespace

TEST(LocalLauncher, RemovesTheGpusOptionInBothSpellings) {
  const std::vector<std::string> in = {"esm2", "train", "--gpus", "2", "--train-data", "d", "--gpus=4", "--seed", "3"};
  EXPECT_EQ(without_option(in, "--gpus"), (std::vector<std::string>{"esm2", "train", "--train-data", "d", "--seed", "3"}));
  // A flag that only starts like it stays.
  EXPECT_EQ(without_option({"--gpus-per-node", "1"}, "--gpus"), (std::vector<std::string>{"--gpus-per-node", "1"}));
}

TEST(LocalLauncher, EveryWorkerGetsItsRankAndTheSharedEnvironment) {
  const fs::path dir = esm2::testing::scratch_dir("launcher-env");
  // A stale rank variable in the launcher's own environment must not leak into the workers.
  setenv("ESM2_RANK", "7", 1);
  WorkerLaunch l = sh(3, "echo \"$ESM2_RANK $ESM2_LOCAL_RANK $ESM2_WORLD_SIZE $ESM2_NCCL_ID\" > " + dir.string() +
                             "/rank$ESM2_RANK");
  l.extra_env = {"ESM2_NCCL_ID=00ff"};
  const LaunchResult r = run_workers(l);
  unsetenv("ESM2_RANK");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.failed_rank, -1);
  EXPECT_TRUE(r.messages.empty());
  for (int k = 0; k < 3; ++k) {
    std::ifstream f(dir / ("rank" + std::to_string(k)));
    std::string line;
    std::getline(f, line);
    EXPECT_EQ(line, fmt::format("{} {} 3 00ff", k, k));
    EXPECT_EQ(r.workers[size_t(k)].exit_code, 0);
  }
}

TEST(LocalLauncher, FailingWorkerIsNamedAndTheOthersAreTerminated) {
  const auto t0 = Clock::now();
  // Rank 1 fails at once; the others would run for 60 s.
  const LaunchResult r = run_workers(sh(3, "if [ \"$ESM2_RANK\" = 1 ]; then exit 3; fi; exec sleep 60"));
  EXPECT_LT(seconds_since(t0), 20);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.failed_rank, 1);
  EXPECT_TRUE(contains(r.messages, "esm2 train: rank 1 exited with status 3")) << r.messages.front();
  for (int k : {0, 2}) {
    EXPECT_TRUE(r.workers[size_t(k)].terminated_by_launcher) << k;
    EXPECT_EQ(r.workers[size_t(k)].signal, SIGTERM) << k;
    EXPECT_TRUE(contains(r.messages, fmt::format("rank {} exited with signal {}", k, SIGTERM)));
  }
}

TEST(LocalLauncher, WorkerKilledBySignalIsNamed) {
  const LaunchResult r = run_workers(sh(2, "if [ \"$ESM2_RANK\" = 0 ]; then kill -9 $$; fi; exec sleep 60"));
  EXPECT_EQ(r.failed_rank, 0);
  EXPECT_EQ(r.exit_code, 128 + SIGKILL);
  EXPECT_TRUE(contains(r.messages, fmt::format("esm2 train: rank 0 exited with signal {}", SIGKILL)));
  EXPECT_TRUE(r.workers[1].terminated_by_launcher);
}

TEST(LocalLauncher, WorkerIgnoringSigtermIsKilledAfterTheGracePeriod) {
  // Rank 1 fails only once rank 0 has set its trap (a fixed delay raced with a slow shell start on a
  // loaded machine, and rank 0 then died of the SIGTERM itself).
  const fs::path dir = esm2::testing::scratch_dir("launcher-grace");
  WorkerLaunch l = sh(2, "if [ \"$ESM2_RANK\" = 1 ]; then while [ ! -e " + dir.string() +
                             "/trapped ]; do sleep 0.02; done; exit 2; fi; trap '' TERM; touch " + dir.string() +
                             "/trapped; exec sleep 60");
  l.grace_s = 0.5;
  const auto t0 = Clock::now();
  const LaunchResult r = run_workers(l);
  EXPECT_LT(seconds_since(t0), 20);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.workers[0].signal, SIGKILL);
  EXPECT_TRUE(contains(r.messages, "sending SIGKILL"));
}

TEST(LocalLauncher, SigtermToTheLauncherReachesEveryWorker) {
  const fs::path dir = esm2::testing::scratch_dir("launcher-signal");
  // Each worker says it is ready (its trap is set), then waits; on SIGTERM it exits 0 as the trainer
  // does after its final checkpoint.
  const std::string script = "trap 'exit 0' TERM; touch " + dir.string() + "/ready$ESM2_RANK; sleep 60 & wait";
  std::thread signaller([&] {
    const auto t0 = Clock::now();
    while (!(fs::exists(dir / "ready0") && fs::exists(dir / "ready1")) && seconds_since(t0) < 30)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    kill(getpid(), SIGTERM);
  });
  const auto t0 = Clock::now();
  const LaunchResult r = run_workers(sh(2, script));
  signaller.join();
  EXPECT_LT(seconds_since(t0), 30);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.failed_rank, -1);
  EXPECT_EQ(r.workers[0].exit_code, 0);
  EXPECT_EQ(r.workers[1].exit_code, 0);
}

TEST(LocalLauncher, MissingProgramFailsEveryRankWithAName) {
  WorkerLaunch l = sh(2, "");
  l.program = "/nonexistent/esm2";
  const LaunchResult r = run_workers(l);
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_GE(r.failed_rank, 0);
}

// Where --gpus cannot work (a build without NCCL, or no GPU on this machine) the CLI says so.
TEST(TrainGpusFlag, RefusedWithAReasonWithoutNcclOrGpus) {
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  if (visible == nullptr || std::string(visible) != "") {
    // A machine with GPUs would start real workers; this case is about the refusal.
    setenv("CUDA_VISIBLE_DEVICES", "", 1);
  }
  const auto r = esm2::testing::run_cli("train --gpus 2 --train-data /nonexistent --num-steps 1");
  EXPECT_NE(r.exit_code, 0);
  const bool no_nccl = r.output.find("this build has no NCCL") != std::string::npos;
  const bool no_gpu = r.output.find("only 0 GPU(s) visible") != std::string::npos;
  EXPECT_TRUE(no_nccl || no_gpu) << r.output;
  // Inside a one-task Slurm allocation (sbatch/salloc set SLURM_NTASKS=1 without srun) --gpus still
  // starts its workers; with several tasks srun is the launcher, and --gpus (the reference's
  // --num-gpus) is checked against the ranks it started instead of starting workers.
  setenv("SLURM_NTASKS", "1", 1);
  const auto one = esm2::testing::run_cli("train --gpus 2 --train-data /nonexistent --num-steps 1");
  setenv("SLURM_NTASKS", "2", 1);
  const auto two = esm2::testing::run_cli("train --gpus 2 --train-data /nonexistent --num-steps 1");
  const auto four = esm2::testing::run_cli("train --gpus 4 --train-data /nonexistent --num-steps 1");
  unsetenv("SLURM_NTASKS");
  EXPECT_EQ(one.output.find("the launcher started"), std::string::npos) << one.output;
  EXPECT_NE(one.exit_code, 0);
  EXPECT_EQ(two.output.find("the launcher started"), std::string::npos) << two.output;  // 2 × 1 = 2 ranks
  // SLURM_NTASKS=2 in a process srun did not start: its MPI world has one rank, which is refused (it would
  // train alone with half the batch asked for); a build without MPI refuses the launch outright.
  EXPECT_NE(two.exit_code, 0);
  EXPECT_TRUE(two.output.find("the MPI job that formed has 1") != std::string::npos ||
              two.output.find("this build has no MPI") != std::string::npos)
      << two.output;
  EXPECT_NE(four.output.find("--num-gpus 4 × --num-nodes 1 = 4 ranks, but the launcher started 2 (SLURM_NTASKS"),
            std::string::npos)
      << four.output;
  if (visible) setenv("CUDA_VISIBLE_DEVICES", visible, 1); else unsetenv("CUDA_VISIBLE_DEVICES");
}

TEST(TrainGpusFlag, WorkerEnvironmentOnTheCpuBackendIsRefused) {
  setenv("ESM2_RANK", "0", 1);
  setenv("ESM2_WORLD_SIZE", "2", 1);
  const fs::path dir = esm2::testing::scratch_dir("gpus-cpu-worker");
  const auto prep = esm2::testing::prepare_sample_corpus(dir / "corpus");
  ASSERT_EQ(prep.exit_code, 0) << prep.output;
  const auto r = esm2::testing::run_cli("train --backend cpu --train-data " + (dir / "corpus").string() +
                                  " --num-steps 1 --result-dir " + dir.string());
  unsetenv("ESM2_RANK");
  unsetenv("ESM2_WORLD_SIZE");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("workers need the cuda backend"), std::string::npos) << r.output;
}
