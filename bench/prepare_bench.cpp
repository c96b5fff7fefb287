// `esm2 prepare` throughput: the bundled sample (9,466 sequences, 3.59M residues) and a full-size
// input of ~300K sequences / ~110M residues made by replicating the sample 31× under new ids
// (written once to $TMPDIR as FASTA.gz + cluster TSV). Target: the full size in < 60 s on 2 cores.
#include <benchmark/benchmark.h>
#include <fmt/format.h>
#include <unistd.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>

#include "data/cluster_tsv.h"
#include "data/fasta.h"
#include "data/prepare.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;
using namespace esm2;

namespace {

const fs::path kSample = fs::path(ESM2_SOURCE_DIR) / "data/swissprot-sample";

fs::path scratch() {
  fs::path p = fs::temp_directory_path() / ("esm2_prepare_bench_" + std::to_string(::getpid()));
  fs::create_directories(p);
  return p;
}

// Writes `copies` renamed copies of the bundled sample; returns {fasta.gz, tsv}.
std::pair<fs::path, fs::path> make_scaled_input(const fs::path& dir, int copies) {
  SequenceTable t;
  read_fasta(kSample / "train.fasta.gz", t);
  ClusterTable c = read_cluster_tsv(kSample / "train_clusters.tsv", t);
  fs::path fa = dir / "scaled.fasta.gz", tsv = dir / "scaled_clusters.tsv";
  gzFile gz = gzopen(fa.c_str(), "wb1");
  std::ofstream out(tsv);
  std::string rec;
  for (int k = 0; k < copies; ++k) {
    for (size_t i = 0; i < t.size(); ++i) {
      rec = fmt::format(">{}_r{} replicated\n", t.id(i), k);  // (operator+ here trips a GCC 12 -Wrestrict false positive)
      auto s = t.sequence(i);
      for (size_t j = 0; j < s.size(); ++j) {
        rec += kVocab[s[j]].size() == 1 ? kVocab[s[j]][0] : 'X';
        if (j % 60 == 59 || j + 1 == s.size()) rec += '\n';
      }
      gzwrite(gz, rec.data(), static_cast<unsigned>(rec.size()));
    }
    for (size_t cl = 0; cl < c.size(); ++cl)
      for (uint64_t m = c.offsets[cl]; m < c.offsets[cl + 1]; ++m)
        out << "C" << cl << "_r" << k << '\t' << t.id(c.members[m]) << "_r" << k << '\n';
  }
  gzclose(gz);
  return {fa, tsv};
}

void run_prepare(benchmark::State& state, const fs::path& fa, const fs::path& tsv, const fs::path& out) {
  uint64_t residues = 0, sequences = 0;
  for (auto _ : state) {
    PrepareOptions o;
    o.fasta = {fa};
    o.clusters = tsv;
    o.output = out;
    o.force = true;
    PrepareResult r = prepare_corpus(o);
    residues = r.stats.residues;
    sequences = r.stats.count;
  }
  state.counters["residues"] = static_cast<double>(residues);
  state.counters["sequences"] = static_cast<double>(sequences);
  state.counters["residues/s"] =
      benchmark::Counter(static_cast<double>(residues) * state.iterations(), benchmark::Counter::kIsRate);
}

void BM_PrepareBundledSample(benchmark::State& state) {
  fs::path dir = scratch();
  run_prepare(state, kSample / "train.fasta.gz", kSample / "train_clusters.tsv", dir / "corpus");
  fs::remove_all(dir);
}

void BM_PrepareFullSize300K(benchmark::State& state) {
  fs::path dir = scratch();
  auto [fa, tsv] = make_scaled_input(dir, 31);
  run_prepare(state, fa, tsv, dir / "corpus");
  fs::remove_all(dir);
}

}  // namespace

BENCHMARK(BM_PrepareBundledSample)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_PrepareFullSize300K)->Unit(benchmark::kSecond)->UseRealTime()->Iterations(2);
BENCHMARK_MAIN();
