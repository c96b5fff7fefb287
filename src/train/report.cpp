#include "train/report.h"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <string_view>
#include <nlohmann/json.hpp>

#include "core/atomic_dir.h"
#include "core/error.h"
#include "train/metrics_logger.h"

namespace fs = std::filesystem;

namespace esm2 {

std::vector<double> nice_ticks(double lo, double hi, int target) {
  std::vector<double> out;
  if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi) || target < 1) return out;
  const double mag = std::pow(10.0, std::floor(std::log10((hi - lo) / target)));
  // Of the round steps near the range / target, the one whose tick count is closest to the target.
  double step = mag;
  double best = 1e300;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    const double n = std::floor(hi / (m * mag) + 1e-9) - std::ceil(lo / (m * mag) - 1e-9) + 1;
    if (std::abs(n - target) < best) best = std::abs(n - target), step = m * mag;
  }
  // Multiples of step, computed as integers times step so that 0.30000000000000004 never appears.
  for (double k = std::ceil(lo / step - 1e-9); k * step <= hi + 1e-9 * step; k += 1) out.push_back(k * step);
  return out;
}

std::string with_thousands(int64_t v) {
  std::string digits = std::to_string(v < 0 ? -v : v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return (v < 0 ? "-" : "") + out;
}

namespace {

// A tick label: integers with thousands separators, others with the digits the tick step needs.
std::string tick_label(double v, double step) {
  if (std::abs(v) < 1e-12 * std::max(1.0, step)) return "0";
  if (step >= 1 && std::abs(v) < 9e15 && v == std::floor(v)) return with_thousands(static_cast<int64_t>(v));
  if (std::abs(v) < 1e-3 || std::abs(v) >= 1e7) return fmt::format("{:.3g}", v);
  const int decimals = std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
  return fmt::format("{:.{}f}", v, decimals);
}

std::string utc_now() {
  const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::time_t parse_utc(const std::string& s) {
  std::tm tm{};
  if (!strptime(s.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm)) return -1;
  return timegm(&tm);
}

std::string duration_text(double s) {
  const auto t = static_cast<int64_t>(std::llround(s));
  return t >= 3600 ? fmt::format("{}h {:02}m {:02}s", t / 3600, t / 60 % 60, t % 60)
                   : fmt::format("{}m {:02}s", t / 60, t % 60);
}

std::string write_series(const fs::path& path, const std::vector<ReportPoint>& pts) {
  std::string s;
  for (const auto& p : pts) s += fmt::format("{} {:.9g}\n", p.step, p.value);
  write_file_atomically(path, s);
  return path.string();
}

bool png_complete(const fs::path& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in || in.tellg() < 16) return false;
  char tail[8];
  in.seekg(-8, std::ios::end);
  in.read(tail, 8);
  return in.good() && std::string_view(tail, 8) == std::string_view("IEND\xAE\x42\x60\x82", 8);
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

// One chart as inline SVG: the report then shows its curves in any browser without gnuplot (the GPU
// machines we train on lack it) and without side files. Linear x (step), linear or log10 y.
std::string svg_chart(const std::string& ylabel, const std::vector<std::pair<std::string, const std::vector<ReportPoint>*>>& series,
                      bool logy) {
  const double W = 900, H = 420, L = 80, R = 20, T = 20, B = 50;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  auto fy = [logy](double v) { return logy ? std::log10(std::max(v, 1e-300)) : v; };
  for (const auto& [label, pts] : series)
    for (const auto& p : *pts) {
      if (!std::isfinite(p.value) || (logy && p.value <= 0)) continue;
      x0 = std::min(x0, double(p.step)), x1 = std::max(x1, double(p.step));
      y0 = std::min(y0, fy(p.value)), y1 = std::max(y1, fy(p.value));
    }
  if (x0 > x1) return "";
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  const double pad = 0.05 * (y1 - y0);
  y0 -= pad, y1 += pad;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return T + (y1 - y) / (y1 - y0) * (H - T - B); };
  std::string svg = fmt::format(
      "<svg xmlns='http://www.w3.org/2000/svg' width='{0}' height='{1}' font-family='sans-serif' font-size='12'>"
      "<rect x='{2}' y='{3}' width='{4}' height='{5}' fill='none' stroke='#888'/>",
      W, H, L, T, W - L - R, H - T - B);
  // Round ticks: on a log axis at 1, 2, 5 × 10^k (or plain round values when the range spans less
  // than that allows), on linear axes at multiples of 1, 2 or 5 × 10^k.
  std::vector<std::pair<double, std::string>> yticks;  // (axis position, label)
  if (logy) {
    std::vector<double> values;
    for (double e = std::floor(y0); e <= std::ceil(y1); e += 1)
      for (double m : {1.0, 2.0, 5.0}) {
        const double v = m * std::pow(10.0, e);
        if (std::log10(v) >= y0 && std::log10(v) <= y1) values.push_back(v);
      }
    if (values.size() < 3) values = nice_ticks(std::pow(10.0, y0), std::pow(10.0, y1), 5);
    for (double v : values) {
      if (v <= 0) continue;
      const double step = std::pow(10.0, std::floor(std::log10(v)));
      yticks.push_back({std::log10(v), tick_label(v, values.size() >= 2 ? std::min(step, values[1] - values[0]) : step)});
    }
  } else {
    const auto values = nice_ticks(y0, y1, 5);
    const double step = values.size() >= 2 ? values[1] - values[0] : 1;
    for (double v : values) yticks.push_back({v, tick_label(v, step)});
  }
  for (const auto& [y, text] : yticks)
    svg += fmt::format("<text x='{}' y='{:.1f}' text-anchor='end'>{}</text><line x1='{}' x2='{}' y1='{:.1f}' y2='{:.1f}' "
                       "stroke='#eee'/>",
                       L - 6, py(y) + 4, text, L, W - R, py(y), py(y));
  std::vector<double> xticks;  // steps are whole numbers
  for (double x : nice_ticks(x0, x1, 8))
    if (x == std::floor(x)) xticks.push_back(x);
  const double xstep = xticks.size() >= 2 ? xticks[1] - xticks[0] : 1;
  for (double x : xticks)
    svg += fmt::format("<text x='{:.1f}' y='{}' text-anchor='middle'>{}</text><line x1='{:.1f}' x2='{:.1f}' y1='{}' "
                       "y2='{}' stroke='#888'/>",
                       px(x), H - B + 18, tick_label(x, std::max(1.0, xstep)), px(x), px(x), H - B, H - B + 5);
  svg += fmt::format("<text x='{}' y='{}' text-anchor='middle'>step</text>", (L + W - R) / 2, H - 8);
  svg += fmt::format("<text x='14' y='{}' transform='rotate(-90 14 {})' text-anchor='middle'>{}</text>", (T + H - B) / 2,
                     (T + H - B) / 2, html_escape(ylabel) + (logy ? " (log)" : ""));
  const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c"};
  int k = 0;
  for (const auto& [label, pts] : series) {
    if (pts->empty()) continue;
    const char* c = colors[k % 3];
    std::string points;
    for (const auto& p : *pts)
      if (std::isfinite(p.value) && !(logy && p.value <= 0))
        points += fmt::format("{:.1f},{:.1f} ", px(double(p.step)), py(fy(p.value)));
    svg += fmt::format("<polyline fill='none' stroke='{}' stroke-width='2' points='{}'/>", c, points);
    if (pts->size() == 1) svg += fmt::format("<circle cx='{:.1f}' cy='{:.1f}' r='3' fill='{}'/>", px(double((*pts)[0].step)),
                                             py(fy((*pts)[0].value)), c);
    svg += fmt::format("<text x='{}' y='{}' fill='{}'>{}</text>", W - R - 110, T + 16 + 16 * k, c, html_escape(label));
    ++k;
  }
  return svg + "</svg>";
}

// The "Run" table: how the run was made, from ReportData::run_info.
std::string run_info_html(const nlohmann::json& info) {
  if (!info.is_object() || info.empty()) return "";
  std::string rows;
  auto row = [&](const std::string& k, const std::string& v) {
    rows += fmt::format("<tr><th>{}</th><td>{}</td></tr>", html_escape(k), v);
  };
  auto text = [&](const char* key) { return info.contains(key) && info[key].is_string() ? info[key].get<std::string>() : ""; };
  if (!text("started_utc").empty()) row("started (UTC)", html_escape(text("started_utc")));
  if (!text("finished_utc").empty()) row("finished (UTC)", html_escape(text("finished_utc")));
  if (info.contains("wall_time_s") && info["wall_time_s"].is_number())
    row("wall time", html_escape(duration_text(info["wall_time_s"].get<double>())));
  if (!text("git_revision").empty()) row("source revision", html_escape(text("git_revision")));
  if (!text("model").empty()) row("model shape", html_escape(text("model")));
  if (info.contains("datasets") && info["datasets"].is_array())
    for (const auto& ds : info["datasets"]) {
      if (!ds.is_object()) continue;
      auto num = [&](const char* k) {
        return ds.contains(k) && ds[k].is_number_integer() ? with_thousands(ds[k].get<int64_t>()) : std::string("?");
      };
      row(ds.value("role", std::string("data")) + " data",
          fmt::format("<code>{}</code>: {} sequences, {} clusters, {} residues, {} bytes on disk",
                      html_escape(ds.value("path", std::string())), num("sequences"), num("clusters"), num("residues"),
                      num("bytes")));
    }
  if (!text("command").empty()) row("command", "<code>" + html_escape(text("command")) + "</code>");
  if (!text("flags").empty()) row("flags given", "<pre>" + html_escape(text("flags")) + "</pre>");
  return "<h2>Run</h2><table>" + rows + "</table>";
}

}  // namespace

std::string write_report(const fs::path& dir, const ReportData& d_in) {
  fs::create_directories(dir);
  const fs::path data_dir = dir / "report_data";
  fs::create_directories(data_dir);
  ReportData d = d_in;
  // Written at the end of the run: the finish time and wall time are now. A rebuilt report (esm2
  // report) keeps those of the saved run_info.
  if (d.run_info.is_object() && !d.run_info.empty() && !d.run_info.contains("finished_utc")) {
    d.run_info["finished_utc"] = utc_now();
    const std::time_t t0 = parse_utc(d.run_info.value("started_utc", std::string()));
    if (t0 >= 0) d.run_info["wall_time_s"] = std::difftime(std::time(nullptr), t0);
  }
  if (d.run_info.is_object() && !d.run_info.empty())
    write_file_atomically(data_dir / "run_info.json", d.run_info.dump(1) + "\n");
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
  std::vector<std::pair<fs::path, fs::path>> pngs;  // final, temp
  for (const auto& p : plots) {
    std::string cmd;
    for (const auto& [label, pts] : p.series) {
      if (pts->empty()) continue;
      const std::string file = write_series(data_dir / fmt::format("s{}.dat", series_id++), *pts);
      cmd += fmt::format("{}'{}' using 1:2 with {} title '{}'", cmd.empty() ? "plot " : ", ", file,
                         pts->size() > 1 ? "lines lw 2" : "points pt 7", label);
    }
    if (cmd.empty()) continue;
    // gnuplot writes each PNG under a temp name; it goes into place only when complete (gnuplot does not
    // report a failed write: a full disk leaves it empty or cut short with exit status 0).
    const fs::path png = dir / p.png, tmp = png.string() + ".tmp-" + std::to_string(::getpid());
    pngs.push_back({png, tmp});
    script += fmt::format("set output '{}'\nset ylabel '{}'\n{}\n{}\n", tmp.string(), p.ylabel,
                          p.logy ? "set logscale y" : "unset logscale y", cmd);
  }
  script += "unset output\n";  // closes the last PNG before gnuplot exits
  const fs::path script_path = data_dir / "plots.gp";
  write_file_atomically(script_path, script);
  std::string warning;
  const std::string cmd = fmt::format("gnuplot '{}' 2>&1", script_path.string());
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) {
    warning = "report: cannot run gnuplot; no PNG files (report.html has its own SVG curves)";
  } else {
    char buf[512];
    std::string out;
    while (fgets(buf, sizeof buf, pipe)) out += buf;
    int status = pclose(pipe);
    if (status != 0)
      warning = fmt::format("report: gnuplot failed, no PNG files (report.html has its own SVG curves; install "
                            "gnuplot-nox for the PNGs): {}",
                            out.substr(0, 200));
  }
  // A PNG is complete when it ends with its IEND chunk; an incomplete one (and the previous report's, now
  // stale) is removed.
  for (const auto& [png, tmp] : pngs) {
    std::error_code ec;
    if (warning.empty() && png_complete(tmp)) {
      fs::rename(tmp, png, ec);
      if (!ec) continue;
    }
    if (warning.empty()) warning = fmt::format("report: {} could not be written completely (disk full?); no PNG files", png.string());
    fs::remove(tmp, ec);
    fs::remove(png, ec);
  }

  std::string html = fmt::format(
      "<!doctype html><html><head><meta charset='utf-8'><title>{0}</title><style>"
      "body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}"
      "td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body><h1>{0}</h1><table>",
      html_escape(d.title));
  for (const auto& [k, v] : d.summary) html += fmt::format("<tr><th>{}</th><td>{}</td></tr>", html_escape(k), html_escape(v));
  html += "</table>";
  html += run_info_html(d.run_info);
  for (const auto& p : plots) {
    const std::string svg = svg_chart(p.ylabel, p.series, p.logy);
    if (svg.empty()) continue;
    html += fmt::format("<h2>{}</h2>{}", html_escape(p.ylabel), svg);
    if (fs::exists(dir / p.png)) html += fmt::format("<p><a href='{0}'>{0}</a> (gnuplot)</p>", p.png);
  }
  if (!d.val_loss.empty()) {
    html += "<h2>Validation</h2><table><tr><th>step</th><th>loss</th><th>perplexity</th></tr>";
    for (size_t i = 0; i < d.val_loss.size(); ++i)
      html += fmt::format("<tr><td>{}</td><td>{:.4f}</td><td>{:.3f}</td></tr>", d.val_loss[i].step, d.val_loss[i].value,
                          i < d.val_ppl.size() ? d.val_ppl[i].value : 0.0);
    html += "</table>";
  }
  if (!warning.empty()) html += fmt::format("<p><b>{}</b></p>", html_escape(warning));
  html += "</body></html>\n";
  write_file_atomically(dir / "report.html", html);
  return warning;
}

