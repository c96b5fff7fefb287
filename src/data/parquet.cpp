// Parquet reader for string and list<string> columns; see parquet.h for the scope. The layout
// (parquet-format's parquet.thrift): "PAR1" | column chunks | FileMetaData (Thrift compact) |
// footer length (u32 LE) | "PAR1". A column chunk is a run of pages, each a Thrift PageHeader
// followed by its (possibly compressed) body: at most one dictionary page first, then data pages.
// Only the footer and the chunks of the requested column are read from disk.
#include "data/parquet.h"

#include <snappy-c.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <string_view>

#include "core/error.h"
#include "data/thrift_compact.h"

namespace esm2 {
namespace {

// ---- enums of parquet.thrift (only the values we name) ----
enum PhysicalType : int32_t { kBoolean = 0, kInt32, kInt64, kInt96, kFloat, kDouble, kByteArray, kFixedLenByteArray };
enum Repetition : int32_t { kRequired = 0, kOptional = 1, kRepeated = 2 };
enum Codec : int32_t {
  kUncompressed = 0,
  kSnappy = 1,
  kGzip = 2,
  kLzo = 3,
  kBrotli = 4,
  kLz4 = 5,
  kZstd = 6,
  kLz4Raw = 7
};
enum Encoding : int32_t { kPlain = 0, kPlainDictionary = 2, kRle = 3, kBitPacked = 4, kRleDictionary = 8 };
enum PageType : int32_t { kDataPage = 0, kIndexPage = 1, kDictionaryPage = 2, kDataPageV2 = 3 };
constexpr int32_t kConvertedList = 3;

// Names and strings from the file go into one-line error messages: control and non-ASCII bytes
// are escaped so a corrupt name cannot break the line.
std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  return out;
}

std::string physical_type_name(int32_t t) {
  static const char* names[] = {"BOOLEAN", "INT32",  "INT64",      "INT96",
                                "FLOAT",   "DOUBLE", "BYTE_ARRAY", "FIXED_LEN_BYTE_ARRAY"};
  return t >= 0 && t < 8 ? names[t] : fmt::format("unknown ({})", t);
}
std::string codec_name(int32_t c) {
  static const char* names[] = {"UNCOMPRESSED", "SNAPPY", "GZIP", "LZO", "BROTLI", "LZ4", "ZSTD", "LZ4_RAW"};
  return c >= 0 && c < 8 ? names[c] : fmt::format("unknown ({})", c);
}
std::string encoding_name(int32_t e) {
  static const char* names[] = {"PLAIN",          "GROUP_VAR_INT",       "PLAIN_DICTIONARY",        "RLE",
                                "BIT_PACKED",     "DELTA_BINARY_PACKED", "DELTA_LENGTH_BYTE_ARRAY", "DELTA_BYTE_ARRAY",
                                "RLE_DICTIONARY", "BYTE_STREAM_SPLIT"};
  return e >= 0 && e < 10 ? names[e] : fmt::format("unknown ({})", e);
}

// A page claiming more than this is corrupt: writers emit pages of ~1 MiB (parquet-mr and arrow
// default to 1 MiB), and trusting a corrupt header's size would allocate up to 2 GiB per page.
constexpr int32_t kMaxPageBytes = int32_t{1} << 30;

// ---- metadata ----
struct SchemaNode {
  std::string name;
  int32_t type = -1;  // physical type; -1 for groups
  int32_t repetition = kRequired;
  int32_t num_children = 0;
  int32_t converted_type = -1;
  bool list_logical = false;  // LogicalType LIST
  std::vector<int> children;
  int leaf = -1;  // index among the leaves (= column chunk index) for primitive nodes
  std::vector<std::string> path;
};

struct ChunkMeta {
  int32_t type = -1;
  std::vector<std::string> path;
  int32_t codec = -1;
  int64_t num_values = -1;
  int64_t total_uncompressed = -1;
  int64_t total_compressed = -1;
  int64_t data_page_offset = -1;
  int64_t dictionary_page_offset = -1;
  bool has_meta = false;
  bool external = false;
  bool encrypted = false;
};

struct RowGroupMeta {
  int64_t num_rows = -1;
  std::vector<ChunkMeta> columns;
};

struct FileMeta {
  std::vector<SchemaNode> schema;  // schema[0] is the root
  int64_t num_rows = -1;
  std::vector<RowGroupMeta> row_groups;
  int num_leaves = 0;
  bool encrypted = false;
};

using Reader = ThriftCompactReader;

void parse_logical_type(Reader& r, SchemaNode& node) {
  r.begin_struct();
  int16_t id;
  ThriftType t;
  while (r.next_field(id, t)) {
    if (id == 3 && t == ThriftType::Struct) node.list_logical = true;  // LogicalType.LIST
    r.skip(t);
  }
  r.end_struct();
}

SchemaNode parse_schema_element(Reader& r) {
  SchemaNode node;
  r.begin_struct();
  int16_t id;
  ThriftType t;
  bool has_name = false;
  while (r.next_field(id, t)) {
    switch (id) {
      case 1: node.type = r.read_i32(t); break;
      case 3: node.repetition = r.read_i32(t); break;
      case 4:
        node.name = r.read_string(t);
        has_name = true;
        break;
      case 5: node.num_children = r.read_i32(t); break;
      case 6: node.converted_type = r.read_i32(t); break;
      case 10:
        if (t != ThriftType::Struct) r.fail("SchemaElement.logicalType is not a struct");
        parse_logical_type(r, node);
        break;
      default: r.skip(t);
    }
  }
  r.end_struct();
  if (!has_name) r.fail("schema element without a name");
  if (node.repetition < kRequired || node.repetition > kRepeated)
    r.fail(fmt::format("schema element '{}' has bad repetition {}", printable(node.name), node.repetition));
  if (node.num_children < 0)
    r.fail(fmt::format("schema element '{}' has {} children", printable(node.name), node.num_children));
  return node;
}

std::vector<std::string> parse_string_list(Reader& r, ThriftType t) {
  ThriftType et;
  uint32_t n = r.read_list_begin(t, et);
  std::vector<std::string> out;
  out.reserve(n);
  for (uint32_t i = 0; i < n; ++i) out.push_back(r.read_string(et));
  return out;
}

void parse_column_meta(Reader& r, ChunkMeta& c) {
  c.has_meta = true;
  r.begin_struct();
  int16_t id;
  ThriftType t;
  while (r.next_field(id, t)) {
    switch (id) {
      case 1: c.type = r.read_i32(t); break;
      case 3: c.path = parse_string_list(r, t); break;
      case 4: c.codec = r.read_i32(t); break;
      case 5: c.num_values = r.read_i64(t); break;
      case 6: c.total_uncompressed = r.read_i64(t); break;
      case 7: c.total_compressed = r.read_i64(t); break;
      case 9: c.data_page_offset = r.read_i64(t); break;
      case 11: c.dictionary_page_offset = r.read_i64(t); break;
      default: r.skip(t);
    }
  }
  r.end_struct();
}

ChunkMeta parse_column_chunk(Reader& r) {
  ChunkMeta c;
  r.begin_struct();
  int16_t id;
  ThriftType t;
  while (r.next_field(id, t)) {
    switch (id) {
      case 1:
        r.skip(t);
        c.external = true;
        break;  // file_path: the chunk lives in another file
      case 3:
        if (t != ThriftType::Struct) r.fail("ColumnChunk.meta_data is not a struct");
        parse_column_meta(r, c);
        break;
      case 8:
      case 9:
        r.skip(t);
        c.encrypted = true;
        break;  // crypto_metadata, encrypted_column_metadata
      default: r.skip(t);
    }
  }
  r.end_struct();
  return c;
}

RowGroupMeta parse_row_group(Reader& r) {
  RowGroupMeta g;
  r.begin_struct();
  int16_t id;
  ThriftType t;
  while (r.next_field(id, t)) {
    if (id == 1) {
      ThriftType et;
      uint32_t n = r.read_list_begin(t, et);
      if (et != ThriftType::Struct) r.fail("RowGroup.columns is not a list of structs");
      g.columns.reserve(n);
      for (uint32_t i = 0; i < n; ++i) g.columns.push_back(parse_column_chunk(r));
    } else if (id == 3) {
      g.num_rows = r.read_i64(t);
    } else {
      r.skip(t);
    }
  }
  r.end_struct();
  return g;
}

// Links the depth-first schema list into a tree (iteratively: a corrupt num_children must not
// recurse off the stack) and numbers the leaves, whose order is the column chunks' order.
void link_schema(Reader& r, FileMeta& m) {
  auto& s = m.schema;
  if (s.empty()) r.fail("empty schema");
  struct Open {
    int node;
    int32_t left;
  };
  std::vector<Open> stack{{0, s[0].num_children}};
  if (s[0].num_children == 0) r.fail("schema root has no columns");
  size_t next = 1;
  while (!stack.empty()) {
    if (stack.back().left == 0) {
      stack.pop_back();
      continue;
    }
    if (next >= s.size()) r.fail("schema ends before all declared children");
    int parent = stack.back().node;
    --stack.back().left;
    int child = static_cast<int>(next++);
    s[parent].children.push_back(child);
    s[child].path = s[parent].path;
    s[child].path.push_back(s[child].name);
    if (s[child].num_children > 0) {
      stack.push_back({child, s[child].num_children});
    } else {
      s[child].leaf = m.num_leaves++;
    }
  }
  if (next != s.size()) r.fail(fmt::format("schema has {} elements but the tree uses {}", s.size(), next));
}

FileMeta parse_file_meta(const uint8_t* data, size_t size, const std::string& what) {
  Reader r(data, size, what);
  FileMeta m;
  r.begin_struct();
  int16_t id;
  ThriftType t;
  while (r.next_field(id, t)) {
    switch (id) {
      case 2: {
        ThriftType et;
        uint32_t n = r.read_list_begin(t, et);
        if (et != ThriftType::Struct) r.fail("FileMetaData.schema is not a list of structs");
        m.schema.reserve(n);
        for (uint32_t i = 0; i < n; ++i) m.schema.push_back(parse_schema_element(r));
        break;
      }
      case 3: m.num_rows = r.read_i64(t); break;
      case 4: {
        ThriftType et;
        uint32_t n = r.read_list_begin(t, et);
        if (et != ThriftType::Struct) r.fail("FileMetaData.row_groups is not a list of structs");
        m.row_groups.reserve(n);
        for (uint32_t i = 0; i < n; ++i) m.row_groups.push_back(parse_row_group(r));
        break;
      }
      case 8:
        r.skip(t);
        m.encrypted = true;
        break;  // encryption_algorithm (plaintext-footer encryption)
      default: r.skip(t);
    }
  }
  r.end_struct();
  if (m.encrypted) esm2::fail("{}: encrypted Parquet files are not supported", what);
  link_schema(r, m);
  if (m.num_rows < 0) r.fail("FileMetaData.num_rows is missing or negative");
  int64_t rows = 0;
  for (size_t g = 0; g < m.row_groups.size(); ++g) {
    const auto& rg = m.row_groups[g];
    if (rg.num_rows < 0) esm2::fail("{}: row group {} has num_rows {}", what, g, rg.num_rows);
    if (rg.columns.size() != static_cast<size_t>(m.num_leaves))
      esm2::fail("{}: row group {} has {} column chunks but the schema has {} columns", what, g, rg.columns.size(),
                 m.num_leaves);
    if (rg.num_rows > m.num_rows - rows)
      esm2::fail("{}: row groups hold more rows than the footer's {}", what, m.num_rows);
    rows += rg.num_rows;
  }
  if (rows != m.num_rows) esm2::fail("{}: row groups hold {} rows but the footer says {}", what, rows, m.num_rows);
  return m;
}

// ---- the file ----
class ParquetFile {
 public:
  explicit ParquetFile(const std::filesystem::path& path) : path_(path.string()) {
    std::error_code ec;
    auto size = std::filesystem::file_size(path, ec);
    if (ec) esm2::fail("{}: cannot read Parquet file: {}", path_, ec.message());
    size_ = static_cast<int64_t>(size);
    in_.open(path, std::ios::binary);
    if (!in_) esm2::fail("{}: cannot open Parquet file", path_);
    if (size_ < 12) esm2::fail("{}: not a Parquet file ({} bytes, shorter than magic + footer)", path_, size_);
    uint8_t head[4], tail[8];
    read_at(0, head, 4);
    read_at(size_ - 8, tail, 8);
    if (std::memcmp(tail + 4, "PARE", 4) == 0)
      esm2::fail("{}: encrypted Parquet files (PARE footer) are not supported", path_);
    if (std::memcmp(head, "PAR1", 4) != 0 || std::memcmp(tail + 4, "PAR1", 4) != 0)
      esm2::fail("{}: not a Parquet file (no PAR1 magic at both ends)", path_);
    uint32_t footer_len =
        uint32_t{tail[0]} | uint32_t{tail[1]} << 8 | uint32_t{tail[2]} << 16 | uint32_t{tail[3]} << 24;
    if (footer_len == 0 || int64_t{footer_len} > size_ - 12)
      esm2::fail("{}: footer length {} does not fit in the file of {} bytes", path_, footer_len, size_);
    data_end_ = size_ - 8 - footer_len;
    std::vector<uint8_t> footer(footer_len);
    read_at(data_end_, footer.data(), footer_len);
    meta_ = parse_file_meta(footer.data(), footer.size(), path_ + ": footer");
  }

