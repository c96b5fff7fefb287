// Corpus manifest: Corpus::open on a directory holding the arrays of a real tiny corpus
// (fuzz/corpus_data/, made by `esm2 prepare`) and the fuzzed manifest.json. The manifest's counts,
// sizes and checksums are what stands between a wrong manifest and out-of-bounds reads of the arrays.
#include "data/corpus.h"
#include "fuzz_util.h"

namespace fs = std::filesystem;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const fs::path dir = esm2::fuzz::scratch() / "corpus";
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(fs::path(ESM2_SOURCE_DIR) / "fuzz/corpus_data"))
    if (e.path().extension() == ".bin") fs::copy_file(e.path(), dir / e.path().filename(), fs::copy_options::overwrite_existing);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fs::path dir = esm2::fuzz::scratch() / "corpus";
  esm2::write_file(dir / "manifest.json", std::string_view(reinterpret_cast<const char*>(data), size));
  esm2::fuzz::expect_result_or_error([&] {
    const auto c = esm2::Corpus::open(dir);
    // Touch every sequence and cluster the opened corpus claims to have.
    uint64_t sum = 0;
    for (size_t i = 0; i < c.num_sequences(); ++i) sum += c.length(i) + c.id(i).size();
    for (size_t k = 0; k < c.num_clusters(); ++k)
      for (uint32_t m : c.cluster_members(k)) sum += c.length(m);
    if (sum == 1) std::fprintf(stderr, " ");  // keeps the reads
  });
  return 0;
}
