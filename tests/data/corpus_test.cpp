// Corpus round trip, corruption detection (every file named), `esm2 prepare` semantics (refuse an
// existing output, --force, no partial output on error) and the length statistics.
#include <gmock/gmock.h>

#include <cstdio>

#include "core/atomic_dir.h"
#include "data/corpus.h"
#include "data/fasta.h"
#include "data/length_stats.h"
#include "data/prepare.h"
#include "test_util.h"

using namespace esm2;
using namespace esm2::testing;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

namespace {
PrepareOptions fasta_options(const fs::path& fa, const fs::path& out) {
  PrepareOptions o;
  o.fasta = {fa};
  o.output = out;
  o.command = "test";
  return o;
}
const char* kSmall = ">a\nMKV\n>b\nLLAW\n>c\nK\n>d\nGGGGGGGG\n";
}  // namespace

TEST(Corpus, RoundTripMatchesTheInput) {
  ScratchDir d;
  write_text(d / "s.fa", kSmall);
  write_text(d / "c.tsv", "x\tb\nx\td\ny\ta\ny\tc\n");
  PrepareOptions o = fasta_options(d / "s.fa", d / "corpus");
  o.clusters = d / "c.tsv";
  prepare_corpus(o);
  Corpus c = Corpus::open(d / "corpus");
  ASSERT_EQ(c.num_sequences(), 4u);
  ASSERT_EQ(c.num_clusters(), 2u);
  EXPECT_EQ(c.num_residues(), 16u);
  EXPECT_EQ(c.id(1), "b");
  auto s = c.sequence(1);
  EXPECT_EQ(std::vector<uint8_t>(s.begin(), s.end()), (std::vector<uint8_t>{4, 4, 5, 22}));
  auto m0 = c.cluster_members(0), m1 = c.cluster_members(1);
  EXPECT_EQ(std::vector<uint32_t>(m0.begin(), m0.end()), (std::vector<uint32_t>{1, 3}));
  EXPECT_EQ(std::vector<uint32_t>(m1.begin(), m1.end()), (std::vector<uint32_t>{0, 2}));
  const auto& m = c.manifest();
  EXPECT_EQ(m.at("format"), "esm2-corpus");
  EXPECT_EQ(m.at("format_version"), kCorpusFormatVersion);
  EXPECT_EQ(m.at("command"), "test");
  ASSERT_EQ(m.at("sources").size(), 2u);
  EXPECT_EQ(m.at("sources")[0].at("bytes"), std::string(kSmall).size());
  EXPECT_EQ(m.at("length_stats").at("max"), 8);
}

TEST(Corpus, WithoutClustersEverySequenceIsItsOwnCluster) {
  ScratchDir d;
  prepare_corpus(fasta_options(write_text(d / "s.fa", kSmall), d / "corpus"));
  Corpus c = Corpus::open(d / "corpus");
  ASSERT_EQ(c.num_clusters(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    ASSERT_EQ(c.cluster_members(i).size(), 1u);
    EXPECT_EQ(c.cluster_members(i)[0], i);
  }
}

TEST(Corpus, CrlfFastaGivesAnIdenticalCorpus) {
  ScratchDir d;
  std::string crlf;
  for (char ch : std::string(kSmall)) crlf += ch == '\n' ? std::string("\r\n") : std::string(1, ch);
  prepare_corpus(fasta_options(write_text(d / "lf.fa", kSmall), d / "lf"));
  prepare_corpus(fasta_options(write_text(d / "crlf.fa", crlf), d / "crlf"));
  for (const char* f : {"residues.bin", "offsets.bin", "ids.bin", "id_offsets.bin", "cluster_offsets.bin",
                        "cluster_members.bin"})
    EXPECT_EQ(read_file(d / "lf" / f), read_file(d / "crlf" / f)) << f;
}

TEST(Corpus, CorruptOrMissingFilesAreNamed) {
  ScratchDir d;
  prepare_corpus(fasta_options(write_text(d / "s.fa", kSmall), d / "good"));
  auto damaged = [&](const std::string& file, auto&& damage) {
    fs::remove_all(d / "bad");
    fs::copy(d / "good", d / "bad");
    damage(d / "bad" / file);
    return error_of([&] { Corpus::open(d / "bad"); });
  };
  for (const char* f : {"residues.bin", "offsets.bin", "ids.bin", "id_offsets.bin", "cluster_offsets.bin",
                        "cluster_members.bin"}) {
    std::string e = damaged(f, [](const fs::path& p) { fs::resize_file(p, fs::file_size(p) - 1); });
    EXPECT_THAT(e, HasSubstr(f));
    EXPECT_THAT(e, HasSubstr("size"));
    e = damaged(f, [](const fs::path& p) {
      std::string b = read_file(p);
      b[b.size() / 2] ^= 0x01;
      write_file(p, b);
    });
    EXPECT_THAT(e, HasSubstr(f));
    EXPECT_THAT(e, HasSubstr("crc32"));
    e = damaged(f, [](const fs::path& p) { fs::remove(p); });
    EXPECT_THAT(e, HasSubstr(f));
    EXPECT_THAT(e, HasSubstr("cannot open"));
  }
  std::string e = damaged("manifest.json", [](const fs::path& p) {
    auto j = nlohmann::json::parse(read_file(p));
    j["format_version"] = kCorpusFormatVersion + 1;
    write_file(p, j.dump());
  });
  EXPECT_THAT(e, HasSubstr("manifest.json"));
  EXPECT_THAT(e, HasSubstr("version 2"));
  e = damaged("manifest.json", [](const fs::path& p) { write_file(p, "{\"format\": \"esm2-corpus\""); });
  EXPECT_THAT(e, HasSubstr("not valid JSON"));
  e = damaged("manifest.json", [](const fs::path& p) { fs::remove(p); });
  EXPECT_THAT(e, HasSubstr("manifest.json"));
  e = error_of([&] { Corpus::open(d / "nothing"); });
  EXPECT_THAT(e, HasSubstr("nothing"));
}

TEST(Prepare, RefusesExistingOutputUnlessForced) {
  ScratchDir d;
  auto o = fasta_options(write_text(d / "s.fa", kSmall), d / "corpus");
  prepare_corpus(o);
  EXPECT_THAT(error_of([&] { prepare_corpus(o); }), HasSubstr("--force"));
  write_text(d / "s.fa", ">only\nMKV\n");
  o.force = true;
  prepare_corpus(o);
  EXPECT_EQ(Corpus::open(d / "corpus").num_sequences(), 1u);
}

TEST(Prepare, NoPartialOutputOnError) {
  ScratchDir d;
  auto o = fasta_options(write_text(d / "s.fa", kSmall), d / "corpus");
  prepare_corpus(o);
  // A bad input under --force must leave the previous corpus intact and no temp directory behind.
  write_text(d / "bad.fa", ">a\nMKV\n>b\nMK*\n");
  o.fasta = {d / "bad.fa"};
  o.force = true;
  EXPECT_THAT(error_of([&] { prepare_corpus(o); }), HasSubstr("'*'"));
  EXPECT_EQ(Corpus::open(d / "corpus").num_sequences(), 4u);
  o.output = d / "fresh";
  EXPECT_THAT(error_of([&] { prepare_corpus(o); }), HasSubstr("bad.fa"));
  size_t entries = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator(d.path)) ++entries;
  EXPECT_EQ(entries, 3u);  // s.fa, bad.fa, corpus
}

