// Streaming `esm2 prepare` (bounded memory, external sort): the corpus equals what the in-memory
// readers (read_fasta + read_cluster_tsv + write_corpus) make from the same input, also when every
// sort spills to disk; UniRef inputs (FASTA headers, uniref50.xml, TSV, the reference's Parquet) give
// byte-identical corpora; errors keep their messages; a killed prepare leaves no corpus and a rerun
// succeeds; 200M residues prepare under an enforced memory limit far below the input size.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>

#include <chrono>
#include <fstream>
#include <random>
#include <thread>

#include "core/atomic_dir.h"
#include "data/cluster_tsv.h"
#include "data/corpus.h"
#include "data/external_sort.h"
#include "data/fasta.h"
#include "data/membership.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "test_util.h"

using namespace esm2;
using namespace esm2::testing;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

namespace {

const fs::path kUniref = fs::path(ESM2_SOURCE_DIR) / "tests/fixtures/uniref";
const char* kBins[] = {"residues.bin", "offsets.bin", "ids.bin", "id_offsets.bin", "cluster_offsets.bin",
                       "cluster_members.bin"};

PrepareOptions options(std::vector<fs::path> fasta, fs::path clusters, fs::path out, size_t memory_mib = 1024) {
  PrepareOptions o;
  o.fasta = std::move(fasta);
  o.clusters = std::move(clusters);
  o.output = std::move(out);
  o.memory_mib = memory_mib;
  return o;
}

void expect_same_bins(const fs::path& a, const fs::path& b) {
  for (const char* f : kBins) EXPECT_EQ(read_file(a / f), read_file(b / f)) << a << " vs " << b << ": " << f;
}

char letter(uint8_t token) { return kVocab[token].size() == 1 ? kVocab[token][0] : 'J'; }  // <unk> came from J

// `copies` renamed copies of the bundled sample (ids suffixed _r<k>, clusters renamed likewise) as one
// FASTA and one TSV; the sample is 3.59M residues, 9,466 sequences, 4,000 clusters.
std::pair<fs::path, fs::path> scaled_sample(const fs::path& dir, int copies) {
  SequenceTable t;
  read_fasta(sample_dir() / "train.fasta.gz", t);
  ClusterTable c = read_cluster_tsv(sample_dir() / "train_clusters.tsv", t);
  fs::path fa = dir / "scaled.fasta", tsv = dir / "scaled.tsv";
  std::ofstream f(fa, std::ios::binary), m(tsv, std::ios::binary);
  std::string rec;
  for (int k = 0; k < copies; ++k) {
    for (size_t i = 0; i < t.size(); ++i) {
      rec = fmt::format(">{}_r{} copy\n", t.id(i), k);
      auto s = t.sequence(i);
      for (size_t j = 0; j < s.size(); ++j) {
        rec += letter(s[j]);
        if (j % 60 == 59 || j + 1 == s.size()) rec += '\n';
      }
      f << rec;
    }
    // Clusters of later copies come first in the TSV: cluster numbering must follow the TSV.
    for (size_t cl = c.size(); cl-- > 0;)
      for (uint64_t j = c.offsets[cl]; j < c.offsets[cl + 1]; ++j)
        m << "C" << cl << "_r" << (copies - 1 - k) << '\t' << t.id(c.members[j]) << "_r" << (copies - 1 - k) << '\n';
  }
  return {fa, tsv};
}

// The oracle: the in-memory readers and writer.
void prepare_in_memory(const std::vector<fs::path>& fasta, const fs::path& tsv, const fs::path& out) {
  SequenceTable t;
  for (const auto& f : fasta) read_fasta(f, t);
  ClusterTable c = tsv.empty() ? ClusterTable::singletons(t.size()) : read_cluster_tsv(tsv, t);
  write_corpus(out, t, c, nlohmann::json::object(), 1024);
}

}  // namespace

