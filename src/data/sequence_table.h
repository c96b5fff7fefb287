// In-memory sequences and clusters as the readers produce them, before `esm2 prepare` writes them
// out as a memory-mapped Corpus. Residues are stored as token ids (one byte each, no <cls>/<eos>).
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace esm2 {

class SequenceTable {
 public:
  SequenceTable() = default;
  // Returns false (and adds nothing) when the id is already present.
  bool add(std::string_view id, std::span<const uint8_t> tokens);
  // Index of the sequence with this id, or -1.
  int64_t find(std::string_view id) const;

  size_t size() const { return offsets_.size() - 1; }
  uint64_t num_residues() const { return offsets_.back(); }
  std::span<const uint8_t> sequence(size_t i) const {
    return {tokens_.data() + offsets_[i], offsets_[i + 1] - offsets_[i]};
  }
  uint64_t length(size_t i) const { return offsets_[i + 1] - offsets_[i]; }
  std::string_view id(size_t i) const {
    return std::string_view(ids_).substr(id_offsets_[i], id_offsets_[i + 1] - id_offsets_[i]);
  }
  const std::vector<uint8_t>& tokens() const { return tokens_; }
  const std::vector<uint64_t>& offsets() const { return offsets_; }
  const std::string& id_bytes() const { return ids_; }
  const std::vector<uint64_t>& id_offsets() const { return id_offsets_; }

 private:
  std::vector<uint8_t> tokens_;           // [R] residue token ids, all sequences concatenated
  std::vector<uint64_t> offsets_{0};      // [n+1]
  std::string ids_;                       // all ids concatenated
  std::vector<uint64_t> id_offsets_{0};   // [n+1]
  struct IdHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, uint32_t, IdHash, std::equal_to<>> index_;
};

// Clusters as index lists into a SequenceTable: cluster c holds members[offsets[c] .. offsets[c+1]).
struct ClusterTable {
  std::vector<uint64_t> offsets{0};  // [C+1]
  std::vector<uint32_t> members;     // [M] sequence indices

  size_t size() const { return offsets.size() - 1; }
  // Every sequence its own cluster (FASTA without a cluster file; validation sets).
  static ClusterTable singletons(size_t num_sequences);
};

// Appends the token ids of `residues` to `out`; returns the index of the first non-letter byte
// (nothing appended from it on), or -1 when every byte was a letter.
int64_t tokenize_residues(std::string_view residues, std::vector<uint8_t>& out);
// A byte for an error message: 'c' when printable, otherwise "byte 0xNN".
std::string printable_byte(char c);

}  // namespace esm2
