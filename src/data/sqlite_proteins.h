// The reference's sequence database: SQLite `CREATE TABLE protein(id TEXT PRIMARY KEY, sequence TEXT)`.
#pragma once
#include <filesystem>
#include <functional>
#include <string_view>

#include "data/sequence_table.h"

namespace esm2 {

// Appends rows of `protein` (in rowid order) to `table`; with `keep`, only rows whose id it accepts
// (a cluster file names the sequences it needs; the database is a lookup table and may hold more).
// Errors name the database and the row id: missing table or columns, NULL or empty sequence,
// non-letter characters, duplicate ids.
void read_sqlite_proteins(const std::filesystem::path& path, SequenceTable& table,
                          const std::function<bool(std::string_view)>& keep = {});

}  // namespace esm2
