// Sequence-length statistics, printed by `esm2 prepare`, stored in the corpus manifest and printed
// by the trainer at start-up. Lengths are residues (without <cls>/<eos>).
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

namespace esm2 {

struct LengthStats {
  uint64_t count = 0, residues = 0, min = 0, max = 0;
  double mean = 0;
  uint64_t p50 = 0, p90 = 0, p99 = 0;  // nearest-rank percentiles
  int max_seq_length = 0;              // in tokens, <cls> and <eos> included
  uint64_t num_longer = 0;             // sequences with residues + 2 > max_seq_length (they get cropped)
  double fraction_longer = 0;
  std::vector<uint64_t> histogram;     // [k] sequences with 2^k <= residues < 2^(k+1)

  nlohmann::json to_json() const;
  static LengthStats from_json(const nlohmann::json& j);
  std::string summary() const;  // a few human-readable lines
};

// offsets: [n+1] prefix sums of residue counts (the corpus layout).
LengthStats compute_length_stats(std::span<const uint64_t> offsets, int max_seq_length);

// The same statistics from a stream of lengths, in memory proportional to the number of distinct
// lengths (not sequences): `esm2 prepare` at UniRef scale never holds the offsets.
class LengthCounter {
 public:
  void add(uint64_t length) {
    if (length < small_.size()) {
      ++small_[length];
    } else {
      ++large_[length];
    }
  }
  LengthStats stats(int max_seq_length) const;

 private:
  std::vector<uint64_t> small_ = std::vector<uint64_t>(1 << 16, 0);  // [65536] count per length
  std::map<uint64_t, uint64_t> large_;                               // longer ones: length -> count
};

}  // namespace esm2
