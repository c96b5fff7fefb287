// FASTA / gzip, cluster TSV and SQLite readers: contents against handmade expectations, and every
// malformed input fails with one line naming the file, record or line, and the reason.
#include <sqlite3.h>

#include <gmock/gmock.h>

#include "core/atomic_dir.h"
#include "core/error.h"
#include "data/cluster_tsv.h"
#include "data/fasta.h"
#include "data/sqlite_proteins.h"
#include "data/tokenizer.h"
#include "test_util.h"

using namespace esm2;
using namespace esm2::testing;
using ::testing::HasSubstr;

namespace {
std::vector<uint8_t> toks(const SequenceTable& t, size_t i) {
  auto s = t.sequence(i);
  return {s.begin(), s.end()};
}
SequenceTable fasta(const std::filesystem::path& p) {
  SequenceTable t;
  read_fasta(p, t);
  return t;
}
}  // namespace

TEST(Fasta, ParsesIdsResiduesAndUnusualLetters) {
  ScratchDir d;
  auto p = write_text(d / "a.fa", ">sp|P1 first protein\nLAG\nvs\n\n>P2\tdesc\nXBUZOJ\n>P3\nc");
  SequenceTable t = fasta(p);
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t.id(0), "sp|P1");
  EXPECT_EQ(t.id(1), "P2");
  EXPECT_EQ(t.id(2), "P3");
  // Vocabulary order: L=4 A=5 G=6 V=7 S=8 ... C=23 X=24 B=25 U=26 Z=27 O=28; J is no residue → <unk>.
  EXPECT_EQ(toks(t, 0), (std::vector<uint8_t>{4, 5, 6, 7, 8}));
  EXPECT_EQ(toks(t, 1), (std::vector<uint8_t>{24, 25, 26, 27, 28, kUnk}));
  EXPECT_EQ(toks(t, 2), (std::vector<uint8_t>{23}));
  EXPECT_EQ(t.find("P2"), 1);
  EXPECT_EQ(t.find("P9"), -1);
}

TEST(Fasta, CrlfAndGzipAndConcatenatedMembersGiveTheSameTable) {
  ScratchDir d;
  std::string lf = ">a x\nMKV\nLLA\n>b\nWWC\n";
  std::string crlf = ">a x\r\nMKV\r\nLLA\r\n>b\r\nWWC\r\n";
  SequenceTable ref = fasta(write_text(d / "lf.fa", lf));
  for (const auto& p : {write_text(d / "crlf.fa", crlf), write_gzip(d / "crlf.fa.gz", crlf), write_gzip(d / "x.txt", lf)}) {
    SequenceTable t = fasta(p);
    EXPECT_EQ(t.tokens(), ref.tokens()) << p;
    EXPECT_EQ(t.id_bytes(), ref.id_bytes()) << p;
    EXPECT_EQ(t.offsets(), ref.offsets()) << p;
  }
  // Two gzip members back to back (bgzip, cat a.gz b.gz) are one stream.
  write_gzip(d / "m1.gz", ">a x\nMKV\nLL");
  write_gzip(d / "m2.gz", "A\n>b\nWWC\n");
  write_text(d / "cat.gz", read_file(d / "m1.gz") + read_file(d / "m2.gz"));
  SequenceTable t = fasta(d / "cat.gz");
  EXPECT_EQ(t.tokens(), ref.tokens());
  EXPECT_EQ(t.id_bytes(), ref.id_bytes());
}

TEST(Fasta, LinesLongerThanTheReadBuffer) {
  ScratchDir d;
  std::string seq(3'000'001, 'A');
  seq[1'048'575] = 'W';  // straddles the 1 MiB chunk boundary of the reader
  SequenceTable t = fasta(write_gzip(d / "long.fa.gz", ">long\n" + seq + "\n>s\nK\n"));
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t.length(0), seq.size());
  EXPECT_EQ(t.sequence(0)[1'048'575], 22);  // W
  EXPECT_EQ(t.sequence(0)[1'048'576], 5);   // A
  EXPECT_EQ(toks(t, 1), std::vector<uint8_t>{15});
}

