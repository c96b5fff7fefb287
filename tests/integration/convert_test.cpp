// `esm2 convert` end to end on the transformers 5.17 fixtures (tests/fixtures/hf): round trips
// between dtypes, sharding, the kept contact head, training checkpoints as input, and bad inputs.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_runner.h"
#include "core/atomic_dir.h"
#include "io/hf_checkpoint.h"
#include "io/safetensors.h"

using namespace esm2;
using namespace esm2::testing;
namespace fs = std::filesystem;

namespace {

fs::path fixture_model(const std::string& name) { return source_dir() / "tests/fixtures/hf" / name / "model"; }

CliResult convert(const fs::path& in, const fs::path& out, const std::string& extra = "") {
  return run_cli("convert --input " + in.string() + " --output " + out.string() + extra);
}

// Every tensor of `got` equals f(the same tensor of `want`), element by element; extras byte for byte.
template <class F>
void expect_same_model(const HfCheckpoint& got, const HfCheckpoint& want, F f) {
  ASSERT_EQ(got.tensors.size(), want.tensors.size());
  for (const auto& [name, w] : want.tensors) {
    ASSERT_TRUE(got.tensors.contains(name)) << name;
    const auto& g = got.tensors.at(name);
    ASSERT_EQ(g.size(), w.size()) << name;
    for (size_t i = 0; i < w.size(); ++i) ASSERT_EQ(g[i], f(w[i])) << name << "[" << i << "]";
  }
  EXPECT_EQ(got.inv_freq, want.inv_freq) << "inv_freq is always stored as fp32";
  ASSERT_EQ(got.extra.size(), want.extra.size());
  for (const auto& [name, w] : want.extra) {
    ASSERT_TRUE(got.extra.contains(name)) << name;
    EXPECT_EQ(got.extra.at(name).shape, w.shape) << name;
  }
}

float identity(float x) { return x; }
float bf16_round(float x) { return bf16_to_f32(f32_to_bf16(x)); }

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(read_file(p)); }

// Nothing named like `out` (the output or an AtomicDir temp "<out>.tmp-<pid>") is left in its parent.
void expect_no_output(const fs::path& out) {
  EXPECT_FALSE(fs::exists(out)) << out;
  for (const auto& e : fs::directory_iterator(out.parent_path()))
    EXPECT_EQ(e.path().filename().string().rfind(out.filename().string(), 0), std::string::npos)
        << "left behind: " << e.path();
}

}  // namespace

