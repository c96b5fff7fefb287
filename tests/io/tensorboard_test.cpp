#include "io/tensorboard.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <chrono>
#include <cstring>

#include "core/atomic_dir.h"
#include "core/error.h"

using namespace esm2;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& tag) {
  fs::path p = fs::temp_directory_path() / fmt::format("esm2-tb-{}-{}", tag, ::getpid());
  fs::remove_all(p);
  return p;
}

uint64_t le(std::string_view s, size_t off, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(s.at(off + i));
  return v;
}

// A protobuf field as decoded by this test's own minimal reader.
struct Field {
  uint32_t number = 0, wire = 0;
  uint64_t scalar = 0;  // varint / fixed32 / fixed64
  std::string bytes;    // length-delimited
};

std::vector<Field> decode(std::string_view msg) {
  std::vector<Field> out;
  size_t i = 0;
  auto varint = [&] {
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
      const uint8_t b = static_cast<uint8_t>(msg.at(i++));
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
  };
  while (i < msg.size()) {
    Field f;
    const uint64_t key = varint();
    f.number = static_cast<uint32_t>(key >> 3);
    f.wire = static_cast<uint32_t>(key & 7);
    if (f.wire == 0) f.scalar = varint();
    else if (f.wire == 1) { f.scalar = le(msg, i, 8); i += 8; }
    else if (f.wire == 5) { f.scalar = le(msg, i, 4); i += 4; }
    else if (f.wire == 2) { const size_t n = varint(); f.bytes = std::string(msg.substr(i, n)); i += n; }
    else ADD_FAILURE() << "unexpected wire type " << f.wire;
    out.push_back(f);
  }
  EXPECT_EQ(i, msg.size());
  return out;
}

// Splits a TFRecord stream, checking both masked CRCs of every record.
std::vector<std::string> records(const std::string& file) {
  std::vector<std::string> out;
  size_t off = 0;
  while (off < file.size()) {
    const uint64_t n = le(file, off, 8);
    EXPECT_EQ(le(file, off + 8, 4), masked_crc32c(std::string_view(file).substr(off, 8)));
    const std::string data = file.substr(off + 12, n);
    EXPECT_EQ(le(file, off + 12 + n, 4), masked_crc32c(data));
    out.push_back(data);
    off += 12 + n + 4;
  }
  EXPECT_EQ(off, file.size());
  return out;
}

}  // namespace

TEST(Crc32c, StandardVectors) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c(""), 0u);
  // RFC 3720 (iSCSI) appendix B.4.
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string inc(32, '\0');
  for (int i = 0; i < 32; ++i) inc[i] = static_cast<char>(i);
  EXPECT_EQ(crc32c(inc), 0x46DD794Eu);
  // Incremental = one shot.
  EXPECT_EQ(crc32c("56789", crc32c("1234")), 0xE3069283u);
  // mask(c) = rotr15(c) + 0xa282ead8
  const uint32_t c = 0xE3069283u;
  EXPECT_EQ(masked_crc32c("123456789"), ((c >> 15) | (c << 17)) + 0xa282ead8u);
}

TEST(TensorBoard, ScalarEventBytesMatchHandEncoding) {
  // wall_time 1.5, step 7, tag "loss", simple_value 0.25, encoded by hand:
  const unsigned char want[] = {
      0x09, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F,   // field 1 fixed64: 1.5
      0x10, 0x07,                           // field 2 varint: 7
      0x2A, 0x0D,                           // field 5 (summary), 13 bytes
      0x0A, 0x0B,                           //   field 1 (value), 11 bytes
      0x0A, 0x04, 'l', 'o', 's', 's',       //     tag
      0x15, 0x00, 0x00, 0x80, 0x3E};        //     simple_value fixed32: 0.25
  EXPECT_EQ(tb_scalar_event(1.5, 7, "loss", 0.25f), std::string(reinterpret_cast<const char*>(want), sizeof want));
  // Steps ≥ 128 need multi-byte varints: 300 = 0xAC 0x02.
  const std::string e = tb_scalar_event(0.0, 300, "x", 1.0f);
  EXPECT_EQ(e.substr(9, 3), std::string("\x10\xAC\x02"));
  const unsigned char fv[] = {0x09, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x1A, 13, 'b', 'r', 'a', 'i', 'n',
                              '.',  'E', 'v', 'e', 'n', 't', ':', '2'};
  EXPECT_EQ(tb_file_version_event(2.0), std::string(reinterpret_cast<const char*>(fv), sizeof fv));
  // Framing: 8-byte length, masked CRC of the length, data, masked CRC of the data.
  const std::string r = tfrecord("abc");
  ASSERT_EQ(r.size(), 8u + 4 + 3 + 4);
  EXPECT_EQ(le(r, 0, 8), 3u);
  EXPECT_EQ(le(r, 8, 4), masked_crc32c(std::string("\x03\0\0\0\0\0\0\0", 8)));
  EXPECT_EQ(r.substr(12, 3), "abc");
  EXPECT_EQ(le(r, 15, 4), masked_crc32c("abc"));
}

