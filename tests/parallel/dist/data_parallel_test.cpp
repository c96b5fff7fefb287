// Data parallelism over MPI, end to end: `mpirun -np N esm2 train …` on the bundled real data with a
// tiny model. Oracles are single-process runs: DP=N must reproduce DP=1 with N-fold accumulation on
// the same global batch, ZeRO-1 must reproduce the replicated optimizer, a checkpoint written at DP=2
// must continue at DP=1 and DP=4 like the uninterrupted run, and a killed rank must end the job.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <thread>
#include <tuple>

#include "../../integration/cli_runner.h"
#include "mpi_runner.h"
#include "core/atomic_dir.h"
#include "io/safetensors.h"

using namespace esm2::testing;
namespace fs = std::filesystem;

namespace {

// One thread per rank: ranks then round like the 1-process run (no thread-count-dependent sums).
const std::string kTinyModel =
    kTinyModelShape + " --lr 1e-3 --warmup-steps 2"
    " --limit-val-batches 2 --log-every-n-steps 1 --threads 1 --backend cpu --no-report --no-tensorboard";

// Cross-DP-size tolerance (fp32 round-off: accumulation adds micro-batch gradients inside the
// backward GEMMs, DP adds finished per-rank gradients, so sums are grouped differently).
constexpr double kLossRelTol = 1e-5;
constexpr double kWeightAbsTol = 2e-5;







void expect_losses_close(const fs::path& a, const fs::path& b, size_t steps, double rel_tol) {
  const auto la = train_losses(a), lb = train_losses(b);
  ASSERT_EQ(la.size(), steps) << a;
  for (const auto& [step, loss] : la) {
    ASSERT_TRUE(lb.count(step)) << b << " step " << step;
    EXPECT_NEAR(loss, lb.at(step), rel_tol * std::abs(loss)) << "step " << step << ": " << a << " vs " << b;
  }
}

class DataParallel : public SampleCorpusTest {
 protected:
  static void SetUpTestSuite() {
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("OMPI_MCA_btl", "self,vader,tcp", 0);  // no InfiniBand probing in CI containers
    SampleCorpusTest::SetUpTestSuite();
  }
  void SetUp() override {
    if (!have_mpirun()) GTEST_SKIP() << "mpirun not found: install OpenMPI (mpirun, libopenmpi-dev) to run the dist tests";
  }
};

}  // namespace

