#include "io/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/atomic_dir.h"
#include "core/error.h"
#include "core/philox.h"

using namespace esm2;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& tag) {
  fs::path p = fs::temp_directory_path() / fmt::format("esm2-io-{}-{}", tag, ::getpid());
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A handcrafted file: length field, header text, data bytes.
std::string craft(const std::string& header, const std::string& data) { return le64(header.size()) + header + data; }

// Parsing `bytes` must fail with an esm2::Error whose message contains every piece of `expect`.
void expect_corrupt(const std::string& bytes, std::initializer_list<std::string> expect) {
  try {
    SafetensorsFile::from_bytes(bytes, "crafted.safetensors");
    ADD_FAILURE() << "accepted a corrupt file; expected: " << *expect.begin();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("crafted.safetensors"), std::string::npos) << msg;
    for (const auto& piece : expect) EXPECT_NE(msg.find(piece), std::string::npos) << "'" << piece << "' not in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "multi-line error: " << msg;
  }
}

std::vector<float> random_floats(size_t n, uint64_t seed) {
  PhiloxStream rng{seed, RngStream::Init};
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = (philox_uniform(rng.word(i)) - 0.5f) * 8.0f;
  return v;
}

}  // namespace

// ---- conversions against hand-computed bit patterns ----

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1p-8f), 0x3F80);           // tie between 0x3F80 and 0x3F81 → even
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3F82);       // tie between 0x3F81 and 0x3F82 → even
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);  // just above the tie
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1p-8f - 0x1p-20f), 0x3F80);  // just below the tie
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds up past the largest bf16
  EXPECT_EQ(f32_to_bf16(0.1f), 0x3DCD);                               // 0x3DCCCCCD → 0x3DCD
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  // A NaN whose payload sits only in the low 16 bits must not collapse to infinity.
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::bit_cast<float>(0x7f800001u)))));
  EXPECT_EQ(bf16_to_f32(0x4049), 3.140625f);
}

TEST(F16, RoundsToNearestEven) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(0.1f), 0x2E66);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);  // the tie above the largest half rounds to inf
  EXPECT_EQ(f32_to_f16(1e6f), 0x7C00);
  EXPECT_EQ(f32_to_f16(-1e6f), 0xFC00);
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3C00);      // tie → even
  EXPECT_EQ(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02);  // tie → even
  EXPECT_EQ(f32_to_f16(0x1p-14f), 0x0400);             // smallest normal
  EXPECT_EQ(f32_to_f16(0x1p-24f), 0x0001);             // smallest subnormal
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);             // tie between 0 and 2^-24 → even (0)
  EXPECT_EQ(f32_to_f16(3 * 0x1p-26f), 0x0001);
  EXPECT_EQ(f32_to_f16(3 * 0x1p-25f), 0x0002);         // tie between 1 and 2 ulps → 2
  EXPECT_EQ(f32_to_f16(0x1p-14f - 0x1p-25f), 0x0400);  // rounds up into the normal range
  EXPECT_EQ(f32_to_f16(1e-8f), 0x0000);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::quiet_NaN()) & 0x7E00, 0x7E00);
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);
  EXPECT_EQ(f16_to_f32(0x0001), 0x1p-24f);
  EXPECT_EQ(f16_to_f32(0x83FF), -1023 * 0x1p-24f);
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7C00)));
}

TEST(F16, EveryHalfRoundTripsExactly) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << h;
  }
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = bf16_to_f32(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), b) << std::hex << b;
  }
}

// ---- writer + reader round trips ----

TEST(Safetensors, RoundTripF32Bf16F16) {
  const auto a = random_floats(33 * 20, 1);
  const auto b = random_floats(7, 2);
  const auto c = random_floats(5 * 3, 3);
  SafetensorsWriter w;
  w.add_f32("a", {33, 20}, a, DType::F32);
  w.add_f32("b", {7}, b, DType::BF16);
  w.add_f32("c", {5, 3}, c, DType::F16);
  w.add_f32("empty", {0, 4}, {}, DType::F32);
  w.add_raw("ids", RawTensor{DType::I64, {2}, le64(7) + le64(1ull << 40)});
  w.set_metadata("note", "hello");
  const fs::path dir = temp_dir("rt");
  w.write(dir / "x.safetensors");
  EXPECT_FALSE(fs::exists(dir / "x.safetensors.tmp"));

  const auto f = SafetensorsFile::open(dir / "x.safetensors");
  ASSERT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "hello");
  EXPECT_EQ(f.info("a").shape, (std::vector<int64_t>{33, 20}));
  EXPECT_EQ(f.info("b").dtype, DType::BF16);
  EXPECT_EQ(f.to_f32("a"), a);
  const auto b2 = f.to_f32("b");
  const auto c2 = f.to_f32("c");
  for (size_t i = 0; i < b.size(); ++i) {
    EXPECT_EQ(b2[i], bf16_to_f32(f32_to_bf16(b[i])));
    EXPECT_NEAR(b2[i], b[i], std::abs(b[i]) * 0x1p-8f);
  }
  for (size_t i = 0; i < c.size(); ++i) {
    EXPECT_EQ(c2[i], f16_to_f32(f32_to_f16(c[i])));
    EXPECT_NEAR(c2[i], c[i], std::abs(c[i]) * 0x1p-11f);
  }
  EXPECT_TRUE(f.to_f32("empty").empty());
  const RawTensor ids = f.raw("ids");
  EXPECT_EQ(ids.dtype, DType::I64);
  EXPECT_EQ(ids.data, le64(7) + le64(1ull << 40));
  try {
    f.to_f32("ids");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'ids' has dtype I64"), std::string::npos) << e.what();
  }
  EXPECT_THROW(f.info("nope"), Error);

  // Same bytes through serialize() as through write().
  EXPECT_EQ(w.serialize(), read_file(dir / "x.safetensors"));
  fs::remove_all(dir);
}

