// SafetensorsStreamWriter against SafetensorsWriter (the oracle: the files every existing test and
// transformers already read): the same tensors, fed in pieces of uneven sizes, give the same bytes,
// one file or shards + index; misuse is refused and leaves no temp file. Element-range reads of
// F32/BF16/F16/F64 tensors against whole-tensor reads, and a sliced HF checkpoint read against
// load_hf_checkpoint on the published-layout fixtures.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <filesystem>

#include "core/atomic_dir.h"
#include "core/error.h"
#include "core/philox.h"
#include "io/hf_checkpoint.h"
#include "io/safetensors.h"

using namespace esm2;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& tag) {
  fs::path p = fs::temp_directory_path() / fmt::format("esm2-stream-{}-{}", tag, ::getpid());
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

std::vector<float> values(size_t n, uint64_t a) {
  const PhiloxStream rng{3, RngStream::Init, a};
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = philox_uniform(rng.word(i)) * 8.0f - 4.0f;
  return v;
}

struct Tensor {
  std::string name;
  DType dtype;  // F32/BF16/F16: from fp32 values; anything else: raw bytes
  std::vector<int64_t> shape;
  std::vector<float> f32;
  std::string raw;
};

// F32, BF16 and F16 tensors (one empty), and a raw I64 one, in a non-alphabetical order.
std::vector<Tensor> sample_tensors() {
  std::vector<Tensor> t;
  t.push_back({"z.weight", DType::F32, {37, 11}, values(37 * 11, 1), {}});
  t.push_back({"a.half", DType::F16, {1000}, values(1000, 2), {}});
  t.push_back({"empty", DType::F32, {0, 4}, {}, {}});
  t.push_back({"m.bf16", DType::BF16, {3, 70001}, values(3 * 70001, 3), {}});  // crosses the conversion chunk
  std::string ints(5 * 8, '\0');
  for (size_t i = 0; i < ints.size(); ++i) ints[i] = static_cast<char>(i * 7);
  t.push_back({"ids", DType::I64, {5}, {}, ints});
  return t;
}

SafetensorsWriter oracle(const std::vector<Tensor>& ts) {
  SafetensorsWriter w;
  for (const auto& t : ts) {
    if (t.dtype == DType::I64) w.add_raw(t.name, RawTensor{t.dtype, t.shape, t.raw});
    else w.add_f32(t.name, t.shape, t.f32, t.dtype);
  }
  w.set_metadata("optimizer", "adamw");
  return w;
}

std::vector<SafetensorsEntry> entries(const std::vector<Tensor>& ts) {
  std::vector<SafetensorsEntry> e;
  for (const auto& t : ts) e.push_back({t.name, t.dtype, t.shape});
  return e;
}

// Feeds every tensor in pieces of 1, 2, 3, … 997 elements (bytes for raw tensors), cycling.
void feed(SafetensorsStreamWriter& w, const std::vector<Tensor>& ts) {
  size_t step = 1;
  for (const auto& t : ts) {
    if (t.dtype == DType::I64) {
      for (size_t at = 0; at < t.raw.size(); at += step, step = step % 997 + 1)
        w.put_raw(std::span<const char>(t.raw).subspan(at, std::min(step, t.raw.size() - at)));
      continue;
    }
    for (size_t at = 0; at < t.f32.size(); at += step, step = step * 3 % 997 + 1)
      w.put_f32(std::span<const float>(t.f32).subspan(at, std::min(step, t.f32.size() - at)));
  }
}

std::vector<std::string> files_in(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST(SafetensorsStream, SingleFileEqualsTheBufferedWriterByteForByte) {
  const fs::path dir = temp_dir("single");
  const auto ts = sample_tensors();
  oracle(ts).write(dir / "a.safetensors");
  auto w = SafetensorsStreamWriter::to_file(dir / "b.safetensors", entries(ts), {{"optimizer", "adamw"}});
  feed(w, ts);
  EXPECT_EQ(w.finish(), std::vector<std::string>{"b.safetensors"});
  const std::string a = read_file(dir / "a.safetensors"), b = read_file(dir / "b.safetensors");
  EXPECT_EQ(a.size(), b.size());
  EXPECT_TRUE(a == b);
  EXPECT_TRUE(a == oracle(ts).serialize());
  EXPECT_EQ(files_in(dir), (std::vector<std::string>{"a.safetensors", "b.safetensors"}));  // no temp left
  fs::remove_all(dir);
}

TEST(SafetensorsStream, ShardedSetEqualsWriteSharded) {
  const auto ts = sample_tensors();
  for (const uint64_t limit : {uint64_t{0}, uint64_t{1} << 30, uint64_t{3000}, uint64_t{1}}) {
    SCOPED_TRACE(limit);
    const fs::path a = temp_dir("shard-a"), b = temp_dir("shard-b");
    // Stale entry files of the other layout must go, as write_sharded removes them.
    write_file(b / "model.safetensors", "stale");
    write_file(b / "model.safetensors.index.json", "stale");
    const auto names_a = oracle(ts).write_sharded(a, limit);
    auto w = SafetensorsStreamWriter::to_dir(b, entries(ts), limit, {{"optimizer", "adamw"}});
    feed(w, ts);
    const auto names_b = w.finish();
    EXPECT_EQ(names_a, names_b);
    EXPECT_EQ(files_in(a), files_in(b));
    for (const auto& f : files_in(a)) EXPECT_TRUE(read_file(a / f) == read_file(b / f)) << f;
    if (limit == 1) {
      EXPECT_EQ(names_b.size(), ts.size() + 1);
    }  // one shard per tensor + the index
    fs::remove_all(a);
    fs::remove_all(b);
  }
}

TEST(SafetensorsStream, RefusesMisuseAndLeavesNoTempFile) {
  const fs::path dir = temp_dir("misuse");
  const std::vector<SafetensorsEntry> two = {{"a", DType::F32, {3}}, {"b", DType::BF16, {2}}};
  const std::vector<float> four(4, 1.0f);
  {
    auto w = SafetensorsStreamWriter::to_file(dir / "x.safetensors", two);
    try {
      w.put_f32(four);  // more than tensor 'a' holds
      ADD_FAILURE() << "accepted 4 values for a tensor of 3";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("'a'"), std::string::npos) << e.what();
    }
    w.put_f32(std::span<const float>(four).first(3));
    try {
      w.finish();
      ADD_FAILURE() << "finished with tensor 'b' missing";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("'b' at 0 of 4 bytes"), std::string::npos) << e.what();
    }
  }
  EXPECT_TRUE(files_in(dir).empty()) << "an unfinished writer left " << files_in(dir).front();
  {
    auto w = SafetensorsStreamWriter::to_file(dir / "y.safetensors", {{"i", DType::I32, {1}}});
    EXPECT_THROW(w.put_f32(std::span<const float>(four).first(1)), Error);  // fp32 data for an I32 tensor
    w.put_raw(std::string(4, '\0'));
    EXPECT_THROW(w.put_raw(std::string(1, '\0')), Error);  // past the last tensor
    w.finish();
  }
  EXPECT_THROW(SafetensorsStreamWriter::to_file(dir / "z.safetensors", {{"a", DType::F32, {1}}, {"a", DType::F32, {1}}}),
               Error);  // duplicate name
  fs::remove_all(dir);
}