TEST(Fasta, ErrorsNameFileRecordAndReason) {
  ScratchDir d;
  auto err = [&](const std::string& name, const std::string& text) {
    auto p = write_text(d / name, text);
    return error_of([&] { fasta(p); });
  };
  std::string e = err("nohdr.fa", "MKV\n>a\nK\n");
  EXPECT_THAT(e, HasSubstr("nohdr.fa"));
  EXPECT_THAT(e, HasSubstr("line 1"));
  EXPECT_THAT(e, HasSubstr("before the first"));
  e = err("empty.fa", ">a\nMK\n>b\n\n>c\nK\n");
  EXPECT_THAT(e, HasSubstr("'b'"));
  EXPECT_THAT(e, HasSubstr("empty sequence"));
  e = err("empty_last.fa", ">a\nMK\n>z\n");
  EXPECT_THAT(e, HasSubstr("'z'"));
  e = err("star.fa", ">a\nMK\n>b\nMKV\nLA*G\n");
  EXPECT_THAT(e, HasSubstr("star.fa"));
  EXPECT_THAT(e, HasSubstr("'b'"));
  EXPECT_THAT(e, HasSubstr("'*'"));
  EXPECT_THAT(e, HasSubstr("residue 6"));
  EXPECT_THAT(e, HasSubstr("line 5, column 3"));
  e = err("digit.fa", ">a\nMK1\n");
  EXPECT_THAT(e, HasSubstr("'1'"));
  e = err("dup.fa", ">a\nMK\n>b\nK\n>a desc\nL\n");
  EXPECT_THAT(e, HasSubstr("'a'"));
  EXPECT_THAT(e, HasSubstr("duplicate"));
  EXPECT_THAT(e, HasSubstr("line 5"));
  e = err("noid.fa", "> desc\nMK\n");
  EXPECT_THAT(e, HasSubstr("without an id"));
  e = error_of([&] { fasta(d / "missing.fa"); });
  EXPECT_THAT(e, HasSubstr("missing.fa"));
  EXPECT_THAT(e, HasSubstr("cannot open"));
  // Every message is a single line.
  EXPECT_EQ(e.find('\n'), std::string::npos);
}

TEST(Fasta, TruncatedGzipIsAnError) {
  ScratchDir d;
  std::string text;
  for (int i = 0; i < 2000; ++i) text += ">s" + std::to_string(i) + "\nMKVLAAGIWCEDRKLLPQ\n";
  std::string gz = read_file(write_gzip(d / "full.fa.gz", text));
  EXPECT_EQ(fasta(d / "full.fa.gz").size(), 2000u);
  for (size_t cut : {gz.size() - 4, gz.size() / 2, size_t{12}}) {
    auto p = write_text(d / "cut.fa.gz", gz.substr(0, cut));
    std::string e = error_of([&] { fasta(p); });
    EXPECT_THAT(e, HasSubstr("cut.fa.gz")) << cut;
    EXPECT_THAT(e, HasSubstr("truncated gzip")) << cut;
  }
  // A corrupted byte in the deflate data (or its CRC) is caught by zlib.
  std::string bad = gz;
  bad[bad.size() / 2] ^= 0x55;
  std::string e = error_of([&] { fasta(write_text(d / "bad.fa.gz", bad)); });
  EXPECT_THAT(e, HasSubstr("bad.fa.gz"));
}

TEST(ClusterTsv, GroupsMembersInOrderOfFirstAppearance) {
  ScratchDir d;
  SequenceTable t = fasta(write_text(d / "s.fa", ">a\nK\n>b\nK\n>c\nK\n>d\nK\n>e\nK\n"));
  ClusterTable c = read_cluster_tsv(write_text(d / "c.tsv", "c\tc\nc\ta\r\nb\tb\n\nc\te\nb\td\n"), t);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c.offsets, (std::vector<uint64_t>{0, 3, 5}));
  // Within a cluster members keep FASTA order: a(0) c(2) e(4); b(1) d(3).
  EXPECT_EQ(c.members, (std::vector<uint32_t>{0, 2, 4, 1, 3}));
}

TEST(ClusterTsv, Errors) {
  ScratchDir d;
  SequenceTable t = fasta(write_text(d / "s.fa", ">a\nK\n>b\nK\n>c\nK\n"));
  auto err = [&](const std::string& text) {
    auto p = write_text(d / "c.tsv", text);
    return error_of([&] { read_cluster_tsv(p, t); });
  };
  std::string e = err("a\ta\na\tb\na\tzz\nc\tc\n");
  EXPECT_THAT(e, HasSubstr("c.tsv: line 3"));
  EXPECT_THAT(e, HasSubstr("'zz'"));
  e = err("a\ta\na\tb\nc\tb\nc\tc\n");
  EXPECT_THAT(e, HasSubstr("line 3"));
  EXPECT_THAT(e, HasSubstr("already listed on line 2"));
  e = err("a\ta\na\tb\n");
  EXPECT_THAT(e, HasSubstr("in no cluster"));
  EXPECT_THAT(e, HasSubstr("'c'"));
  e = err("a a\n");
  EXPECT_THAT(e, HasSubstr("line 1"));
  e = err("a\ta\tx\n");
  EXPECT_THAT(e, HasSubstr("line 1"));
}

