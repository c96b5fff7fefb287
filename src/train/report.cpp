#include "train/report.h"

#include <sys/wait.h>

#include <cstdio>
#include <fstream>

#include "core/atomic_dir.h"
#include "core/error.h"

namespace fs = std::filesystem;

namespace esm2 {
namespace {

std::string write_series(const fs::path& path, const std::vector<ReportPoint>& pts) {
  std::string s;
  for (const auto& p : pts) s += fmt::format("{} {:.9g}\n", p.step, p.value);
  write_file(path, s);
  return path.string();
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace

std::string write_report(const fs::path& dir, const ReportData& d) {
  fs::create_directories(dir);
  const fs::path data_dir = dir / "report_data";
  fs::create_directories(data_dir);
  struct Plot {
    std::string png, ylabel;
    std::vector<std::pair<std::string, const std::vector<ReportPoint>*>> series;
    bool logy;
  };
  std::vector<Plot> plots = {
      {"loss.png", "cross-entropy (nats)", {{"train", &d.train_loss}, {"validation", &d.val_loss}}, false},
      {"perplexity.png", "perplexity", {{"train", &d.train_ppl}, {"validation", &d.val_ppl}}, true},
      {"lr.png", "learning rate", {{"lr", &d.lr}}, false},
      {"throughput.png", "real tokens / s", {{"throughput", &d.tokens_per_s}}, false},
  };
  std::string script = "set terminal pngcairo size 900,500 font 'sans,10'\nset grid\nset key top right\n"
                       "set xlabel 'step'\n";
  int series_id = 0;
  for (const auto& p : plots) {
    std::string cmd;
    for (const auto& [label, pts] : p.series) {
      if (pts->empty()) continue;
      const std::string file = write_series(data_dir / fmt::format("s{}.dat", series_id++), *pts);
      cmd += fmt::format("{}'{}' using 1:2 with {} title '{}'", cmd.empty() ? "plot " : ", ", file,
                         pts->size() > 1 ? "lines lw 2" : "points pt 7", label);
    }
    if (cmd.empty()) continue;
    script += fmt::format("set output '{}'\nset ylabel '{}'\n{}\n{}\n", (dir / p.png).string(), p.ylabel,
                          p.logy ? "set logscale y" : "unset logscale y", cmd);
  }
  const fs::path script_path = data_dir / "plots.gp";
  write_file(script_path, script);
  std::string warning;
  const std::string cmd = fmt::format("gnuplot '{}' 2>&1", script_path.string());
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) {
    warning = "report: cannot run gnuplot; report.html has tables only";
  } else {
    char buf[512];
    std::string out;
    while (fgets(buf, sizeof buf, pipe)) out += buf;
    int status = pclose(pipe);
    if (status != 0)
      warning = fmt::format("report: gnuplot failed (install gnuplot-nox for the PNG curves): {}",
                            out.substr(0, 200));
  }

  std::string html = fmt::format(
      "<!doctype html><html><head><meta charset='utf-8'><title>{0}</title><style>"
      "body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}"
      "td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body><h1>{0}</h1><table>",
      html_escape(d.title));
  for (const auto& [k, v] : d.summary) html += fmt::format("<tr><th>{}</th><td>{}</td></tr>", html_escape(k), html_escape(v));
  html += "</table>";
  for (const auto& p : plots)
    if (fs::exists(dir / p.png)) html += fmt::format("<h2>{}</h2><img src='{}'>", html_escape(p.ylabel), p.png);
  if (!d.val_loss.empty()) {
    html += "<h2>Validation</h2><table><tr><th>step</th><th>loss</th><th>perplexity</th></tr>";
    for (size_t i = 0; i < d.val_loss.size(); ++i)
      html += fmt::format("<tr><td>{}</td><td>{:.4f}</td><td>{:.3f}</td></tr>", d.val_loss[i].step, d.val_loss[i].value,
                          i < d.val_ppl.size() ? d.val_ppl[i].value : 0.0);
    html += "</table>";
  }
  if (!warning.empty()) html += fmt::format("<p><b>{}</b></p>", html_escape(warning));
  html += "</body></html>\n";
  write_file(dir / "report.html", html);
  return warning;
}

}  // namespace esm2
