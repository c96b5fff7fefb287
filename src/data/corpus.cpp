#include "data/corpus.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <bit>
#include <cerrno>
#include <cstring>

#include "core/atomic_dir.h"
#include "core/error.h"
#include "data/length_stats.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;

namespace esm2 {

static_assert(std::endian::native == std::endian::little, "the corpus format is little-endian");

namespace {

uint32_t crc_of(const void* data, size_t bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto* p = static_cast<const Bytef*>(data);
  while (bytes > 0) {  // crc32 takes a 32-bit length
    uInt chunk = static_cast<uInt>(std::min<size_t>(bytes, 1u << 30));
    crc = crc32(crc, p, chunk);
    p += chunk;
    bytes -= chunk;
  }
  return static_cast<uint32_t>(crc);
}

template <class T>
std::string_view bytes_of(const std::vector<T>& v) {
  return {reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T)};
}

}  // namespace

struct Corpus::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr && size) ::munmap(addr, size);
  }
};

Corpus::Corpus(Corpus&&) noexcept = default;
Corpus& Corpus::operator=(Corpus&&) noexcept = default;
Corpus::~Corpus() = default;

CorpusFileWriter::CorpusFileWriter(const fs::path& path, size_t buffer_bytes) : path_(path), buf_(buffer_bytes) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ESM2_CHECK(fd_ >= 0, "{}: cannot create: {}", path.string(), std::strerror(errno));
}

CorpusFileWriter::~CorpusFileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void CorpusFileWriter::write(const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    if (used_ == buf_.size()) flush();
    size_t n = std::min(bytes, buf_.size() - used_);
    std::memcpy(buf_.data() + used_, p, n);
    used_ += n;
    p += n;
    bytes -= n;
  }
}

void CorpusFileWriter::flush() {
  crc_ = static_cast<uint32_t>(crc32(crc_, reinterpret_cast<const Bytef*>(buf_.data()), static_cast<uInt>(used_)));
  size_t done = 0;
  while (done < used_) {
    ssize_t w = ::write(fd_, buf_.data() + done, used_ - done);
    if (w < 0 && errno == EINTR) continue;
    ESM2_CHECK(w > 0, "{}: write failed (disk full?): {}", path_.string(), std::strerror(errno));
    done += static_cast<size_t>(w);
  }
  bytes_ += used_;
  used_ = 0;
}

void CorpusFileWriter::close() {
  flush();
  int rc = ::close(fd_);
  fd_ = -1;
  ESM2_CHECK(rc == 0, "{}: close failed: {}", path_.string(), std::strerror(errno));
}

nlohmann::json CorpusFileWriter::file_entry() const { return {{"bytes", bytes_}, {"crc32", crc_}}; }

nlohmann::json corpus_manifest(uint64_t num_sequences, uint64_t num_clusters, uint64_t num_residues,
                               uint64_t num_cluster_members, const nlohmann::json& length_stats,
                               const nlohmann::json& files, const nlohmann::json& provenance) {
  nlohmann::json m = {
      {"format", kCorpusFormatName},
      {"format_version", kCorpusFormatVersion},
      {"num_sequences", num_sequences},
      {"num_clusters", num_clusters},
      {"num_residues", num_residues},
      {"num_cluster_members", num_cluster_members},
      {"length_stats", length_stats},
      {"files", files},
  };
  for (auto& [k, v] : provenance.items()) m[k] = v;
  return m;
}

