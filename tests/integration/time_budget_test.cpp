// `esm2 train --time-budget` and `--recipe` on the CPU backend: the run ends within its budget, the
// planned schedule is recorded and kept on resume, and a budget run trains exactly as a --num-steps run
// of the planned length.
#include <gtest/gtest.h>

#include <chrono>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "core/atomic_dir.h"

using namespace esm2::testing;
namespace fs = std::filesystem;

namespace {

const std::string kTiny = kTinyModelShape +
                          " --accumulate-grad-batches 2 --lr 1e-3 --limit-val-batches 2 --log-every-n-steps 1"
                          " --threads 2 --no-report --seed 3";

nlohmann::json latest_state(const fs::path& run) {
  const std::string name = esm2::read_file(run / "checkpoints/latest");
  return nlohmann::json::parse(
      esm2::read_file(run / "checkpoints" / name.substr(0, name.find('\n')) / "trainer_state/state.json"));
}

class TimeBudget : public SampleCorpusTest {
 protected:
};

}  // namespace

TEST_F(TimeBudget, EndsWithinTheBudgetAndRecordsThePlan) {
  const fs::path root = scratch_dir("budget-run");
  constexpr double kBudget = 4.0;
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = run_cli("train" + kTiny + data_args() + " --time-budget 4 --val-check-interval 40 --result-dir " +
                         root.string() + " --experiment-name b");
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The whole process, start-up to exit; the budget is counted from after argument parsing, so allow
  // the process's own start and exit.
  EXPECT_LE(wall, kBudget + 0.3) << r.output;
  const auto st = latest_state(root / "b");
  ASSERT_TRUE(st.contains("time_budget")) << st.dump(1);
  const auto& plan = st["time_budget"];
  EXPECT_EQ(plan["budget_s"].get<double>(), kBudget);
  const int64_t n = plan["num_steps"].get<int64_t>(), warmup = plan["warmup_steps"].get<int64_t>();
  // The plan fills the budget: the planned steps take at least half of it.
  EXPECT_GE(static_cast<double>(n) * plan["step_s"].get<double>(), 0.5 * kBudget) << plan.dump();
  EXPECT_EQ(warmup, n / 10) << "the esm2-paper recipe (demo preset) warms up over a tenth of the schedule";
  EXPECT_NE(r.output.find(fmt::format("→ {} steps (warmup {})", n, warmup)), std::string::npos) << r.output;
  if (r.output.find("slower than planned") == std::string::npos) {
    // The schedule ran to its end: the last logged lr is min_lr = lr/10.
    EXPECT_EQ(st["step"].get<int64_t>(), n);
    double last_lr = -1;
    for (const auto& h : st["history"])
      if (h.contains("lr")) last_lr = h["lr"].get<double>();
    EXPECT_DOUBLE_EQ(last_lr, 1e-4);
  } else {
    // A busy machine made the steps slower than timed: the guard stopped early, with a checkpoint,
    // still within the budget (checked above).
    EXPECT_LT(st["step"].get<int64_t>(), n);
  }
}

// A budget run stopped early and resumed keeps its recorded schedule (whatever the resuming command
// says), and ends bitwise equal to a plain run given the planned length with --num-steps/--warmup-steps:
// the timing steps change nothing.
TEST_F(TimeBudget, ResumeKeepsThePlanAndEqualsAFixedLengthRun) {
  const fs::path root = scratch_dir("budget-resume");
  const std::string common = kTiny + data_args() + " --val-check-interval 1000 --result-dir " + root.string();
  const auto part1 = run_cli("train" + common + " --experiment-name split --time-budget 3 --early-stop-on-step 3");
  ASSERT_EQ(part1.exit_code, 0) << part1.output;
  const auto plan = latest_state(root / "split")["time_budget"];
  const int64_t n = plan["num_steps"].get<int64_t>(), warmup = plan["warmup_steps"].get<int64_t>();
  ASSERT_GT(n, 6) << plan.dump();
  // Resumed without the budget and with a contradicting --num-steps: the recorded plan wins.
  const auto part2 = run_cli("train" + common + " --experiment-name split --resume-if-exists --num-steps 5");
  ASSERT_EQ(part2.exit_code, 0) << part2.output;
  EXPECT_NE(part2.output.find(fmt::format("warmup {}, {} steps", warmup, n)), std::string::npos) << part2.output;
  const auto st = latest_state(root / "split");
  EXPECT_EQ(st["step"].get<int64_t>(), n);
  EXPECT_EQ(st["time_budget"], plan);

  const auto fixed = run_cli("train" + common + fmt::format(" --experiment-name fixed --num-steps {} --warmup-steps {}", n, warmup));
  ASSERT_EQ(fixed.exit_code, 0) << fixed.output;
  const std::string ckpt = fmt::format("checkpoints/step-{:08}", n);
  for (const char* f : {"model.safetensors", "trainer_state/optimizer.safetensors"})
    EXPECT_TRUE(esm2::read_file(root / "split" / ckpt / f) == esm2::read_file(root / "fixed" / ckpt / f))
        << f << " differs between the budget run and the fixed-length run";
  const auto la = train_losses(root / "split"), lb = train_losses(root / "fixed");
  ASSERT_EQ(la.size(), static_cast<size_t>(n));
  for (const auto& [step, loss] : lb) EXPECT_EQ(loss, la.at(step)) << "step " << step;
}

