// `esm2 prepare --sqlite DB --parquet FILE`: the reference's cluster files (fixtures written by
// pyarrow, tests/fixtures/parquet/) give the same clusters and sequences as the bundled FASTA + TSV.
#include <gmock/gmock.h>

#include <map>

#include "core/atomic_dir.h"
#include "data/cluster_tsv.h"
#include "data/corpus.h"
#include "data/fasta.h"
#include "data/prepare.h"
#include "test_util.h"

using namespace esm2;
using namespace esm2::testing;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

namespace {
const fs::path kFixtures = fs::path(ESM2_SOURCE_DIR) / "tests/fixtures/parquet";

Corpus prepare_parquet(const ScratchDir& d, const std::string& fixture, const char* db) {
  PrepareOptions o;
  o.sqlite = sample_dir() / db;
  o.parquet = kFixtures / fixture;
  o.output = d / fixture;
  prepare_corpus(o);
  return Corpus::open(o.output);
}

std::vector<uint8_t> residues_of(const SequenceTable& t, std::string_view id) {
  auto s = t.sequence(static_cast<size_t>(t.find(id)));
  return {s.begin(), s.end()};
}
}  // namespace

TEST(ParquetInput, TrainClustersMatchTheTsvAndFasta) {
  ScratchDir d;
  Corpus c = prepare_parquet(d, "train_default.parquet", "train.db");
  SequenceTable fasta;
  read_fasta(sample_dir() / "train.fasta.gz", fasta);
  ClusterTable tsv = read_cluster_tsv(sample_dir() / "train_clusters.tsv", fasta);
  // The fixture holds the first 300 clusters of the TSV, members in TSV order.
  ASSERT_EQ(c.num_clusters(), 300u);
  size_t members = 0;
  for (size_t k = 0; k < 300; ++k) {
    auto got = c.cluster_members(k);
    ASSERT_EQ(got.size(), tsv.offsets[k + 1] - tsv.offsets[k]) << k;
    for (size_t j = 0; j < got.size(); ++j) {
      std::string_view id = c.id(got[j]);
      EXPECT_EQ(id, fasta.id(tsv.members[tsv.offsets[k] + j])) << k;
      auto s = c.sequence(got[j]);
      EXPECT_EQ(std::vector<uint8_t>(s.begin(), s.end()), residues_of(fasta, id)) << id;
    }
    members += got.size();
  }
  // Only the sequences the clusters name are kept; the rest of the database is counted as unreferenced.
  EXPECT_EQ(c.num_sequences(), members);
  EXPECT_EQ(c.manifest().at("unreferenced_database_rows"), 9466 - members);
  EXPECT_EQ(c.manifest().at("sources")[1].at("role"), "parquet_train_clusters");
}

TEST(ParquetInput, EveryTrainVariantGivesTheSameCorpus) {
  ScratchDir d;
  prepare_parquet(d, "train_default.parquet", "train.db");
  int variants = 0;
  for (const auto& e : fs::directory_iterator(kFixtures)) {
    std::string name = e.path().filename().string();
    if (name.rfind("train_", 0) != 0 || name == "train_default.parquet" || name == "train_empty.parquet") continue;
    prepare_parquet(d, name, "train.db");
    for (const char* f : {"residues.bin", "offsets.bin", "ids.bin", "cluster_offsets.bin", "cluster_members.bin"})
      EXPECT_EQ(read_file(d / name / f), read_file(d / "train_default.parquet" / f)) << name << " " << f;
    ++variants;
  }
  EXPECT_GE(variants, 8);
}

TEST(ParquetInput, ValidationRowsAreSingleSequenceClusters) {
  ScratchDir d;
  Corpus c = prepare_parquet(d, "valid_default.parquet", "validation.db");
  SequenceTable valid;
  read_fasta(sample_dir() / "valid.fasta.gz", valid);
  // The fixture repeats each of the first 200 validation ids 3 times: 600 rows, 200 sequences.
  ASSERT_EQ(c.num_clusters(), 600u);
  EXPECT_EQ(c.num_sequences(), 200u);
  for (size_t r = 0; r < 600; ++r) {
    ASSERT_EQ(c.cluster_members(r).size(), 1u);
    EXPECT_EQ(c.id(c.cluster_members(r)[0]), valid.id(r / 3)) << r;
  }
  EXPECT_EQ(c.manifest().at("sources")[1].at("role"), "parquet_validation_clusters");
}

TEST(ParquetInput, Errors) {
  ScratchDir d;
  auto err = [&](const std::string& fixture, const char* db) {
    return error_of([&] { prepare_parquet(d, fixture, db); });
  };
  EXPECT_THAT(err("train_empty.parquet", "train.db"), HasSubstr("no rows"));
  std::string e = err("edge.parquet", "train.db");
  EXPECT_THAT(e, HasSubstr("edge.parquet"));
  EXPECT_THAT(e, HasSubstr("empty cluster"));
  e = err("train_default.parquet", "validation.db");
  EXPECT_THAT(e, HasSubstr("row 0"));
  EXPECT_THAT(e, HasSubstr("is not in"));
  EXPECT_THAT(e, HasSubstr("validation.db"));
  EXPECT_FALSE(fs::exists(d / "train_default.parquet"));  // no partial output
  PrepareOptions o;
  o.parquet = kFixtures / "train_default.parquet";
  o.fasta = {sample_dir() / "train.fasta.gz"};
  o.output = d / "x";
  EXPECT_THAT(error_of([&] { prepare_corpus(o); }), HasSubstr("--parquet needs --sqlite"));
}