TEST(TensorBoard, WriterFileDecodes) {
  const fs::path dir = temp_dir("w");
  const double t0 = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  fs::path first;
  {
    TensorBoardWriter w(dir / "logs");
    first = w.path();
    EXPECT_TRUE(first.filename().string().starts_with("events.out.tfevents."));
    EXPECT_EQ(records(read_file(first)).size(), 1u);  // the file_version record is written at once
    w.add_scalar("train/loss", 2.5f, 1);
    w.add_scalar("train/lr", 1e-4f, 1);
    EXPECT_EQ(records(read_file(first)).size(), 1u);  // queued until flush()
    w.flush();
    // Flushed: the bytes are in the file while the writer is still open.
    EXPECT_EQ(records(read_file(first)).size(), 3u);
    w.flush();  // nothing pending: no-op
    EXPECT_EQ(records(read_file(first)).size(), 3u);
    w.add_scalar("train/loss", 2.25f, 2);
  }  // the destructor flushes step 2
  const auto recs = records(read_file(first));
  ASSERT_EQ(recs.size(), 4u);
  const auto hdr = decode(recs[0]);
  ASSERT_EQ(hdr.size(), 2u);
  EXPECT_EQ(hdr[0].number, 1u);
  const double wall = std::bit_cast<double>(hdr[0].scalar);
  EXPECT_GE(wall, t0 - 1);
  EXPECT_LE(wall, t0 + 60);
  EXPECT_EQ(hdr[1].number, 3u);
  EXPECT_EQ(hdr[1].bytes, "brain.Event:2");

  struct Want { int64_t step; const char* tag; float value; };
  const Want want[] = {{1, "train/loss", 2.5f}, {1, "train/lr", 1e-4f}, {2, "train/loss", 2.25f}};
  for (int k = 0; k < 3; ++k) {
    const auto ev = decode(recs[k + 1]);
    ASSERT_EQ(ev.size(), 3u);
    EXPECT_EQ(ev[0].number, 1u);
    EXPECT_EQ(ev[0].wire, 1u);
    EXPECT_EQ(ev[1].number, 2u);
    EXPECT_EQ(static_cast<int64_t>(ev[1].scalar), want[k].step);
    EXPECT_EQ(ev[2].number, 5u);
    const auto summary = decode(ev[2].bytes);
    ASSERT_EQ(summary.size(), 1u);
    const auto value = decode(summary[0].bytes);
    ASSERT_EQ(value.size(), 2u);
    EXPECT_EQ(value[0].bytes, want[k].tag);
    EXPECT_EQ(value[1].wire, 5u);
    EXPECT_EQ(std::bit_cast<float>(static_cast<uint32_t>(value[1].scalar)), want[k].value);
  }
  // A second writer in the same directory (same second) gets its own file.
  TensorBoardWriter again(dir / "logs");
  EXPECT_NE(again.path(), first);
  EXPECT_EQ(records(read_file(first)).size(), 4u);
  fs::remove_all(dir);
}

TEST(TensorBoard, UnwritableLogDirIsAnError) {
  EXPECT_THROW(TensorBoardWriter("/proc/esm2-no-such-dir/logs"), Error);
}
