// `esm2 prepare` as a library call (the app, the benchmark and the tests share it): read the
// sequence and cluster inputs, validate them, write a Corpus directory atomically.
//
// FASTA inputs are streamed: residues, offsets and ids go straight to the corpus files, and every
// id join (duplicate ids, cluster members, clusters numbered by first appearance) runs as an
// external sort of fixed-width records (128-bit id hashes, data/id_hash.h) in the output's temp
// directory, so peak memory is bounded by `memory_mib` plus ~100 MiB of buffers whatever the input
// size. The SQLite/Parquet inputs (the reference's files) are read in memory.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/length_stats.h"

namespace esm2 {

struct PrepareOptions {
  std::vector<std::filesystem::path> fasta;  // FASTA / FASTA.gz files (ids unique across all of them)
  std::filesystem::path sqlite;              // or: the reference's protein(id, sequence) database
  std::filesystem::path clusters;            // optional `ur50<TAB>ur90` table or UniProt uniref50.xml[.gz]
  std::filesystem::path parquet;             // optional reference cluster parquet (needs sqlite)
  std::filesystem::path output;
  int max_seq_length = 1024;                 // only for the "longer than" statistic
  bool force = false;                        // replace an existing output
  size_t memory_mib = 1024;                  // external-sort budget of the FASTA path
  std::string command;                       // recorded in the manifest
};

struct PrepareResult {
  nlohmann::json manifest;
  LengthStats stats;
  uint64_t unreferenced = 0;  // database rows no cluster names (not included)
  double seconds = 0;
};

PrepareResult prepare_corpus(const PrepareOptions& opt);

// Removes what a killed `esm2 prepare` of `output` left beside it: `<output>.tmp-<pid>` directories
// of processes that no longer run, and a `<output>.old-<pid>` one (the previous corpus, moved aside
// by --force just before the kill) goes back into place when `output` is missing. prepare_corpus
// calls it first; exposed for the tests.
void remove_stale_prepare_dirs(const std::filesystem::path& output);

}  // namespace esm2