namespace {
void exec(sqlite3* db, const char* sql) { ASSERT_EQ(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), SQLITE_OK) << sql; }
std::filesystem::path make_db(const std::filesystem::path& p, const char* schema, const char* rows) {
  sqlite3* db = nullptr;
  sqlite3_open(p.c_str(), &db);
  exec(db, schema);
  if (rows) exec(db, rows);
  sqlite3_close(db);
  return p;
}
}  // namespace

TEST(Sqlite, ReadsProteinsAndFiltersByKeep) {
  ScratchDir d;
  auto p = make_db(d / "p.db", "CREATE TABLE protein(id TEXT PRIMARY KEY, sequence TEXT)",
                   "INSERT INTO protein VALUES('x','MKV'),('y','lla'),('z','W')");
  SequenceTable t;
  read_sqlite_proteins(p, t);
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t.id(1), "y");
  EXPECT_EQ(toks(t, 1), (std::vector<uint8_t>{4, 4, 5}));
  SequenceTable u;
  read_sqlite_proteins(p, u, [](std::string_view id) { return id != "y"; });
  ASSERT_EQ(u.size(), 2u);
  EXPECT_EQ(u.id(1), "z");
}

TEST(Sqlite, Errors) {
  ScratchDir d;
  auto err = [&](const std::filesystem::path& p) {
    return error_of([&] {
      SequenceTable t;
      read_sqlite_proteins(p, t);
    });
  };
  std::string e = err(make_db(d / "t.db", "CREATE TABLE other(id TEXT)", nullptr));
  EXPECT_THAT(e, HasSubstr("t.db"));
  EXPECT_THAT(e, HasSubstr("no table 'protein'"));
  e = err(make_db(d / "c.db", "CREATE TABLE protein(id TEXT, seq TEXT)", nullptr));
  EXPECT_THAT(e, HasSubstr("no column 'sequence'"));
  e = err(make_db(d / "b.db", "CREATE TABLE protein(id TEXT, sequence TEXT)", "INSERT INTO protein VALUES('q','MK-V')"));
  EXPECT_THAT(e, HasSubstr("'q'"));
  EXPECT_THAT(e, HasSubstr("'-'"));
  e = err(make_db(d / "n.db", "CREATE TABLE protein(id TEXT, sequence TEXT)", "INSERT INTO protein VALUES('q',NULL)"));
  EXPECT_THAT(e, HasSubstr("empty or NULL"));
  e = err(make_db(d / "u.db", "CREATE TABLE protein(id TEXT, sequence TEXT)",
                  "INSERT INTO protein VALUES('q','K'),('q','L')"));
  EXPECT_THAT(e, HasSubstr("duplicate"));
  e = err(d / "nope.db");
  EXPECT_THAT(e, HasSubstr("nope.db"));
  EXPECT_FALSE(std::filesystem::exists(d / "nope.db"));
  write_text(d / "junk.db", "this is not a database at all, just text..........................................");
  e = err(d / "junk.db");
  EXPECT_THAT(e, HasSubstr("junk.db"));
}

TEST(BundledSample, FastaTsvAndSqliteAgree) {
  SequenceTable f = fasta(sample_dir() / "train.fasta.gz");
  ClusterTable c = read_cluster_tsv(sample_dir() / "train_clusters.tsv", f);
  EXPECT_EQ(f.size(), 9466u);
  EXPECT_EQ(f.num_residues(), 3594034u);
  EXPECT_EQ(c.size(), 4000u);
  SequenceTable s;
  read_sqlite_proteins(sample_dir() / "train.db", s);
  ASSERT_EQ(s.size(), f.size());
  for (size_t i = 0; i < s.size(); ++i) {
    int64_t j = f.find(s.id(i));
    ASSERT_GE(j, 0) << s.id(i);
    ASSERT_EQ(toks(s, i), toks(f, j)) << s.id(i);
  }
  SequenceTable v = fasta(sample_dir() / "valid.fasta.gz");
  EXPECT_EQ(v.size(), 500u);
}

