// FASTA reader (plain and gzip: ByteSource detects gzip by its magic bytes).
#include "data/fasta.h"
#include "data/sequence_table.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = esm2::fuzz::memory_file(data, size);
  esm2::fuzz::expect_result_or_error([&] {
    esm2::SequenceTable table;
    esm2::read_fasta(path, table);
  });
  return 0;
}