// A write that fails inside to_file (here the header: the file-size limit is lowered so that write(2)
// returns EFBIG) throws with the file named and leaves no temporary behind.
TEST(SafetensorsStream, FailedStartLeavesNoTempFile) {
  const fs::path dir = temp_dir("fail-start");
  std::vector<SafetensorsEntry> many;
  for (int i = 0; i < 400; ++i) many.push_back({"a_rather_long_tensor_name_number_" + std::to_string(i), DType::F32, {1}});
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old;
  small.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string message;
  try {
    SafetensorsStreamWriter::to_file(dir / "x.safetensors", many);
  } catch (const Error& e) {
    message = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_NE(message.find("x.safetensors"), std::string::npos) << "no error naming the file: '" << message << "'";
  EXPECT_TRUE(files_in(dir).empty()) << "a failed start left " << files_in(dir).front();
  fs::remove_all(dir);
}

TEST(SafetensorsStream, ElementRangesEqualWholeTensorReads) {
  const fs::path dir = temp_dir("ranges");
  auto ts = sample_tensors();
  ts.push_back({"d.f64", DType::F64, {9}, {}, {}});
  std::string f64(9 * 8, '\0');
  for (int i = 0; i < 9; ++i) {
    const double d = 0.1 * i - 0.35;
    std::memcpy(f64.data() + 8 * i, &d, 8);
  }
  ts.back().raw = f64;
  SafetensorsWriter w;
  for (const auto& t : ts) {
    if (t.dtype == DType::I64 || t.dtype == DType::F64) w.add_raw(t.name, RawTensor{t.dtype, t.shape, t.raw});
    else w.add_f32(t.name, t.shape, t.f32, t.dtype);
  }
  w.write(dir / "r.safetensors");
  const auto f = SafetensorsFile::open(dir / "r.safetensors");
  for (const char* name : {"z.weight", "a.half", "m.bf16", "d.f64"}) {
    SCOPED_TRACE(name);
    const std::vector<float> whole = f.to_f32(name);
    for (const auto& [begin, len] : {std::pair<size_t, size_t>{0, 1}, {5, 4}, {whole.size() - 3, 3}, {0, whole.size()},
                                    {whole.size(), 0}}) {
      std::vector<float> part(len);
      f.read_f32(name, begin, part);
      EXPECT_TRUE(std::equal(part.begin(), part.end(), whole.begin() + static_cast<std::ptrdiff_t>(begin)))
          << "[" << begin << ", " << begin + len << ")";
    }
    std::vector<float> past(2);
    try {
      f.read_f32(name, whole.size() - 1, past);
      ADD_FAILURE() << "read past the end";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fmt::format("has {} elements, cannot read", whole.size())),
                std::string::npos)
          << e.what();
    }
  }
  std::vector<float> one(1);
  EXPECT_THROW(f.read_f32("ids", 0, one), Error);  // not a float type
  fs::remove_all(dir);
}

