// `esm2 prepare` as a library call (the app, the benchmark and the tests share it): read the
// sequence and cluster inputs, validate them, write a Corpus directory atomically.
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
  std::filesystem::path clusters;            // optional mmseqs-style `ur50<TAB>ur90` table
  std::filesystem::path parquet;             // optional reference cluster parquet (needs sqlite)
  std::filesystem::path output;
  int max_seq_length = 1024;                 // only for the "longer than" statistic
  bool force = false;                        // replace an existing output
  std::string command;                       // recorded in the manifest
};

struct PrepareResult {
  nlohmann::json manifest;
  LengthStats stats;
  uint64_t unreferenced = 0;  // database rows no cluster names (not included)
  double seconds = 0;
};

PrepareResult prepare_corpus(const PrepareOptions& opt);

}  // namespace esm2
