// Parquet reader: schema listing, then every top-level column read both as a flat string column and
// as a list<string> column (the wrong shape must be an error, never a misread).
#include "data/parquet.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = esm2::fuzz::input_file("input.parquet", data, size);
  std::vector<std::string> columns;
  esm2::fuzz::expect_result_or_error([&] { columns = esm2::parquet_column_names(path); });
  if (columns.size() > 8) columns.resize(8);
  for (const auto& c : columns) {
    esm2::fuzz::expect_result_or_error([&] { (void)esm2::read_parquet_string_column(path, c); });
    esm2::fuzz::expect_result_or_error([&] { (void)esm2::read_parquet_string_list_column(path, c); });
  }
  return 0;
}
