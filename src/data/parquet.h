// A reader for exactly the Parquet files the reference's data uses (written by pyarrow with
// defaults): the footer's Thrift-compact FileMetaData, data pages v1/v2, PLAIN and
// RLE_DICTIONARY/PLAIN_DICTIONARY encodings, UNCOMPRESSED/SNAPPY/ZSTD/GZIP codecs, optional
// columns (definition levels) and list<string> (repetition levels). Debian 12 packages no Arrow/Parquet
// C++ library, so this is hand-written; every length and offset is checked against the file size.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace esm2 {

// Column of a flat string (BYTE_ARRAY/UTF8) column, one entry per row. Throws esm2::Error naming
// the file and the reason (missing column, wrong type, corrupt page, null value…).
std::vector<std::string> read_parquet_string_column(const std::filesystem::path& path, const std::string& column);

// A list<string> column (e.g. the train clusters' `ur90_id`): one inner vector per row.
std::vector<std::vector<std::string>> read_parquet_string_list_column(const std::filesystem::path& path,
                                                                      const std::string& column);

// Column names at the top level of the schema (for error messages and format detection).
std::vector<std::string> parquet_column_names(const std::filesystem::path& path);

}  // namespace esm2
