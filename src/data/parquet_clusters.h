// The reference's cluster files (BioNeMo ESM-2) over its SQLite sequence database:
//   train:      one row per UR50 cluster, list<string> column `ur90_id` (members), string `ur50_id`;
//   validation: string column `ur50_id`, one sequence per row (each row its own cluster; a repeated
//               id is evaluated once per row, as the reference does).
// The format is recognised by its columns. The database is a lookup table: rows that no cluster
// names are left out (counted in `unreferenced`).
#pragma once
#include <filesystem>

#include "data/sequence_table.h"

namespace esm2 {

struct ParquetCorpusInput {
  SequenceTable sequences;
  ClusterTable clusters;
  uint64_t unreferenced = 0;  // database rows not named by the parquet file
  bool validation = false;    // the file had the validation layout
};

// Errors name the parquet file and the row: an empty cluster, a member absent from the database,
// a member listed twice in the train layout, neither layout's columns, no rows at all.
ParquetCorpusInput read_parquet_clusters(const std::filesystem::path& parquet, const std::filesystem::path& sqlite);

}  // namespace esm2
