#include "data/length_stats.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include <fmt/format.h>

namespace esm2 {

LengthStats compute_length_stats(std::span<const uint64_t> offsets, int max_seq_length) {
  LengthStats s;
  s.max_seq_length = max_seq_length;
  if (offsets.size() < 2) return s;
  std::vector<uint64_t> len(offsets.size() - 1);  // [n]
  for (size_t i = 0; i + 1 < offsets.size(); ++i) len[i] = offsets[i + 1] - offsets[i];
  s.count = len.size();
  s.residues = offsets.back() - offsets.front();
  s.mean = static_cast<double>(s.residues) / static_cast<double>(s.count);
  for (uint64_t l : len) {
    if (l + 2 > static_cast<uint64_t>(max_seq_length)) ++s.num_longer;
    size_t k = l == 0 ? 0 : static_cast<size_t>(std::bit_width(l) - 1);
    if (s.histogram.size() <= k) s.histogram.resize(k + 1, 0);
    ++s.histogram[k];
  }
  s.fraction_longer = static_cast<double>(s.num_longer) / static_cast<double>(s.count);
  std::sort(len.begin(), len.end());
  auto rank = [&](double q) {  // nearest rank: the smallest length with at least q of the data at or below it
    size_t r = static_cast<size_t>(std::ceil(q * static_cast<double>(len.size())));
    return len[std::clamp<size_t>(r, 1, len.size()) - 1];
  };
  s.min = len.front();
  s.max = len.back();
  s.p50 = rank(0.50);
  s.p90 = rank(0.90);
  s.p99 = rank(0.99);
  return s;
}

LengthStats LengthCounter::stats(int max_seq_length) const {
  // Walks (length, count) in increasing length: the same numbers compute_length_stats gets from the
  // sorted lengths (nearest-rank percentiles, the residue sum, the log2 histogram).
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  for (size_t l = 0; l < small_.size(); ++l)
    if (small_[l] > 0) runs.emplace_back(l, small_[l]);
  for (const auto& [l, c] : large_) runs.emplace_back(l, c);
  LengthStats s;
  s.max_seq_length = max_seq_length;
  if (runs.empty()) return s;
  for (const auto& [l, c] : runs) {
    s.count += c;
    s.residues += l * c;
    if (l + 2 > static_cast<uint64_t>(max_seq_length)) s.num_longer += c;
    size_t k = l == 0 ? 0 : static_cast<size_t>(std::bit_width(l) - 1);
    if (s.histogram.size() <= k) s.histogram.resize(k + 1, 0);
    s.histogram[k] += c;
  }
  s.mean = static_cast<double>(s.residues) / static_cast<double>(s.count);
  s.fraction_longer = static_cast<double>(s.num_longer) / static_cast<double>(s.count);
  auto rank = [&](double q) {
    uint64_t r = static_cast<uint64_t>(std::ceil(q * static_cast<double>(s.count)));
    r = std::clamp<uint64_t>(r, 1, s.count);
    uint64_t seen = 0;
    for (const auto& [l, c] : runs) {
      seen += c;
      if (seen >= r) return l;
    }
    return runs.back().first;
  };
  s.min = runs.front().first;
  s.max = runs.back().first;
  s.p50 = rank(0.50);
  s.p90 = rank(0.90);
  s.p99 = rank(0.99);
  return s;
}

nlohmann::json LengthStats::to_json() const {
  return {{"count", count}, {"residues", residues}, {"min", min}, {"max", max}, {"mean", mean},
          {"p50", p50}, {"p90", p90}, {"p99", p99}, {"max_seq_length", max_seq_length},
          {"num_longer", num_longer}, {"fraction_longer", fraction_longer},
          {"histogram_log2", histogram}};
}

LengthStats LengthStats::from_json(const nlohmann::json& j) {
  LengthStats s;
  s.count = j.at("count");
  s.residues = j.at("residues");
  s.min = j.at("min");
  s.max = j.at("max");
  s.mean = j.at("mean");
  s.p50 = j.at("p50");
  s.p90 = j.at("p90");
  s.p99 = j.at("p99");
  s.max_seq_length = j.at("max_seq_length");
  s.num_longer = j.at("num_longer");
  s.fraction_longer = j.at("fraction_longer");
  s.histogram = j.at("histogram_log2").get<std::vector<uint64_t>>();
  return s;
}

std::string LengthStats::summary() const {
  std::string out = fmt::format(
      "sequences {}  residues {}  mean length {:.1f}\n"
      "length percentiles: min {}  p50 {}  p90 {}  p99 {}  max {}\n"
      "longer than max length ({} tokens incl. <cls>/<eos>, cropped): {} ({:.2f}%)\n",
      count, residues, mean, min, p50, p90, p99, max, max_seq_length, num_longer, 100.0 * fraction_longer);
  return out;
}

}  // namespace esm2
