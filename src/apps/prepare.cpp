// `esm2 prepare`: FASTA (+ cluster TSV) or the reference's SQLite (+ parquet) → a memory-mapped corpus.
#include <cstdio>
#include <fstream>
#include <string>

#include "apps/cli_checks.h"
#include "apps/command.h"
#include "data/prepare.h"

namespace {

// A peak of this process image from /proc/self/status: VmHWM (resident; unlike getrusage's ru_maxrss
// it does not inherit the RSS of whatever forked and exec'ed us) or VmPeak (address space, which is what
// `ulimit -v` limits; it includes the shared libraries mapped at start, e.g. cuBLAS in a CUDA build).
long status_kib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const std::string k = key;
  while (std::getline(f, line))
    if (line.rfind(k, 0) == 0) return std::stol(line.substr(k.size()));
  return -1;
}

std::string quote(const std::string& s) {
  return s.find_first_of(" \t'\"") == std::string::npos ? s : "'" + s + "'";
}

esm2::apps::RunFn setup_prepare(CLI::App& app) {
  auto opt = std::make_shared<esm2::PrepareOptions>();
  using esm2::apps::nonempty;
  app.add_option("--fasta", opt->fasta, "FASTA or FASTA.gz file(s) of sequences (repeatable)")->check(nonempty());
  app.add_option("--clusters", opt->clusters, "cluster membership: an mmseqs-style table `ur50<TAB>ur90` or UniProt's "
                 "uniref50.xml[.gz] (recognised by content; default: every sequence its own cluster)")
      ->check(nonempty());
  app.add_option("--sqlite", opt->sqlite, "the reference's SQLite database protein(id, sequence), instead of --fasta")
      ->check(nonempty());
  app.add_option("--parquet", opt->parquet, "the reference's cluster parquet (with --sqlite)")->check(nonempty());
  app.add_option("--output", opt->output, "corpus directory to write")->required()->check(nonempty());
  app.add_option("--max-seq-length", opt->max_seq_length, "max tokens per sequence incl. <cls>/<eos>, for the "
                 "'longer than' statistic")->capture_default_str();
  app.add_flag("--force", opt->force, "replace an existing output directory");
  app.add_option("--memory", opt->memory_mib, "MiB for the external sort of FASTA inputs: peak RSS stays below this "
                 "plus ~100 MiB of buffers and the program's own pages (~80 MiB more in a CUDA build) whatever the input size "
                 "(the SQLite/Parquet inputs are read in memory)")
      ->check(esm2::apps::unsigned_integer())->capture_default_str();
  return [opt] {
    std::string cmd = "esm2 prepare";
    for (const auto& f : opt->fasta) cmd += " --fasta " + quote(f.string());
    if (!opt->sqlite.empty()) cmd += " --sqlite " + quote(opt->sqlite.string());
    if (!opt->clusters.empty()) cmd += " --clusters " + quote(opt->clusters.string());
    if (!opt->parquet.empty()) cmd += " --parquet " + quote(opt->parquet.string());
    cmd += " --output " + quote(opt->output.string());
    cmd += " --max-seq-length " + std::to_string(opt->max_seq_length);
    if (opt->force) cmd += " --force";
    cmd += " --memory " + std::to_string(opt->memory_mib);
    opt->command = cmd;
    esm2::PrepareResult r = esm2::prepare_corpus(*opt);
    const auto& m = r.manifest;
    std::printf("wrote %s\nclusters %llu\n%s", opt->output.c_str(),
                static_cast<unsigned long long>(m.at("num_clusters").get<uint64_t>()), r.stats.summary().c_str());
    if (r.unreferenced > 0)
      std::printf("database rows named by no cluster (left out): %llu\n", static_cast<unsigned long long>(r.unreferenced));
    std::printf("wall time %.2f s (%.1f M residues/s)\n", r.seconds, r.stats.residues / r.seconds / 1e6);
    if (long kib = status_kib("VmHWM:"); kib >= 0) std::printf("peak memory (VmHWM) %.1f MiB\n", kib / 1024.0);
    if (long kib = status_kib("VmPeak:"); kib >= 0) std::printf("peak address space (VmPeak) %.1f MiB\n", kib / 1024.0);
    return 0;
  };
}

}  // namespace
ESM2_COMMAND(prepare, "prepare", "Build a memory-mapped training corpus from FASTA/cluster or SQLite/parquet inputs",
             setup_prepare);
