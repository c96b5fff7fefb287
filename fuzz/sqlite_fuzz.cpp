// SQLite protein table loader: arbitrary database file images.
#include "data/sequence_table.h"
#include "data/sqlite_proteins.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = esm2::fuzz::input_file("proteins.db", data, size);
  esm2::fuzz::expect_result_or_error([&] {
    esm2::SequenceTable table;
    esm2::read_sqlite_proteins(path, table);
  });
  esm2::fuzz::expect_result_or_error([&] {
    esm2::SequenceTable table;
    esm2::read_sqlite_proteins(path, table, [](std::string_view id) { return id.size() % 2 == 0; });
  });
  return 0;
}
