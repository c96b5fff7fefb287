// report.html must carry the curves itself (inline SVG): the GPU machines lack gnuplot, and a report
// without curves was what a GPU run produced before. Checks the charts exist, hold every point, and
// place values where a linear / log axis puts them.
#include <gtest/gtest.h>

#include <cmath>
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

}  // namespace
