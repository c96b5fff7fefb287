#include "io/tensorboard.h"

#include <unistd.h>

#include <array>
#include <bit>
#include <chrono>
#include <cstring>

#include "core/error.h"

namespace fs = std::filesystem;

namespace esm2 {

namespace {

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr auto kCrc32cTable = make_crc32c_table();

// Protobuf wire format, the few pieces an Event needs.
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
void put_key(std::string& out, uint32_t field, uint32_t wire_type) { put_varint(out, (field << 3) | wire_type); }
void put_fixed(std::string& out, uint64_t bits, int bytes) {
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((bits >> (8 * i)) & 0xff);
}
void put_bytes(std::string& out, uint32_t field, std::string_view s) {
  put_key(out, field, 2);
  put_varint(out, s.size());
  out += s;
}
std::string event_header(double wall_time, int64_t step) {
  std::string e;
  put_key(e, 1, 1);  // wall_time: fixed64 double
  put_fixed(e, std::bit_cast<uint64_t>(wall_time), 8);
  if (step != 0) {  // proto3 default values are omitted
    put_key(e, 2, 0);
    put_varint(e, static_cast<uint64_t>(step));
  }
  return e;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

uint32_t crc32c(std::string_view data, uint32_t crc) {
  crc = ~crc;
  for (unsigned char b : data) crc = kCrc32cTable[(crc ^ b) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(std::string_view data) {
  const uint32_t c = crc32c(data);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string tfrecord(std::string_view data) {
  std::string out;
  put_fixed(out, data.size(), 8);
  put_fixed(out, masked_crc32c(out), 4);
  out += data;
  put_fixed(out, masked_crc32c(data), 4);
  return out;
}

std::string tb_file_version_event(double wall_time) {
  std::string e = event_header(wall_time, 0);
  put_bytes(e, 3, "brain.Event:2");
  return e;
}

std::string tb_scalar_event(double wall_time, int64_t step, std::string_view tag, float value) {
  std::string v;
  put_bytes(v, 1, tag);
  put_key(v, 2, 5);  // simple_value: fixed32 float
  put_fixed(v, std::bit_cast<uint32_t>(value), 4);
  std::string summary;
  put_bytes(summary, 1, v);
  std::string e = event_header(wall_time, step);
  put_bytes(e, 5, summary);
  return e;
}

fs::path TensorBoardWriter::new_file_name(const fs::path& logdir) {
  std::error_code ec;
  fs::create_directories(logdir, ec);
  ESM2_CHECK(!ec, "{}: cannot create log directory: {}", logdir.string(), ec.message());
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') std::strcpy(host, "localhost");
  const auto secs = static_cast<int64_t>(now_seconds());
  const std::string base = fmt::format("events.out.tfevents.{}.{}", secs, host);
  // Two writers started in the same second (e.g. a quick restart) must not share a file.
  fs::path p = logdir / base;
  for (int n = 1; fs::exists(p); ++n) p = logdir / fmt::format("{}.{}", base, n);
  return p;
}

TensorBoardWriter::TensorBoardWriter(const fs::path& logdir)
    : file_(new_file_name(logdir), AppendFile::Mode::CreateNew) {
  file_.append(tfrecord(tb_file_version_event(now_seconds())));
}

TensorBoardWriter::~TensorBoardWriter() {
  try {
    flush();
  } catch (const Error&) {
  }
}

void TensorBoardWriter::add_scalar(std::string_view tag, float value, int64_t step) {
  pending_ += tfrecord(tb_scalar_event(now_seconds(), step, tag, value));
}

void TensorBoardWriter::flush() {
  if (pending_.empty()) return;
  std::string out;
  out.swap(pending_);  // on failure the records are dropped, not written twice by a later flush
  file_.append(out);
}

}  // namespace esm2
