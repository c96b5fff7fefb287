// A bounds-checked decoder of the Thrift compact protocol, the encoding of Parquet's footer
// (FileMetaData) and page headers. Only what Parquet metadata uses: structs, lists, varint
// integers, binary/strings and bools; unknown fields of any type are skipped, so newer writers'
// additions (statistics, size statistics, geospatial, ...) read fine. Every read is checked
// against the buffer; a malformed buffer throws esm2::Error naming `what` and the byte offset.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace esm2 {

// The compact protocol's type nibble of a field or list element.
enum class ThriftType : uint8_t {
  Stop = 0,
  BoolTrue = 1,
  BoolFalse = 2,
  Byte = 3,
  I16 = 4,
  I32 = 5,
  I64 = 6,
  Double = 7,
  Binary = 8,
  List = 9,
  Set = 10,
  Map = 11,
  Struct = 12,
};

class ThriftCompactReader {
 public:
  // `what` names the buffer in errors, e.g. "data/x.parquet: footer".
  ThriftCompactReader(const uint8_t* data, size_t size, std::string what);

  size_t position() const { return pos_; }

  // Struct fields: begin_struct(), then next_field() until it returns false (STOP), then
  // end_struct(). Field ids are delta-coded relative to the previous field of the same struct.
  void begin_struct();
  bool next_field(int16_t& id, ThriftType& type);
  void end_struct();

  // Typed reads of the current field's value; `type` is what next_field() returned and must match.
  bool read_bool(ThriftType type);
  int32_t read_i32(ThriftType type);
  int64_t read_i64(ThriftType type);
  std::string read_string(ThriftType type);
  // A list header: returns the element count (checked against the bytes left, as every element
  // takes at least one byte) and stores the element type.
  uint32_t read_list_begin(ThriftType type, ThriftType& element_type);

  // Skips a value of the given type (a field's or a list element's; for list elements, bools are a
  // whole byte: pass in_list = true).
  void skip(ThriftType type, bool in_list = false);

  [[noreturn]] void fail(std::string_view reason) const;

 private:
  uint64_t read_varint();
  uint8_t read_byte();
  void expect(ThriftType got, ThriftType want) const;

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  std::string what_;
  std::vector<int16_t> last_field_;  // one entry per open struct
};

}  // namespace esm2
