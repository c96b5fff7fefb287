#include "data/fasta.h"

#include "core/error.h"
#include "data/byte_source.h"

namespace esm2 {

void read_fasta(const std::filesystem::path& path, SequenceTable& table) {
  LineReader lines(path);
  const std::string file = path.string();
  std::string id;
  uint64_t header_line = 0;
  bool in_record = false;
  std::vector<uint8_t> residues;

  auto finish = [&] {
    if (!in_record) return;
    ESM2_CHECK(!residues.empty(), "{}: record '{}' (line {}): empty sequence", file, id, header_line);
    if (!table.add(id, residues)) fail("{}: record '{}' (line {}): duplicate id", file, id, header_line);
    residues.clear();
  };

  std::string_view line;
  while (lines.next(line)) {
    if (line.empty()) continue;
    if (line.front() == '>') {
      finish();
      header_line = lines.line_number();
      std::string_view h = line.substr(1);
      size_t end = h.find_first_of(" \t\v\f");
      id.assign(h.substr(0, end));
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
}

}  // namespace esm2