TEST(Prepare, CommandLine) {
  ScratchDir d;
  std::string cmd = std::string(ESM2_BINARY) + " prepare --fasta " + (sample_dir() / "train.fasta.gz").string() +
                    " --clusters " + (sample_dir() / "train_clusters.tsv").string() + " --output " +
                    (d / "c").string() + " 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  ASSERT_EQ(pclose(p), 0) << out;
  EXPECT_THAT(out, HasSubstr("sequences 9466"));
  EXPECT_THAT(out, HasSubstr("clusters 4000"));
  EXPECT_THAT(out, HasSubstr("p99"));
  EXPECT_THAT(out, HasSubstr("wall time"));
  Corpus c = Corpus::open(d / "c");
  EXPECT_EQ(c.num_clusters(), 4000u);
  EXPECT_THAT(c.manifest().at("command").get<std::string>(), HasSubstr("--clusters"));
  // Second run: refused, exit status 1, one-line error.
  p = popen(cmd.c_str(), "r");
  out.clear();
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  EXPECT_EQ(WEXITSTATUS(pclose(p)), 1);
  EXPECT_THAT(out, HasSubstr("esm2: error:"));
  EXPECT_THAT(out, HasSubstr("--force"));
}

TEST(LengthStats, HandComputedValues) {
  // lengths 1..100 → residues 5050, nearest-rank p50 = 50, p90 = 90, p99 = 99.
  std::vector<uint64_t> off{0};
  for (uint64_t l = 1; l <= 100; ++l) off.push_back(off.back() + l);
  LengthStats s = compute_length_stats(off, 52);
  EXPECT_EQ(s.count, 100u);
  EXPECT_EQ(s.residues, 5050u);
  EXPECT_EQ(s.min, 1u);
  EXPECT_EQ(s.max, 100u);
  EXPECT_EQ(s.p50, 50u);
  EXPECT_EQ(s.p90, 90u);
  EXPECT_EQ(s.p99, 99u);
  EXPECT_DOUBLE_EQ(s.mean, 50.5);
  EXPECT_EQ(s.num_longer, 50u);  // 51..100 residues + 2 > 52 tokens
  // log2 buckets: [1,2) 1, [2,4) 2, [4,8) 4, [8,16) 8, [16,32) 16, [32,64) 32, [64,128) 37
  EXPECT_EQ(s.histogram, (std::vector<uint64_t>{1, 2, 4, 8, 16, 32, 37}));
  LengthStats r = LengthStats::from_json(s.to_json());
  EXPECT_EQ(r.histogram, s.histogram);
  EXPECT_EQ(r.p99, s.p99);
}
