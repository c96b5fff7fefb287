// FASTA / FASTA.gz reader. A record's id is its header text up to the first whitespace; residues
// become token ids (tokenizer.h residue_token: either case, unusual letters to their own tokens,
// other letters to <unk>). Any malformed input is an esm2::Error naming the file, the record or line,
// and the reason: sequence data before the first header, an empty sequence or id, a non-letter
// character, a duplicate id, a truncated gzip stream, a missing file.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "data/byte_source.h"
#include "data/sequence_table.h"

namespace esm2 {

// The project's one FASTA parser, shared by readers with different record policies (read_fasta and
// parse_fasta below for training; read_protein_fasta in src/infer/inference.h). Calls on_header(id,
// line number) for each '>' header, id being the header text up to the first whitespace (an empty id
// is an error, raised after on_header has seen it), and on_sequence(line, line number) for each
// sequence line after it. Empty lines are skipped; sequence data before the first header is an error
// naming the file and line. trim_trailing_space: strip trailing '\r', ' ' and '\t' from every line
// first (a line left empty is skipped). Returns the size and crc32 of the file as read.
FileDigest scan_fasta(const std::filesystem::path& path, bool trim_trailing_space,
                      const std::function<void(std::string_view id, uint64_t line_number)>& on_header,
                      const std::function<void(std::string_view line, uint64_t line_number)>& on_sequence);

// Appends the records of `path` to `table` (ids must be unique across everything already in it).
void read_fasta(const std::filesystem::path& path, SequenceTable& table);

// The streaming form: calls on_record(id, header line number, residue tokens) for each record in
// file order, holding one record at a time. The same errors as read_fasta except duplicate ids,
// which only the caller can see. Returns the size and crc32 of the file as read.
using FastaRecordFn = std::function<void(std::string_view id, uint64_t header_line, std::span<const uint8_t> tokens)>;
FileDigest parse_fasta(const std::filesystem::path& path, const FastaRecordFn& on_record);

// Header line and id of record `index` (0-based, file order), for error messages about a record
// found only after the file was read (a duplicate id seen by `esm2 prepare`'s external sort).
struct FastaRecordInfo {
  uint64_t line = 0;
  std::string id;
};
FastaRecordInfo locate_fasta_record(const std::filesystem::path& path, uint64_t index);

}  // namespace esm2
