#include "data/prepare.h"

#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <memory>
#include <tuple>

#include "core/atomic_dir.h"
#include "core/error.h"
#include "data/byte_source.h"
#include "data/cluster_tsv.h"
#include "data/corpus.h"
#include "data/external_sort.h"
#include "data/fasta.h"
#include "data/id_hash.h"
#include "data/membership.h"
#include "data/parquet_clusters.h"
#include "data/sqlite_proteins.h"

namespace fs = std::filesystem;

namespace esm2 {

namespace {

nlohmann::json source_entry(const char* role, const fs::path& p, const FileDigest& d) {
  return {{"role", role}, {"path", fs::absolute(p).string()}, {"bytes", d.bytes}, {"crc32", d.crc32}};
}

// Records of the external sorts; each key is unique, so the sort order is total.
struct SeqKey {  // a FASTA record: hash of its id, sequence index
  IdHash128 h;
  uint32_t seq;
  bool operator<(const SeqKey& o) const { return std::tie(h, seq) < std::tie(o.h, o.seq); }
};
struct PairKey {  // one side of a membership pair: hash of the cluster or member id, pair key
  IdHash128 h;
  uint64_t key;
  bool operator<(const PairKey& o) const { return std::tie(h, key) < std::tie(o.h, o.key); }
};
struct KeyCluster {  // pair key -> its cluster, named by the key of the cluster's first pair
  uint64_t key, cluster;
  bool operator<(const KeyCluster& o) const { return key < o.key; }
};
struct KeySeq {  // pair key -> the member's sequence index
  uint64_t key;
  uint32_t seq;
  bool operator<(const KeySeq& o) const { return key < o.key; }
};
struct ClusterSeq {  // the corpus order: clusters by first appearance, members by sequence index
  uint64_t cluster;
  uint32_t seq;
  bool operator<(const ClusterSeq& o) const { return std::tie(cluster, seq) < std::tie(o.cluster, o.seq); }
};

// FASTA files in input order and the index of each one's first sequence, to name a record found by
// index after the files were read.
struct FastaInputs {
  std::vector<fs::path> paths;
  std::vector<uint64_t> first;
  // A pipe (`--fasta <(zcat …)`) is read once: its records are named by their number instead.
  std::string describe(uint64_t seq) const {
    size_t f = static_cast<size_t>(std::upper_bound(first.begin(), first.end(), seq) - first.begin()) - 1;
    if (!fs::is_regular_file(paths[f]))
      return fmt::format("{}: record number {} (a pipe, read once: no id or line to name)", paths[f].string(),
                         seq - first[f] + 1);
    FastaRecordInfo r = locate_fasta_record(paths[f], seq - first[f]);
    return fmt::format("{}: record '{}' (line {})", paths[f].string(), r.id, r.line);
  }
  std::string id(uint64_t seq) const {
    size_t f = static_cast<size_t>(std::upper_bound(first.begin(), first.end(), seq) - first.begin()) - 1;
    if (!fs::is_regular_file(paths[f])) return fmt::format("record number {} of {}", seq - first[f] + 1, paths[f].string());
    return locate_fasta_record(paths[f], seq - first[f]).id;
  }
};

struct ClusterFiles {
  uint64_t clusters = 0, members = 0;
};

// Every sequence its own cluster; fails on a duplicate id (the first one in input order).
ClusterFiles singleton_clusters(ExternalSorter<SeqKey>& ids, const FastaInputs& in, uint64_t n,
                                CorpusFileWriter& offsets, CorpusFileWriter& members) {
  uint64_t dup = UINT64_MAX;
  SeqKey prev{}, cur{};
  bool have = false;
  while (ids.next(cur)) {
    if (have && cur.h == prev.h) dup = std::min<uint64_t>(dup, cur.seq);
    prev = cur;
    have = true;
  }
  if (dup != UINT64_MAX) fail("{}: duplicate id", in.describe(dup));
  for (uint64_t i = 0; i < n; ++i) {
    offsets.put<uint64_t>(i + 1);
    members.put(static_cast<uint32_t>(i));
  }
  return {n, n};
}

// Clusters from a membership file, as read_cluster_tsv numbers them (order of first appearance,
// members in sequence order) and with its errors, through external sorts only.
ClusterFiles membership_clusters(std::unique_ptr<ExternalSorter<SeqKey>> ids, const FastaInputs& in,
                                 const fs::path& file_path, const fs::path& sort_dir, size_t part,
                                 nlohmann::json& sources, CorpusFileWriter& offsets, CorpusFileWriter& members) {
  const std::string file = file_path.string();
  auto reps = std::make_unique<ExternalSorter<PairKey>>(sort_dir, "reps", part);
  auto mems = std::make_unique<ExternalSorter<PairKey>>(sort_dir, "members", part);
  bool xml = detect_membership_format(file_path) == MembershipFormat::UnirefXml;
  FileDigest digest = read_membership(file_path, [&](std::string_view cluster, std::string_view member, uint64_t key) {
    reps->push({hash_id(cluster), key});
    mems->push({hash_id(member), key});
  });
  sources.push_back(source_entry(xml ? "uniref_xml" : "clusters_tsv", file_path, digest));

  // 1. Each pair's cluster: the key of the first pair naming the same cluster id.
  reps->finish();
  auto key_cluster = std::make_unique<ExternalSorter<KeyCluster>>(sort_dir, "key_cluster", part);
  {
    PairKey r{};
    IdHash128 cur{};
    uint64_t first = 0;
    bool have = false;
    while (reps->next(r)) {
      if (!have || r.h != cur) {
        cur = r.h;
        first = r.key;
        have = true;
      }
      key_cluster->push({r.key, first});
    }
  }
  reps.reset();

  // 2. Members joined with the sequence ids (both sorted by hash).
  mems->finish();
  auto key_seq = std::make_unique<ExternalSorter<KeySeq>>(sort_dir, "key_seq", part);
  uint64_t dup_seq = UINT64_MAX, missing_key = UINT64_MAX, repeat_key = UINT64_MAX, repeat_first = 0;
  uint64_t unlisted = 0, first_unlisted = UINT64_MAX;
  {
    SeqKey s{};
    PairKey m{};
    bool hs = ids->next(s), hm = mems->next(m);
    while (hs || hm) {
      IdHash128 h = (!hm || (hs && s.h < m.h)) ? s.h : m.h;
      bool any_seq = false;
      uint32_t seq = 0;
      for (; hs && s.h == h; hs = ids->next(s)) {
        if (any_seq) dup_seq = std::min<uint64_t>(dup_seq, s.seq);
        if (!any_seq) seq = s.seq;
        any_seq = true;
      }
      bool any_member = false;
      uint64_t first_key = 0;
      for (; hm && m.h == h; hm = mems->next(m)) {
        if (!any_member) {
          first_key = m.key;
          if (any_seq) {
            key_seq->push({m.key, seq});
          } else {
            missing_key = std::min(missing_key, m.key);
          }
        } else if (m.key < repeat_key) {
          repeat_key = m.key;
          repeat_first = first_key;
        }
        any_member = true;
      }
      if (any_seq && !any_member) {
        ++unlisted;
        first_unlisted = std::min<uint64_t>(first_unlisted, seq);
      }
    }
  }
  ids.reset();
  mems.reset();
  // The errors read_fasta + read_cluster_tsv would give, the earliest in input order first.
  if (dup_seq != UINT64_MAX) fail("{}: duplicate id", in.describe(dup_seq));
  if (missing_key < repeat_key) {
    MembershipPairInfo p = locate_membership_pair(file_path, missing_key);
    fail("{}: {}: member '{}' is not among the sequences", file, p.where, p.member);
  }
  if (repeat_key != UINT64_MAX) {
    MembershipPairInfo p = locate_membership_pair(file_path, repeat_key);
    fail("{}: {}: member '{}' already listed on {}", file, p.where, p.member,
         locate_membership_pair(file_path, repeat_first).where);
  }
  ESM2_CHECK(unlisted == 0, "{}: {} sequence(s) are in no cluster, the first is '{}'", file, unlisted,
             in.id(first_unlisted));

  // 3. (cluster, sequence) per pair, sorted: the cluster tables in corpus order.
  key_cluster->finish();
  key_seq->finish();
  auto cluster_seq = std::make_unique<ExternalSorter<ClusterSeq>>(sort_dir, "cluster_seq", part);
  {
    KeyCluster kc{};
    KeySeq ks{};
    while (key_seq->next(ks)) {
      do {
        ESM2_ASSERT(key_cluster->next(kc));
      } while (kc.key < ks.key);
      ESM2_ASSERT(kc.key == ks.key);
      cluster_seq->push({kc.cluster, ks.seq});
    }
  }
  key_seq.reset();
  key_cluster.reset();
  cluster_seq->finish();
  ClusterFiles out;
  ClusterSeq cs{};
  uint64_t cur = 0;
  while (cluster_seq->next(cs)) {
    if (out.members > 0 && cs.cluster != cur) {
      offsets.put(out.members);
      ++out.clusters;
    }
    cur = cs.cluster;
    members.put(cs.seq);
    ++out.members;
  }
  if (out.members > 0) {
    offsets.put(out.members);
    ++out.clusters;
  }
  return out;
}

nlohmann::json prepare_fasta_streaming(const PrepareOptions& opt, nlohmann::json provenance) {
  AtomicDir out(opt.output, opt.force);
  const fs::path sort_dir = out.path() / "sort.tmp";
  fs::create_directory(sort_dir);
  // Four sorters are alive at the most (ids, members, key_cluster, key_seq at the join).
  const size_t part = (opt.memory_mib << 20) / 4;
  nlohmann::json sources = nlohmann::json::array();

  CorpusFileWriter residues(out.path() / "residues.bin"), offsets(out.path() / "offsets.bin"),
      ids(out.path() / "ids.bin"), id_offsets(out.path() / "id_offsets.bin");
  offsets.put<uint64_t>(0);
  id_offsets.put<uint64_t>(0);
  uint64_t n = 0, num_residues = 0, id_bytes = 0;
  LengthCounter lengths;
  auto id_keys = std::make_unique<ExternalSorter<SeqKey>>(sort_dir, "ids", part);
  FastaInputs in;
  for (const auto& f : opt.fasta) {
    in.paths.push_back(f);
    in.first.push_back(n);
    const uint64_t before = n;
    FileDigest d = parse_fasta(f, [&](std::string_view id, uint64_t line, std::span<const uint8_t> tokens) {
      ESM2_CHECK(n < UINT32_MAX, "{}: record '{}' (line {}): too many sequences (the corpus indexes them with 32 bits)",
                 f.string(), id, line);
      residues.write(tokens.data(), tokens.size());
      num_residues += tokens.size();
      offsets.put(num_residues);
      ids.write(id.data(), id.size());
      id_bytes += id.size();
      id_offsets.put(id_bytes);
      lengths.add(tokens.size());
      id_keys->push({hash_id(id), static_cast<uint32_t>(n)});
      ++n;
    });
    // An empty input among several is as likely a mistake (a failed download, a wrong name) as a lone one.
    ESM2_CHECK(n > before, "{}: no FASTA records (an empty file)", f.string());
    sources.push_back(source_entry("fasta", f, d));
  }
  for (auto* w : {&residues, &offsets, &ids, &id_offsets}) w->close();
  id_keys->finish();

  CorpusFileWriter cluster_offsets(out.path() / "cluster_offsets.bin"),
      cluster_members(out.path() / "cluster_members.bin");
  cluster_offsets.put<uint64_t>(0);
  ClusterFiles cl = opt.clusters.empty()
                        ? singleton_clusters(*id_keys, in, n, cluster_offsets, cluster_members)
                        : membership_clusters(std::move(id_keys), in, opt.clusters, sort_dir, part, sources,
                                              cluster_offsets, cluster_members);
  cluster_offsets.close();
  cluster_members.close();
  id_keys.reset();
  fs::remove_all(sort_dir);

  nlohmann::json files = nlohmann::json::object();
  files["residues.bin"] = residues.file_entry();
  files["offsets.bin"] = offsets.file_entry();
  files["ids.bin"] = ids.file_entry();
  files["id_offsets.bin"] = id_offsets.file_entry();
  files["cluster_offsets.bin"] = cluster_offsets.file_entry();
  files["cluster_members.bin"] = cluster_members.file_entry();
  provenance["sources"] = sources;
  nlohmann::json m = corpus_manifest(n, cl.clusters, num_residues, cl.members, lengths.stats(opt.max_seq_length).to_json(),
                                     files, provenance);
  write_file(out.path() / "manifest.json", m.dump(2) + "\n");
  out.commit();
  return m;
}

// The reference's inputs (SQLite, Parquet): read in memory, as they always were.
nlohmann::json prepare_in_memory(const PrepareOptions& opt, nlohmann::json provenance, uint64_t& unreferenced) {
  nlohmann::json sources = nlohmann::json::array();
  auto record_source = [&](const char* role, const fs::path& p) { sources.push_back(source_entry(role, p, digest_file(p))); };
  SequenceTable sequences;
  ClusterTable clusters;
  if (!opt.parquet.empty()) {
    ParquetCorpusInput in = read_parquet_clusters(opt.parquet, opt.sqlite);
    sequences = std::move(in.sequences);
    clusters = std::move(in.clusters);
    unreferenced = in.unreferenced;
    record_source("sqlite", opt.sqlite);
    record_source(in.validation ? "parquet_validation_clusters" : "parquet_train_clusters", opt.parquet);
  } else {
    read_sqlite_proteins(opt.sqlite, sequences);
    record_source("sqlite", opt.sqlite);
  }
  if (!opt.clusters.empty()) {
    ESM2_CHECK(detect_membership_format(opt.clusters) == MembershipFormat::Tsv,
               "{}: a UniRef XML membership file needs --fasta sequences (UniRef90 FASTA), not --sqlite",
               opt.clusters.string());
    clusters = read_cluster_tsv(opt.clusters, sequences);
    record_source("clusters_tsv", opt.clusters);
  } else if (opt.parquet.empty()) {
    clusters = ClusterTable::singletons(sequences.size());
  }
  ESM2_CHECK(sequences.size() > 0, "{}: no sequences{}", opt.sqlite.string(),
             opt.parquet.empty() ? " (table protein is empty)" : fmt::format(" named by {}", opt.parquet.string()));
  provenance["sources"] = sources;
  provenance["unreferenced_database_rows"] = unreferenced;
  return write_corpus(opt.output, sequences, clusters, provenance, opt.max_seq_length, opt.force);
}

bool pid_is_gone(const std::string& digits) {
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 9) return false;
  pid_t pid = static_cast<pid_t>(std::stol(digits));
  return pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH;
}

// Every input but FASTA must be a regular file, and none may be the output or inside it: --clusters,
// --sqlite and --parquet are read more than once (a pipe would give a wrong error or hang), and --force
// would replace an input before it was read. FASTA is streamed once (a pipe's records are named by number
// in errors).
void check_inputs(const PrepareOptions& opt) {
  std::vector<std::pair<const char*, fs::path>> inputs;
  for (const auto& f : opt.fasta) inputs.emplace_back("--fasta", f);
  for (auto [flag, p] : {std::pair{"--sqlite", &opt.sqlite}, {"--clusters", &opt.clusters}, {"--parquet", &opt.parquet}})
    if (!p->empty()) inputs.emplace_back(flag, *p);
  std::error_code ec;
  for (const auto& [flag, p] : inputs) {
    ESM2_CHECK(fs::exists(p, ec), "{} {}: no such file", flag, p.string());
    ESM2_CHECK(!fs::is_directory(p, ec), "{} {}: is a directory", flag, p.string());
    ESM2_CHECK(std::string_view(flag) == "--fasta" || fs::is_regular_file(p, ec),
               "{} {}: not a regular file (a pipe or device); prepare reads this input more than once: write it to a "
               "file first", flag, p.string());
    ESM2_CHECK(!is_same_or_inside(p, opt.output), "{} {}: is the output {} or inside it (--output would replace it)",
               flag, p.string(), opt.output.string());
  }
}

}  // namespace