// warmup_stable_decay: a fifth of the way in, the run re-plans its length from its own step rate (the
// steps so far stay before the decay), and still trains exactly as the --num-steps run of the final
// length with the first plan's warm-up; the checkpoint records the final plan.
TEST_F(TimeBudget, WsdReplanEqualsAFixedLengthRun) {
  const fs::path root = scratch_dir("budget-wsd");
  const std::string common = kTiny + data_args() + " --val-check-interval 1000 --lr-schedule warmup_stable_decay "
                             "--result-dir " + root.string();
  const auto budget = run_cli("train" + common + " --experiment-name wsd --time-budget 3");
  ASSERT_EQ(budget.exit_code, 0) << budget.output;
  const auto st = latest_state(root / "wsd");
  const auto plan = st["time_budget"];
  const int64_t n = plan["num_steps"].get<int64_t>(), warmup = plan["warmup_steps"].get<int64_t>();
  ASSERT_GT(n, 10) << plan.dump();
  if (budget.output.find("slower than planned") != std::string::npos) GTEST_SKIP() << "a busy machine cut the run short";
  EXPECT_EQ(st["step"].get<int64_t>(), n);
  const size_t at = budget.output.find(" steps instead of ");
  if (at != std::string::npos) {
    // "→ N steps instead of M": N is the final plan, M the first one, whose warm-up stays.
    const size_t arrow = budget.output.rfind("→ ", at);
    EXPECT_EQ(std::stoll(budget.output.substr(arrow + std::string("→ ").size())), n) << budget.output;
    EXPECT_NE(budget.output.find(fmt::format("steps (warmup {})", warmup)), std::string::npos) << budget.output;
  }
  const auto fixed = run_cli("train" + common +
                             fmt::format(" --experiment-name fixed --num-steps {} --warmup-steps {}", n, warmup));
  ASSERT_EQ(fixed.exit_code, 0) << fixed.output;
  const std::string ckpt = fmt::format("checkpoints/step-{:08}", n);
  for (const char* f : {"model.safetensors", "trainer_state/optimizer.safetensors"})
    EXPECT_TRUE(esm2::read_file(root / "wsd" / ckpt / f) == esm2::read_file(root / "fixed" / ckpt / f))
        << f << " differs between the re-planned budget run and the fixed-length run";
  const auto la = train_losses(root / "wsd"), lb = train_losses(root / "fixed");
  ASSERT_EQ(la.size(), static_cast<size_t>(n));
  for (const auto& [step, loss] : lb) EXPECT_EQ(loss, la.at(step)) << "step " << step;
}

TEST_F(TimeBudget, NumStepsCapsThePlan) {
  const fs::path root = scratch_dir("budget-cap");
  const auto r = run_cli("train" + kTiny + data_args() + " --time-budget 30 --num-steps 12 --val-check-interval 100 "
                         "--result-dir " + root.string() + " --experiment-name cap");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("→ 12 steps (warmup 1, capped by --num-steps)"), std::string::npos) << r.output;
  EXPECT_EQ(latest_state(root / "cap")["step"].get<int64_t>(), 12);
}

