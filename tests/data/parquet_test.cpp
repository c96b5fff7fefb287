// The Parquet reader against files written by pyarrow (scripts/make-parquet-fixtures.py), with
// pyarrow's own reading of each file (expected.json) as the oracle, plus handmade corruptions:
// every one must end in a clean esm2::Error or, where nothing checks the bytes, in a normal
// return, never in a crash (run under ASan+UBSan with -DESM2_SANITIZE=ON).
#include "data/parquet.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "data/thrift_compact.h"

using namespace esm2;
namespace fs = std::filesystem;

namespace {

const fs::path kDir = fs::path(ESM2_SOURCE_DIR) / "tests/fixtures/parquet";

const nlohmann::json& expected() {
  static const nlohmann::json j = [] {
    std::ifstream in(kDir / "expected.json");
    return nlohmann::json::parse(in);
  }();
  return j;
}

std::vector<uint8_t> slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// A per-test scratch file for mutated copies of a fixture. Single-byte flips are patched in place
// (pwrite) and undone, so tens of thousands of corruptions cost no file rewrites.
class Scratch {
 public:
  Scratch() {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            fmt::format("esm2_parquet_{}_{}_{}.parquet", getpid(), info->test_suite_name(), info->name());
  }
  ~Scratch() {
    if (fd_ >= 0) close(fd_);
    fs::remove(path_);
  }
  const fs::path& write(const std::vector<uint8_t>& bytes) {
    if (fd_ >= 0) close(fd_);
    fd_ = open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    EXPECT_GE(fd_, 0) << path_;
    EXPECT_EQ(pwrite(fd_, bytes.data(), bytes.size(), 0), static_cast<ssize_t>(bytes.size()));
    return path_;
  }
  // Sets one byte of the file last written.
  void patch(size_t at, uint8_t value) { EXPECT_EQ(pwrite(fd_, &value, 1, static_cast<off_t>(at)), 1); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  int fd_ = -1;
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

uint32_t footer_length(const std::vector<uint8_t>& b) {
  size_t n = b.size();
  return uint32_t{b[n - 8]} | uint32_t{b[n - 7]} << 8 | uint32_t{b[n - 6]} << 16 | uint32_t{b[n - 5]} << 24;
}

struct TrainColumns {
  std::vector<std::string> ur50;
  std::vector<std::vector<std::string>> ur90;
  bool operator==(const TrainColumns&) const = default;
};

TrainColumns read_train(const fs::path& p) {
  return {read_parquet_string_column(p, "ur50_id"), read_parquet_string_list_column(p, "ur90_id")};
}

}  // namespace

TEST(Parquet, ReadsDefaultTrainFixture) {
  auto ur50 = read_parquet_string_column(kDir / "train_default.parquet", "ur50_id");
  auto ur90 = read_parquet_string_list_column(kDir / "train_default.parquet", "ur90_id");
  const auto& want = expected()["datasets"]["train"];
  ASSERT_EQ(ur50.size(), 300u);
  EXPECT_EQ(ur50, want["ur50_id"].get<std::vector<std::string>>());
  EXPECT_EQ(ur90, want["ur90_id"].get<std::vector<std::vector<std::string>>>());
  // Handmade spot checks from data/swissprot-sample/train_clusters.tsv's first lines.
  EXPECT_EQ(ur50[0], "P16382");
  EXPECT_EQ(ur90[0], (std::vector<std::string>{"P16382", "Q63257"}));
  EXPECT_EQ(ur90[1], (std::vector<std::string>{"P17232"}));
}

// Every file pyarrow wrote (codecs, dictionary on/off, page v1/v2, row groups, small pages with
// dictionary fallback, legacy list naming, required fields, page CRCs, an empty table) reads
// back exactly what pyarrow reads.
TEST(Parquet, EveryVariantMatchesPyarrow) {
  int checked = 0;
  for (const auto& [file, dataset] : expected()["files"].items()) {
    if (dataset == "edge" || dataset == "unsupported") continue;
    SCOPED_TRACE(file);
    const auto& want = expected()["datasets"][dataset.get<std::string>()];
    fs::path p = kDir / file;
    EXPECT_EQ(parquet_column_names(p), expected()["columns"][file].get<std::vector<std::string>>());
    EXPECT_EQ(read_parquet_string_column(p, "ur50_id"), want["ur50_id"].get<std::vector<std::string>>());
    if (want.contains("ur90_id")) {
      EXPECT_EQ(read_parquet_string_list_column(p, "ur90_id"),
                want["ur90_id"].get<std::vector<std::vector<std::string>>>());
    }
    ++checked;
  }
  EXPECT_GE(checked, 15);
}

// The 2-level (`repeated binary array` in the LIST group) and 1-level (`repeated binary ur90_id`)
// layouts, derived by the fixture script from train_required.parquet's footer and read back by
// pyarrow there, give the same lists as the 3-level file.
TEST(Parquet, LegacyListLayouts) {
  const auto want = expected()["datasets"]["train"]["ur90_id"].get<std::vector<std::vector<std::string>>>();
  for (const char* file : {"train_2level.parquet", "train_1level.parquet", "train_legacy_item.parquet"}) {
    SCOPED_TRACE(file);
    EXPECT_EQ(read_parquet_string_list_column(kDir / file, "ur90_id"), want);
  }
  std::string e = error_of([] { read_parquet_string_column(kDir / "train_1level.parquet", "ur90_id"); });
  EXPECT_NE(e.find("repeated (list) column"), std::string::npos) << e;
}

TEST(Parquet, EmptyListsAndNulls) {
  fs::path p = kDir / "edge.parquet";
  const auto& want = expected()["datasets"]["edge"];
  EXPECT_EQ(read_parquet_string_column(p, "ur50_id"), want["ur50_id"].get<std::vector<std::string>>());
  auto lists = read_parquet_string_list_column(p, "ur90_id");
  EXPECT_EQ(lists, want["ur90_id"].get<std::vector<std::vector<std::string>>>());
  EXPECT_EQ(lists, (std::vector<std::vector<std::string>>{{"a", "b"}, {}, {"c"}, {"d", "e", "f"}, {}, {}}));

  std::string e = error_of([&] { read_parquet_string_column(p, "ur50_null"); });
  EXPECT_NE(e.find("row 2: null value"), std::string::npos) << e;
  EXPECT_NE(e.find("edge.parquet"), std::string::npos) << e;
  e = error_of([&] { read_parquet_string_list_column(p, "ur90_null_list"); });
  EXPECT_NE(e.find("row 1: null list"), std::string::npos) << e;
  e = error_of([&] { read_parquet_string_list_column(p, "ur90_null_elem"); });
  EXPECT_NE(e.find("row 3: null list element"), std::string::npos) << e;
}

TEST(Parquet, WrongColumnKindsNameTheProblem) {
  fs::path p = kDir / "edge.parquet";
  auto has = [](const std::string& e, const char* s) { return e.find(s) != std::string::npos; };
  std::string e = error_of([&] { read_parquet_string_column(p, "count"); });
  EXPECT_TRUE(has(e, "INT64")) << e;
  e = error_of([&] { read_parquet_string_list_column(p, "ids_int"); });
  EXPECT_TRUE(has(e, "INT64")) << e;
  e = error_of([&] { read_parquet_string_column(p, "pair"); });
  EXPECT_TRUE(has(e, "nested group")) << e;
  e = error_of([&] { read_parquet_string_list_column(p, "pair"); });
  EXPECT_TRUE(has(e, "nested group")) << e;
  e = error_of([&] { read_parquet_string_column(p, "ur90_id"); });
  EXPECT_TRUE(has(e, "is a list")) << e;
  e = error_of([&] { read_parquet_string_list_column(p, "ur50_id"); });
  EXPECT_TRUE(has(e, "not a list")) << e;
}

TEST(Parquet, MissingColumnNamesTheAvailableOnes) {
  std::string e = error_of([] { read_parquet_string_column(kDir / "train_default.parquet", "sequence"); });
  EXPECT_NE(e.find("no column 'sequence' (columns: ur50_id, ur90_id)"), std::string::npos) << e;
  e = error_of([] { read_parquet_string_list_column(kDir / "valid_default.parquet", "ur90_id"); });
  EXPECT_NE(e.find("no column 'ur90_id' (columns: ur50_id)"), std::string::npos) << e;
  e = error_of([] { parquet_column_names(kDir / "does_not_exist.parquet"); });
  EXPECT_NE(e.find("does_not_exist.parquet"), std::string::npos) << e;
}

TEST(Parquet, UnsupportedCodecIsNamed) {
  int checked = 0;
  for (const auto& [file, codec] :
       {std::pair{"valid_brotli.parquet", "BROTLI"}, std::pair{"valid_lz4.parquet", "LZ4"}}) {
    if (!expected()["files"].contains(file)) continue;  // pyarrow lacked that codec when writing
    const fs::path path = kDir / file;  // clang 14 cannot capture structured bindings in lambdas
    std::string e = error_of([&] { read_parquet_string_column(path, "ur50_id"); });
    EXPECT_NE(e.find(codec), std::string::npos) << e;
    EXPECT_NE(e.find("not supported"), std::string::npos) << e;
    ++checked;
  }
  EXPECT_GE(checked, 1);
  // The footer alone still reads: format detection works on any codec.
  EXPECT_EQ(parquet_column_names(kDir / "valid_brotli.parquet"), std::vector<std::string>{"ur50_id"});
}

TEST(ParquetCorrupt, TruncatedFilesFail) {
  Scratch s;
  for (const char* file : {"train_default.parquet", "train_v2_zstd_rowgroups.parquet"}) {
    auto bytes = slurp(kDir / file);
    for (size_t len = 0; len < bytes.size(); len += (len < 64 || len + 300 > bytes.size()) ? 1 : 37) {
      std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(len));
      const auto& p = s.write(cut);
      SCOPED_TRACE(fmt::format("{} cut at {}", file, len));
      EXPECT_THROW(read_parquet_string_list_column(p, "ur90_id"), Error);
      EXPECT_THROW(parquet_column_names(p), Error);
    }
  }
}

TEST(ParquetCorrupt, BadMagicFails) {
  Scratch s;
  auto bytes = slurp(kDir / "train_default.parquet");
  for (size_t at : {size_t{0}, size_t{3}, bytes.size() - 4, bytes.size() - 1}) {
    auto bad = bytes;
    bad[at] ^= 0x20;
    std::string e = error_of([&] { parquet_column_names(s.write(bad)); });
    EXPECT_NE(e.find("PAR1"), std::string::npos) << e;
    EXPECT_NE(e.find(s.path().string()), std::string::npos) << e;
  }
  auto bad = bytes;
  std::memcpy(bad.data() + bad.size() - 4, "PARE", 4);
  std::string e = error_of([&] { parquet_column_names(s.write(bad)); });
  EXPECT_NE(e.find("encrypted"), std::string::npos) << e;
  // Footer length pointing before the start of the file.
  bad = bytes;
  bad[bad.size() - 5] = 0x7f;
  EXPECT_THROW(parquet_column_names(s.write(bad)), Error);
}

// Flips every footer byte (several masks): each read ends in an esm2::Error or returns (a flip in
// statistics or names can go unnoticed: the footer carries no checksum); never anything else.
TEST(ParquetCorrupt, FlippedFooterBytesNeverCrash) {
  Scratch s;
  for (const char* file : {"train_default.parquet", "train_v2_zstd_rowgroups.parquet"}) {
    auto bytes = slurp(kDir / file);
    size_t footer_start = bytes.size() - 8 - footer_length(bytes);
    const auto& p = s.write(bytes);
    int errors = 0, total = 0;
    for (size_t at = footer_start; at < bytes.size() - 8; ++at) {
      for (uint8_t mask : {0xff, 0x01, 0x10, 0x80}) {
        s.patch(at, bytes[at] ^ mask);
        ++total;
        try {
          read_train(p);
        } catch (const Error&) {
          ++errors;
        }
      }
      s.patch(at, bytes[at]);
    }
    // Most flips break the Thrift structure, a count, an offset or a type; a sanity floor only.
    EXPECT_GT(errors, total / 4) << file;
  }
}

// Flips every byte of the column data (page headers and bodies) in files of each codec and page
// version: each read ends in an esm2::Error or returns, never crashes or reads out of bounds.
TEST(ParquetCorrupt, FlippedPageBytesNeverCrash) {
  Scratch s;
  for (const char* file : {"train_default.parquet", "train_gzip.parquet", "train_v2_zstd_rowgroups.parquet",
                           "train_plain.parquet", "train_smallpages.parquet", "valid_default.parquet"}) {
    if (!fs::exists(kDir / file)) continue;
    auto bytes = slurp(kDir / file);
    size_t data_end = bytes.size() - 8 - footer_length(bytes);
    bool has_list = std::string(file).find("train") == 0;
    const auto& p = s.write(bytes);
    for (size_t at = 4; at < data_end; ++at) {
      s.patch(at, bytes[at] ^ ((at % 2) ? 0xff : 0x04));
      try {
        read_parquet_string_column(p, "ur50_id");
      } catch (const Error&) {
      }
      if (has_list) {
        try {
          read_parquet_string_list_column(p, "ur90_id");
        } catch (const Error&) {
        }
      }
      s.patch(at, bytes[at]);
    }
  }
}

// With page CRCs (write_page_checksum=True), a flipped page byte either fails cleanly or, where
// it hit bytes outside the checksummed body that do not matter (statistics), changes nothing.
TEST(ParquetCorrupt, PageChecksumsCatchFlippedBodies) {
  if (!expected()["files"].contains("train_checksum.parquet")) GTEST_SKIP() << "pyarrow wrote no CRC fixture";
  Scratch s;
  auto bytes = slurp(kDir / "train_checksum.parquet");
  TrainColumns good = read_train(kDir / "train_checksum.parquet");
  size_t data_end = bytes.size() - 8 - footer_length(bytes);
  const auto& p = s.write(bytes);
  int errors = 0, total = 0;
  for (size_t at = 4; at < data_end; ++at) {
    s.patch(at, bytes[at] ^ 0x01);
    ++total;
    try {
      TrainColumns got = read_train(p);
      EXPECT_TRUE(got == good) << "flip at byte " << at << " changed the values without an error";
    } catch (const Error&) {
      ++errors;
    }
    s.patch(at, bytes[at]);
  }
  EXPECT_GT(errors, total * 9 / 10);
}

// Several random bytes at once, anywhere in the file (footer, headers, bodies, magic): clean
// errors or returns only. Seeded, so a failure reproduces.
TEST(ParquetCorrupt, RandomMultiByteDamageNeverCrashes) {
  Scratch s;
  std::mt19937 rng(1234);
  for (const char* file : {"train_default.parquet", "train_v2_zstd_rowgroups.parquet", "train_gzip.parquet"}) {
    auto bytes = slurp(kDir / file);
    const auto& p = s.write(bytes);
    for (int trial = 0; trial < 5000; ++trial) {
      std::vector<size_t> at(1 + rng() % 8);
      for (auto& a : at) {
        a = rng() % bytes.size();
        s.patch(a, static_cast<uint8_t>(rng()));
      }
      try {
        read_train(p);
      } catch (const Error&) {
      }
      for (size_t a : at) s.patch(a, bytes[a]);
    }
  }
}

// A control byte in a column name must not break the one-line error message.
TEST(ParquetCorrupt, NamesInErrorsAreEscaped) {
  Scratch s;
  auto bytes = slurp(kDir / "valid_default.parquet");
  size_t footer_start = bytes.size() - 8 - footer_length(bytes);
  const std::string name = "ur50_id";
  auto it = std::search(bytes.begin() + static_cast<ptrdiff_t>(footer_start), bytes.end(), name.begin(), name.end());
  ASSERT_NE(it, bytes.end());
  *(it + 2) = '\n';
  std::string e = error_of([&] { read_parquet_string_column(s.write(bytes), "ur50_id"); });
  EXPECT_NE(e.find("(columns: ur\\x0a0_id)"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
}

// Handmade compact-protocol bytes for the paths pyarrow's metadata does not take: long-form field
// ids, negative zigzag values, and skipping doubles, maps and lists of bools.
TEST(ThriftCompact, HandmadeStruct) {
  const std::vector<uint8_t> b = {0x15, 0x05,              // field 1, i32: zigzag 5 = -3
                                  0x06, 0x28, 0xd8, 0x04,  // field 20 (long form: zigzag 40), i64: zigzag 600 = 300
                                  0x11,                    // field 21, bool true
                                  0x17, 1,    2,    3,    4,    5,   6,   7, 8,  // field 22, double
                                  0x1b, 0x01, 0x58, 0x0e, 0x02, 'h', 'i',        // field 23, map<i32, binary>{7: "hi"}
                                  0x19, 0x21, 0x01, 0x02,                        // field 24, list<bool>{true, false}
                                  0x18, 0x03, 'a',  'b',  'c',                   // field 25, binary "abc"
                                  0x00};
  ThriftCompactReader r(b.data(), b.size(), "handmade");
  r.begin_struct();
  int16_t id;
  ThriftType t;
  ASSERT_TRUE(r.next_field(id, t));
  EXPECT_EQ(id, 1);
  EXPECT_EQ(r.read_i32(t), -3);
  ASSERT_TRUE(r.next_field(id, t));
  EXPECT_EQ(id, 20);
  EXPECT_EQ(r.read_i64(t), 300);
  ASSERT_TRUE(r.next_field(id, t));
  EXPECT_EQ(id, 21);
  EXPECT_TRUE(r.read_bool(t));
  for (int16_t want = 22; want <= 24; ++want) {
    ASSERT_TRUE(r.next_field(id, t));
    EXPECT_EQ(id, want);
    r.skip(t);
  }
  ASSERT_TRUE(r.next_field(id, t));
  EXPECT_EQ(id, 25);
  EXPECT_EQ(r.read_string(t), "abc");
  EXPECT_FALSE(r.next_field(id, t));
  r.end_struct();
  EXPECT_EQ(r.position(), b.size());

  // Every truncation fails cleanly, and a type mismatch names both types.
  for (size_t len = 0; len < b.size(); ++len) {
    ThriftCompactReader cut(b.data(), len, "cut");
    EXPECT_THROW(cut.skip(ThriftType::Struct), Error) << len;
  }
  ThriftCompactReader wrong(b.data(), b.size(), "wrong");
  wrong.begin_struct();
  ASSERT_TRUE(wrong.next_field(id, t));
  std::string e = error_of([&] { wrong.read_string(t); });
  EXPECT_NE(e.find("field has Thrift type i32, expected binary"), std::string::npos) << e;
}

namespace {

// LEB128 of v, padded with continuation bytes to `width` bytes (a valid, non-minimal encoding).
std::vector<uint8_t> varint(uint64_t v, size_t width = 0) {
  std::vector<uint8_t> out;
  do {
    out.push_back(static_cast<uint8_t>((v & 0x7f) | 0x80));
    v >>= 7;
  } while (v != 0);
  while (out.size() < width) out.push_back(0x80);
  out.back() &= 0x7f;
  return out;
}

// Where the first column chunk of the first row group keeps its total_uncompressed_size in the
// footer (byte range of the varint), and where its first page starts in the file.
struct FirstChunk {
  size_t total_at = 0, total_end = 0;
  int64_t first_page = -1;
};

FirstChunk first_chunk(const std::vector<uint8_t>& footer) {
  ThriftCompactReader r(footer.data(), footer.size(), "footer");
  FirstChunk c;
  int64_t data = -1, dict = -1;
  int16_t id;
  ThriftType t, et;
  r.begin_struct();  // FileMetaData
  while (r.next_field(id, t)) {
    if (id != 4) {
      r.skip(t);
      continue;
    }
    EXPECT_GE(r.read_list_begin(t, et), 1u);  // row_groups
    r.begin_struct();
    while (r.next_field(id, t)) {
      if (id != 1) {
        r.skip(t);
        continue;
      }
      EXPECT_GE(r.read_list_begin(t, et), 1u);  // columns
      r.begin_struct();
      while (r.next_field(id, t)) {
        if (id != 3) {
          r.skip(t);
          continue;
        }
        r.begin_struct();  // ColumnMetaData
        while (r.next_field(id, t)) {
          if (id == 6) {
            c.total_at = r.position();
            r.read_i64(t);
            c.total_end = r.position();
          } else if (id == 9) {
            data = r.read_i64(t);
          } else if (id == 11) {
            dict = r.read_i64(t);
          } else {
            r.skip(t);
          }
        }
        c.first_page = dict > 0 ? std::min(dict, data) : data;
        return c;
      }
    }
  }
  return c;
}

}  // namespace

// A page header claiming 1 GiB + 7 bytes (its chunk's metadata agreeing) is refused before anything
// of that size is allocated. Made in place from the CRC fixture: the page header drops its CRC field
// (optional) and spends those bytes on a 5-byte uncompressed size; the footer's chunk total grows.
TEST(ParquetCorrupt, HugePageSizeIsRefused) {
  if (!expected()["files"].contains("train_checksum.parquet")) GTEST_SKIP() << "pyarrow wrote no CRC fixture";
  const auto bytes = slurp(kDir / "train_checksum.parquet");
  const size_t footer_at = bytes.size() - 8 - footer_length(bytes);
  const std::vector<uint8_t> footer(bytes.begin() + static_cast<std::ptrdiff_t>(footer_at), bytes.end() - 8);
  const FirstChunk c = first_chunk(footer);
  ASSERT_GT(c.total_end, c.total_at);
  ASSERT_GT(c.first_page, 3);

  // The page header's fields: 1 type, 2 uncompressed size, 3 compressed size, 4 crc, then the
  // page's own header struct (5, 7 or 8).
  const uint8_t* page = bytes.data() + c.first_page;
  ThriftCompactReader r(page, footer_at - static_cast<size_t>(c.first_page), "page header");
  std::vector<std::pair<int16_t, size_t>> fields;  // (id, offset of its header byte)
  int16_t id;
  ThriftType t;
  r.begin_struct();
  for (size_t at = r.position(); r.next_field(id, t); at = r.position()) {
    fields.push_back({id, at});
    if (id >= 5) break;
    r.skip(t);
  }
  ASSERT_EQ(fields.size(), 5u);
  ASSERT_EQ(fields[3].first, 4) << "the fixture's page has no CRC field";
  const size_t region = fields[4].second - fields[1].second;  // fields 2..4
  const int32_t huge = (int32_t{1} << 30) + 7;
  std::vector<uint8_t> header = {0x15};  // field +1, i32
  for (uint8_t b : varint(static_cast<uint64_t>(huge) << 1)) header.push_back(b);  // zigzag
  ThriftCompactReader f3(page + fields[2].second + 1, 10, "compressed size");
  ThriftType i32 = ThriftType::I32;
  const int32_t compressed = f3.read_i32(i32);
  const size_t width = region - header.size() - 1;
  ASSERT_LE(width, 10u);
  header.push_back(0x15);
  for (uint8_t b : varint(static_cast<uint64_t>(compressed) << 1, width)) header.push_back(b);
  ASSERT_EQ(header.size(), region);
  std::vector<uint8_t> out = bytes;
  std::copy(header.begin(), header.end(), out.begin() + c.first_page + static_cast<std::ptrdiff_t>(fields[1].second));
  uint8_t& next = out[static_cast<size_t>(c.first_page) + fields[4].second];
  ASSERT_NE(next & 0xf0, 0) << "short-form field header expected";
  next = static_cast<uint8_t>(((fields[4].first - 3) << 4) | (next & 0x0f));  // now follows field 3

  std::vector<uint8_t> new_footer(footer.begin(), footer.begin() + static_cast<std::ptrdiff_t>(c.total_at));
  for (uint8_t b : varint(uint64_t{1} << 41)) new_footer.push_back(b);  // zigzag of 2^40
  new_footer.insert(new_footer.end(), footer.begin() + static_cast<std::ptrdiff_t>(c.total_end), footer.end());
  out.resize(footer_at);
  out.insert(out.end(), new_footer.begin(), new_footer.end());
  const auto len = static_cast<uint32_t>(new_footer.size());
  for (int k = 0; k < 4; ++k) out.push_back(static_cast<uint8_t>(len >> (8 * k)));
  for (char ch : std::string("PAR1")) out.push_back(static_cast<uint8_t>(ch));

  Scratch s;
  const auto& p = s.write(out);
  const std::string e = error_of([&] { read_train(p); });
  EXPECT_NE(e.find("uncompressed size 1073741831 exceeds the 1073741824 bytes a page may hold"), std::string::npos)
      << e;
}

TEST(ThriftCompact, DeepNestingAndHugeCountsFail) {
  std::vector<uint8_t> deep(200, 0x1c);  // field +1 of type struct, nested 200 times
  deep.insert(deep.end(), 200, 0x00);
  ThriftCompactReader r(deep.data(), deep.size(), "deep");
  std::string e = error_of([&] { r.skip(ThriftType::Struct); });
  EXPECT_NE(e.find("nested too deeply"), std::string::npos) << e;
  const std::vector<uint8_t> list = {0xf8, 0xff, 0xff, 0xff, 0xff, 0x0f};  // list<binary> of 2^32-1 elements
  ThriftCompactReader l(list.data(), list.size(), "list");
  ThriftType et;
  e = error_of([&] { l.read_list_begin(ThriftType::List, et); });
  EXPECT_NE(e.find("cannot fit"), std::string::npos) << e;
}