TEST(HfCheckpointReaderTest, SlicedReadsEqualTheWholeLoad) {
  const fs::path fixtures = fs::path(ESM2_SOURCE_DIR) / "tests" / "fixtures" / "hf";
  for (const char* model : {"tiny-hd16", "tiny-hd16-bf16", "tiny-hd24"}) {
    SCOPED_TRACE(model);
    const HfCheckpoint ck = load_hf_checkpoint(fixtures / model / "model");
    const HfCheckpointReader reader(fixtures / model / "model");
    EXPECT_EQ(reader.inv_freq(), ck.inv_freq);
    EXPECT_EQ(reader.shapes(), ck.shapes);
    ASSERT_EQ(reader.extra().size(), ck.extra.size());
    for (const auto& [name, v] : ck.tensors) {
      // Three uneven slices that tile the tensor.
      const size_t n = v.size(), c1 = n / 3 + 1, c2 = std::min(n, c1 + n / 2);
      std::vector<float> got(n);
      reader.read_f32(name, 0, std::span<float>(got).first(c1));
      reader.read_f32(name, c1, std::span<float>(got).subspan(c1, c2 - c1));
      reader.read_f32(name, c2, std::span<float>(got).subspan(c2));
      ASSERT_TRUE(got == v) << name;
    }
  }
}

TEST(HfCheckpointStream, StreamedFilesEqualTheViewsWriter) {
  const fs::path fixtures = fs::path(ESM2_SOURCE_DIR) / "tests" / "fixtures" / "hf";
  const HfCheckpoint ck = load_hf_checkpoint(fixtures / "tiny-hd24" / "model");
  HfWeightViews views;
  for (const auto& [name, v] : ck.tensors) views.emplace(name, v);
  for (const HfSaveOptions opt : {HfSaveOptions{}, HfSaveOptions{DType::BF16, 20000}}) {
    SCOPED_TRACE(dtype_name(opt.dtype));
    const fs::path a = temp_dir("hf-a"), b = temp_dir("hf-b");
    write_hf_checkpoint_files(a, ck.config, views, ck.inv_freq, ck.extra, opt);
    stream_hf_checkpoint_files(
        b, ck.config,
        [&](const HfParam& p, const HfPut& put) {
          const std::vector<float>& v = ck.tensors.at(p.name);
          for (size_t at = 0; at < v.size(); at += 1000)
            put(std::span<const float>(v).subspan(at, std::min<size_t>(1000, v.size() - at)));
        },
        ck.inv_freq, ck.extra, opt);
    const auto fa = files_in(a);
    EXPECT_EQ(fa, files_in(b));
    if (opt.max_shard_bytes > 0) {
      EXPECT_TRUE(fs::exists(b / "model-00002-of-00006.safetensors") || fs::exists(b / "model.safetensors.index.json"));
    }
    for (const auto& f : fa) EXPECT_TRUE(read_file(a / f) == read_file(b / f)) << f;
    // A source that gives too few values is an error naming the tensor.
    const fs::path c = temp_dir("hf-c");
    try {
      stream_hf_checkpoint_files(c, ck.config, [](const HfParam&, const HfPut&) {}, ck.inv_freq, ck.extra, opt);
      ADD_FAILURE() << "accepted a source without values";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("esm.embeddings.word_embeddings.weight' got 0 values"), std::string::npos)
          << e.what();
    }
    fs::remove_all(a);
    fs::remove_all(b);
    fs::remove_all(c);
  }
}