  const std::string& path() const { return path_; }
  const FileMeta& meta() const { return meta_; }
  int64_t data_end() const { return data_end_; }

  void read_at(int64_t offset, uint8_t* out, int64_t n) {
    ESM2_ASSERT(offset >= 0 && n >= 0 && offset + n <= size_);
    in_.seekg(offset);
    in_.read(reinterpret_cast<char*>(out), n);
    if (!in_ || in_.gcount() != n) esm2::fail("{}: read of {} bytes at offset {} failed", path_, n, offset);
  }

  std::vector<std::string> top_level_names() const {
    std::vector<std::string> names;
    for (int c : meta_.schema[0].children) names.push_back(meta_.schema[c].name);
    return names;
  }

 private:
  std::string path_;
  int64_t size_ = 0;
  int64_t data_end_ = 0;  // where the footer starts: column data lies in [4, data_end_)
  std::ifstream in_;
  FileMeta meta_;
};

// How one column's levels map onto rows (Dremel encoding). For a list: a definition level below
// `def_list` means a null list, below `def_element` an empty list, below `max_def` a null
// element; max_def is a present element. For a flat column only max_def matters.
struct ColumnPlan {
  std::string name;
  int leaf = -1;
  int max_def = 0;
  int max_rep = 0;
  int def_list = 0;
  int def_element = 0;
};

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + printable(v[i]);
  return s;
}