TEST_F(TimeBudget, ConflictsAndShortBudgetsAreOneClearError) {
  const fs::path root = scratch_dir("budget-bad");
  struct Case {
    std::string args, expect;
  };
  const std::vector<Case> cases = {
      {" --time-budget 10 --max-time 5", "at most one of --time-budget"},
      {" --time-budget 10 --scheduler-num-steps 50", "--scheduler-num-steps conflicts with --time-budget"},
      {" --time-budget 0.05", "holds no training step"},
      {" --time-budget 2 --warmup-steps 100000", "not more than --warmup-steps 100000"},
      {" --time-budget 10 --lr-decay-fraction 0", "--lr-decay-fraction must be in (0, 1]"},
  };
  for (const auto& c : cases) {
    const auto r = run_cli("train" + kTiny + data_args() + " --result-dir " + root.string() + " --experiment-name bad --force" + c.args);
    EXPECT_EQ(r.exit_code, 1) << c.args;
    EXPECT_NE(r.output.find("esm2: error: "), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << c.args << "\n" << r.output;
  }
  // A checkpoint of a run without a budget cannot be continued under one.
  const auto plain = run_cli("train" + kTiny + data_args() + " --num-steps 2 --val-check-interval 2 --result-dir " +
                             root.string() + " --experiment-name plain");
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  const auto r = run_cli("train" + kTiny + data_args() + " --time-budget 10 --resume-if-exists --result-dir " +
                         root.string() + " --experiment-name plain");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("starts at step 2 from a checkpoint of a run without --time-budget"), std::string::npos)
      << r.output;
}

// The recipe fills what no flag gives; explicit flags win. The preset name picks the row (the shape
// flags shrink the model to seconds on a CPU).
TEST_F(TimeBudget, RecipeFillsUnsetFlagsOnly) {
  const fs::path root = scratch_dir("recipe");
  const std::string tiny8m = " --preset 8M --num-layers 1 --hidden-size 32 --num-attention-heads 2 --ffn-hidden-size 64"
                             " --max-seq-length 96 --threads 2 --no-report --num-steps 1 --disable-checkpointing"
                             " --train-data " + corpus_.string() + " --result-dir " + root.string();
  // 8M's short-run row was measured by the sweep, so it is that preset's default: no --recipe.
  for (const std::string recipe : {"", " --recipe short-run"}) {
    auto r = run_cli("train" + tiny8m + " --experiment-name short-run" + (recipe.empty() ? "-default" : "") + recipe);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("batch: 65536 tokens (packed) × 1 DP rank(s) × 2 accumulation"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("lr 0.001 (min 0.0001, warmup 0, 1 steps, warmup_stable_decay); recipe short-run (8M)"),
              std::string::npos) << r.output;
    EXPECT_NE(r.output.find("AdamW: beta1 0.9, beta2 0.98, eps 1e-08, weight decay 0.01, clip 1; lr decay over the last 0.2"),
              std::string::npos) << r.output;
  }

  // The reference's recipe is one flag away; a preset whose row was not measured (150M) defaults to it.
  auto r = run_cli("train" + tiny8m + " --experiment-name paper --micro-batch-tokens 2048 --recipe esm2-paper");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("batch: 2048 tokens (packed) × 1 DP rank(s) × 1 accumulation"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("lr 0.0004 (min 4e-05, warmup 0, 1 steps, warmup_anneal_decay_hold); recipe esm2-paper"),
            std::string::npos) << r.output;
  std::string tiny150m = tiny8m;
  tiny150m.replace(tiny150m.find("8M"), 2, "150M");
  r = run_cli("train" + tiny150m + " --experiment-name paper-150m --micro-batch-tokens 2048");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("lr 0.0004 (min 4e-05, warmup 0, 1 steps, warmup_anneal_decay_hold); recipe esm2-paper"),
            std::string::npos) << r.output;

  r = run_cli("train" + tiny8m + " --experiment-name flags --recipe short-run --accumulate-grad-batches 3 --lr 1e-3 --lr-schedule cosine "
              "--adam-beta2 0.95 --adam-eps 1e-6 --weight-decay 0.1 --clip-grad 0.5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("batch: 16384 tokens (packed) × 1 DP rank(s) × 3 accumulation"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("lr 0.001 (min 0.0001, warmup 0, 1 steps, cosine); recipe short-run (8M)"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("AdamW: beta1 0.9, beta2 0.95, eps 1e-06, weight decay 0.1, clip 0.5\n"), std::string::npos)
      << r.output;
}
