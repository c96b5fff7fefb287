#include "data/prepare.h"

#include <chrono>
#include <ctime>

#include "core/error.h"
#include "data/byte_source.h"
#include "data/cluster_tsv.h"
#include "data/corpus.h"
#include "data/fasta.h"
#include "data/parquet_clusters.h"
#include "data/sqlite_proteins.h"

namespace fs = std::filesystem;

namespace esm2 {

PrepareResult prepare_corpus(const PrepareOptions& opt) {
  auto t0 = std::chrono::steady_clock::now();
  ESM2_CHECK(!opt.output.empty(), "prepare: --output is required");
  ESM2_CHECK(opt.fasta.empty() != opt.sqlite.empty(), "prepare: give either --fasta or --sqlite (exactly one)");
  ESM2_CHECK(opt.clusters.empty() || opt.parquet.empty(), "prepare: give --clusters or --parquet, not both");
  ESM2_CHECK(opt.parquet.empty() || !opt.sqlite.empty(), "prepare: --parquet needs --sqlite (the sequences)");
  ESM2_CHECK(opt.max_seq_length >= 3, "prepare: --max-seq-length {} is below 3 (<cls>, a residue, <eos>)",
             opt.max_seq_length);
  // Refuse before reading anything: minutes of parsing must not end in "exists".
  ESM2_CHECK(opt.force || !fs::exists(opt.output), "{}: output exists (pass --force to replace it)",
             opt.output.string());

  nlohmann::json sources = nlohmann::json::array();
  auto record_source = [&](const char* role, const fs::path& p) {
    FileDigest d = digest_file(p);
    sources.push_back({{"role", role}, {"path", fs::absolute(p).string()}, {"bytes", d.bytes}, {"crc32", d.crc32}});
  };

  SequenceTable sequences;
  ClusterTable clusters;
  PrepareResult result;
  if (!opt.fasta.empty()) {
    for (const auto& f : opt.fasta) {
      read_fasta(f, sequences);
      record_source("fasta", f);
    }
  } else if (!opt.parquet.empty()) {
    ParquetCorpusInput in = read_parquet_clusters(opt.parquet, opt.sqlite);
    sequences = std::move(in.sequences);
    clusters = std::move(in.clusters);
    result.unreferenced = in.unreferenced;
    record_source("sqlite", opt.sqlite);
    record_source(in.validation ? "parquet_validation_clusters" : "parquet_train_clusters", opt.parquet);
  } else {
    read_sqlite_proteins(opt.sqlite, sequences);
    record_source("sqlite", opt.sqlite);
  }
  if (!opt.clusters.empty()) {
    clusters = read_cluster_tsv(opt.clusters, sequences);
    record_source("clusters_tsv", opt.clusters);
  } else if (opt.parquet.empty()) {
    clusters = ClusterTable::singletons(sequences.size());
  }
  ESM2_CHECK(sequences.size() > 0, "prepare: the inputs hold no sequences");

  std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  nlohmann::json provenance = {{"sources", sources}, {"command", opt.command}, {"created_utc", stamp},
                               {"unreferenced_database_rows", result.unreferenced}};
  result.manifest = write_corpus(opt.output, sequences, clusters, provenance, opt.max_seq_length);
  result.stats = LengthStats::from_json(result.manifest.at("length_stats"));
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

}  // namespace esm2