TEST(Convert, Fp32Bf16Fp32RoundTrip) {
  const fs::path root = scratch_dir("convert-roundtrip");
  const HfCheckpoint src = load_hf_checkpoint(fixture_model("tiny-hd16"));
  ASSERT_EQ(src.extra.size(), 2u) << "the fixture has the contact head";

  auto r = convert(fixture_model("tiny-hd16"), root / "fp32");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const HfCheckpoint a = load_hf_checkpoint(root / "fp32");
  expect_same_model(a, src, identity);

  // The clean layout: .weight/.bias names, one inv_freq per layer (fp32), contact head, no '*' key.
  const SafetensorsFile f = SafetensorsFile::open(root / "fp32/model.safetensors");
  std::set<std::string> names;
  for (const auto& t : f.tensors()) {
    names.insert(t.name);
    EXPECT_EQ(t.name.find(".gamma"), std::string::npos) << t.name;
    EXPECT_EQ(t.name.find(".beta"), std::string::npos) << t.name;
    EXPECT_EQ(t.name.find('*'), std::string::npos) << t.name;
    EXPECT_EQ(t.dtype, DType::F32) << t.name;
  }
  for (int i = 0; i < src.config.num_layers; ++i) EXPECT_TRUE(names.contains(hf_inv_freq_name(i))) << i;
  EXPECT_TRUE(names.contains("esm.contact_head.regression.weight"));
  EXPECT_TRUE(names.contains("esm.encoder.layer.0.attention.LayerNorm.weight"));
  EXPECT_EQ(names.size(), hf_parameter_table(src.config).size() + src.config.num_layers + 2);
  const auto cfg = read_json(root / "fp32/config.json");
  EXPECT_EQ(cfg.at("torch_dtype"), "float32");
  EXPECT_EQ(cfg.at("model_type"), "esm");
  for (const char* tok : {"vocab.txt", "tokenizer_config.json", "special_tokens_map.json"})
    EXPECT_TRUE(fs::exists(root / "fp32" / tok)) << tok;

  r = convert(root / "fp32", root / "bf16", " --dtype bf16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const HfCheckpoint b = load_hf_checkpoint(root / "bf16");
  expect_same_model(b, src, bf16_round);
  const SafetensorsFile fb = SafetensorsFile::open(root / "bf16/model.safetensors");
  for (const auto& t : fb.tensors())
    EXPECT_EQ(t.dtype, t.name.ends_with("inv_freq") ? DType::F32 : DType::BF16) << t.name;
  EXPECT_EQ(read_json(root / "bf16/config.json").at("torch_dtype"), "bfloat16");
  // The contact head follows --dtype too, rounded like the parameters.
  const auto head = fb.to_f32("esm.contact_head.regression.weight");
  const auto head_src = SafetensorsFile::open(root / "fp32/model.safetensors").to_f32("esm.contact_head.regression.weight");
  for (size_t i = 0; i < head.size(); ++i) EXPECT_EQ(head[i], bf16_round(head_src[i]));

  // bf16 widens to fp32 exactly: the values come back unchanged.
  r = convert(root / "bf16", root / "fp32-again");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_same_model(load_hf_checkpoint(root / "fp32-again"), b, identity);
  EXPECT_EQ(fs::file_size(root / "fp32-again/model.safetensors"), fs::file_size(root / "fp32/model.safetensors"));

  // fp16 is accepted too and rounds to nearest.
  r = convert(root / "fp32", root / "fp16", " --dtype fp16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_same_model(load_hf_checkpoint(root / "fp16"), src, [](float x) { return f16_to_f32(f32_to_f16(x)); });
}

TEST(Convert, ShardedOutputReloadsIdentically) {
  const fs::path root = scratch_dir("convert-shards");
  const fs::path in = fixture_model("tiny-hd64");  // 886 KB of fp32 weights
  auto r = convert(in, root / "sharded", " --max-shard-size 200KB");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const fs::path index = root / "sharded/model.safetensors.index.json";
  ASSERT_TRUE(fs::exists(index));
  EXPECT_FALSE(fs::exists(root / "sharded/model.safetensors"));
  int shards = 0;
  for (const auto& e : fs::directory_iterator(root / "sharded"))
    if (e.path().extension() == ".safetensors") {
      ++shards;
      // 200 KB = 200,000 bytes of tensor data per shard at most (+ its header).
      const SafetensorsFile f = SafetensorsFile::open(e.path());
      uint64_t data = 0;
      for (const auto& t : f.tensors()) data += t.end - t.begin;
      EXPECT_LE(data, 200000u) << e.path();
    }
  EXPECT_GE(shards, 5);
  EXPECT_EQ(read_json(index).at("weight_map").size(),
            hf_parameter_table(load_hf_checkpoint(in).config).size() + 2 /* inv_freq */ + 2 /* contact head */);

  const HfCheckpoint src = load_hf_checkpoint(in);
  const HfCheckpoint sh = load_hf_checkpoint(root / "sharded");
  expect_same_model(sh, src, identity);
  // Sharded → one file again: byte-identical to converting the original directly.
  ASSERT_EQ(convert(root / "sharded", root / "single").exit_code, 0);
  ASSERT_EQ(convert(in, root / "direct").exit_code, 0);
  EXPECT_TRUE(read_file(root / "single/model.safetensors") == read_file(root / "direct/model.safetensors"));
}

TEST(Convert, ContactHeadKeptVerbatimInFp32) {
  const fs::path root = scratch_dir("convert-contact");
  ASSERT_EQ(convert(fixture_model("tiny-hd24"), root / "out").exit_code, 0);
  const SafetensorsFile a = SafetensorsFile::open(fixture_model("tiny-hd24") / "model.safetensors");
  const SafetensorsFile b = SafetensorsFile::open(root / "out/model.safetensors");
  for (const char* n : {"esm.contact_head.regression.weight", "esm.contact_head.regression.bias"}) {
    ASSERT_TRUE(b.contains(n)) << n;
    EXPECT_EQ(a.info(n).shape, b.info(n).shape);
    EXPECT_TRUE(a.raw(n).data == b.raw(n).data) << n;
  }
}

TEST(Convert, TrainingCheckpointGivesModelOnly) {
  const fs::path root = scratch_dir("convert-trainckpt");
  // A training checkpoint is an HF directory plus trainer_state/ (src/train/checkpoint.h).
  const fs::path ck = root / "step-00000003";
  fs::create_directories(ck / "trainer_state");
  for (const auto& e : fs::directory_iterator(fixture_model("tiny-hd16"))) fs::copy_file(e.path(), ck / e.path().filename());
  write_file(ck / "trainer_state/state.json", "{\"format\": \"esm2cpp-trainer-state\"}\n");
  auto r = convert(ck, root / "hf", " --dtype bf16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(fs::exists(root / "hf/trainer_state"));
  expect_same_model(load_hf_checkpoint(root / "hf"), load_hf_checkpoint(ck), bf16_round);
}

TEST(Convert, BadInputsFailCleanly) {
  const fs::path root = scratch_dir("convert-bad");
  auto expect_fail = [&](const CliResult& r, const fs::path& out, const std::string& needle) {
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("esm2: error: "), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(needle), std::string::npos) << r.output;
    // One line: the error and nothing else.
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    expect_no_output(out);
  };
  expect_fail(convert(root / "missing", root / "out1"), root / "out1", "input directory not found");

  const fs::path bert = root / "bert";
  fs::create_directories(bert);
  for (const auto& e : fs::directory_iterator(fixture_model("tiny-hd16"))) fs::copy_file(e.path(), bert / e.path().filename());
  auto cfg = read_json(bert / "config.json");
  cfg["model_type"] = "bert";
  write_file(bert / "config.json", cfg.dump(2));
  expect_fail(convert(bert, root / "out2"), root / "out2", "not an ESM model");

  const fs::path trunc = root / "trunc";
  fs::create_directories(trunc);
  for (const auto& e : fs::directory_iterator(fixture_model("tiny-hd16"))) fs::copy_file(e.path(), trunc / e.path().filename());
  fs::resize_file(trunc / "model.safetensors", fs::file_size(trunc / "model.safetensors") - 1000);
  expect_fail(convert(trunc, root / "out3"), root / "out3", "model.safetensors");

  expect_fail(convert(fixture_model("tiny-hd16"), root / "out4", " --dtype fp8"), root / "out4", "--dtype");
  expect_fail(convert(fixture_model("tiny-hd16"), root / "out5", " --max-shard-size 2XB"), root / "out5",
              "--max-shard-size");

  // An existing output is replaced only with --force, and never when it is the input itself.
  fs::create_directories(root / "exists");
  auto r = convert(fixture_model("tiny-hd16"), root / "exists");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("--force"), std::string::npos) << r.output;
  r = convert(fixture_model("tiny-hd16"), root / "exists", " --force");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::exists(root / "exists/model.safetensors"));
  r = convert(root / "exists", root / "exists", " --force");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("is the input directory"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(root / "exists/model.safetensors"));
  r = convert(root / "exists", root, " --force");  // a directory holding the input
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("is the input directory or holds it"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(root / "exists/model.safetensors"));
}

