// End-of-run report: report.html with the run's summary table and its curves (train/val loss,
// perplexity, lr, throughput) as inline SVG, so it is one self-contained file; plus PNGs of the same
// curves drawn by gnuplot (a Debian package, run as a child process) where gnuplot is installed.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
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
  // How the run was made (`esm2 train` fills it; see run_info_keys in report.cpp): started_utc,
  // git_revision, command, datasets, model, flags. write_report adds finished_utc and wall_time_s and
  // keeps it in report_data/run_info.json, where `esm2 report` finds it again.
  nlohmann::json run_info;
};

// Round axis ticks: multiples of 1, 2 or 5 × 10^k inside [lo, hi], about `target` of them.
std::vector<double> nice_ticks(double lo, double hi, int target);
// 1234567 → "1,234,567".
std::string with_thousands(int64_t v);

// Writes <dir>/report.html and <dir>/{loss,perplexity,lr,throughput}.png. Returns a warning line
// (empty on full success) instead of throwing when only the plotting failed.
std::string write_report(const std::filesystem::path& dir, const ReportData& data);

// The report of a run rebuilt from its metrics.jsonl (what `esm2 report` does for a run that was
// killed before the end, trained with --no-report, or trained where the report could not be drawn).
// Throws esm2::Error naming the file and line of a malformed record.
ReportData report_data_from_metrics(const std::filesystem::path& metrics_jsonl, const std::string& title);

}  // namespace esm2