TEST(Safetensors, HeaderLayoutIsPaddedAndSpecConformant) {
  const std::vector<float> v = {1.0f, -2.0f, 0.5f};
  SafetensorsWriter w;
  w.add_f32("v", {3}, v);
  w.add_f32("h", {1}, std::span<const float>(v.data(), 1), DType::F16);
  const std::string bytes = w.serialize();
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_EQ(bytes.size(), 8 + n + 12 + 2);
  // Decode the header with a plain JSON parser, independent of our reader.
  const auto h = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(h["__metadata__"]["format"], "pt");
  EXPECT_EQ(h["v"]["dtype"], "F32");
  EXPECT_EQ(h["v"]["data_offsets"], nlohmann::json::array({0, 12}));
  EXPECT_EQ(h["h"]["data_offsets"], nlohmann::json::array({12, 14}));
  EXPECT_EQ(h["h"]["shape"], nlohmann::json::array({1}));
  float back[3];
  std::memcpy(back, bytes.data() + 8 + n, 12);
  EXPECT_EQ(back[1], -2.0f);
  EXPECT_EQ(static_cast<uint8_t>(bytes[8 + n + 12]), 0x00);  // 1.0 in F16 = 0x3C00, little-endian
  EXPECT_EQ(static_cast<uint8_t>(bytes[8 + n + 13]), 0x3C);
}

TEST(Safetensors, WriterRejectsBadInput) {
  const std::vector<float> v(6);
  SafetensorsWriter w;
  EXPECT_THROW(w.add_f32("x", {2, 2}, v), Error);  // 4 ≠ 6 values
  EXPECT_THROW(w.add_f32("x", {6}, v, DType::I32), Error);
  EXPECT_THROW(w.add_f32("__metadata__", {6}, v), Error);
  w.add_f32("x", {6}, v);
  EXPECT_THROW(w.add_f32("x", {2, 3}, v), Error);  // duplicate
  EXPECT_THROW(w.add_raw("r", RawTensor{DType::F32, {2}, "abc"}), Error);
}