const SchemaNode& find_column(const ParquetFile& f, const std::string& column) {
  const auto& s = f.meta().schema;
  for (int c : s[0].children)
    if (s[c].name == column) return s[c];
  esm2::fail("{}: no column '{}' (columns: {})", f.path(), printable(column), join(f.top_level_names(), ", "));
}

void check_string_leaf(const ParquetFile& f, const SchemaNode& leaf, const std::string& column) {
  if (leaf.type != kByteArray)
    esm2::fail("{}: column '{}' has physical type {}; only BYTE_ARRAY (string) columns are supported", f.path(), column,
               physical_type_name(leaf.type));
}

ColumnPlan plan_string_column(const ParquetFile& f, const std::string& column) {
  const auto& s = f.meta().schema;
  const SchemaNode& node = find_column(f, column);
  ColumnPlan p{column};
  if (node.num_children > 0) {
    bool list = node.list_logical || node.converted_type == kConvertedList ||
                (node.children.size() == 1 && s[node.children[0]].repetition == kRepeated);
    if (list) esm2::fail("{}: column '{}' is a list; read it with read_parquet_string_list_column", f.path(), column);
    esm2::fail("{}: column '{}' is a nested group (struct/map), not a string column", f.path(), column);
  }
  if (node.repetition == kRepeated)
    esm2::fail("{}: column '{}' is a repeated (list) column; read it with read_parquet_string_list_column", f.path(),
               column);
  check_string_leaf(f, node, column);
  p.leaf = node.leaf;
  p.max_def = node.repetition == kOptional ? 1 : 0;
  return p;
}

