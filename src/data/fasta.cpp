#include "data/fasta.h"

#include "core/error.h"

namespace esm2 {

namespace {
std::string_view header_id(std::string_view line) {
  std::string_view h = line.substr(1);
  return h.substr(0, h.find_first_of(" \t\v\f"));
}
}  // namespace

FileDigest parse_fasta(const std::filesystem::path& path, const FastaRecordFn& on_record) {
  LineReader lines(path);
  const std::string file = path.string();
  std::string id;
  uint64_t header_line = 0;
  bool in_record = false;
  std::vector<uint8_t> residues;

  auto finish = [&] {
    if (!in_record) return;
    ESM2_CHECK(!residues.empty(), "{}: record '{}' (line {}): empty sequence", file, id, header_line);
    on_record(id, header_line, residues);
    residues.clear();
  };

  std::string_view line;
  while (lines.next(line)) {
    if (line.empty()) continue;
    if (line.front() == '>') {
      finish();
      header_line = lines.line_number();
      id.assign(header_id(line));
      ESM2_CHECK(!id.empty(), "{}: line {}: header without an id", file, header_line);
      in_record = true;
      continue;
    }
    ESM2_CHECK(in_record, "{}: line {}: sequence data before the first '>' header", file, lines.line_number());
    size_t before = residues.size();
    int64_t bad = tokenize_residues(line, residues);
    if (bad >= 0)
      fail("{}: record '{}' (line {}, column {}): non-letter character {} at residue {}", file, id,
           lines.line_number(), bad + 1, printable_byte(line[bad]), before + bad + 1);
  }
  finish();
  return {lines.source().raw_bytes(), lines.source().raw_crc32()};
}

void read_fasta(const std::filesystem::path& path, SequenceTable& table) {
  const std::string file = path.string();
  parse_fasta(path, [&](std::string_view id, uint64_t line, std::span<const uint8_t> tokens) {
    if (!table.add(id, tokens)) fail("{}: record '{}' (line {}): duplicate id", file, id, line);
  });
}

FastaRecordInfo locate_fasta_record(const std::filesystem::path& path, uint64_t index) {
  LineReader lines(path);
  std::string_view line;
  uint64_t k = 0;
  while (lines.next(line))
    if (!line.empty() && line.front() == '>' && k++ == index) return {lines.line_number(), std::string(header_id(line))};
  fail("{}: has no record {} (it changed while being read?)", path.string(), index);
}

}  // namespace esm2