TEST(Convert, MissingContactHeadAndInvFreqAreFilledIn) {
  // An input as older/minimal writers make it: parameters only, no rotary buffer, no contact head.
  const fs::path root = scratch_dir("convert-minimal");
  const HfCheckpoint src = load_hf_checkpoint(fixture_model("tiny-hd24"));
  fs::create_directories(root / "in");
  SafetensorsWriter w;
  for (const auto& [name, v] : src.tensors) w.add_f32(name, src.shapes.at(name), v);
  w.write(root / "in/model.safetensors");
  fs::copy_file(fixture_model("tiny-hd24") / "config.json", root / "in/config.json");
  auto r = convert(root / "in", root / "out", " --dtype bf16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("inv_freq computed"), std::string::npos) << r.output;
  const SafetensorsFile f = SafetensorsFile::open(root / "out/model.safetensors");
  // transformers reports an absent contact head as MISSING: an all-zero one (in --dtype) is written.
  const int64_t maps = int64_t{src.config.num_layers} * src.config.num_attention_heads;
  ASSERT_TRUE(f.contains("esm.contact_head.regression.weight"));
  EXPECT_EQ(f.info("esm.contact_head.regression.weight").shape, (std::vector<int64_t>{1, maps}));
  EXPECT_EQ(f.info("esm.contact_head.regression.weight").dtype, DType::BF16);
  for (float x : f.to_f32("esm.contact_head.regression.weight")) EXPECT_EQ(x, 0.0f);
  EXPECT_EQ(f.to_f32("esm.contact_head.regression.bias"), std::vector<float>{0.0f});
  // The rotary table is the formula (bitwise what the 5.17 model computed for the fixture).
  const auto inv = f.to_f32(hf_inv_freq_name(src.config.num_layers - 1));
  EXPECT_EQ(inv, rotary_inv_freq(src.config));
  EXPECT_EQ(inv, src.inv_freq);
}