// Accepts the three list layouts parquet-format's LogicalTypes.md allows for list<string>:
// 3-level `<list> (LIST) { repeated group list|bag|... { <element|item> } }`, 2-level
// `<list> (LIST) { repeated binary <element|array> }`, and a bare `repeated binary <list>`.
ColumnPlan plan_string_list_column(const ParquetFile& f, const std::string& column) {
  const auto& s = f.meta().schema;
  const SchemaNode& node = find_column(f, column);
  ColumnPlan p{column};
  p.max_rep = 1;
  const SchemaNode* leaf = nullptr;
  if (node.num_children == 0) {
    if (node.repetition != kRepeated)
      esm2::fail("{}: column '{}' is not a list (it is a flat column)", f.path(), column);
    leaf = &node;
    p.def_list = 0;
    p.def_element = 1;
    p.max_def = 1;
  } else {
    if (node.repetition == kRepeated)
      esm2::fail("{}: column '{}' is a repeated group; only list<string> columns are supported", f.path(), column);
    if (node.children.size() != 1 || s[node.children[0]].repetition != kRepeated)
      esm2::fail("{}: column '{}' is a nested group (struct/map), not a list<string> column", f.path(), column);
    const SchemaNode& rep = s[node.children[0]];
    p.def_list = node.repetition == kOptional ? 1 : 0;
    p.def_element = p.def_list + 1;
    if (rep.num_children == 0) {
      leaf = &rep;
      p.max_def = p.def_element;
    } else {
      if (rep.children.size() != 1 || s[rep.children[0]].num_children != 0 ||
          s[rep.children[0]].repetition == kRepeated)
        esm2::fail("{}: column '{}' is a list of nested values, not a list<string> column", f.path(), column);
      leaf = &s[rep.children[0]];
      p.max_def = p.def_element + (leaf->repetition == kOptional ? 1 : 0);
    }
  }
  check_string_leaf(f, *leaf, column);
  p.leaf = leaf->leaf;
  return p;
}

// ---- decompression: every codec must yield exactly the page's declared size ----
void decompress(const std::string& where, int32_t codec, const uint8_t* in, size_t n, uint8_t* out, size_t out_n) {
  switch (codec) {
    case kSnappy: {
      size_t len = 0;
      if (snappy_uncompressed_length(reinterpret_cast<const char*>(in), n, &len) != SNAPPY_OK || len != out_n)
        esm2::fail("{}: corrupt SNAPPY data (bad length header, expected {} bytes)", where, out_n);
      if (snappy_uncompress(reinterpret_cast<const char*>(in), n, reinterpret_cast<char*>(out), &len) != SNAPPY_OK ||
          len != out_n)
        esm2::fail("{}: corrupt SNAPPY data", where);
      return;
    }
    case kZstd: {
      size_t got = ZSTD_decompress(out, out_n, in, n);
      if (ZSTD_isError(got)) esm2::fail("{}: corrupt ZSTD data: {}", where, ZSTD_getErrorName(got));
      if (got != out_n) esm2::fail("{}: ZSTD data holds {} bytes, the page header says {}", where, got, out_n);
      return;
    }
    case kGzip: {
      z_stream zs{};
      if (inflateInit2(&zs, 15 + 32) != Z_OK) esm2::fail("{}: zlib initialisation failed", where);
      zs.next_in = const_cast<Bytef*>(in);
      zs.avail_in = static_cast<uInt>(n);
      zs.next_out = out;
      zs.avail_out = static_cast<uInt>(out_n);
      int rc = inflate(&zs, Z_FINISH);
      size_t got = zs.total_out;
      inflateEnd(&zs);
      if (rc != Z_STREAM_END || got != out_n)
        esm2::fail("{}: corrupt GZIP data (zlib code {}, {} of {} bytes)", where, rc, got, out_n);
      return;
    }
    default:
      esm2::fail("{}: compression codec {} is not supported (only UNCOMPRESSED, SNAPPY, GZIP, ZSTD)", where,
                 codec_name(codec));
  }
}

// ---- RLE / bit-packed hybrid (levels and dictionary indices) ----
class HybridDecoder {
 public:
  HybridDecoder(const uint8_t* p, const uint8_t* end, int bit_width, const std::string* where)
      : p_(p), end_(end), bit_width_(bit_width), where_(where) {}

  // Appends exactly n values to out; a run past the buffer's end is corruption.
  template <class T>
  void get(size_t n, std::vector<T>& out) {
    while (n > 0) {
      if (left_ == 0) next_run();
      size_t take = std::min<size_t>(n, left_);
      if (packed_) {
        for (size_t i = 0; i < take; ++i) out.push_back(static_cast<T>(unpack(packed_index_++)));
      } else {
        out.insert(out.end(), take, static_cast<T>(value_));
      }
      left_ -= take;
      n -= take;
    }
  }