TEST(ExternalSort, SpilledRunsMergeToTheSortedSequence) {
  ScratchDir d;
  struct Rec {
    uint64_t key;
    uint32_t tag;
    bool operator<(const Rec& o) const { return key != o.key ? key < o.key : tag < o.tag; }
  };
  std::mt19937_64 rng(7);
  std::vector<Rec> all;
  ExternalSorter<Rec> s(d.path, "t", 16 * 1024);  // 1024 records per run: ~49 runs
  for (uint32_t i = 0; i < 50'000; ++i) {
    Rec r{rng() % 5000, i};
    all.push_back(r);
    s.push(r);
  }
  s.finish();
  std::sort(all.begin(), all.end());
  Rec r{};
  size_t k = 0;
  while (s.next(r)) {
    ASSERT_LT(k, all.size());
    ASSERT_EQ(r.key, all[k].key);
    ASSERT_EQ(r.tag, all[k].tag);
    ++k;
  }
  EXPECT_EQ(k, all.size());
  EXPECT_GT(std::distance(fs::directory_iterator(d.path), fs::directory_iterator{}), 40);
}

TEST(StreamingPrepare, EqualsTheInMemoryReadersWhenEverySortSpills) {
  ScratchDir d;
  auto [fa, tsv] = scaled_sample(d.path, 4);  // 37,864 sequences: ~4 runs per sort at 1 MiB
  prepare_in_memory({fa}, tsv, d / "oracle");
  prepare_corpus(options({fa}, tsv, d / "stream", 1));
  expect_same_bins(d / "oracle", d / "stream");
  Corpus c = Corpus::open(d / "stream");
  EXPECT_EQ(c.num_sequences(), 4u * 9466u);
  EXPECT_EQ(c.num_clusters(), 4u * 4000u);
  EXPECT_EQ(c.manifest().at("length_stats"), Corpus::open(d / "oracle").manifest().at("length_stats"));
  EXPECT_FALSE(fs::exists(d / "stream" / "sort.tmp"));
  // Without clusters (singletons), and over several files (ids unique across them), gzip included.
  prepare_in_memory({sample_dir() / "train.fasta.gz", sample_dir() / "valid.fasta.gz"}, {}, d / "oracle2");
  prepare_corpus(options({sample_dir() / "train.fasta.gz", sample_dir() / "valid.fasta.gz"}, {}, d / "stream2", 1));
  expect_same_bins(d / "oracle2", d / "stream2");
}

TEST(StreamingPrepare, UnirefXmlTsvAndFastaHeaders) {
  if (!uniref_xml_supported()) GTEST_SKIP() << "built without libexpat (libexpat1-dev)";
  ScratchDir d;
  const fs::path fa = kUniref / "uniref90.fasta";
  prepare_corpus(options({fa}, kUniref / "uniref50_members.tsv", d / "tsv"));
  prepare_corpus(options({fa}, kUniref / "uniref50.xml", d / "xml"));
  std::string xml = read_file(kUniref / "uniref50.xml");
  prepare_corpus(options({fa}, write_gzip(d / "uniref50.xml.gz", xml), d / "xmlgz"));
  expect_same_bins(d / "tsv", d / "xml");
  expect_same_bins(d / "tsv", d / "xmlgz");
  prepare_in_memory({fa}, kUniref / "uniref50_members.tsv", d / "oracle");
  expect_same_bins(d / "oracle", d / "xml");

  // Hand-computed (tests/fixtures/uniref/README.md): the id is the header's first word; clusters in
  // entry order, members in FASTA order; two UniProtKB members of UniRef90_Q6GZX4 give one member.
  Corpus c = Corpus::open(d / "xml");
  ASSERT_EQ(c.num_sequences(), 8u);
  EXPECT_EQ(c.id(0), "UniRef90_Q6GZX3");
  EXPECT_EQ(c.id(3), "UniRef90_UPI0000000AB2");
  EXPECT_EQ(c.length(7), 17u);  // lower-case residues
  ASSERT_EQ(c.num_clusters(), 4u);
  auto members = [&](size_t k) {
    auto m = c.cluster_members(k);
    return std::vector<uint32_t>(m.begin(), m.end());
  };
  EXPECT_EQ(members(0), (std::vector<uint32_t>{0, 2, 3}));
  EXPECT_EQ(members(1), (std::vector<uint32_t>{6, 7}));
  EXPECT_EQ(members(2), (std::vector<uint32_t>{4, 5}));
  EXPECT_EQ(members(3), (std::vector<uint32_t>{1}));
  EXPECT_EQ(c.manifest().at("sources")[1].at("role"), "uniref_xml");
  EXPECT_EQ(Corpus::open(d / "tsv").manifest().at("sources")[1].at("role"), "clusters_tsv");
}