nlohmann::json write_corpus(const fs::path& dir, const SequenceTable& sequences, const ClusterTable& clusters,
                            const nlohmann::json& provenance, int max_seq_length, bool replace) {
  ESM2_CHECK(sequences.size() > 0, "{}: no sequences to write", dir.string());
  ESM2_CHECK(clusters.offsets.back() == clusters.members.size(), "{}: inconsistent cluster table", dir.string());
  AtomicDir out(dir, replace);
  nlohmann::json files = nlohmann::json::object();
  auto put = [&](const char* name, std::string_view bytes) {
    write_file(out.path() / name, bytes);
    files[name] = {{"bytes", bytes.size()}, {"crc32", crc_of(bytes.data(), bytes.size())}};
  };
  put("residues.bin", bytes_of(sequences.tokens()));
  put("offsets.bin", bytes_of(sequences.offsets()));
  put("ids.bin", sequences.id_bytes());
  put("id_offsets.bin", bytes_of(sequences.id_offsets()));
  put("cluster_offsets.bin", bytes_of(clusters.offsets));
  put("cluster_members.bin", bytes_of(clusters.members));

  LengthStats stats = compute_length_stats(sequences.offsets(), max_seq_length);
  nlohmann::json m = corpus_manifest(sequences.size(), clusters.size(), sequences.num_residues(),
                                     clusters.members.size(), stats.to_json(), files, provenance);
  write_file(out.path() / "manifest.json", m.dump(2) + "\n");
  out.commit();
  return m;
}