 private:
  [[noreturn]] void corrupt(std::string_view what) const { esm2::fail("{}: {}", *where_, what); }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= end_) corrupt("RLE/bit-packed run header runs past the end of the page");
      uint8_t b = *p_++;
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    corrupt("RLE/bit-packed run header longer than 64 bits");
  }

  void next_run() {
    uint64_t header = varint();
    if (header & 1) {
      uint64_t groups = header >> 1;
      if (groups == 0) corrupt("empty bit-packed run");
      uint64_t avail = static_cast<uint64_t>(end_ - p_);
      // The last run may be cut short of its padded groups; values actually read are checked.
      if (bit_width_ > 0 && groups > avail / static_cast<uint64_t>(bit_width_) + 1)
        corrupt("bit-packed run runs past the end of the page");
      packed_ = true;
      packed_start_ = p_;
      packed_bytes_ = std::min<uint64_t>(groups * static_cast<uint64_t>(bit_width_), avail);
      packed_index_ = 0;
      left_ = groups * 8;
      p_ += packed_bytes_;
    } else {
      left_ = header >> 1;
      if (left_ == 0) corrupt("empty RLE run");
      int nbytes = (bit_width_ + 7) / 8;
      if (end_ - p_ < nbytes) corrupt("RLE run value runs past the end of the page");
      value_ = 0;
      for (int i = 0; i < nbytes; ++i) value_ |= static_cast<uint64_t>(p_[i]) << (8 * i);
      p_ += nbytes;
      if (bit_width_ < 64 && (value_ >> bit_width_) != 0) corrupt("RLE run value wider than its bit width");
      packed_ = false;
    }
  }

  uint64_t unpack(uint64_t i) const {
    if (bit_width_ == 0) return 0;
    uint64_t bit = i * static_cast<uint64_t>(bit_width_);
    uint64_t last_byte = (bit + static_cast<uint64_t>(bit_width_) - 1) / 8;
    if (last_byte >= packed_bytes_) corrupt("bit-packed run runs past the end of the page");
    uint64_t v = 0;
    uint64_t first = bit / 8;
    for (uint64_t b = first; b <= last_byte; ++b) v |= static_cast<uint64_t>(packed_start_[b]) << (8 * (b - first));
    v >>= bit % 8;
    return v & ((uint64_t{1} << bit_width_) - 1);
  }

  const uint8_t* p_;
  const uint8_t* end_;
  int bit_width_;
  const std::string* where_;
  uint64_t left_ = 0;  // values left in the current run
  bool packed_ = false;
  uint64_t value_ = 0;  // RLE run value
  const uint8_t* packed_start_ = nullptr;
  uint64_t packed_bytes_ = 0;
  uint64_t packed_index_ = 0;
};

int bit_width_of(int max_level) {
  int w = 0;
  while ((1 << w) <= max_level) ++w;
  return w;
}

// ---- page headers ----
struct PageHeader {
  int32_t type = -1;
  int32_t uncompressed_size = -1;
  int32_t compressed_size = -1;
  bool has_crc = false;
  uint32_t crc = 0;
  int32_t num_values = -1;
  int32_t encoding = -1;
  int32_t def_encoding = kRle;
  int32_t rep_encoding = kRle;
  int32_t num_nulls = -1;  // v2
  int32_t num_rows = -1;   // v2
  int32_t def_bytes = 0;   // v2
  int32_t rep_bytes = 0;   // v2
  bool v2_compressed = true;
  bool has_body_header = false;
};

void parse_page_header(Reader& r, PageHeader& h) {
  r.begin_struct();
  int16_t id;
  ThriftType t;
  while (r.next_field(id, t)) {
    switch (id) {
      case 1: h.type = r.read_i32(t); break;
      case 2: h.uncompressed_size = r.read_i32(t); break;
      case 3: h.compressed_size = r.read_i32(t); break;
      case 4:
        h.crc = static_cast<uint32_t>(r.read_i32(t));
        h.has_crc = true;
        break;
      case 5:    // DataPageHeader
      case 7:    // DictionaryPageHeader
      case 8: {  // DataPageHeaderV2
        if (t != ThriftType::Struct) r.fail("page sub-header is not a struct");
        h.has_body_header = true;
        r.begin_struct();
        int16_t fid;
        ThriftType ft;
        while (r.next_field(fid, ft)) {
          if (fid == 1) {
            h.num_values = r.read_i32(ft);
          } else if (id == 5 && fid == 2) {
            h.encoding = r.read_i32(ft);
          } else if (id == 5 && fid == 3) {
            h.def_encoding = r.read_i32(ft);
          } else if (id == 5 && fid == 4) {
            h.rep_encoding = r.read_i32(ft);
          } else if (id == 7 && fid == 2) {
            h.encoding = r.read_i32(ft);
          } else if (id == 8 && fid == 2) {
            h.num_nulls = r.read_i32(ft);
          } else if (id == 8 && fid == 3) {
            h.num_rows = r.read_i32(ft);
          } else if (id == 8 && fid == 4) {
            h.encoding = r.read_i32(ft);
          } else if (id == 8 && fid == 5) {
            h.def_bytes = r.read_i32(ft);
          } else if (id == 8 && fid == 6) {
            h.rep_bytes = r.read_i32(ft);
          } else if (id == 8 && fid == 7) {
            h.v2_compressed = r.read_bool(ft);
          } else {
            r.skip(ft);
          }
        }
        r.end_struct();
        break;
      }
      default: r.skip(t);
    }
  }
  r.end_struct();
}

// ---- reading one column chunk ----
// The values of one column chunk, flattened: `rep`/`def` have one entry per level (rows and
// list slots), `values` one per present (non-null) value. Views point into `buffers`.
struct ChunkValues {
  std::vector<uint16_t> rep;  // (num_values,) or empty when max_rep == 0
  std::vector<uint16_t> def;  // (num_values,) or empty when max_def == 0
  std::vector<std::string_view> values;
};

class ChunkDecoder {
 public:
  ChunkDecoder(ParquetFile& f, const ColumnPlan& plan, size_t row_group)
      : f_(f),
        plan_(plan),
        rg_(f.meta().row_groups[row_group]),
        chunk_(rg_.columns[plan.leaf]),
        where_(fmt::format("column '{}', row group {}", plan.name, row_group)) {}

