// Tensor parallelism over MPI, end to end: `mpirun -np N esm2 train --tensor-model-parallel-size 2`
// on the bundled real data with the tiny model (2 heads, FFN 64: one head and 32 FFN units per rank).
// Oracles are runs without tensor parallelism: TP=2 must reproduce the single process, TP=2 × DP=2
// must reproduce DP=2, and a checkpoint saved at TP=2 (full layout) must continue at TP=1 like the
// uninterrupted TP=2 run.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>

#include "../../integration/cli_runner.h"
#include "mpi_runner.h"
#include "core/atomic_dir.h"
#include "io/safetensors.h"

using namespace esm2::testing;
namespace fs = std::filesystem;

namespace {

// One thread per rank, so no sum depends on a thread count; the cpu backend (MPI), also on GPU machines.
const std::string kTinyModel =
    kTinyModelShape + " --lr 1e-3 --warmup-steps 2"
    " --limit-val-batches 2 --log-every-n-steps 1 --threads 1 --backend cpu --no-report --no-tensorboard";

// fp32 round-off between split and unsplit runs: the row-parallel products (attention output,
// FFN output) and the input gradients of q/k/v and fc are summed over K in two pieces plus an
// all-reduce instead of one GEMM, and the gradient norm's squares are grouped per rank; Adam then
// carries these differences for a few steps. Measured differences are ~100× below these bounds.
constexpr double kLossRelTol = 1e-5;
constexpr double kWeightAbsTol = 2e-5;





void expect_losses_close(const fs::path& a, const fs::path& b, size_t steps) {
  const auto la = train_losses(a), lb = train_losses(b);
  ASSERT_EQ(la.size(), steps) << a;
  ASSERT_EQ(lb.size(), steps) << b;
  for (const auto& [step, loss] : la) {
    ASSERT_TRUE(lb.count(step)) << b << " step " << step;
    EXPECT_NEAR(loss, lb.at(step), kLossRelTol * std::abs(loss)) << "step " << step << ": " << a << " vs " << b;
  }
}

// Weights and Adam moments of two runs' checkpoints at `ck` agree; returns max |Δweight|.
double expect_checkpoints_close(const fs::path& a, const fs::path& b) {
  const double dw = max_abs_diff(a / "model.safetensors", b / "model.safetensors");
  const double dm = max_abs_diff(a / "trainer_state/optimizer.safetensors", b / "trainer_state/optimizer.safetensors");
  EXPECT_LE(dw, kWeightAbsTol) << a << " vs " << b;
  EXPECT_LE(dm, kWeightAbsTol) << a << " vs " << b;
  return dw;
}

class TensorParallel : public SampleCorpusTest {
 protected:
  static void SetUpTestSuite() {
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    setenv("OMPI_MCA_btl", "self,vader,tcp", 0);
    SampleCorpusTest::SetUpTestSuite();
  }
  void SetUp() override {
    if (!have_mpirun()) GTEST_SKIP() << "mpirun not found: install OpenMPI (mpirun, libopenmpi-dev) to run the dist tests";
  }
};

const fs::path kStep4 = "checkpoints/step-00000004";

}  // namespace

// TP=2 on 2 ranks vs one process: losses of every step, final weights and moments (the checkpoint
// is written in the full layout from both ranks' pieces).
TEST_F(TensorParallel, TwoRanksEqualOneProcess) {
  const fs::path root = scratch_dir("tp-2v1");
  const std::string common = kTinyModel + data_args() + " --num-steps 4 --val-check-interval 4 --result-dir " + root.string();
  const auto one = train(0, common + " --experiment-name tp1");
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const auto two = train(2, common + " --tensor-model-parallel-size 2 --experiment-name tp2");
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_NE(two.output.find("parallel layout: DP 1 × TP 2 × PP 1"), std::string::npos) << two.output;
  expect_losses_close(root / "tp1", root / "tp2", 4);
  const double dw = expect_checkpoints_close(root / "tp1" / kStep4, root / "tp2" / kStep4);
  std::printf("TP=2 vs TP=1: max |Δweight| after 4 steps = %.3g\n", dw);
  // The runs trained (the loss moved), so the agreement is not between untouched weights.
  const auto l1 = train_losses(root / "tp1");
  EXPECT_GT(std::abs(l1.at(1) - l1.at(4)), 1e-3);
}

