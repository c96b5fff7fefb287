#include "data/thrift_compact.h"

#include "core/error.h"

namespace esm2 {
namespace {

// Parquet metadata nests a handful of levels; a deeper buffer is corrupt, and bounding the depth
// keeps skip()'s recursion off the end of the stack.
constexpr size_t kMaxDepth = 64;

const char* type_name(ThriftType t) {
  switch (t) {
    case ThriftType::Stop: return "stop";
    case ThriftType::BoolTrue:
    case ThriftType::BoolFalse: return "bool";
    case ThriftType::Byte: return "byte";
    case ThriftType::I16: return "i16";
    case ThriftType::I32: return "i32";
    case ThriftType::I64: return "i64";
    case ThriftType::Double: return "double";
    case ThriftType::Binary: return "binary";
    case ThriftType::List: return "list";
    case ThriftType::Set: return "set";
    case ThriftType::Map: return "map";
    case ThriftType::Struct: return "struct";
  }
  return "unknown";
}

int64_t unzigzag(uint64_t v) {
  return static_cast<int64_t>(v >> 1) ^ -static_cast<int64_t>(v & 1);
}

}  // namespace

ThriftCompactReader::ThriftCompactReader(const uint8_t* data, size_t size, std::string what)
    : data_(data), size_(size), what_(std::move(what)) {}

void ThriftCompactReader::fail(std::string_view reason) const {
  esm2::fail("{}: {} (at byte {} of {})", what_, reason, pos_, size_);
}

uint8_t ThriftCompactReader::read_byte() {
  if (pos_ >= size_) fail("truncated Thrift data");
  return data_[pos_++];
}

uint64_t ThriftCompactReader::read_varint() {
  uint64_t v = 0;
  for (int shift = 0; shift < 70; shift += 7) {
    uint8_t b = read_byte();
    if (shift == 63 && b > 1) fail("varint overflows 64 bits");
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  fail("varint longer than 10 bytes");
}

void ThriftCompactReader::expect(ThriftType got, ThriftType want) const {
  bool ok = got == want || (want == ThriftType::BoolTrue && got == ThriftType::BoolFalse);
  if (!ok) fail(fmt::format("field has Thrift type {}, expected {}", type_name(got), type_name(want)));
}

void ThriftCompactReader::begin_struct() {
  if (last_field_.size() >= kMaxDepth) fail("structs nested too deeply");
  last_field_.push_back(0);
}

void ThriftCompactReader::end_struct() {
  ESM2_ASSERT(!last_field_.empty());
  last_field_.pop_back();
}

bool ThriftCompactReader::next_field(int16_t& id, ThriftType& type) {
  ESM2_ASSERT(!last_field_.empty());
  uint8_t b = read_byte();
  uint8_t t = b & 0x0f;
  if (t == 0) {
    if (b != 0) fail("malformed STOP field");
    return false;
  }
  if (t > static_cast<uint8_t>(ThriftType::Struct)) fail(fmt::format("unknown Thrift field type {}", t));
  type = static_cast<ThriftType>(t);
  uint8_t delta = b >> 4;
  if (delta) {
    id = static_cast<int16_t>(last_field_.back() + delta);
  } else {
    int64_t v = unzigzag(read_varint());
    if (v < INT16_MIN || v > INT16_MAX) fail("field id out of range");
    id = static_cast<int16_t>(v);
  }
  last_field_.back() = id;
  return true;
}

bool ThriftCompactReader::read_bool(ThriftType type) {
  expect(type, ThriftType::BoolTrue);
  return type == ThriftType::BoolTrue;
}

int32_t ThriftCompactReader::read_i32(ThriftType type) {
  if (type != ThriftType::I32 && type != ThriftType::I16 && type != ThriftType::Byte) expect(type, ThriftType::I32);
  if (type == ThriftType::Byte) return static_cast<int8_t>(read_byte());
  int64_t v = unzigzag(read_varint());
  if (v < INT32_MIN || v > INT32_MAX) fail("i32 value out of range");
  return static_cast<int32_t>(v);
}

int64_t ThriftCompactReader::read_i64(ThriftType type) {
  if (type == ThriftType::I32 || type == ThriftType::I16) return read_i32(type);
  expect(type, ThriftType::I64);
  return unzigzag(read_varint());
}

std::string ThriftCompactReader::read_string(ThriftType type) {
  expect(type, ThriftType::Binary);
  uint64_t n = read_varint();
  if (n > size_ - pos_) fail(fmt::format("string of {} bytes runs past the end", n));
  std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
  pos_ += n;
  return s;
}

uint32_t ThriftCompactReader::read_list_begin(ThriftType type, ThriftType& element_type) {
  if (type != ThriftType::Set) expect(type, ThriftType::List);
  uint8_t b = read_byte();
  uint8_t t = b & 0x0f;
  if (t == 0 || t > static_cast<uint8_t>(ThriftType::Struct)) fail(fmt::format("unknown list element type {}", t));
  element_type = static_cast<ThriftType>(t);
  uint64_t n = b >> 4;
  if (n == 15) n = read_varint();
  if (n > size_ - pos_) fail(fmt::format("list of {} elements cannot fit in the bytes left", n));
  return static_cast<uint32_t>(n);
}

void ThriftCompactReader::skip(ThriftType type, bool in_list) {
  switch (type) {
    case ThriftType::BoolTrue:
    case ThriftType::BoolFalse:
      if (in_list) read_byte();  // a field's bool lives in its type nibble; a list element's in a byte
      return;
    case ThriftType::Byte: read_byte(); return;
    case ThriftType::I16:
    case ThriftType::I32:
    case ThriftType::I64: read_varint(); return;
    case ThriftType::Double:
      if (size_ - pos_ < 8) fail("truncated double");
      pos_ += 8;
      return;
    case ThriftType::Binary: {
      uint64_t n = read_varint();
      if (n > size_ - pos_) fail(fmt::format("binary of {} bytes runs past the end", n));
      pos_ += n;
      return;
    }
    case ThriftType::List:
    case ThriftType::Set: {
      ThriftType et;
      uint32_t n = read_list_begin(ThriftType::List, et);
      if (last_field_.size() >= kMaxDepth) fail("values nested too deeply");
      last_field_.push_back(0);  // counts nesting depth; list elements carry no field ids
      for (uint32_t i = 0; i < n; ++i) skip(et, true);
      last_field_.pop_back();
      return;
    }
    case ThriftType::Map: {
      uint64_t n = read_varint();
      if (n == 0) return;
      uint8_t kv = read_byte();
      auto kt = static_cast<ThriftType>(kv >> 4), vt = static_cast<ThriftType>(kv & 0x0f);
      if ((kv >> 4) == 0 || (kv >> 4) > 12 || (kv & 0x0f) == 0 || (kv & 0x0f) > 12) fail("unknown map types");
      if (n > size_ - pos_) fail(fmt::format("map of {} entries cannot fit in the bytes left", n));
      if (last_field_.size() >= kMaxDepth) fail("values nested too deeply");
      last_field_.push_back(0);
      for (uint64_t i = 0; i < n; ++i) {
        skip(kt, true);
        skip(vt, true);
      }
      last_field_.pop_back();
      return;
    }
    case ThriftType::Struct: {
      begin_struct();
      int16_t id;
      ThriftType t;
      while (next_field(id, t)) skip(t);
      end_struct();
      return;
    }
    case ThriftType::Stop: break;
  }
  fail("cannot skip a value of type stop");
}

}  // namespace esm2
