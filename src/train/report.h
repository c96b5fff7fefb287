// End-of-run report: PNG curves drawn by gnuplot (train/val loss, perplexity, lr, throughput) and a
// report.html that shows them with the run's summary table. gnuplot is a Debian package, run as a
// child process; without it the report says so and still writes the HTML with the tables.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace esm2 {

struct ReportPoint {
  int64_t step;
  double value;
};

struct ReportData {
  std::string title;
  std::vector<std::pair<std::string, std::string>> summary;  // rows of the summary table
  std::vector<ReportPoint> train_loss, val_loss, val_ppl, train_ppl, lr, tokens_per_s;
};

// Writes <dir>/report.html and <dir>/{loss,perplexity,lr,throughput}.png. Returns a warning line
// (empty on full success) instead of throwing when only the plotting failed.
std::string write_report(const std::filesystem::path& dir, const ReportData& data);

}  // namespace esm2