Corpus Corpus::open(const fs::path& dir) {
  Corpus c;
  c.dir_ = dir;
  const fs::path mpath = dir / "manifest.json";
  ESM2_CHECK(fs::is_directory(dir), "{}: not a corpus directory (missing; run `esm2 prepare`)", dir.string());
  try {
    c.manifest_ = nlohmann::json::parse(read_file(mpath));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", mpath.string(), e.what());
  }
  const auto& m = c.manifest_;
  uint64_t n = 0, clusters = 0, residues = 0, members = 0;
  try {
    ESM2_CHECK(m.value("format", "") == kCorpusFormatName, "{}: format is '{}', expected '{}'", mpath.string(),
               m.value("format", ""), kCorpusFormatName);
    int version = m.at("format_version");
    ESM2_CHECK(version == kCorpusFormatVersion,
               "{}: corpus format version {} but this esm2 reads version {} (re-run `esm2 prepare`)",
               mpath.string(), version, kCorpusFormatVersion);
    n = m.at("num_sequences");
    clusters = m.at("num_clusters");
    residues = m.at("num_residues");
    members = m.at("num_cluster_members");
  } catch (const nlohmann::json::exception& e) {
    fail("{}: missing or mistyped key: {}", mpath.string(), e.what());
  }
  ESM2_CHECK(n > 0 && n <= UINT32_MAX, "{}: bad num_sequences {}", mpath.string(), n);

  // Maps one file after checking its size against the counts and the manifest, and its crc32.
  auto map = [&](const char* name, uint64_t expected_bytes) -> const void* {
    fs::path p = dir / name;
    uint64_t listed = 0;
    uint32_t crc = 0;
    try {
      listed = m.at("files").at(name).at("bytes");
      crc = m.at("files").at(name).at("crc32");
    } catch (const nlohmann::json::exception&) {
      fail("{}: no entry for '{}' in files", mpath.string(), name);
    }
    ESM2_CHECK(listed == expected_bytes, "{}: files.{}.bytes is {} but the counts imply {}", mpath.string(), name,
               listed, expected_bytes);
    int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    ESM2_CHECK(fd >= 0, "{}: cannot open: {}", p.string(), std::strerror(errno));
    struct stat st {};
    ::fstat(fd, &st);
    if (static_cast<uint64_t>(st.st_size) != expected_bytes) {
      ::close(fd);
      fail("{}: size {} bytes, the manifest says {} (truncated or replaced file)", p.string(), st.st_size,
           expected_bytes);
    }
    auto mp = std::make_unique<Mapping>();
    if (expected_bytes > 0) {
      mp->addr = ::mmap(nullptr, expected_bytes, PROT_READ, MAP_SHARED, fd, 0);
      int err = errno;
      ::close(fd);
      ESM2_CHECK(mp->addr != MAP_FAILED, "{}: mmap failed: {}", p.string(), std::strerror(err));
      mp->size = expected_bytes;
    } else {
      ::close(fd);
    }
    uint32_t actual = crc_of(mp->addr, expected_bytes);
    ESM2_CHECK(actual == crc, "{}: crc32 {:08x} does not match the manifest's {:08x} (corrupt file)", p.string(),
               actual, crc);
    const void* addr = mp->addr;
    c.maps_.push_back(std::move(mp));
    return addr;
  };
  uint64_t id_bytes = 0;
  try {
    id_bytes = m.at("files").at("ids.bin").at("bytes");
  } catch (const nlohmann::json::exception&) {
    fail("{}: no entry for 'ids.bin' in files", mpath.string());
  }
  c.n_ = n;
  c.c_ = clusters;
  c.residues_ = static_cast<const uint8_t*>(map("residues.bin", residues));
  c.offsets_ = static_cast<const uint64_t*>(map("offsets.bin", (n + 1) * 8));
  c.ids_ = static_cast<const char*>(map("ids.bin", id_bytes));
  c.id_offsets_ = static_cast<const uint64_t*>(map("id_offsets.bin", (n + 1) * 8));
  c.cluster_offsets_ = static_cast<const uint64_t*>(map("cluster_offsets.bin", (clusters + 1) * 8));
  c.members_ = static_cast<const uint32_t*>(map("cluster_members.bin", members * 4));

  // Structure: a file whose crc matches may still come from a different corpus than the manifest.
  // Each check first runs as a branch-free (vectorised) pass and names the bad entry only on failure:
  // at UniRef scale these passes, like the crc32s, are what opening costs.
  auto monotone = [&](const uint64_t* o, size_t count, uint64_t end, const char* name) {
    ESM2_CHECK(o[0] == 0 && o[count] == end, "{}: does not start at 0 and end at {}", (dir / name).string(), end);
    bool bad = false;
    for (size_t i = 0; i < count; ++i) bad |= o[i] > o[i + 1];
    if (!bad) return;
    for (size_t i = 0; i < count; ++i)
      ESM2_CHECK(o[i] <= o[i + 1], "{}: entry {} decreases", (dir / name).string(), i + 1);
  };
  monotone(c.offsets_, n, residues, "offsets.bin");
  monotone(c.id_offsets_, n, id_bytes, "id_offsets.bin");
  monotone(c.cluster_offsets_, clusters, members, "cluster_offsets.bin");
  uint64_t shortest = UINT64_MAX;
  for (size_t i = 0; i < n; ++i) shortest = std::min(shortest, c.offsets_[i + 1] - c.offsets_[i]);
  if (shortest == 0)
    for (size_t i = 0; i < n; ++i)
      ESM2_CHECK(c.offsets_[i] < c.offsets_[i + 1], "{}: sequence {} is empty", (dir / "offsets.bin").string(), i);
  c.min_length_ = shortest;
  // residue_token yields <unk> or one of the 25 letter tokens (ids 3..28): one unsigned compare.
  uint8_t bad_token = 0;
  for (uint64_t k = 0; k < residues; ++k) bad_token |= static_cast<uint8_t>(c.residues_[k] - kUnk) >= 26;
  if (bad_token)
    for (uint64_t k = 0; k < residues; ++k)
      ESM2_CHECK(c.residues_[k] >= kUnk && c.residues_[k] < kFirstAminoAcid + 25,
                 "{}: byte {} is not a residue token ({})", (dir / "residues.bin").string(), k, c.residues_[k]);
  bool bad_member = false;
  for (uint64_t k = 0; k < members; ++k) bad_member |= c.members_[k] >= n;
  if (bad_member)
    for (uint64_t k = 0; k < members; ++k)
      ESM2_CHECK(c.members_[k] < n, "{}: member {} = {} is out of range", (dir / "cluster_members.bin").string(), k,
                 c.members_[k]);
  return c;
}

}  // namespace esm2