// DP=2 (ZeRO-1 and replicated) vs one process accumulating 2 micro-batches: the same global batch.
TEST_F(DataParallel, TwoRanksEqualOneRankWithAccumulationAndZeroEqualsReplicated) {
  const fs::path root = scratch_dir("dist-dp");
  const std::string common = kTinyModel + data_args() + " --num-steps 4 --val-check-interval 4 --result-dir " + root.string();
  const auto one = train(0, common + " --accumulate-grad-batches 2 --experiment-name dp1");
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const auto zero = train(2, common + " --accumulate-grad-batches 1 --experiment-name dp2-zero");
  ASSERT_EQ(zero.exit_code, 0) << zero.output;
  EXPECT_NE(zero.output.find("DP 2 × TP 1 × PP 1 (mpi communicator), optimizer ZeRO-1"), std::string::npos) << zero.output;
  const auto repl = train(2, common + " --accumulate-grad-batches 1 --no-distributed-optimizer --experiment-name dp2-repl");
  ASSERT_EQ(repl.exit_code, 0) << repl.output;
  EXPECT_NE(repl.output.find("optimizer AdamW (replicated)"), std::string::npos) << repl.output;

  const fs::path ck = "checkpoints/step-00000004";
  // ZeRO-1 vs replicated: same reduction order by construction, so bitwise equal weights, moments, losses.
  for (const char* f : {"model.safetensors", "trainer_state/optimizer.safetensors"})
    EXPECT_TRUE(esm2::read_file(root / "dp2-zero" / ck / f) == esm2::read_file(root / "dp2-repl" / ck / f))
        << f << " differs between ZeRO-1 and the replicated optimizer";
  EXPECT_EQ(train_losses(root / "dp2-zero"), train_losses(root / "dp2-repl"));

  // Gradient buckets (777 → 778 parameters: many buckets, the first padded) reduce-scattered as the
  // backward finishes them vs the same buckets reduced after the backward: the same sums in the same
  // order, so bitwise the same run. A bucket reduced before its gradients were final would change it.
  const std::string b777 = common + " --accumulate-grad-batches 1 --ddp-bucket-size 777";
  const auto buckets = train(2, b777 + " --experiment-name dp2-buckets");
  ASSERT_EQ(buckets.exit_code, 0) << buckets.output;
  std::smatch nb;
  ASSERT_TRUE(std::regex_search(buckets.output, nb, std::regex(R"(gradient reduce-scatter: (\d+) bucket\(s\) of ≤ 778 parameters, fp32 on the wire, overlapped with the backward)")))
      << buckets.output;
  EXPECT_GT(std::stoi(nb[1]), 5);
  const auto after = train(2, b777 + " --no-overlap-grad-reduce --experiment-name dp2-after");
  ASSERT_EQ(after.exit_code, 0) << after.output;
  EXPECT_NE(after.output.find("after the backward"), std::string::npos) << after.output;
  for (const char* f : {"model.safetensors", "trainer_state/optimizer.safetensors"})
    EXPECT_TRUE(esm2::read_file(root / "dp2-after" / ck / f) == esm2::read_file(root / "dp2-buckets" / ck / f))
        << f << " differs between gradient buckets reduced during and after the backward";
  EXPECT_EQ(train_losses(root / "dp2-after"), train_losses(root / "dp2-buckets"));
  // The same with accumulation 2 (only the last micro-batch's backward may start the reduction: an
  // earlier one would send partial sums) and with DP 2 × TP 2 (tensor-parallel all-reduces in the
  // backward between the bucket reduce-scatters).
  for (const auto& [label, ranks, extra] : {std::tuple<std::string, int, std::string>{"acc2", 2, " --accumulate-grad-batches 2"},
                                            {"tp2", 4, " --accumulate-grad-batches 1 --tensor-model-parallel-size 2"}}) {
    const std::string base = common + extra + " --ddp-bucket-size 777";
    const auto during = train(ranks, base + " --experiment-name " + label + "-during");
    ASSERT_EQ(during.exit_code, 0) << during.output;
    EXPECT_NE(during.output.find("overlapped with the backward"), std::string::npos) << during.output;
    const auto after_bw = train(ranks, base + " --no-overlap-grad-reduce --experiment-name " + label + "-after");
    ASSERT_EQ(after_bw.exit_code, 0) << after_bw.output;
    for (const char* f : {"model.safetensors", "trainer_state/optimizer.safetensors"})
      EXPECT_TRUE(esm2::read_file(root / (label + "-during") / ck / f) == esm2::read_file(root / (label + "-after") / ck / f))
          << label << ": " << f << " differs between gradient buckets reduced during and after the backward";
  }
  // One bucket vs many: the same gradient sums; only the gradient norm's Σg² is grouped differently.
  expect_losses_close(root / "dp2-zero", root / "dp2-buckets", 4, kLossRelTol);

  // bf16 on the wire: each rank's gradient rounded once (relative error ≤ 2^-9), so close to the fp32
  // run but not equal to it (the rounding really happened).
  const auto bf16 = train(2, common + " --accumulate-grad-batches 1 --ddp-bucket-size 777 --grad-reduce-dtype bf16 --experiment-name dp2-bf16");
  ASSERT_EQ(bf16.exit_code, 0) << bf16.output;
  EXPECT_NE(bf16.output.find("bf16 on the wire"), std::string::npos) << bf16.output;
  expect_losses_close(root / "dp2-zero", root / "dp2-bf16", 4, 1e-3);
  const double dw16 = max_abs_diff(root / "dp2-zero" / ck / "model.safetensors", root / "dp2-bf16" / ck / "model.safetensors");
  EXPECT_GT(dw16, 0.0);
  EXPECT_LE(dw16, 2e-3);
  std::printf("DP=2 bf16 vs fp32 gradient reduce-scatter: max |Δweight| after 4 steps = %.3g\n", dw16);
  const auto bad = train(2, common + " --no-distributed-optimizer --grad-reduce-dtype bf16 --experiment-name dp2-bad");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("bf16 gradient reduction needs the distributed optimizer"), std::string::npos) << bad.output;

  // DP=2 vs DP=1 × accumulation 2.
  expect_losses_close(root / "dp1", root / "dp2-zero", 4, kLossRelTol);
  const double dw = max_abs_diff(root / "dp1" / ck / "model.safetensors", root / "dp2-zero" / ck / "model.safetensors");
  EXPECT_LE(dw, kWeightAbsTol);
  std::printf("DP=2 vs DP=1×accumulate 2: max |Δweight| after 4 steps = %.3g\n", dw);
  // The runs trained (the loss moved), so the agreement above is not between untouched weights.
  const auto l1 = train_losses(root / "dp1");
  EXPECT_GT(std::abs(l1.at(1) - l1.at(4)), 1e-3);
}