TEST(Safetensors, ShardedRoundTrip) {
  std::vector<std::vector<float>> data;
  for (int i = 0; i < 5; ++i) data.push_back(random_floats(100 + i, 10 + i));  // ~400 bytes each
  SafetensorsWriter w;
  for (int i = 0; i < 5; ++i)
    w.add_f32(fmt::format("t{}", i), {static_cast<int64_t>(data[i].size())}, data[i], DType::F32);
  const fs::path dir = temp_dir("shard");
  const auto names = w.write_sharded(dir, 900);  // two tensors per shard → 3 shards
  ASSERT_EQ(names.size(), 4u);
  EXPECT_EQ(names[0], "model-00001-of-00003.safetensors");
  EXPECT_EQ(names[2], "model-00003-of-00003.safetensors");
  EXPECT_EQ(names[3], "model.safetensors.index.json");
  const auto index = nlohmann::json::parse(read_file(dir / names[3]));
  EXPECT_EQ(index["weight_map"]["t4"], "model-00003-of-00003.safetensors");
  EXPECT_EQ(index["metadata"]["total_size"], w.data_bytes());

  const auto set = SafetensorsSet::open(dir);
  EXPECT_EQ(set.files().size(), 3u);
  EXPECT_EQ(set.names().size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(set.to_f32(fmt::format("t{}", i)), data[i]);

  // No limit → one model.safetensors, and the stale index is gone.
  EXPECT_EQ(w.write_sharded(dir, 0), std::vector<std::string>{"model.safetensors"});
  const auto single = SafetensorsSet::open(dir);
  EXPECT_EQ(single.files().size(), 1u);
  EXPECT_EQ(single.to_f32("t3"), data[3]);
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  // And back to shards: the single file goes, so the shards are what a reader finds.
  w.write_sharded(dir, 900);
  EXPECT_FALSE(fs::exists(dir / "model.safetensors"));
  EXPECT_EQ(SafetensorsSet::open(dir).files().size(), 3u);
  fs::remove_all(dir);
}

TEST(Safetensors, CorruptIndexIsRejected) {
  const std::vector<float> v = {1, 2};
  SafetensorsWriter w;
  w.add_f32("a", {2}, v);
  w.add_f32("b", {2}, v);
  w.add_f32("c", {2}, v);
  const fs::path dir = temp_dir("badindex");
  w.write_sharded(dir, 16);  // a, b in shard 1; c in shard 2
  const auto rewrite = [&](const std::string& weight_map) {
    write_file(dir / "model.safetensors.index.json", R"({"metadata":{},"weight_map":)" + weight_map + "}");
  };
  const auto expect_msg = [&](const std::string& piece) {
    try {
      SafetensorsSet::open(dir);
      ADD_FAILURE() << "accepted; expected " << piece;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(piece), std::string::npos) << e.what();
    }
  };
  EXPECT_EQ(SafetensorsSet::open(dir).names().size(), 3u);
  rewrite(R"({"a":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"})");
  expect_msg("'b' of shard model-00001-of-00002.safetensors is not in the index");
  rewrite(R"({"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors",)"
          R"("c":"model-00001-of-00002.safetensors"})");
  expect_msg("tensor 'c' is listed in model.safetensors.index.json but missing from");
  rewrite(R"({"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors",)"
          R"("c":"model-00002-of-00002.safetensors"})");
  expect_msg("missing from");
  rewrite(R"({"a":"../model-00001-of-00002.safetensors"})");
  expect_msg("not a file in the same directory");
  rewrite(R"({"a":"model-00001-of-00002.safetensors","a":"model-00002-of-00002.safetensors"})");
  expect_msg("duplicate key 'a'");
  rewrite(R"({"a":"gone.safetensors"})");
  expect_msg("cannot open");
  rewrite(R"([1,2])");
  expect_msg("missing 'weight_map'");
  fs::remove_all(dir);
}

// ---- handcrafted corrupt files (gguf style): each a clean one-line esm2::Error ----

TEST(SafetensorsCorrupt, HeaderLength) {
  expect_corrupt("", {"truncated"});
  expect_corrupt(std::string("\x10\x00\x00", 3), {"truncated", "3 bytes"});
  expect_corrupt(le64(100) + "{}", {"header length 100 exceeds the 2 bytes"});
  expect_corrupt(le64(~0ull) + "{}", {"header length 18446744073709551615 exceeds"});
  expect_corrupt(le64(200ull << 20) + std::string(16, ' '), {"exceeds"});
}

TEST(SafetensorsCorrupt, BadJson) {
  expect_corrupt(craft(R"({"a": {"dtype": "F32", )", ""), {"not valid JSON"});
  expect_corrupt(craft(R"([1, 2, 3])", ""), {"not a JSON object"});
  expect_corrupt(craft("", ""), {"not valid JSON"});
  expect_corrupt(craft(std::string("{\"a\xff\": 1}"), ""), {"not valid JSON"});  // invalid UTF-8
  expect_corrupt(craft(R"({"a": 3})", ""), {"'a'", "not an object"});
  expect_corrupt(craft(R"({"a": {"shape": [1], "data_offsets": [0, 4]}})", std::string(4, '\0')),
                 {"'a'", "dtype"});
  expect_corrupt(craft(R"({"a": {"dtype": "F32", "data_offsets": [0, 4]}})", std::string(4, '\0')),
                 {"'a'", "shape"});
  expect_corrupt(craft(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", std::string(4, '\0')),
                 {"'a'", "data_offsets"});
  expect_corrupt(craft(R"({"__metadata__": {"format": 1}})", ""), {"__metadata__", "'format'"});
  expect_corrupt(craft(R"({"__metadata__": [1]})", ""), {"__metadata__"});
}

TEST(SafetensorsCorrupt, UnknownDtype) {
  expect_corrupt(craft(R"({"w": {"dtype": "F8_E9", "shape": [1], "data_offsets": [0, 1]}})", "x"),
                 {"'w'", "unknown dtype 'F8_E9'"});
}

TEST(SafetensorsCorrupt, ShapeOffsetMismatch) {
  expect_corrupt(craft(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", std::string(24, '\0')),
                 {"'w'", "shape [2, 3] of F32 needs 24 bytes but data_offsets [0, 20] hold 20"});
  expect_corrupt(craft(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", std::string(8, '\0')),
                 {"'w'", "non-negative integer"});
  expect_corrupt(craft(R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})", std::string(8, '\0')),
                 {"'w'", "non-negative integer"});
  // 2^40 × 2^40 elements: the product overflows int64 and must not wrap into a small size.
  expect_corrupt(craft(R"({"w": {"dtype": "F32", "shape": [1099511627776, 1099511627776], "data_offsets": [0, 0]}})",
                       ""),
                 {"'w'", "overflows"});
  // 2^62 elements × 4 bytes overflows uint64 in the byte count only.
  expect_corrupt(craft(R"({"w": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", ""),
                 {"'w'", "overflows"});
}

TEST(SafetensorsCorrupt, OffsetsPastEndReversedAndOverlapping) {
  expect_corrupt(craft(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", std::string(8, '\0')),
                 {"'w'", "run past the end of the data region (8 bytes)"});
  expect_corrupt(craft(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", std::string(8, '\0')),
                 {"'w'", "reversed"});
  expect_corrupt(craft(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [18446744073709551612, 0]}})", ""),
                 {"'w'", "reversed"});
  expect_corrupt(craft(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                       R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                       std::string(12, '\0')),
                 {"'a' [0, 8] and 'b' [4, 12] overlap"});
  // The same range twice is an overlap too.
  expect_corrupt(craft(R"({"a": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]},)"
                       R"( "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})",
                       std::string(4, '\0')),
                 {"overlap"});
}

