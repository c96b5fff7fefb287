#include "data/fasta.h"

#include "core/error.h"

namespace esm2 {

FileDigest scan_fasta(const std::filesystem::path& path, bool trim_trailing_space,
                      const std::function<void(std::string_view id, uint64_t line_number)>& on_header,
                      const std::function<void(std::string_view line, uint64_t line_number)>& on_sequence) {
  LineReader lines(path);
  const std::string file = path.string();
  bool in_record = false;
  std::string_view line;
  while (lines.next(line)) {
    if (trim_trailing_space)
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.remove_suffix(1);
    if (line.empty()) continue;
    if (line.front() == '>') {
      std::string_view h = line.substr(1);
      const std::string_view id = h.substr(0, h.find_first_of(" \t\v\f"));
      in_record = true;
      // The caller finishes the previous record first, so errors come in file order.
      on_header(id, lines.line_number());
      ESM2_CHECK(!id.empty(), "{}: line {}: header without an id", file, lines.line_number());
      continue;
    }
    ESM2_CHECK(in_record, "{}: line {}: sequence data before the first '>' header", file, lines.line_number());
    on_sequence(line, lines.line_number());
  }
  return {lines.source().raw_bytes(), lines.source().raw_crc32()};
}

FileDigest parse_fasta(const std::filesystem::path& path, const FastaRecordFn& on_record) {
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

  FileDigest digest = scan_fasta(
      path, /*trim_trailing_space=*/false,
      [&](std::string_view header_id, uint64_t line_number) {
        finish();
        id.assign(header_id);
        header_line = line_number;
        in_record = true;
      },
      [&](std::string_view line, uint64_t line_number) {
        const size_t before = residues.size();
        const int64_t bad = tokenize_residues(line, residues);
        if (bad >= 0)
          fail("{}: record '{}' (line {}, column {}): non-letter character {} at residue {}", file, id, line_number,
               bad + 1, printable_byte(line[bad]), before + bad + 1);
      });
  finish();
  return digest;
}

void read_fasta(const std::filesystem::path& path, SequenceTable& table) {
  const std::string file = path.string();
  parse_fasta(path, [&](std::string_view id, uint64_t line, std::span<const uint8_t> tokens) {
    if (!table.add(id, tokens)) fail("{}: record '{}' (line {}): duplicate id", file, id, line);
  });
}

FastaRecordInfo locate_fasta_record(const std::filesystem::path& path, uint64_t index) {
  struct Found {};  // stops the scan at the record
  FastaRecordInfo info;
  uint64_t k = 0;
  try {
    scan_fasta(
        path, /*trim_trailing_space=*/false,
        [&](std::string_view id, uint64_t line_number) {
          if (k++ != index) return;
          info = {line_number, std::string(id)};
          throw Found{};
        },
        [](std::string_view, uint64_t) {});
  } catch (const Found&) {
    return info;
  }
  fail("{}: has no record {} (it changed while being read?)", path.string(), index);
}

}  // namespace esm2
