// mmseqs2-style cluster table (`*_cluster.tsv`): one line `representative<TAB>member` per member,
// here `ur50<TAB>ur90`. Clusters are numbered in order of first appearance.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>

#include "data/sequence_table.h"

namespace esm2 {

// Errors (one line, naming the TSV line): a line without exactly two tab-separated fields, a member id
// absent from `sequences`, a member listed twice. A sequence that no line lists is an error too,
// naming the first such id: mmseqs assigns every input sequence to a cluster, so an unlisted record
// means the FASTA and the TSV do not belong together.
// One non-empty TSV line as (representative, member); throws naming `file` and `line_number` unless
// the line has exactly two non-empty tab-separated fields. Shared by the in-memory and streaming readers.
std::pair<std::string_view, std::string_view> split_cluster_line(std::string_view line, const std::string& file,
                                                                 uint64_t line_number);

ClusterTable read_cluster_tsv(const std::filesystem::path& path, const SequenceTable& sequences);

}  // namespace esm2
