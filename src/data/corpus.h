// The prepared corpus: what `esm2 prepare` writes and training memory-maps. A directory of flat
// little-endian arrays plus manifest.json (format "esm2-corpus", version kCorpusFormatVersion):
//   residues.bin         uint8  [R]    residue token ids, sequences concatenated (no <cls>/<eos>)
//   offsets.bin          uint64 [n+1]  sequence i = residues[offsets[i] .. offsets[i+1])
//   ids.bin              char   [I]    sequence ids concatenated
//   id_offsets.bin       uint64 [n+1]
//   cluster_offsets.bin  uint64 [C+1]  cluster c = cluster_members[cluster_offsets[c] .. [c+1])
//   cluster_members.bin  uint32 [M]    sequence indices
// The manifest records counts, each file's size and crc32, length statistics, the source files
// (size, crc32) and the command that made it. open() checks all of it, so a truncated, swapped or
// bit-flipped file is an error naming that file rather than wrong training data.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string_view>

#include "data/sequence_table.h"

namespace esm2 {

constexpr int kCorpusFormatVersion = 1;
inline constexpr std::string_view kCorpusFormatName = "esm2-corpus";

class Corpus {
 public:
  static Corpus open(const std::filesystem::path& dir);
  Corpus(Corpus&&) noexcept;
  Corpus& operator=(Corpus&&) noexcept;
  ~Corpus();

  size_t num_sequences() const { return n_; }
  size_t num_clusters() const { return c_; }
  uint64_t num_residues() const { return offsets_[n_]; }
  std::span<const uint8_t> sequence(size_t i) const { return {residues_ + offsets_[i], offsets_[i + 1] - offsets_[i]}; }
  uint64_t length(size_t i) const { return offsets_[i + 1] - offsets_[i]; }
  std::string_view id(size_t i) const {
    return {ids_ + id_offsets_[i], static_cast<size_t>(id_offsets_[i + 1] - id_offsets_[i])};
  }
  std::span<const uint32_t> cluster_members(size_t c) const {
    return {members_ + cluster_offsets_[c], cluster_offsets_[c + 1] - cluster_offsets_[c]};
  }
  std::span<const uint64_t> offsets() const { return {offsets_, n_ + 1}; }
  // The whole cluster tables (cluster c = all_cluster_members()[cluster_offsets()[c] .. [c+1])).
  std::span<const uint64_t> cluster_offsets() const { return {cluster_offsets_, c_ + 1}; }
  std::span<const uint32_t> all_cluster_members() const { return {members_, cluster_offsets_[c_]}; }
  uint64_t min_length() const { return min_length_; }  // residues of the shortest sequence
  const nlohmann::json& manifest() const { return manifest_; }
  const std::filesystem::path& path() const { return dir_; }

 private:
  Corpus() = default;
  struct Mapping;
  std::vector<std::unique_ptr<Mapping>> maps_;
  std::filesystem::path dir_;
  nlohmann::json manifest_;
  size_t n_ = 0, c_ = 0;
  uint64_t min_length_ = 0;
  const uint8_t* residues_ = nullptr;
  const uint64_t* offsets_ = nullptr;
  const char* ids_ = nullptr;
  const uint64_t* id_offsets_ = nullptr;
  const uint64_t* cluster_offsets_ = nullptr;
  const uint32_t* members_ = nullptr;
};

// One corpus file written as a stream (buffered; size and crc32 accumulated for the manifest), for
// `esm2 prepare` at scales that never fit in memory. close() flushes and checks every write.
class CorpusFileWriter {
 public:
  CorpusFileWriter(const std::filesystem::path& path, size_t buffer_bytes = 4 << 20);
  ~CorpusFileWriter();
  CorpusFileWriter(const CorpusFileWriter&) = delete;
  CorpusFileWriter& operator=(const CorpusFileWriter&) = delete;
  void write(const void* data, size_t bytes);
  template <class T>
  void put(const T& v) {
    write(&v, sizeof v);
  }
  void close();
  uint64_t bytes() const { return bytes_; }
  nlohmann::json file_entry() const;  // {"bytes", "crc32"} (after close)

 private:
  void flush();
  std::filesystem::path path_;
  int fd_ = -1;
  std::vector<char> buf_;
  size_t used_ = 0;
  uint64_t bytes_ = 0;
  uint32_t crc_ = 0;
};

// The manifest of a corpus with these counts, statistics and per-file entries; `provenance` is merged in.
nlohmann::json corpus_manifest(uint64_t num_sequences, uint64_t num_clusters, uint64_t num_residues,
                               uint64_t num_cluster_members, const nlohmann::json& length_stats,
                               const nlohmann::json& files, const nlohmann::json& provenance);

// Writes a corpus directory through AtomicDir (an existing `dir` is replaced only after the new one
// is complete). `provenance` is merged into the manifest (sources, command). max_seq_length only
// feeds the "longer than" statistic. replace = false: a `dir` that appears while this runs is an error
// (AtomicDir). Returns the manifest written.
nlohmann::json write_corpus(const std::filesystem::path& dir, const SequenceTable& sequences,
                            const ClusterTable& clusters, const nlohmann::json& provenance, int max_seq_length,
                            bool replace = true);

}  // namespace esm2