ReportData report_data_from_metrics(const fs::path& path, const std::string& title) {
  std::ifstream in(path);
  ESM2_CHECK(in.good(), "{}: cannot read the run's metrics (is this a run directory of esm2 train?)", path.string());
  ReportData d;
  d.title = title;
  std::string line;
  int64_t n = 0, last_step = 0, consumed = 0;
  double tps_sum = 0;
  int64_t tps_n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
      const int64_t step = j.at("step").get<int64_t>();
      last_step = std::max(last_step, step);
      // A diverged run's non-finite losses (metric_json) have no place on a plot: they are left out.
      if (j.contains("train_loss")) {
        const double l = metric_value(j.at("train_loss"));
        if (std::isfinite(l)) {
          d.train_loss.push_back({step, l});
          d.train_ppl.push_back({step, std::exp(l)});
        }
        if (j.contains("lr")) d.lr.push_back({step, j.at("lr").get<double>()});
        if (j.contains("tokens_per_s")) {
          const double t = j.at("tokens_per_s").get<double>();
          d.tokens_per_s.push_back({step, t});
          tps_sum += t;
          ++tps_n;
        }
        if (j.contains("consumed_tokens")) consumed = std::max(consumed, j.at("consumed_tokens").get<int64_t>());
      }
      if (j.contains("val_loss")) {
        const double v = metric_value(j.at("val_loss"));
        if (std::isfinite(v)) {
          d.val_loss.push_back({step, v});
          d.val_ppl.push_back({step, std::exp(v)});
        }
      }
    } catch (const nlohmann::json::exception& e) {
      fail("{}:{}: malformed metrics record: {}", path.string(), n, e.what());
    } catch (const Error& e) {
      fail("{}:{}: {}", path.string(), n, e.what());
    }
  }
  // A run killed after its last checkpoint and resumed logs those steps again: the later record of a
  // step wins, and the series stay in step order.
  auto last_write_wins = [](std::vector<ReportPoint>& v) {
    std::map<int64_t, double> by_step;
    for (const auto& p : v) by_step[p.step] = p.value;
    v.clear();
    for (const auto& [step, value] : by_step) v.push_back({step, value});
  };
  for (auto* v : {&d.train_loss, &d.train_ppl, &d.lr, &d.tokens_per_s, &d.val_loss, &d.val_ppl}) last_write_wins(*v);
  tps_sum = 0;
  for (const auto& p : d.tokens_per_s) tps_sum += p.value;
  tps_n = static_cast<int64_t>(d.tokens_per_s.size());
  ESM2_CHECK(!d.train_loss.empty() || !d.val_loss.empty(), "{}: no training or validation records", path.string());
  d.summary = {{"steps", with_thousands(last_step)},
               {"tokens trained", with_thousands(consumed)},
               {"mean logged real tokens/s",
                tps_n ? with_thousands(std::llround(tps_sum / double(tps_n))) : std::string("n/a")},
               {"last train loss", d.train_loss.empty() ? std::string("n/a")
                                                        : fmt::format("{:.4f}", d.train_loss.back().value)},
               {"last val loss / ppl", d.val_loss.empty() ? std::string("n/a")
                                                          : fmt::format("{:.4f} / {:.3f}", d.val_loss.back().value,
                                                                        std::exp(d.val_loss.back().value))},
               {"source", path.string()}};
  // The run's metadata, kept by the report written at the end of training (absent for --no-report).
  const fs::path info = path.parent_path() / "report_data" / "run_info.json";
  if (fs::exists(info)) {
    try {
      d.run_info = nlohmann::json::parse(read_file(info));
    } catch (const nlohmann::json::exception& e) {
      fail("{}: malformed run metadata: {}", info.string(), e.what());
    }
  }
  return d;
}

}  // namespace esm2
