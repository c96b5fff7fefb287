// FASTA / FASTA.gz reader. A record's id is its header text up to the first whitespace; residues
// become token ids (tokenizer.h residue_token: either case, unusual letters to their own tokens,
// other letters to <unk>). Any malformed input is an esm2::Error naming the file, the record or line,
// and the reason: sequence data before the first header, an empty sequence or id, a non-letter
// character, a duplicate id, a truncated gzip stream, a missing file.
#pragma once
#include <filesystem>

#include "data/sequence_table.h"

namespace esm2 {

// Appends the records of `path` to `table` (ids must be unique across everything already in it).
void read_fasta(const std::filesystem::path& path, SequenceTable& table);

}  // namespace esm2