  void decode(ChunkValues& out) {
    check_chunk_meta();
    int64_t start = chunk_.dictionary_page_offset > 0 ? chunk_.dictionary_page_offset : chunk_.data_page_offset;
    if (chunk_.dictionary_page_offset > 0 && chunk_.dictionary_page_offset > chunk_.data_page_offset)
      fail("dictionary page offset {} lies after the data page offset {}", chunk_.dictionary_page_offset,
           chunk_.data_page_offset);
    if (start < 4 || chunk_.total_compressed <= 0 || chunk_.total_compressed > f_.data_end() - start)
      fail("chunk [{}, +{}) lies outside the file's data [4, {})", start, chunk_.total_compressed, f_.data_end());
    bytes_.resize(static_cast<size_t>(chunk_.total_compressed));
    f_.read_at(start, bytes_.data(), chunk_.total_compressed);

    size_t pos = 0;
    int64_t values_read = 0;
    int page = 0;
    while (values_read < chunk_.num_values) {
      if (pos >= bytes_.size()) fail("chunk ends after {} of {} values", values_read, chunk_.num_values);
      page_where_ = fmt::format("{}: {}, page {}", f_.path(), where_, page);
      Reader r(bytes_.data() + pos, bytes_.size() - pos, page_where_ + " header");
      PageHeader h;
      parse_page_header(r, h);
      pos += r.position();
      if (h.compressed_size < 0 || static_cast<size_t>(h.compressed_size) > bytes_.size() - pos)
        fail_page("compressed size {} runs past the chunk's end ({} bytes left)", h.compressed_size,
                  bytes_.size() - pos);
      if (h.uncompressed_size < 0 || h.uncompressed_size > chunk_.total_uncompressed)
        fail_page("uncompressed size {} is negative or larger than the chunk's {}", h.uncompressed_size,
                  chunk_.total_uncompressed);
      if (h.uncompressed_size > kMaxPageBytes)
        fail_page("uncompressed size {} exceeds the {} bytes a page may hold", h.uncompressed_size, kMaxPageBytes);
      const uint8_t* body = bytes_.data() + pos;
      pos += static_cast<size_t>(h.compressed_size);
      if (h.has_crc && static_cast<uint32_t>(crc32(0, body, static_cast<uInt>(h.compressed_size))) != h.crc)
        fail_page("CRC mismatch");
      switch (h.type) {
        case kDictionaryPage:
          if (page != 0) fail_page("dictionary page is not the chunk's first page");
          read_dictionary(h, body);
          break;
        case kDataPage:
        case kDataPageV2:
          if (!h.has_body_header || h.num_values < 0) fail_page("data page without a valid header");
          if (h.num_values > chunk_.num_values - values_read)
            fail_page("{} values exceed the chunk's remaining {}", h.num_values, chunk_.num_values - values_read);
          if (h.type == kDataPage)
            read_data_page_v1(h, body, out);
          else
            read_data_page_v2(h, body, out);
          values_read += h.num_values;
          break;
        case kIndexPage: break;
        default: fail_page("unknown page type {}", h.type);
      }
      ++page;
    }
  }

 private:
  template <class... Args>
  [[noreturn]] void fail(fmt::format_string<Args...> fmt_str, Args&&... args) const {
    esm2::fail("{}: {}: {}", f_.path(), where_, fmt::format(fmt_str, std::forward<Args>(args)...));
  }
  template <class... Args>
  [[noreturn]] void fail_page(fmt::format_string<Args...> fmt_str, Args&&... args) const {
    esm2::fail("{}: {}", page_where_, fmt::format(fmt_str, std::forward<Args>(args)...));
  }

  void check_chunk_meta() const {
    if (chunk_.external) fail("column chunk lives in another file, which is not supported");
    if (chunk_.encrypted) fail("encrypted column chunks are not supported");
    if (!chunk_.has_meta) fail("column chunk has no metadata");
    const SchemaNode* leaf = nullptr;
    for (const auto& n : f_.meta().schema)
      if (n.leaf == plan_.leaf) leaf = &n;
    ESM2_ASSERT(leaf);
    if (chunk_.path != leaf->path)
      fail("chunk's path '{}' differs from the schema's '{}'", join(chunk_.path, "."), join(leaf->path, "."));
    if (chunk_.type != kByteArray)
      fail("chunk has physical type {}, the schema says BYTE_ARRAY", physical_type_name(chunk_.type));
    if (chunk_.num_values < 0) fail("chunk has {} values", chunk_.num_values);
    if (plan_.max_rep == 0 && chunk_.num_values != rg_.num_rows)
      fail("chunk has {} values for {} rows", chunk_.num_values, rg_.num_rows);
    if (plan_.max_rep > 0 && chunk_.num_values < rg_.num_rows)
      fail("chunk has {} values, fewer than its {} rows", chunk_.num_values, rg_.num_rows);
    if (chunk_.codec != kUncompressed && chunk_.codec != kSnappy && chunk_.codec != kGzip && chunk_.codec != kZstd)
      fail("compression codec {} is not supported (only UNCOMPRESSED, SNAPPY, GZIP, ZSTD)", codec_name(chunk_.codec));
  }

