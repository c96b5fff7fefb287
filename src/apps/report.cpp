// `esm2 report RUN_DIR`: (re)builds report.html (and the PNGs where gnuplot exists) from a run's
// metrics.jsonl, for runs that ended before writing it (killed, --no-report) or that trained on a
// machine without the plotting tools.
#include <fmt/format.h>

#include <filesystem>
#include <memory>

#include "apps/command.h"
#include "train/report.h"

namespace {

struct ReportArgs {
  std::string run_dir, output;
};

esm2::apps::RunFn setup_report(CLI::App& app) {
  auto a = std::make_shared<ReportArgs>();
  app.add_option("run_dir", a->run_dir, "Run directory of esm2 train (holds metrics.jsonl)")->required();
  app.add_option("--output", a->output, "Directory for report.html and the PNGs (default: the run directory)");
  return [a]() -> int {
    namespace fs = std::filesystem;
    const fs::path run(a->run_dir);
    const fs::path out = a->output.empty() ? run : fs::path(a->output);
    const auto data = esm2::report_data_from_metrics(run / "metrics.jsonl",
                                                     "esm2.cpp training report: " + run.filename().string());
    const std::string warn = esm2::write_report(out, data);
    if (!warn.empty()) fmt::print("warning: {}\n", warn);
    fmt::print("esm2 report: {} ({} training and {} validation records)\n", (out / "report.html").string(),
               data.train_loss.size(), data.val_loss.size());
    return 0;
  };
}

}  // namespace

ESM2_COMMAND(report, "report", "Rebuild a run's report.html from its metrics.jsonl", setup_report);