// A checkpoint written at DP=2 (ZeRO-1, sharded moments gathered to rank 0) resumes at DP=1 and DP=4
// on the same global batch (4 micro-batches) and continues like the uninterrupted DP=2 run.
TEST_F(DataParallel, CheckpointReshardsAcrossDataParallelSizes) {
  const fs::path root = scratch_dir("dist-reshard");
  const std::string common = kTinyModel + data_args() + " --num-steps 6 --val-check-interval 3 --result-dir " + root.string();
  const auto full = train(2, common + " --accumulate-grad-batches 2 --experiment-name full");
  ASSERT_EQ(full.exit_code, 0) << full.output;
  const auto part = train(2, common + " --accumulate-grad-batches 2 --experiment-name part --early-stop-on-step 3");
  ASSERT_EQ(part.exit_code, 0) << part.output;
  const fs::path ck3 = root / "part/checkpoints/step-00000003";
  ASSERT_TRUE(fs::exists(ck3 / "trainer_state/optimizer.safetensors"));
  // The first half is the same computation as the uninterrupted run's: bitwise equal.
  EXPECT_TRUE(esm2::read_file(ck3 / "trainer_state/optimizer.safetensors") ==
              esm2::read_file(root / "full/checkpoints/step-00000003/trainer_state/optimizer.safetensors"));

  struct Resume {
    int np, accumulate;
    const char* name;
  };
  for (const Resume r : {Resume{0, 4, "dp1"}, Resume{4, 1, "dp4"}, Resume{2, 2, "dp2"}}) {
    const auto res = train(r.np, common + " --accumulate-grad-batches " + std::to_string(r.accumulate) +
                                     " --experiment-name " + r.name + " --restore-from-checkpoint-path " + ck3.string());
    ASSERT_EQ(res.exit_code, 0) << r.name << "\n" << res.output;
    EXPECT_NE(res.output.find("restored from"), std::string::npos) << res.output;
    const auto lf = train_losses(root / "full"), lr = train_losses(root / r.name);
    ASSERT_EQ(lr.size(), 3u) << r.name;
    for (const auto& [step, loss] : lr) EXPECT_NEAR(loss, lf.at(step), kLossRelTol * loss) << r.name << " step " << step;
    const fs::path f6 = root / "full/checkpoints/step-00000006", r6 = root / r.name / "checkpoints/step-00000006";
    const double dw = max_abs_diff(f6 / "model.safetensors", r6 / "model.safetensors");
    const double dm = max_abs_diff(f6 / "trainer_state/optimizer.safetensors", r6 / "trainer_state/optimizer.safetensors");
    EXPECT_LE(dw, kWeightAbsTol) << r.name;
    EXPECT_LE(dm, kWeightAbsTol) << r.name;
    std::printf("resume at %s: max |Δweight| %.3g, max |Δmoment| %.3g vs uninterrupted DP=2\n", r.name, dw, dm);
    if (r.np == 2) {  // same DP size: the resumed run is the uninterrupted one, bit for bit
      EXPECT_TRUE(esm2::read_file(f6 / "model.safetensors") == esm2::read_file(r6 / "model.safetensors"));
    }
  }
}

struct SignalledJob {
  int status = 0;
  std::string output;
  double seconds_to_end = 0;
  bool ended = false;
};