  // Returns the page's uncompressed bytes: a view of the chunk for UNCOMPRESSED, else a buffer
  // that lives as long as this decoder (dictionary views point into it).
  const uint8_t* uncompress(const uint8_t* body, size_t n, size_t out_n, bool compressed) {
    if (chunk_.codec == kUncompressed || !compressed) {
      if (n != out_n) fail_page("uncompressed page has {} bytes, its header says {}", n, out_n);
      return body;
    }
    auto& buf = buffers_.emplace_back(std::max<size_t>(out_n, 1));
    decompress(page_where_, chunk_.codec, body, n, buf.data(), out_n);
    return buf.data();
  }

  void read_dictionary(const PageHeader& h, const uint8_t* body) {
    if (!h.has_body_header || h.num_values < 0) fail_page("dictionary page without a valid header");
    if (h.encoding != kPlain && h.encoding != kPlainDictionary)
      fail_page("dictionary page encoding {} is not supported", encoding_name(h.encoding));
    const uint8_t* p =
        uncompress(body, static_cast<size_t>(h.compressed_size), static_cast<size_t>(h.uncompressed_size), true);
    const uint8_t* end = p + h.uncompressed_size;
    dictionary_.clear();
    dictionary_.reserve(
        std::min<size_t>(static_cast<size_t>(h.num_values), static_cast<size_t>(h.uncompressed_size) / 4));
    read_plain(p, end, static_cast<size_t>(h.num_values), dictionary_);
    has_dictionary_ = true;
  }

  // PLAIN BYTE_ARRAY: (u32 LE length, bytes) per value.
  void read_plain(const uint8_t*& p, const uint8_t* end, size_t n, std::vector<std::string_view>& out) const {
    for (size_t i = 0; i < n; ++i) {
      if (end - p < 4) fail_page("PLAIN value {} of {}: length runs past the end of the page", i, n);
      uint32_t len = uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
      p += 4;
      if (len > static_cast<size_t>(end - p))
        fail_page("PLAIN value {} of {}: {} bytes run past the end of the page", i, n, len);
      out.emplace_back(reinterpret_cast<const char*>(p), len);
      p += len;
    }
  }

  // Decodes `count` levels of max `max_level` from [p, end) into out.
  void read_levels(const uint8_t* p, const uint8_t* end, int max_level, size_t count, std::vector<uint16_t>& out,
                   const char* kind) const {
    size_t before = out.size();
    HybridDecoder dec(p, end, bit_width_of(max_level), &page_where_);
    dec.get(count, out);
    for (size_t i = before; i < out.size(); ++i)
      if (out[i] > max_level) fail_page("{} level {} exceeds the column's maximum {}", kind, out[i], max_level);
  }

  // Values of one page, after its levels: `present` of them are non-null.
  void read_values(int32_t encoding, const uint8_t* p, const uint8_t* end, size_t present, ChunkValues& out) {
    if (encoding == kPlain) {
      read_plain(p, end, present, out.values);
    } else if (encoding == kRleDictionary || encoding == kPlainDictionary) {
      if (!has_dictionary_) fail_page("dictionary-encoded page but the chunk has no dictionary page");
      if (present == 0) return;
      if (p >= end) fail_page("dictionary indices missing");
      int bw = *p++;
      if (bw > 32) fail_page("dictionary index bit width {} exceeds 32", bw);
      indices_.clear();
      HybridDecoder dec(p, end, bw, &page_where_);
      dec.get(present, indices_);
      for (uint32_t idx : indices_) {
        if (idx >= dictionary_.size())
          fail_page("dictionary index {} out of range (dictionary has {} entries)", idx, dictionary_.size());
        out.values.push_back(dictionary_[idx]);
      }
    } else {
      fail_page("value encoding {} is not supported (only PLAIN and RLE_DICTIONARY)", encoding_name(encoding));
    }
  }

  void read_data_page_v1(const PageHeader& h, const uint8_t* body, ChunkValues& out) {
    const uint8_t* p =
        uncompress(body, static_cast<size_t>(h.compressed_size), static_cast<size_t>(h.uncompressed_size), true);
    const uint8_t* end = p + h.uncompressed_size;
    size_t n = static_cast<size_t>(h.num_values);
    // v1 levels: each section is a u32 LE byte length followed by RLE/bit-packed hybrid data.
    auto section = [&](int max_level, int32_t enc, std::vector<uint16_t>& dst, const char* kind) {
      if (max_level == 0) return;
      if (enc != kRle) fail_page("{} level encoding {} is not supported (only RLE)", kind, encoding_name(enc));
      if (end - p < 4) fail_page("{} levels' length runs past the end of the page", kind);
      uint32_t len = uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
      p += 4;
      if (len > static_cast<size_t>(end - p))
        fail_page("{} levels of {} bytes run past the end of the page", kind, len);
      read_levels(p, p + len, max_level, n, dst, kind);
      p += len;
    };
    size_t first_level = out.def.size();
    section(plan_.max_rep, h.rep_encoding, out.rep, "repetition");
    section(plan_.max_def, h.def_encoding, out.def, "definition");
    size_t present = plan_.max_def > 0
                         ? static_cast<size_t>(std::count(out.def.begin() + static_cast<ptrdiff_t>(first_level),
                                                          out.def.end(), plan_.max_def))
                         : n;
    read_values(h.encoding, p, end, present, out);
  }