// The reference's Parquet path (SQLite sequences, parquet clusters) and the FASTA + TSV / XML paths
// give byte-identical corpora for the same content: the FASTA, TSV and XML are written from the
// Parquet corpus (sequences in its order, one entry per parquet row).
TEST(StreamingPrepare, ParquetTsvAndXmlPathsGiveIdenticalCorpora) {
  if (!uniref_xml_supported()) GTEST_SKIP() << "built without libexpat (libexpat1-dev)";
  ScratchDir d;
  PrepareOptions po;
  po.sqlite = sample_dir() / "train.db";
  po.parquet = fs::path(ESM2_SOURCE_DIR) / "tests/fixtures/parquet/train_default.parquet";
  po.output = d / "parquet";
  prepare_corpus(po);
  Corpus p = Corpus::open(d / "parquet");
  std::string fasta, tsv, xml = "<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<UniRef50 xmlns=\"http://uniprot.org/uniref\">\n";
  for (size_t i = 0; i < p.num_sequences(); ++i) {
    fasta += fmt::format(">{} n=1 Tax=x TaxID=1 RepID=x\n", p.id(i));
    for (uint8_t t : p.sequence(i)) fasta += letter(t);
    fasta += "\n";
  }
  for (size_t k = 0; k < p.num_clusters(); ++k) {
    std::string name = "UniRef50_C" + std::to_string(k);
    xml += "<entry id=\"" + name + "\" updated=\"2024-01-01\">\n";
    bool rep = true;
    for (uint32_t m : p.cluster_members(k)) {
      tsv += name + "\t" + std::string(p.id(m)) + "\n";
      const char* tag = rep ? "representativeMember" : "member";
      xml += std::string("<") + tag + "><dbReference type=\"UniProtKB ID\" id=\"X\">" +
             "<property type=\"UniRef90 ID\" value=\"" + std::string(p.id(m)) + "\"/></dbReference></" + tag + ">\n";
      rep = false;
    }
    xml += "</entry>\n";
  }
  xml += "</UniRef50>\n";
  write_text(d / "s.fasta", fasta);
  prepare_corpus(options({d / "s.fasta"}, write_text(d / "c.tsv", tsv), d / "tsv", 1));
  prepare_corpus(options({d / "s.fasta"}, write_text(d / "c.xml", xml), d / "xml", 1));
  expect_same_bins(d / "parquet", d / "tsv");
  expect_same_bins(d / "parquet", d / "xml");
}