// 4 ranks as TP=2 × DP=2 (ZeRO-1 over the DP pairs) vs DP=2 alone on 2 ranks: the same global batch.
TEST_F(TensorParallel, TpTimesDpEqualsDpAlone) {
  const fs::path root = scratch_dir("tp-2x2");
  const std::string common = kTinyModel + data_args() + " --num-steps 4 --val-check-interval 4 --result-dir " + root.string();
  const auto dp2 = train(2, common + " --experiment-name dp2");
  ASSERT_EQ(dp2.exit_code, 0) << dp2.output;
  const auto both = train(4, common + " --tensor-model-parallel-size 2 --experiment-name tp2dp2");
  ASSERT_EQ(both.exit_code, 0) << both.output;
  EXPECT_NE(both.output.find("DP 2 × TP 2 × PP 1 (mpi communicator), optimizer ZeRO-1"), std::string::npos)
      << both.output;
  EXPECT_NE(both.output.find("batch: 1024 tokens (packed) × 2 DP rank(s) × 1 accumulation"), std::string::npos)
      << both.output;
  expect_losses_close(root / "dp2", root / "tp2dp2", 4);
  const double dw = expect_checkpoints_close(root / "dp2" / kStep4, root / "tp2dp2" / kStep4);
  std::printf("TP=2×DP=2 vs DP=2: max |Δweight| after 4 steps = %.3g\n", dw);
}

// A checkpoint saved at TP=2 (step 3 of a 6-step run) resumes in one process and continues like the
// uninterrupted TP=2 run, and at TP=2 bitwise like it; a bad split is refused with a one-line error.
TEST_F(TensorParallel, CheckpointSavedAtTp2ResumesAtTp1) {
  const fs::path root = scratch_dir("tp-resume");
  const std::string common = kTinyModel + data_args() + " --num-steps 6 --val-check-interval 3 --result-dir " + root.string();
  const auto full = train(2, common + " --tensor-model-parallel-size 2 --experiment-name full");
  ASSERT_EQ(full.exit_code, 0) << full.output;
  const fs::path ck3 = root / "full/checkpoints/step-00000003";
  ASSERT_TRUE(fs::exists(ck3 / "trainer_state/optimizer.safetensors"));
  const auto res = train(0, common + " --experiment-name tp1 --restore-from-checkpoint-path " + ck3.string());
  ASSERT_EQ(res.exit_code, 0) << res.output;
  EXPECT_NE(res.output.find("restored from"), std::string::npos) << res.output;
  const auto lf = train_losses(root / "full"), lr = train_losses(root / "tp1");
  ASSERT_EQ(lr.size(), 3u);
  for (const auto& [step, loss] : lr) EXPECT_NEAR(loss, lf.at(step), kLossRelTol * loss) << "step " << step;
  const double dw = expect_checkpoints_close(root / "full/checkpoints/step-00000006", root / "tp1/checkpoints/step-00000006");
  std::printf("TP=2 checkpoint resumed at TP=1: max |Δweight| at step 6 = %.3g\n", dw);
  // Resumed at TP=2 (each rank slices its part out of the full checkpoint): the uninterrupted run, bit for bit.
  const auto same = train(2, common + " --tensor-model-parallel-size 2 --experiment-name tp2 --restore-from-checkpoint-path " +
                                 ck3.string());
  ASSERT_EQ(same.exit_code, 0) << same.output;
  for (const char* f : {"model.safetensors", "trainer_state/optimizer.safetensors"})
    EXPECT_TRUE(esm2::read_file(root / "full/checkpoints/step-00000006" / f) ==
                esm2::read_file(root / "tp2/checkpoints/step-00000006" / f))
        << f << " differs after resuming at TP=2";

  const auto bad = train(3, common + " --tensor-model-parallel-size 3 --experiment-name bad");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("2 attention heads do not divide by --tensor-model-parallel-size 3"), std::string::npos)
      << bad.output;
}