// Starts a 2-rank run, waits for its first metrics line, sends `sig` to one rank process (a child
// of mpirun) and waits up to 60 s for the job to end.
SignalledJob signal_one_rank(const std::string& name, const std::string& args, int sig) {
  SignalledJob job;
  const fs::path root = scratch_dir(name);
  const std::string cmd = mpirun(2) + " train" + args + " --result-dir " + root.string() + " --experiment-name run";
  const fs::path log = root / "mpirun.log";
  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    execl("/bin/sh", "sh", "-c", ("exec " + cmd + " >" + log.string() + " 2>&1").c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const fs::path metrics = root / "run/metrics.jsonl";
  for (int i = 0; i < 1500 && !(fs::exists(metrics) && fs::file_size(metrics) > 0); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  pid_t victim = 0;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string n = e.path().filename().string();
    if (n.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream st(e.path() / "stat");
    std::string line;
    if (!std::getline(st, line)) continue;
    const auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    char state;
    pid_t ppid;
    rest >> state >> ppid;
    if (ppid == pid) victim = static_cast<pid_t>(std::stol(n));
  }
  const auto t0 = std::chrono::steady_clock::now();
  if (victim > 0) kill(victim, sig);
  pid_t done = 0;
  while ((done = waitpid(pid, &job.status, WNOHANG)) == 0 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  job.ended = done == pid && victim > 0;
  if (done == 0) {
    if (victim > 0) kill(victim, SIGKILL);
    kill(-pid, SIGKILL);
    waitpid(pid, &job.status, 0);
  }
  job.seconds_to_end = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  job.output = esm2::read_file(log);
  return job;
}

bool exited_nonzero(int status) { return !(WIFEXITED(status) && WEXITSTATUS(status) == 0); }

// kill -9 of one rank mid-run: the job ends (non-zero) well within the collective timeout, and the
// output names the rank ("rank 1", not the banner's "rank(s)").
TEST_F(DataParallel, KilledRankEndsEveryRankWithADiagnostic) {
  const auto job = signal_one_rank("dist-kill", kTinyModel + data_args() +
                                                    " --num-steps 100000 --val-check-interval 100000 --collective-timeout 10",
                                   SIGKILL);
  ASSERT_TRUE(job.ended) << job.output;
  EXPECT_TRUE(exited_nonzero(job.status)) << job.output;
  EXPECT_TRUE(std::regex_search(job.output, std::regex("rank [0-9]"))) << job.output;
  std::printf("job ended %.1f s after kill -9 of one rank\n", job.seconds_to_end);
}

// A stalled rank (SIGSTOP: alive, never answers): the watchdog of the other rank names itself and
// the collective it waited in, and aborts the job.
TEST_F(DataParallel, StalledRankTimesOutNamingRankAndCollective) {
  const auto job = signal_one_rank("dist-stall", kTinyModel + data_args() +
                                                     " --num-steps 100000 --val-check-interval 100000 --collective-timeout 3",
                                   SIGSTOP);
  ASSERT_TRUE(job.ended) << job.output;
  EXPECT_TRUE(exited_nonzero(job.status)) << job.output;
  EXPECT_TRUE(std::regex_search(job.output, std::regex("rank [0-9]: timed out in [a-z]"))) << job.output;
  EXPECT_LT(job.seconds_to_end, 30.0);
  std::printf("job aborted %.1f s after SIGSTOP of one rank (timeout 3 s)\n", job.seconds_to_end);
}

// --on-nonfinite stop with several ranks: every rank stops, and the last good state reaches the disk
// before the job ends (rank 0 writes it while the others wait; the fault is injected on every rank
// before the ZeRO-1 reduce-scatter, so the reduced shard the optimizer reads is non-finite too).
TEST_F(DataParallel, NonFiniteStopSavesTheLastGoodStateOnEveryRankCount) {
  if (!have_mpirun()) GTEST_SKIP() << "mpirun not installed";
  const fs::path root = scratch_dir("dist-nonfinite");
  setenv("ESM2_FAULT_INJECT", "nonfinite_grad@2", 1);
  const auto r = train(2, kTinyModel + data_args() + " --num-steps 6 --val-check-interval 100 --on-nonfinite stop"
                                                     " --result-dir " + root.string() + " --experiment-name stop");
  unsetenv("ESM2_FAULT_INJECT");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("non-finite gradient at step 2"), std::string::npos) << r.output;
  const fs::path ck = root / "stop" / "checkpoints";
  ASSERT_TRUE(fs::exists(ck / "latest")) << r.output;
  EXPECT_EQ(esm2::read_file(ck / "latest"), "step-00000002\n");
  EXPECT_TRUE(fs::exists(ck / "step-00000002" / "model.safetensors"));
  EXPECT_TRUE(fs::exists(ck / "step-00000002" / "trainer_state" / "optimizer.safetensors"));
}
