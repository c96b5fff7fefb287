// `esm2 train --recompute full` trains bitwise like `--recompute none` on the CPU backend, and the run
// prints its memory plan.
#include <gtest/gtest.h>

#include "cli_runner.h"

using namespace esm2::testing;
namespace fs = std::filesystem;

TEST(RecomputeTrain, FullEqualsNoneBitwise) {
  const fs::path root = scratch_dir("recompute-train");
  const auto prep = prepare_sample_corpus(root / "corpus");
  ASSERT_EQ(prep.exit_code, 0) << prep.output;
  const std::string common = "train" + kTinyModelShape + " --train-data " + (root / "corpus").string() +
                             " --num-steps 5 --lr 1e-3 --warmup-steps 2 --log-every-n-steps 1 --threads 2 --no-report"
                             " --disable-checkpointing --no-tensorboard --backend cpu --result-dir " +
                             root.string();
  std::map<std::string, std::map<int64_t, double>> losses;
  for (const char* mode : {"none", "full"}) {
    const auto r = run_cli(common + " --recompute " + mode + " --experiment-name " + mode);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find(std::string("--recompute ") + mode), std::string::npos) << r.output;
    losses[mode] = train_losses(root / mode);
  }
  ASSERT_EQ(losses["none"].size(), 5u);
  EXPECT_EQ(losses["full"], losses["none"]);  // exact doubles from metrics.jsonl
  const auto bad = run_cli(common + " --recompute some --experiment-name bad");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("--recompute"), std::string::npos) << bad.output;
}
