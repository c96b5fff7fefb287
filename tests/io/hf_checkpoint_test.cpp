#include "io/hf_checkpoint.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "core/atomic_dir.h"
#include "core/error.h"
#include "core/philox.h"
#include "io/hf_config.h"

using namespace esm2;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& tag) {
  fs::path p = fs::temp_directory_path() / fmt::format("esm2-hfck-{}-{}", tag, ::getpid());
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

ModelConfig tiny_config() {
  ModelConfig c;
  c.num_layers = 2;
  c.hidden_size = 8;
  c.num_attention_heads = 2;  // head_dim 4 → inv_freq has 2 values
  c.ffn_hidden_size = 16;
  return c;
}

// A checkpoint with distinct random values and a contact head (as in published checkpoints).
HfCheckpoint random_checkpoint(uint64_t seed) {
  HfCheckpoint ck;
  ck.config = tiny_config();
  uint64_t k = 0;
  PhiloxStream rng{seed, RngStream::Init};
  for (const auto& p : hf_parameter_table(ck.config)) {
    std::vector<float> v(static_cast<size_t>(shape_numel(p.shape, p.name)));
    for (auto& x : v) x = philox_uniform(rng.word(k++)) - 0.5f;
    ck.tensors.emplace(p.name, std::move(v));
    ck.shapes.emplace(p.name, p.shape);
  }
  const float w[4] = {0.5f, -1.25f, 2.0f, 3.0f}, b = 0.25f;
  ck.extra["esm.contact_head.regression.weight"] =
      RawTensor{DType::F32, {1, 4}, std::string(reinterpret_cast<const char*>(w), sizeof w)};
  ck.extra["esm.contact_head.regression.bias"] =
      RawTensor{DType::F32, {1}, std::string(reinterpret_cast<const char*>(&b), sizeof b)};
  return ck;
}

// How a crafted directory deviates from what we write.
struct Variant {
  bool gamma_beta = false;        // encoder-layer LayerNorms as .gamma/.beta (transformers 5.x)
  int inv_freq = 0;               // 0 none, 1 one literal "layer.*" key, 2 per layer
  bool per_layer_disagree = false;
  bool decoder = false;           // lm_head.decoder.weight present
  float decoder_perturb = 0.0f;   // added to one decoder element
  DType dtype = DType::F32;
  DType inv_freq_dtype = DType::F16;  // published checkpoints round inv_freq to fp16
  std::string drop{};             // tensor to leave out
  std::string extra_name{};       // an additional F32 tensor of ones
  int64_t extra_len = 1;          // … of shape [extra_len]
};

// Writes a directory as another tool would, bypassing our checkpoint writer.
void write_variant(const fs::path& dir, const HfCheckpoint& ck, const Variant& v,
                   const std::vector<float>& inv_freq) {
  SafetensorsWriter w;
  for (const auto& [name, values] : ck.tensors) {
    if (name == v.drop) continue;
    std::string n = name;
    if (v.gamma_beta && n.starts_with("esm.encoder.layer.") && n.find("LayerNorm.") != std::string::npos) {
      if (n.ends_with(".weight")) n = n.substr(0, n.size() - 7) + ".gamma";
      else n = n.substr(0, n.size() - 5) + ".beta";
    }
    w.add_f32(n, ck.shapes.at(name), values, v.dtype);
  }
  std::vector<float> decoder, other;  // outlive w.write(): the writer keeps views
  if (v.decoder) {
    decoder = ck.tensors.at("esm.embeddings.word_embeddings.weight");
    decoder[37] += v.decoder_perturb;
    w.add_f32("lm_head.decoder.weight", {33, 8}, decoder, v.dtype);
  }
  if (v.inv_freq == 1)
    w.add_f32("esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq", {2}, inv_freq, v.inv_freq_dtype);
  if (v.inv_freq == 2) {
    other = inv_freq;
    other[1] *= 2;
    for (int i = 0; i < 2; ++i)
      w.add_f32(hf_inv_freq_name(i), {2}, (v.per_layer_disagree && i == 1) ? other : inv_freq, v.inv_freq_dtype);
  }
  const std::vector<float> ones(static_cast<size_t>(v.extra_len), 1.0f);
  if (!v.extra_name.empty()) w.add_f32(v.extra_name, {v.extra_len}, ones);
  for (const auto& [name, raw] : ck.extra) w.add_raw(name, raw);
  w.write(dir / "model.safetensors");
  // transformers 5.x style config: "dtype" only.
  auto j = nlohmann::json::parse(hf_config_json(ck.config, v.dtype));
  j.erase("torch_dtype");
  write_file(dir / "config.json", j.dump(2));
}

void expect_load_error(const fs::path& dir, std::initializer_list<std::string> pieces) {
  try {
    load_hf_checkpoint(dir);
    ADD_FAILURE() << "loaded; expected " << *pieces.begin();
  } catch (const Error& e) {
    for (const auto& p : pieces) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(HfCheckpoint, ParameterTableMatchesTheModelConfig) {
  for (const auto& name : model_preset_names()) {
    if (name == "15B" || name == "3B") continue;  // same code path, only slower to sum
    const ModelConfig c = model_preset(name);
    const auto table = hf_parameter_table(c);
    int64_t n = 0;
    for (const auto& p : table) n += shape_numel(p.shape, p.name);
    EXPECT_EQ(n, c.num_parameters()) << name;
    EXPECT_EQ(table.size(), static_cast<size_t>(1 + 16 * c.num_layers + 2 + 2 + 2 + 1)) << name;
  }
  const auto t = hf_parameter_table(model_preset("esm2_t6_8M"));
  EXPECT_EQ(t[0].name, "esm.embeddings.word_embeddings.weight");
  EXPECT_EQ(t[0].shape, (std::vector<int64_t>{33, 320}));
  EXPECT_EQ(t[1].name, "esm.encoder.layer.0.attention.self.query.weight");
  EXPECT_EQ(t[9].name, "esm.encoder.layer.0.attention.LayerNorm.weight");
  EXPECT_EQ(t[11].name, "esm.encoder.layer.0.intermediate.dense.weight");
  EXPECT_EQ(t[11].shape, (std::vector<int64_t>{1280, 320}));
  EXPECT_EQ(t[13].shape, (std::vector<int64_t>{320, 1280}));
  EXPECT_EQ(t[15].name, "esm.encoder.layer.0.LayerNorm.weight");
  EXPECT_EQ(t.back().name, "lm_head.bias");
}

TEST(HfCheckpoint, RotaryInvFreq) {
  const ModelConfig c = model_preset("esm2_t6_8M");  // head_dim 16
  const auto f = rotary_inv_freq(c);
  ASSERT_EQ(f.size(), 8u);
  EXPECT_EQ(f[0], 1.0f);
  for (int j = 0; j < 8; ++j) EXPECT_NEAR(f[j], std::pow(10000.0, -2.0 * j / 16), 2e-7 * f[j]) << j;
  EXPECT_EQ(hf_inv_freq_name(3), "esm.encoder.layer.3.attention.self.rotary_embeddings.inv_freq");
}

TEST(HfCheckpoint, SaveLoadRoundTripF32) {
  const HfCheckpoint ck = random_checkpoint(1);
  const fs::path dir = temp_dir("rt") / "ckpt";
  save_hf_checkpoint(dir, ck);
  for (const char* f : {"config.json", "model.safetensors", "vocab.txt", "special_tokens_map.json",
                        "tokenizer_config.json"})
    EXPECT_TRUE(fs::exists(dir / f)) << f;

  // What is on disk: .weight/.bias names, per-layer F32 inv_freq, no decoder, the contact head.
  const auto file = SafetensorsFile::open(dir / "model.safetensors");
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_TRUE(file.contains("esm.encoder.layer.1.attention.LayerNorm.weight"));
  EXPECT_TRUE(file.contains(hf_inv_freq_name(0)));
  EXPECT_TRUE(file.contains(hf_inv_freq_name(1)));
  EXPECT_EQ(file.info(hf_inv_freq_name(1)).dtype, DType::F32);
  EXPECT_FALSE(file.contains("lm_head.decoder.weight"));
  EXPECT_EQ(file.tensors().size(), hf_parameter_table(ck.config).size() + 2 + 2);

  const HfCheckpoint back = load_hf_checkpoint(dir);
  EXPECT_EQ(back.tensors, ck.tensors);
  EXPECT_EQ(back.shapes, ck.shapes);
  EXPECT_EQ(back.inv_freq, rotary_inv_freq(ck.config));
  ASSERT_EQ(back.extra.size(), 2u);
  EXPECT_EQ(back.extra.at("esm.contact_head.regression.weight").data,
            ck.extra.at("esm.contact_head.regression.weight").data);
  EXPECT_EQ(back.extra.at("esm.contact_head.regression.weight").shape, (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(back.config.num_layers, 2);
  EXPECT_EQ(back.config.hidden_size, 8);
  fs::remove_all(dir.parent_path());
}

TEST(HfCheckpoint, SaveBf16AndShards) {
  HfCheckpoint ck = random_checkpoint(2);
  ck.inv_freq = {1.0f, 0.0100021362f};  // a stored (fp16-rounded) table is written back as is
  const fs::path dir = temp_dir("bf16");
  save_hf_checkpoint(dir / "a", ck, {DType::BF16, 2000});
  EXPECT_TRUE(fs::exists(dir / "a" / "model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(dir / "a" / "model-00001-of-00002.safetensors"));
  EXPECT_EQ(nlohmann::json::parse(read_file(dir / "a" / "config.json"))["torch_dtype"], "bfloat16");
  const HfCheckpoint back = load_hf_checkpoint(dir / "a");
  EXPECT_EQ(back.inv_freq, ck.inv_freq);
  for (const auto& [name, values] : ck.tensors) {
    const auto& got = back.tensors.at(name);
    for (size_t i = 0; i < values.size(); ++i) ASSERT_EQ(got[i], bf16_to_f32(f32_to_bf16(values[i]))) << name;
  }
  EXPECT_EQ(back.extra.at("esm.contact_head.regression.bias").dtype, DType::F32);  // verbatim, not converted

  // Saving over an existing checkpoint replaces it; a failing save leaves it untouched.
  save_hf_checkpoint(dir / "a", ck, {DType::F32, 0});
  EXPECT_FALSE(fs::exists(dir / "a" / "model.safetensors.index.json"));
  HfCheckpoint broken = ck;
  broken.tensors.erase("lm_head.bias");
  EXPECT_THROW(save_hf_checkpoint(dir / "a", broken), Error);
  EXPECT_EQ(load_hf_checkpoint(dir / "a").tensors, ck.tensors);
  fs::remove_all(dir);
}

TEST(HfCheckpoint, LoadsTransformers5Layout) {
  // gamma/beta, one literal-key inv_freq rounded to fp16, "dtype" without "torch_dtype", BF16 weights.
  const HfCheckpoint ck = random_checkpoint(3);
  const fs::path dir = temp_dir("tf5");
  const std::vector<float> inv = {1.0f, 0.01f};
  write_variant(dir, ck, {.gamma_beta = true, .inv_freq = 1, .dtype = DType::BF16}, inv);
  const HfCheckpoint back = load_hf_checkpoint(dir);
  EXPECT_TRUE(back.tensors.contains("esm.encoder.layer.0.attention.LayerNorm.weight"));
  EXPECT_TRUE(back.tensors.contains("esm.encoder.layer.1.LayerNorm.bias"));
  EXPECT_EQ(back.tensors.size(), ck.tensors.size());
  EXPECT_EQ(back.inv_freq, (std::vector<float>{1.0f, f16_to_f32(f32_to_f16(0.01f))}));  // stored, not recomputed
  EXPECT_NE(back.inv_freq[1], 0.01f);
  const auto& ln = back.tensors.at("esm.encoder.layer.1.attention.LayerNorm.bias");
  EXPECT_EQ(ln[3], bf16_to_f32(f32_to_bf16(ck.tensors.at("esm.encoder.layer.1.attention.LayerNorm.bias")[3])));
  EXPECT_EQ(back.extra.size(), 2u);

  // Load → save → load keeps everything, in our naming.
  save_hf_checkpoint(dir / "resaved", back);
  const HfCheckpoint again = load_hf_checkpoint(dir / "resaved");
  EXPECT_EQ(again.tensors, back.tensors);
  EXPECT_EQ(again.inv_freq, back.inv_freq);
  EXPECT_EQ(again.extra.at("esm.contact_head.regression.weight").data,
            back.extra.at("esm.contact_head.regression.weight").data);
  EXPECT_TRUE(SafetensorsFile::open(dir / "resaved" / "model.safetensors")
                  .contains("esm.encoder.layer.0.attention.LayerNorm.weight"));
  fs::remove_all(dir);
}

TEST(HfCheckpoint, InvFreqPerLayerOrAbsent) {
  const HfCheckpoint ck = random_checkpoint(4);
  const std::vector<float> inv = {1.0f, 0.01f};
  const fs::path dir = temp_dir("inv");
  write_variant(dir, ck, {.inv_freq = 2, .inv_freq_dtype = DType::F32}, inv);
  EXPECT_EQ(load_hf_checkpoint(dir).inv_freq, inv);
  write_variant(dir, ck, {.inv_freq = 0}, inv);
  EXPECT_TRUE(load_hf_checkpoint(dir).inv_freq.empty());
  write_variant(dir, ck, {.inv_freq = 2, .per_layer_disagree = true, .inv_freq_dtype = DType::F32}, inv);
  expect_load_error(dir, {"'esm.encoder.layer.1.attention.self.rotary_embeddings.inv_freq' differs from"});
  fs::remove_all(dir);
}

TEST(HfCheckpoint, TiedDecoderIsCheckedAndDropped) {
  const HfCheckpoint ck = random_checkpoint(5);
  const fs::path dir = temp_dir("dec");
  write_variant(dir, ck, {.decoder = true}, {});
  HfCheckpoint back = load_hf_checkpoint(dir);
  EXPECT_FALSE(back.tensors.contains("lm_head.decoder.weight"));
  EXPECT_FALSE(back.extra.contains("lm_head.decoder.weight"));
  write_variant(dir, ck, {.decoder = true, .decoder_perturb = 1e-3f, .dtype = DType::F16}, {});
  expect_load_error(dir, {"'lm_head.decoder.weight' differs from the tied", "element 37"});
  write_variant(dir, ck, {.decoder = true, .decoder_perturb = 1e-6f}, {});
  expect_load_error(dir, {"element 37"});  // F32 copies must be identical
  fs::remove_all(dir);
}

TEST(HfCheckpoint, RejectsMissingWrongAndConflictingTensors) {
  const HfCheckpoint ck = random_checkpoint(6);
  const fs::path dir = temp_dir("bad");
  write_variant(dir, ck, {.drop = "esm.encoder.layer.1.output.dense.weight"}, {});
  expect_load_error(dir, {"model.safetensors: missing tensor 'esm.encoder.layer.1.output.dense.weight'",
                          "expected shape [8, 16]"});
  write_variant(dir, ck, {.extra_name = "esm.encoder.layer.2.attention.self.query.bias"}, {});
  expect_load_error(dir, {"'esm.encoder.layer.2.attention.self.query.bias' belongs to layer 2",
                          "num_hidden_layers 2"});
  write_variant(dir, ck, {.extra_name = "esm.encoder.layer.0.LayerNorm.gamma", .extra_len = 8}, {});
  expect_load_error(dir, {"'esm.encoder.layer.0.LayerNorm.gamma' and 'esm.encoder.layer.0.LayerNorm.weight'"});

  // A config that does not match the weights: every shape error names the tensor and both shapes.
  write_variant(dir, ck, {}, {});
  ModelConfig wider = ck.config;
  wider.ffn_hidden_size = 24;
  write_hf_config(dir, wider);
  expect_load_error(dir, {"'esm.encoder.layer.0.intermediate.dense.bias' has shape [16], but the config needs [24]"});

  write_variant(dir, ck, {}, {});
  write_file(dir / "vocab.txt", "<pad>\n");
  expect_load_error(dir, {"vocab.txt: line 1"});
  fs::remove(dir / "vocab.txt");
  fs::remove(dir / "config.json");
  expect_load_error(dir, {"config.json: cannot open"});
  fs::remove_all(dir);
}

TEST(HfCheckpoint, WriteFromViewsIntoAnExistingDirectory) {
  const HfCheckpoint ck = random_checkpoint(7);
  // One flat buffer sliced into views, as the trainer does with the model's parameters.
  std::vector<float> flat;
  for (const auto& p : hf_parameter_table(ck.config)) {
    const auto& v = ck.tensors.at(p.name);
    flat.insert(flat.end(), v.begin(), v.end());
  }
  HfWeightViews views;
  size_t off = 0;
  for (const auto& p : hf_parameter_table(ck.config)) {
    const size_t n = static_cast<size_t>(shape_numel(p.shape, p.name));
    views.emplace(p.name, std::span<const float>(flat.data() + off, n));
    off += n;
  }
  const fs::path dir = temp_dir("views");
  write_hf_checkpoint_files(dir, ck.config, views, {}, {});
  EXPECT_EQ(load_hf_checkpoint(dir).tensors, ck.tensors);

  auto expect_msg = [&](const HfWeightViews& v, const std::string& piece) {
    try {
      write_hf_checkpoint_files(dir, ck.config, v, {}, {});
      ADD_FAILURE() << "accepted; expected " << piece;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(piece), std::string::npos) << e.what();
    }
  };
  HfWeightViews v = views;
  v.erase("lm_head.dense.bias");
  expect_msg(v, "no data for tensor 'lm_head.dense.bias'");
  v = views;
  v["lm_head.decoder.weight"] = views.at("esm.embeddings.word_embeddings.weight");
  expect_msg(v, "'lm_head.decoder.weight' is not a parameter");
  v = views;
  v["lm_head.bias"] = v["lm_head.bias"].first(32);
  expect_msg(v, "'lm_head.bias' has 32 values, shape [33] needs 33");
  const std::vector<float> bad_inv = {1.0f};
  EXPECT_THROW(write_hf_checkpoint_files(dir, ck.config, views, bad_inv, {}), Error);
  fs::remove_all(dir);
}

// ---- checkpoints written by transformers 5.17 save_pretrained (tests/fixtures/hf/README.md) ----

namespace {
const fs::path kFixtures = fs::path(ESM2_SOURCE_DIR) / "tests" / "fixtures" / "hf";
}

TEST(HfCheckpointFixtures, LoadsTransformers517Checkpoints) {
  struct Shape { const char* dir; int hidden, heads, layers, ffn; };
  for (const Shape s : {Shape{"tiny-hd16", 32, 2, 2, 64}, Shape{"tiny-hd24", 48, 2, 3, 96},
                        Shape{"tiny-hd64", 128, 2, 2, 128}}) {
    SCOPED_TRACE(s.dir);
    const HfCheckpoint ck = load_hf_checkpoint(kFixtures / s.dir / "model");
    EXPECT_EQ(ck.config.hidden_size, s.hidden);
    EXPECT_EQ(ck.config.num_attention_heads, s.heads);
    EXPECT_EQ(ck.config.num_layers, s.layers);
    EXPECT_EQ(ck.config.ffn_hidden_size, s.ffn);
    EXPECT_TRUE(ck.config.token_dropout);
    EXPECT_EQ(ck.config.layer_norm_eps, 1e-5f);
    // Our canonical names are exactly transformers' named_parameters() (the fixture's grad.* names).
    const auto fx = SafetensorsFile::open(kFixtures / s.dir / "fixtures.safetensors");
    std::set<std::string> grads;
    for (const auto& t : fx.tensors())
      if (t.name.starts_with("grad.") && !t.name.starts_with("grad.esm.contact_head.")) grads.insert(t.name.substr(5));
    std::set<std::string> ours;
    for (const auto& [name, v] : ck.tensors) ours.insert(name);
    EXPECT_EQ(ours, grads);
    for (const auto& [name, shape] : ck.shapes) EXPECT_EQ(shape, fx.info("grad." + name).shape) << name;
    // The stored rotary table is used, and it is the one the HF model holds.
    EXPECT_EQ(ck.inv_freq, fx.to_f32("inv_freq"));
    ASSERT_EQ(ck.extra.size(), 2u);
    EXPECT_EQ(ck.extra.at("esm.contact_head.regression.weight").shape,
              (std::vector<int64_t>{1, static_cast<int64_t>(s.layers) * s.heads}));
  }
}

TEST(HfCheckpointFixtures, Bf16CopyIsTheRoundedFp32Model) {
  const HfCheckpoint f32 = load_hf_checkpoint(kFixtures / "tiny-hd16" / "model");
  const HfCheckpoint b16 = load_hf_checkpoint(kFixtures / "tiny-hd16-bf16" / "model");
  ASSERT_EQ(b16.tensors.size(), f32.tensors.size());
  for (const auto& [name, v] : f32.tensors) {
    const auto& b = b16.tensors.at(name);
    ASSERT_EQ(b.size(), v.size()) << name;
    for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(b[i], bf16_to_f32(f32_to_bf16(v[i]))) << name << "[" << i << "]";
  }
  // The loaded table is the bf16-rounded stored one (1.0, 0.31640625, …), as transformers holds it.
  const auto fx = SafetensorsFile::open(kFixtures / "tiny-hd16-bf16" / "fixtures.safetensors");
  EXPECT_EQ(b16.inv_freq, fx.to_f32("inv_freq"));
  EXPECT_EQ(b16.inv_freq[1], 0.31640625f);
  EXPECT_EQ(b16.extra.at("esm.contact_head.regression.weight").dtype, DType::BF16);
}

TEST(HfCheckpointFixtures, ResavedInOurLayoutLoadsTheSame) {
  const HfCheckpoint ck = load_hf_checkpoint(kFixtures / "tiny-hd24" / "model");
  const fs::path dir = temp_dir("fixture-resave");
  save_hf_checkpoint(dir / "m", ck);
  const HfCheckpoint back = load_hf_checkpoint(dir / "m");
  EXPECT_EQ(back.tensors, ck.tensors);
  EXPECT_EQ(back.inv_freq, ck.inv_freq);
  EXPECT_EQ(back.extra.at("esm.contact_head.regression.weight").data,
            ck.extra.at("esm.contact_head.regression.weight").data);
  const auto file = SafetensorsFile::open(dir / "m" / "model.safetensors");
  EXPECT_TRUE(file.contains("esm.encoder.layer.2.LayerNorm.weight"));
  EXPECT_FALSE(file.contains("esm.encoder.layer.2.LayerNorm.gamma"));
  EXPECT_TRUE(file.contains(hf_inv_freq_name(2)));
  fs::remove_all(dir);
}