TEST(SafetensorsCorrupt, DuplicateNames) {
  expect_corrupt(craft(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                       R"( "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                       std::string(8, '\0')),
                 {"duplicate key 'w'"});
  expect_corrupt(craft(R"({"w": {"dtype": "F32", "dtype": "F16", "shape": [1], "data_offsets": [0, 4]}})",
                       std::string(4, '\0')),
                 {"duplicate key 'dtype'"});
}

TEST(SafetensorsCorrupt, ValidEdgeCasesAreAccepted) {
  // Unpadded header (data region unaligned), trailing spaces, holes between tensors: all legal.
  const float x = 2.5f;
  std::string data(3, '\0');
  data.append(reinterpret_cast<const char*>(&x), 4);
  const auto f = SafetensorsFile::from_bytes(
      craft(R"({"x":{"dtype":"F32","shape":[],"data_offsets":[3,7]}}   )", data), "edge.safetensors");
  EXPECT_EQ(f.to_f32("x"), std::vector<float>{2.5f});
  EXPECT_TRUE(f.info("x").shape.empty());
}

// Every prefix of a valid file and a few thousand single-byte corruptions either parse or throw
// esm2::Error; under ASan (build-asan) this also shows nothing reads outside the buffer.
TEST(SafetensorsCorrupt, TruncationsAndByteFlipsFailCleanly) {
  const auto v = random_floats(12, 5);
  SafetensorsWriter w;
  w.add_f32("a.weight", {3, 4}, v, DType::BF16);
  w.add_f32("b", {2}, std::span<const float>(v.data(), 2), DType::F32);
  const std::string good = w.serialize();
  for (size_t len = 0; len < good.size(); ++len) {
    // Copy into an exactly-sized buffer so ASan sees the real end.
    EXPECT_THROW(SafetensorsFile::from_bytes(good.substr(0, len), "prefix"), Error) << "length " << len;
  }
  PhiloxStream rng{99, RngStream::Init};
  int accepted = 0;
  for (uint64_t i = 0; i < 3000; ++i) {
    std::string bad = good;
    const uint32_t pos = philox_below(rng.word(2 * i), static_cast<uint32_t>(good.size() - 24));  // not the data
    bad[pos] = static_cast<char>(rng.word(2 * i + 1) & 0xff);
    try {
      const auto f = SafetensorsFile::from_bytes(bad, "flip");
      for (const auto& t : f.tensors()) {
        (void)f.raw(t.name);
        if (t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16 || t.dtype == DType::F64)
          (void)f.to_f32(t.name);
      }
      ++accepted;
    } catch (const Error&) {
    }
  }
  EXPECT_GT(accepted, 0);  // some flips only touch padding or string content
}

TEST(Safetensors, OpenErrorsNameThePath) {
  const fs::path dir = temp_dir("open");
  try {
    SafetensorsFile::open(dir / "missing.safetensors");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.safetensors: cannot open"), std::string::npos) << e.what();
  }
  write_file(dir / "empty.safetensors", "");
  EXPECT_THROW(SafetensorsFile::open(dir / "empty.safetensors"), Error);
  EXPECT_THROW(SafetensorsSet::open(dir), Error);  // neither model.safetensors nor an index
  try {
    SafetensorsFile::open(dir);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}
