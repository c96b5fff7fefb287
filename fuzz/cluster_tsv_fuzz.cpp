// Cluster TSV reader against a fixed sequence table holding the ids of the seed corpus (the first
// clusters of data/swissprot-sample/train_clusters.tsv), so that valid lines reach the member checks.
#include <array>

#include "data/cluster_tsv.h"
#include "data/sequence_table.h"
#include "fuzz_util.h"

namespace {
const esm2::SequenceTable& sequences() {
  static const esm2::SequenceTable table = [] {
    esm2::SequenceTable t;
    const std::array<const char*, 8> ids = {"P16382", "Q63257", "P17232", "P0A7B8", "Q9X0H3", "A0A000", "B1", "x"};
    const uint8_t tokens[3] = {5, 6, 7};
    for (const char* id : ids) t.add(id, tokens);
    return t;
  }();
  return table;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = esm2::fuzz::memory_file(data, size);
  esm2::fuzz::expect_result_or_error([&] { (void)esm2::read_cluster_tsv(path, sequences()); });
  return 0;
}