TEST(StreamingPrepare, ErrorsNameTheFileLineAndId) {
  ScratchDir d;
  auto fa = write_text(d / "s.fa", ">a\nK\n>b\nK\n>c\nK\n");
  auto err = [&](const std::string& name, const std::string& text) {
    auto p = write_text(d / name, text);
    return error_of([&] { prepare_corpus(options({fa}, p, d / "out", 1)); });
  };
  std::string e = err("c.tsv", "a\ta\na\tb\na\tzz\nc\tc\n");
  EXPECT_THAT(e, HasSubstr("c.tsv: line 3"));
  EXPECT_THAT(e, HasSubstr("'zz'"));
  e = err("c.tsv", "a\ta\na\tb\nc\tb\nc\tc\n");
  EXPECT_THAT(e, HasSubstr("line 3"));
  EXPECT_THAT(e, HasSubstr("already listed on line 2"));
  e = err("c.tsv", "a\ta\na\tb\n");
  EXPECT_THAT(e, HasSubstr("in no cluster"));
  EXPECT_THAT(e, HasSubstr("'c'"));
  e = err("c.tsv", "a\ta\tx\n");
  EXPECT_THAT(e, HasSubstr("line 1"));
  // The earliest error in input order wins: a missing member on line 2 before a repeat on line 3.
  e = err("c.tsv", "a\ta\nb\tq\nb\ta\n");
  EXPECT_THAT(e, HasSubstr("line 2"));
  EXPECT_THAT(e, HasSubstr("'q'"));

  auto dup = write_text(d / "dup.fa", ">a\nMK\n>b\nK\n>a desc\nL\n");
  e = error_of([&] { prepare_corpus(options({dup}, {}, d / "out", 1)); });
  EXPECT_THAT(e, HasSubstr("dup.fa"));
  EXPECT_THAT(e, HasSubstr("'a'"));
  EXPECT_THAT(e, HasSubstr("line 5"));
  EXPECT_THAT(e, HasSubstr("duplicate"));
  // Across files: the second file's record is named.
  e = error_of([&] { prepare_corpus(options({fa, write_text(d / "two.fa", ">x\nK\n>b\nL\n")}, {}, d / "out", 1)); });
  EXPECT_THAT(e, HasSubstr("two.fa: record 'b' (line 3): duplicate id"));
  EXPECT_FALSE(fs::exists(d / "out"));
  for (const auto& entry : fs::directory_iterator(d.path))
    EXPECT_EQ(entry.path().filename().string().find("out."), std::string::npos) << entry.path();
}

TEST(StreamingPrepare, UnirefXmlErrorsNameFileEntryAndReason) {
  if (!uniref_xml_supported()) GTEST_SKIP() << "built without libexpat (libexpat1-dev)";
  ScratchDir d;
  auto fa = write_text(d / "s.fa", ">a\nK\n>b\nK\n>c\nK\n");
  auto err = [&](const std::string& name, const std::string& text) {
    auto p = write_text(d / name, text);
    return error_of([&] { prepare_corpus(options({fa}, p, d / "out", 1)); });
  };
  std::string e;
  const std::string head = "<UniRef50><entry id=\"U1\">";
  e = err("m.xml", head + "<member><dbReference type=\"UniParc ID\" id=\"P\"><property type=\"length\" value=\"3\"/>"
                          "</dbReference></member></entry></UniRef50>");
  EXPECT_THAT(e, HasSubstr("m.xml"));
  EXPECT_THAT(e, HasSubstr("'U1'"));
  EXPECT_THAT(e, HasSubstr("UniRef90 ID"));
  e = err("m.xml", head + "<member><dbReference></member></entry></UniRef50>");
  EXPECT_THAT(e, HasSubstr("malformed XML"));
  e = err("m.xml", "<UniRef50><entry id=\"U1\"><member><dbReference><property type=\"UniRef90 ID\" value=\"a\"/>"
                   "<property type=\"UniRef90 ID\" value=\"b\"/><property type=\"UniRef90 ID\" value=\"c\"/>"
                   "</dbReference></member></entry><entry id=\"U2\"><member><dbReference>"
                   "<property type=\"UniRef90 ID\" value=\"b\"/></dbReference></member></entry></UniRef50>");
  EXPECT_THAT(e, HasSubstr("'b'"));
  EXPECT_THAT(e, HasSubstr("entry 'U2'"));
  EXPECT_THAT(e, HasSubstr("already listed"));
  EXPECT_THAT(e, HasSubstr("entry 'U1'"));

  EXPECT_FALSE(fs::exists(d / "out"));
}

