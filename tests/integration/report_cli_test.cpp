// `esm2 report RUN_DIR` rebuilds a run's report.html from metrics.jsonl: every logged step and
// validation appears, and a broken metrics file is one clear error naming the line.
#include <gtest/gtest.h>

#include <fstream>

#include "cli_runner.h"
#include "core/atomic_dir.h"

using namespace esm2::testing;
namespace fs = std::filesystem;

TEST(ReportCli, RebuildsTheReportOfARunTrainedWithoutOne) {
  const fs::path root = scratch_dir("report-cli");
  ASSERT_EQ(prepare_sample_corpus(root / "corpus").exit_code, 0);
  const auto train = run_cli("train" + kTinyModelShape + " --train-data " + (root / "corpus").string() +
                             " --valid-data " + (root / "corpus").string() +
                             " --num-steps 6 --val-check-interval 3 --limit-val-batches 1 --log-every-n-steps 1"
                             " --threads 2 --no-report --disable-checkpointing --no-tensorboard --backend cpu"
                             " --result-dir " + root.string() + " --experiment-name run");
  ASSERT_EQ(train.exit_code, 0) << train.output;
  ASSERT_FALSE(fs::exists(root / "run" / "report.html"));
  const auto r = run_cli("report " + (root / "run").string() + " --output " + (root / "out").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("6 training and 2 validation records"), std::string::npos) << r.output;
  const std::string html = esm2::read_file(root / "out" / "report.html");
  size_t charts = 0;
  for (size_t at = html.find("<svg"); at != std::string::npos; at = html.find("<svg", at + 1)) ++charts;
  EXPECT_EQ(charts, 4u);
  EXPECT_NE(html.find("<tr><td>6</td>"), std::string::npos) << "validation table row of step 6";

  // A resumed run logs steps again (killed after its last checkpoint): the later record wins.
  std::ofstream(root / "run" / "metrics.jsonl", std::ios::app) << "{\"step\": 5, \"train_loss\": 9.5}\n";
  const auto again = run_cli("report " + (root / "run").string() + " --output " + (root / "out2").string());
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("6 training and 2 validation records"), std::string::npos) << again.output;

  std::ofstream(root / "run" / "metrics.jsonl", std::ios::app) << "{\"step\": 7, \"train_loss\": }\n";
  const auto bad = run_cli("report " + (root / "run").string());
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("metrics.jsonl:10: malformed metrics record"), std::string::npos) << bad.output;
  const auto missing = run_cli("report " + (root / "nope").string());
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find("nope/metrics.jsonl"), std::string::npos) << missing.output;
}