  void read_data_page_v2(const PageHeader& h, const uint8_t* body, ChunkValues& out) {
    if (h.def_bytes < 0 || h.rep_bytes < 0 || int64_t{h.def_bytes} + h.rep_bytes > h.compressed_size ||
        int64_t{h.def_bytes} + h.rep_bytes > h.uncompressed_size)
      fail_page("level sections ({} + {} bytes) do not fit in the page", h.rep_bytes, h.def_bytes);
    size_t n = static_cast<size_t>(h.num_values);
    const uint8_t* p = body;
    size_t first_level = out.def.size();
    size_t first_rep = out.rep.size();
    if (plan_.max_rep > 0) read_levels(p, p + h.rep_bytes, plan_.max_rep, n, out.rep, "repetition");
    p += h.rep_bytes;
    if (plan_.max_def > 0) read_levels(p, p + h.def_bytes, plan_.max_def, n, out.def, "definition");
    p += h.def_bytes;
    size_t present = plan_.max_def > 0
                         ? static_cast<size_t>(std::count(out.def.begin() + static_cast<ptrdiff_t>(first_level),
                                                          out.def.end(), plan_.max_def))
                         : n;
    if (h.num_nulls >= 0 && plan_.max_rep == 0 && static_cast<size_t>(h.num_nulls) != n - present)
      fail_page("header says {} nulls, the levels hold {}", h.num_nulls, n - present);
    if (h.num_rows >= 0 && plan_.max_rep > 0) {
      size_t rows =
          static_cast<size_t>(std::count(out.rep.begin() + static_cast<ptrdiff_t>(first_rep), out.rep.end(), 0));
      if (rows != static_cast<size_t>(h.num_rows))
        fail_page("header says {} rows, the levels hold {}", h.num_rows, rows);
    }
    size_t level_bytes = static_cast<size_t>(h.def_bytes) + static_cast<size_t>(h.rep_bytes);
    const uint8_t* v = uncompress(p, static_cast<size_t>(h.compressed_size) - level_bytes,
                                  static_cast<size_t>(h.uncompressed_size) - level_bytes, h.v2_compressed);
    read_values(h.encoding, v, v + (static_cast<size_t>(h.uncompressed_size) - level_bytes), present, out);
  }

  ParquetFile& f_;
  const ColumnPlan& plan_;
  const RowGroupMeta& rg_;
  const ChunkMeta& chunk_;
  std::string where_;
  std::string page_where_;
  std::vector<uint8_t> bytes_;                 // the chunk as stored
  std::vector<std::vector<uint8_t>> buffers_;  // decompressed pages
  std::vector<std::string_view> dictionary_;
  bool has_dictionary_ = false;
  std::vector<uint32_t> indices_;
};

}  // namespace

std::vector<std::string> parquet_column_names(const std::filesystem::path& path) {
  ParquetFile f(path);
  return f.top_level_names();
}

std::vector<std::string> read_parquet_string_column(const std::filesystem::path& path, const std::string& column) {
  ParquetFile f(path);
  ColumnPlan plan = plan_string_column(f, column);
  std::vector<std::string> rows;
  rows.reserve(static_cast<size_t>(std::min<int64_t>(f.meta().num_rows, 1 << 20)));
  for (size_t g = 0; g < f.meta().row_groups.size(); ++g) {
    if (f.meta().row_groups[g].num_rows == 0) continue;
    ChunkValues cv;
    ChunkDecoder decoder(f, plan, g);  // owns the bytes cv.values point into
    decoder.decode(cv);
    // Flat column: one level per row, a definition level below max_def is a null.
    size_t v = 0;
    size_t n = static_cast<size_t>(f.meta().row_groups[g].num_rows);
    for (size_t i = 0; i < n; ++i) {
      if (plan.max_def > 0 && cv.def[i] < plan.max_def)
        esm2::fail("{}: column '{}', row {}: null value (ids may not be null)", f.path(), column, rows.size());
      rows.emplace_back(cv.values[v++]);
    }
  }
  return rows;
}

std::vector<std::vector<std::string>> read_parquet_string_list_column(const std::filesystem::path& path,
                                                                      const std::string& column) {
  ParquetFile f(path);
  ColumnPlan plan = plan_string_list_column(f, column);
  std::vector<std::vector<std::string>> rows;
  rows.reserve(static_cast<size_t>(std::min<int64_t>(f.meta().num_rows, 1 << 20)));
  for (size_t g = 0; g < f.meta().row_groups.size(); ++g) {
    const auto& rg = f.meta().row_groups[g];
    if (rg.num_rows == 0) continue;
    ChunkValues cv;
    ChunkDecoder decoder(f, plan, g);  // owns the bytes cv.values point into
    decoder.decode(cv);
    size_t first_row = rows.size();
    size_t v = 0;
    for (size_t i = 0; i < cv.rep.size(); ++i) {
      int def = cv.def[i];
      if (cv.rep[i] == 0) {
        rows.emplace_back();
      } else if (rows.size() == first_row) {
        esm2::fail("{}: column '{}', row group {}: the first value continues a row (repetition level {})", f.path(),
                   column, g, cv.rep[i]);
      }
      size_t row = rows.size() - 1;
      if (def < plan.def_list)
        esm2::fail("{}: column '{}', row {}: null list (ids may not be null)", f.path(), column, row);
      if (def < plan.def_element) {
        if (cv.rep[i] != 0)
          esm2::fail("{}: column '{}', row {}: empty-list marker inside a list", f.path(), column, row);
        continue;
      }
      if (def < plan.max_def)
        esm2::fail("{}: column '{}', row {}: null list element (ids may not be null)", f.path(), column, row);
      rows.back().emplace_back(cv.values[v++]);
    }
    if (rows.size() - first_row != static_cast<size_t>(rg.num_rows))
      esm2::fail("{}: column '{}', row group {}: levels hold {} rows, the footer says {}", f.path(), column, g,
                 rows.size() - first_row, rg.num_rows);
  }
  return rows;
}

}  // namespace esm2