TEST(StreamingPrepare, StaleDirectoriesOfAKilledRunAreCleanedUp) {
  ScratchDir d;
  pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);  // a pid that no longer runs
  fs::create_directories(d / ("corpus.tmp-" + std::to_string(child)) / "sort.tmp");
  write_text(d / ("corpus.tmp-" + std::to_string(child)) / "residues.bin", "partial");
  fs::create_directories(d / ("corpus.tmp-" + std::to_string(::getppid())));  // a live process's: kept
  prepare_corpus(options({sample_dir() / "valid.fasta.gz"}, {}, d / "corpus"));
  EXPECT_FALSE(fs::exists(d / ("corpus.tmp-" + std::to_string(child))));
  EXPECT_TRUE(fs::exists(d / ("corpus.tmp-" + std::to_string(::getppid()))));
  // A previous corpus moved aside by a --force replace that was killed goes back into place.
  fs::rename(d / "corpus", d / ("corpus.old-" + std::to_string(child)));
  remove_stale_prepare_dirs(d / "corpus");
  EXPECT_EQ(Corpus::open(d / "corpus").num_sequences(), 500u);
}

// SIGKILL at spread-out moments of `esm2 prepare` (parsing, sorting, writing, committing): the output
// is either absent or a complete corpus, and the rerun succeeds and leaves no temp directory.
TEST(StreamingPrepare, SigkillAtAnyMomentLeavesNoHalfWrittenCorpus) {
  ScratchDir d;
  const auto input = scaled_sample(d.path, 3);  // ~11M residues
  const fs::path fa = input.first, tsv = input.second;  // not a structured binding: clang 14 cannot capture one
  const fs::path out = d / "corpus";
  auto spawn = [&] {
    pid_t pid = ::fork();
    if (pid == 0) {
      int devnull = ::open("/dev/null", O_WRONLY);
      ::dup2(devnull, 1);
      ::dup2(devnull, 2);
      ::execl(ESM2_BINARY, ESM2_BINARY, "prepare", "--fasta", fa.c_str(), "--clusters", tsv.c_str(), "--output",
              out.c_str(), "--force", "--memory", "2", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    return pid;
  };
  auto t0 = std::chrono::steady_clock::now();
  pid_t pid = spawn();
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  double full = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string good = read_file(out / "cluster_members.bin");
  std::mt19937 rng(3);
  int killed_mid_run = 0;
  for (int trial = 0; trial < 8; ++trial) {
    pid = spawn();
    std::this_thread::sleep_for(std::chrono::duration<double>(full * (trial + std::uniform_real_distribution<>(0, 1)(rng)) / 8));
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    killed_mid_run += WIFSIGNALED(status);
    // Either the previous complete corpus, or (killed between the two renames of the replace) none
    // until the next run puts the moved-aside one back.
    remove_stale_prepare_dirs(out);
    Corpus c = Corpus::open(out);  // verifies every file against the manifest
    EXPECT_EQ(read_file(out / "cluster_members.bin"), good) << trial;
  }
  EXPECT_GE(killed_mid_run, 4);
  fs::remove_all(out);
  pid = spawn();
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_EQ(read_file(out / "cluster_members.bin"), good);
  for (const auto& e : fs::directory_iterator(d.path))
    EXPECT_EQ(e.path().filename().string().find("corpus."), std::string::npos) << "left over: " << e.path();
}

// The CI scale test: ~200M residues (the sample replicated 56 times: 530K sequences, 224K clusters,
// a 214 MB FASTA) prepared with --memory 16 under `ulimit -v` (address space, so nothing can be
// hidden in mappings) of 128 MiB, most of which the binary's libraries take; peak RSS is measured
// and must stay below 100 MiB, half the input size (it is 60-70 MiB).
// AddressSanitizer reserves terabytes of shadow address space and keeps freed memory in quarantine,
// so neither `ulimit -v` nor resident-memory bounds mean anything in a sanitizer build; the Release
// build runs this test.
#if defined(__SANITIZE_ADDRESS__)
#define ESM2_TEST_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ESM2_TEST_UNDER_ASAN 1
#endif
#endif

TEST(StreamingPrepare, TwoHundredMillionResiduesUnderAMemoryLimit) {
#ifdef ESM2_TEST_UNDER_ASAN
  GTEST_SKIP() << "memory limits are meaningless under AddressSanitizer; the Release build runs this test";
#endif
  ScratchDir d;
  auto [fa, tsv] = scaled_sample(d.path, 56);
  const uint64_t input_bytes = fs::file_size(fa);
  ASSERT_GT(input_bytes, 200'000'000u);
  const std::string env = "OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MALLOC_ARENA_MAX=1 ";
  // The limit is on the address space the input adds: a build with CUDA maps cuBLAS & co. (hundreds of
  // MiB of VmPeak) at start whatever the input, so first measure a one-copy prepare's VmPeak without a
  // limit, then allow it 64 MiB more for an input 56 times larger.
  fs::create_directories(d.path / "one");
  auto [fa1, tsv1] = scaled_sample(d.path / "one", 1);
  ASSERT_EQ(std::system((env + std::string(ESM2_BINARY) + " prepare --fasta " + fa1.string() + " --clusters " +
                         tsv1.string() + " --output " + (d / "corpus1").string() + " --memory 16 > " +
                         (d / "log1").string() + " 2>&1")
                            .c_str()),
            0)
      << read_file(d / "log1");
  const std::string log1 = read_file(d / "log1");
  const size_t at1 = log1.find("peak address space (VmPeak) ");
  ASSERT_NE(at1, std::string::npos) << log1;
  const long base_kib = static_cast<long>(std::stod(log1.substr(at1 + 28)) * 1024.0);
  const long limit_kib = base_kib + 65536;
  std::string cmd = "ulimit -v " + std::to_string(limit_kib) + " && " + env + std::string(ESM2_BINARY) +
                    " prepare --fasta " + fa.string() + " --clusters " + tsv.string() + " --output " +
                    (d / "corpus").string() + " --memory 16 > " + (d / "log").string() + " 2>&1";
  auto t0 = std::chrono::steady_clock::now();
  int rc = std::system(cmd.c_str());
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(rc, 0) << read_file(d / "log");
  Corpus c = Corpus::open(d / "corpus");
  EXPECT_EQ(c.num_residues(), 56u * 3594034u);
  EXPECT_EQ(c.num_clusters(), 56u * 4000u);
  // esm2 prints its VmHWM (ru_maxrss of a child would include this test process's RSS at the fork).
  const std::string log = read_file(d / "log");
  const size_t at = log.find("peak memory (VmHWM) ");
  ASSERT_NE(at, std::string::npos) << log;
  const uint64_t peak = static_cast<uint64_t>(std::stod(log.substr(at + 20)) * 1048576.0);
  std::printf("prepare of %llu residues (%llu-byte FASTA): %.1f s, peak RSS %.0f MiB (ulimit -v %ld MiB = the "
              "one-copy run's VmPeak + 64 MiB)\n",
              static_cast<unsigned long long>(c.num_residues()), static_cast<unsigned long long>(input_bytes), secs,
              peak / 1048576.0, limit_kib / 1024);
  // Resident peak independent of the input's size: the 56-copy run stays within 64 MiB of the one-copy
  // run's (whose VmHWM already holds the binary's own resident pages: ~25 MiB without CUDA, ~150 MiB of
  // touched CUDA libraries with it). Without CUDA the absolute bound is checked as well.
  const size_t hwm1 = log1.find("peak memory (VmHWM) ");
  ASSERT_NE(hwm1, std::string::npos) << log1;
  const uint64_t peak1 = static_cast<uint64_t>(std::stod(log1.substr(hwm1 + 20)) * 1048576.0);
  EXPECT_LT(peak, peak1 + (uint64_t{64} << 20)) << "one copy: " << peak1 / 1048576.0 << " MiB";
  if (base_kib < 512 * 1024) {  // --memory 16 plus the binary and I/O buffers
    EXPECT_LT(peak, uint64_t{100} << 20);
  }
}
