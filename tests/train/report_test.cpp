// report.html must carry the curves itself (inline SVG): the GPU machines lack gnuplot, and a report
// without curves was what a GPU run produced before. Checks the charts exist, hold every point, and
// place values where a linear / log axis puts them.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <regex>
#include <sstream>

#include "../integration/cli_runner.h"
#include "core/atomic_dir.h"
#include "train/report.h"

namespace {

using namespace esm2;

std::vector<std::vector<std::pair<double, double>>> polylines(const std::string& html) {
  std::vector<std::vector<std::pair<double, double>>> out;
  const std::regex re("<polyline[^>]*points='([^']*)'");
  for (auto it = std::sregex_iterator(html.begin(), html.end(), re); it != std::sregex_iterator(); ++it) {
    std::istringstream ss((*it)[1].str());
    std::vector<std::pair<double, double>> pts;
    std::string xy;
    while (ss >> xy) {
      const size_t c = xy.find(',');
      pts.push_back({std::stod(xy.substr(0, c)), std::stod(xy.substr(c + 1))});
    }
    out.push_back(pts);
  }
  return out;
}

TEST(Report, HtmlCarriesEveryCurveAsSvg) {
  ReportData d;
  d.title = "t <run>";
  for (int s = 1; s <= 50; ++s) {
    d.train_loss.push_back({s, 3.0 - 0.02 * s});
    d.train_ppl.push_back({s, std::exp(3.0 - 0.02 * s)});
    d.lr.push_back({s, 1e-3});
    d.tokens_per_s.push_back({s, 1000.0 + s});
  }
  // Validation perplexity 10, 100, 1000 at steps 10, 20, 30: on the log axis 100 sits halfway.
  d.val_ppl = {{10, 10.0}, {20, 100.0}, {30, 1000.0}};
  d.val_loss = {{10, std::log(10.0)}, {20, std::log(100.0)}, {30, std::log(1000.0)}};
  const auto dir = esm2::testing::scratch_dir("report");
  write_report(dir, d);
  const std::string html = read_file(dir / "report.html");
  EXPECT_NE(html.find("t &lt;run&gt;"), std::string::npos);
  size_t charts = 0;
  for (size_t at = html.find("<svg"); at != std::string::npos; at = html.find("<svg", at + 1)) ++charts;
  EXPECT_EQ(charts, 4u);  // loss, perplexity, lr, throughput
  const auto lines = polylines(html);
  ASSERT_EQ(lines.size(), 6u);  // train+val loss, train+val ppl, lr, throughput
  EXPECT_EQ(lines[0].size(), 50u);
  for (size_t i = 1; i < lines[0].size(); ++i) {
    EXPECT_GT(lines[0][i].first, lines[0][i - 1].first) << "x grows with the step";
    EXPECT_GT(lines[0][i].second, lines[0][i - 1].second) << "falling loss is drawn downwards (SVG y grows down)";
  }
  const auto& vp = lines[3];  // validation perplexity, log axis
  ASSERT_EQ(vp.size(), 3u);
  EXPECT_NEAR(vp[1].second, 0.5 * (vp[0].second + vp[2].second), 0.2);
  EXPECT_NEAR(vp[1].first, 0.5 * (vp[0].first + vp[2].first), 0.2);
}

TEST(Report, TicksAreRoundNumbers) {
  EXPECT_EQ(nice_ticks(0, 1000, 8), (std::vector<double>{0, 200, 400, 600, 800, 1000}));
  EXPECT_EQ(nice_ticks(3, 47, 8), (std::vector<double>{5, 10, 15, 20, 25, 30, 35, 40, 45}));
  const auto lr = nice_ticks(0, 0.0021, 5);
  ASSERT_EQ(lr.size(), 5u);
  EXPECT_DOUBLE_EQ(lr[1], 0.0005);
  EXPECT_DOUBLE_EQ(lr[4], 0.002);
  EXPECT_TRUE(nice_ticks(1, 1, 5).empty());
  EXPECT_EQ(with_thousands(0), "0");
  EXPECT_EQ(with_thousands(999), "999");
  EXPECT_EQ(with_thousands(1000), "1,000");
  EXPECT_EQ(with_thousands(-1234567), "-1,234,567");
}

// The axes of a real-looking run: round tick labels with thousands separators, at least 5 x ticks,
// and the run's metadata table; the metadata is kept for `esm2 report` to rebuild the same table.
TEST(Report, AxesAndRunMetadata) {
  const auto dir = esm2::testing::scratch_dir("report-axes");
  ReportData d;
  d.title = "axes";
  for (int s = 0; s <= 12000; s += 100) {
    d.train_loss.push_back({s, 3.0 - s / 10000.0});
    d.train_ppl.push_back({s, std::exp(3.0 - s / 10000.0)});
    d.lr.push_back({s, 4e-4 * s / 12000.0});
    d.tokens_per_s.push_back({s, 12345.0 + s});
  }
  d.run_info = {{"started_utc", "2026-12-07T01:00:00Z"},
                {"git_revision", "abc123"},
                {"command", "esm2 train --num-steps 12000"},
                {"model", "2 layers, hidden 32"},
                {"flags", "num-steps=12000\nlr=0.0004"},
                {"datasets", {{{"role", "training"}, {"path", "/data/c"}, {"sequences", 1234567}, {"bytes", 10}}}}};
  ASSERT_EQ(write_report(dir, d).find("gnuplot failed"), std::string::npos);
  const std::string html = read_file(dir / "report.html");
  for (const char* want : {">2,000</text>", ">12,000</text>", ">14,000</text>", ">0.0001</text>", "<h2>Run</h2>",
                           "abc123", "1,234,567 sequences", "lr=0.0004", "started (UTC)", "wall time"})
    EXPECT_NE(html.find(want), std::string::npos) << want;
  EXPECT_EQ(html.find("12345.6"), std::string::npos) << "tick labels are round";
  const auto saved = nlohmann::json::parse(read_file(dir / "report_data" / "run_info.json"));
  EXPECT_EQ(saved.at("git_revision"), "abc123");
  EXPECT_TRUE(saved.contains("finished_utc"));
  EXPECT_TRUE(saved.contains("wall_time_s"));

  // esm2 report's path: metrics.jsonl beside report_data/ brings the table back.
  std::ofstream(dir / "metrics.jsonl") << "{\"step\": 1, \"train_loss\": 3.0}\n";
  const ReportData again = report_data_from_metrics(dir / "metrics.jsonl", "again");
  EXPECT_EQ(again.run_info.at("finished_utc"), saved.at("finished_utc"));
}

}  // namespace