void remove_stale_prepare_dirs(const fs::path& output) {
  fs::path target = output.lexically_normal();
  if (target.filename().empty()) target = target.parent_path();
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string name = target.filename().string();
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) return;
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string f = e.path().filename().string();
    for (const char* tag : {".tmp-", ".old-"}) {
      const std::string prefix = name + tag;
      if (f.rfind(prefix, 0) != 0 || !pid_is_gone(f.substr(prefix.size()))) continue;
      if (tag[1] == 'o' && !fs::exists(target, ec)) {
        fs::rename(e.path(), target, ec);  // the complete previous corpus, moved aside by a killed --force
      } else {
        fs::remove_all(e.path(), ec);
      }
    }
  }
}

PrepareResult prepare_corpus(const PrepareOptions& opt) {
  auto t0 = std::chrono::steady_clock::now();
  ESM2_CHECK(!opt.output.empty(), "prepare: --output is required");
  ESM2_CHECK(opt.fasta.empty() != opt.sqlite.empty(), "prepare: give either --fasta or --sqlite (exactly one)");
  ESM2_CHECK(opt.clusters.empty() || opt.parquet.empty(), "prepare: give --clusters or --parquet, not both");
  ESM2_CHECK(opt.parquet.empty() || !opt.sqlite.empty(), "prepare: --parquet needs --sqlite (the sequences)");
  ESM2_CHECK(opt.max_seq_length >= 3, "prepare: --max-seq-length {} is below 3 (<cls>, a residue, <eos>)",
             opt.max_seq_length);
  ESM2_CHECK(opt.memory_mib >= 1, "prepare: --memory {} MiB is below 1", opt.memory_mib);
  ESM2_CHECK(opt.memory_mib <= (size_t{1} << 24), "prepare: --memory {} MiB is above 16 TiB", opt.memory_mib);
  check_inputs(opt);
  remove_stale_prepare_dirs(opt.output);
  // Refuse before reading anything: minutes of parsing must not end in "exists".
  ESM2_CHECK(opt.force || !fs::exists(opt.output), "{}: output exists (pass --force to replace it)",
             opt.output.string());

  std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  nlohmann::json provenance = {{"command", opt.command}, {"created_utc", stamp}};
  PrepareResult result;
  if (!opt.fasta.empty()) {
    provenance["unreferenced_database_rows"] = 0;
    result.manifest = prepare_fasta_streaming(opt, provenance);
  } else {
    result.manifest = prepare_in_memory(opt, provenance, result.unreferenced);
  }
  result.stats = LengthStats::from_json(result.manifest.at("length_stats"));
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

}  // namespace esm2
