#include "data/sequence_table.h"

#include <array>

#include "core/error.h"
#include "data/tokenizer.h"

namespace esm2 {

bool SequenceTable::add(std::string_view id, std::span<const uint8_t> tokens) {
  ESM2_CHECK(size() < UINT32_MAX, "too many sequences (the corpus indexes them with 32 bits)");
  auto [it, inserted] = index_.emplace(std::string(id), static_cast<uint32_t>(size()));
  if (!inserted) return false;
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  offsets_.push_back(tokens_.size());
  ids_.append(id);
  id_offsets_.push_back(ids_.size());
  return true;
}

int64_t SequenceTable::find(std::string_view id) const {
  auto it = index_.find(id);
  return it == index_.end() ? -1 : static_cast<int64_t>(it->second);
}

namespace {
// byte → token id, or -1 for bytes that are not letters.
std::array<int16_t, 256> residue_table() {
  std::array<int16_t, 256> t{};
  for (int c = 0; c < 256; ++c) t[c] = static_cast<int16_t>(residue_token(static_cast<char>(c)));
  return t;
}
}  // namespace

int64_t tokenize_residues(std::string_view residues, std::vector<uint8_t>& out) {
  static const std::array<int16_t, 256> kTable = residue_table();
  for (size_t k = 0; k < residues.size(); ++k) {
    int16_t t = kTable[static_cast<unsigned char>(residues[k])];
    if (t < 0) return static_cast<int64_t>(k);
    out.push_back(static_cast<uint8_t>(t));
  }
  return -1;
}

std::string printable_byte(char c) {
  auto u = static_cast<unsigned char>(c);
  if (u >= 0x20 && u < 0x7f) return fmt::format("'{}'", c);
  return fmt::format("byte 0x{:02x}", u);
}

ClusterTable ClusterTable::singletons(size_t num_sequences) {
  ClusterTable t;
  t.offsets.resize(num_sequences + 1);
  t.members.resize(num_sequences);
  for (size_t i = 0; i < num_sequences; ++i) {
    t.offsets[i + 1] = i + 1;
    t.members[i] = static_cast<uint32_t>(i);
  }
  return t;
}

}  // namespace esm2
