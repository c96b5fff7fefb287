// `esm2 prepare`: FASTA (+ cluster TSV) or the reference's SQLite (+ parquet) → a memory-mapped corpus.
#include <cstdio>
#include <fstream>
#include <string>

#include "apps/command.h"
#include "data/prepare.h"

namespace {

// Peak resident memory of this process image (VmHWM: the mm's high-water mark, which unlike
// getrusage's ru_maxrss does not inherit the RSS of whatever forked and exec'ed us).
long peak_rss_kib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

std::string quote(const std::string& s) {
  return s.find_first_of(" \t'\"") == std::string::npos ? s : "'" + s + "'";
}

esm2::apps::RunFn setup_prepare(CLI::App& app) {
  auto opt = std::make_shared<esm2::PrepareOptions>();
  app.add_option("--fasta", opt->fasta, "FASTA or FASTA.gz file(s) of sequences (repeatable)");
  app.add_option("--clusters", opt->clusters, "cluster membership: an mmseqs-style table `ur50<TAB>ur90` or UniProt's "
                 "uniref50.xml[.gz] (recognised by content; default: every sequence its own cluster)");
  app.add_option("--sqlite", opt->sqlite, "the reference's SQLite database protein(id, sequence), instead of --fasta");
  app.add_option("--parquet", opt->parquet, "the reference's cluster parquet (with --sqlite)");
  app.add_option("--output", opt->output, "corpus directory to write")->required();
  app.add_option("--max-seq-length", opt->max_seq_length, "max tokens per sequence incl. <cls>/<eos>, for the "
                 "'longer than' statistic")->capture_default_str();
  app.add_flag("--force", opt->force, "replace an existing output directory");
  app.add_option("--memory", opt->memory_mib, "MiB for the external sort of FASTA inputs: peak RSS stays below this "
                 "plus ~100 MiB whatever the input size (the SQLite/Parquet inputs are read in memory)")
      ->capture_default_str();
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
    if (long kib = peak_rss_kib(); kib >= 0) std::printf("peak memory (VmHWM) %.1f MiB\n", kib / 1024.0);
    return 0;
  };
}

}  // namespace
ESM2_COMMAND(prepare, "prepare", "Build a memory-mapped training corpus from FASTA/cluster or SQLite/parquet inputs",
             setup_prepare);
