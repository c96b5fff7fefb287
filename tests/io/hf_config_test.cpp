#include "io/hf_config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/atomic_dir.h"
#include "core/error.h"
#include "data/tokenizer.h"

using namespace esm2;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

fs::path temp_dir(const std::string& tag) {
  fs::path p = fs::temp_directory_path() / fmt::format("esm2-hfcfg-{}-{}", tag, ::getpid());
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// config.json of facebook/esm2_t6_8M_UR50D as published on the Hugging Face hub (transformers 4.x).
const char* kPublishedT6 = R"({
  "architectures": ["EsmForMaskedLM"],
  "attention_probs_dropout_prob": 0.0,
  "classifier_dropout": null,
  "emb_layer_norm_before": false,
  "esmfold_config": null,
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.0,
  "hidden_size": 320,
  "initializer_range": 0.02,
  "intermediate_size": 1280,
  "is_folding_model": false,
  "layer_norm_eps": 1e-05,
  "mask_token_id": 32,
  "max_position_embeddings": 1026,
  "model_type": "esm",
  "num_attention_heads": 20,
  "num_hidden_layers": 6,
  "pad_token_id": 1,
  "position_embedding_type": "rotary",
  "token_dropout": true,
  "torch_dtype": "float32",
  "transformers_version": "4.25.0.dev0",
  "use_cache": true,
  "vocab_list": null,
  "vocab_size": 33
})";

// Parsing `j` must fail naming `key`, and the message must contain `why`.
void expect_reject(const json& j, const std::string& key, const std::string& why) {
  try {
    parse_hf_config(j.dump(), "cfg/config.json");
    ADD_FAILURE() << "accepted; expected rejection of " << key;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cfg/config.json: " + key), std::string::npos) << msg;
    EXPECT_NE(msg.find(why), std::string::npos) << msg;
  }
}

}  // namespace

TEST(HfConfig, ReadsThePublishedEsm2T6Config) {
  const ModelConfig c = parse_hf_config(kPublishedT6, "t6");
  const ModelConfig p = model_preset("esm2_t6_8M");
  EXPECT_EQ(c.num_layers, p.num_layers);
  EXPECT_EQ(c.hidden_size, 320);
  EXPECT_EQ(c.num_attention_heads, 20);
  EXPECT_EQ(c.ffn_hidden_size, 1280);
  EXPECT_EQ(c.vocab_size, 33);
  EXPECT_EQ(c.max_position_embeddings, 1026);
  EXPECT_EQ(c.layer_norm_eps, 1e-5f);
  EXPECT_EQ(c.rotary_base, 10000.0f);
  EXPECT_FALSE(c.gelu_tanh);
  EXPECT_TRUE(c.token_dropout);
}

TEST(HfConfig, WritesEveryKeyTransformersNeeds) {
  const json j = json::parse(hf_config_json(model_preset("650M"), DType::BF16));
  EXPECT_EQ(j["architectures"], json::array({"EsmForMaskedLM"}));
  EXPECT_EQ(j["model_type"], "esm");
  EXPECT_EQ(j["torch_dtype"], "bfloat16");
  EXPECT_EQ(j["dtype"], "bfloat16");
  EXPECT_EQ(j["hidden_act"], "gelu");
  EXPECT_EQ(j["position_embedding_type"], "rotary");
  EXPECT_EQ(j["token_dropout"], true);
  EXPECT_EQ(j["emb_layer_norm_before"], false);
  EXPECT_EQ(j["mask_token_id"], 32);
  EXPECT_EQ(j["pad_token_id"], 1);
  EXPECT_EQ(j["max_position_embeddings"], 1026);
  EXPECT_EQ(j["layer_norm_eps"].get<double>(), 1e-5);  // the decimal, not the float's binary expansion
  EXPECT_EQ(j["hidden_dropout_prob"], 0.0);
  EXPECT_EQ(j["attention_probs_dropout_prob"], 0.0);
  EXPECT_EQ(j["initializer_range"], 0.02);
  EXPECT_EQ(j["rope_theta"], 10000.0);
  EXPECT_EQ(j["tie_word_embeddings"], true);
  EXPECT_EQ(j["vocab_size"], 33);
  EXPECT_EQ(j["esm2cpp_gelu"], "erf");
  EXPECT_EQ(j["num_hidden_layers"], 33);
  EXPECT_EQ(j["hidden_size"], 1280);
  EXPECT_EQ(j["intermediate_size"], 5120);
  EXPECT_EQ(j["num_attention_heads"], 20);
  EXPECT_THROW(hf_config_json(model_preset("demo"), DType::I32), Error);
}

TEST(HfConfig, RoundTripsEveryField) {
  for (const auto& name : model_preset_names()) {
    const ModelConfig a = model_preset(name);
    const ModelConfig b = parse_hf_config(hf_config_json(a), name);
    EXPECT_EQ(a.num_layers, b.num_layers) << name;
    EXPECT_EQ(a.hidden_size, b.hidden_size) << name;
    EXPECT_EQ(a.num_attention_heads, b.num_attention_heads) << name;
    EXPECT_EQ(a.ffn_hidden_size, b.ffn_hidden_size) << name;
  }
  ModelConfig a = model_preset("demo");
  a.gelu_tanh = true;
  a.token_dropout = false;
  a.layer_norm_eps = 1e-6f;
  a.rotary_base = 500000.0f;
  a.max_position_embeddings = 2050;
  a.mask_ratio_train = 0.1f;
  const fs::path dir = temp_dir("rt");
  write_hf_config(dir, a, DType::F32);
  const ModelConfig b = read_hf_config(dir / "config.json");
  EXPECT_TRUE(b.gelu_tanh);
  EXPECT_FALSE(b.token_dropout);
  EXPECT_EQ(b.layer_norm_eps, 1e-6f);
  EXPECT_EQ(b.rotary_base, 500000.0f);
  EXPECT_EQ(b.max_position_embeddings, 2050);
  EXPECT_EQ(b.mask_ratio_train, 0.1f);
  EXPECT_EQ(b.num_layers, a.num_layers);
  fs::remove_all(dir);
}

TEST(HfConfig, MissingOptionalKeysTakeEsmConfigDefaults) {
  json j = json::parse(kPublishedT6);
  for (const char* k : {"token_dropout", "layer_norm_eps", "max_position_embeddings", "emb_layer_norm_before"})
    j.erase(k);
  j["rope_parameters"] = {{"rope_theta", 20000.0}, {"rope_type", "default"}};
  const ModelConfig c = parse_hf_config(j.dump(), "x");
  EXPECT_FALSE(c.token_dropout);
  EXPECT_EQ(c.layer_norm_eps, 1e-12f);
  EXPECT_EQ(c.max_position_embeddings, 1026);
  EXPECT_EQ(c.rotary_base, 20000.0f);
}

TEST(HfConfig, RejectsWithTheKeyNamed) {
  const json good = json::parse(kPublishedT6);
  auto with = [&](const char* key, json v) {
    json j = good;
    j[key] = std::move(v);
    return j;
  };
  auto without = [&](const char* key) {
    json j = good;
    j.erase(key);
    return j;
  };
  expect_reject(with("model_type", "bert"), "model_type", "'bert' is not an ESM model");
  expect_reject(without("model_type"), "model_type", "missing");
  for (const char* k : {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"})
    expect_reject(without(k), k, "missing (required)");
  expect_reject(with("position_embedding_type", "absolute"), "position_embedding_type", "'absolute' is not supported");
  expect_reject(without("position_embedding_type"), "position_embedding_type", "'absolute'");
  expect_reject(with("vocab_size", 128), "vocab_size", "128 is not the ESM-2 vocabulary size 33");
  expect_reject(with("emb_layer_norm_before", true), "emb_layer_norm_before", "not supported");
  expect_reject(with("tie_word_embeddings", false), "tie_word_embeddings", "not supported");
  expect_reject(with("mask_token_id", 4), "mask_token_id", "must be 32");
  expect_reject(with("pad_token_id", 0), "pad_token_id", "must be 1");
  expect_reject(with("hidden_size", "320"), "hidden_size", "expected an integer");
  expect_reject(with("hidden_size", 320.5), "hidden_size", "expected an integer");
  expect_reject(with("num_hidden_layers", 1ll << 40), "num_hidden_layers", "out of range");
  expect_reject(with("token_dropout", 1), "token_dropout", "expected true/false");
  expect_reject(with("layer_norm_eps", "small"), "layer_norm_eps", "expected a number");
  expect_reject(with("layer_norm_eps", 1e300), "layer_norm_eps", "not a finite float");
  expect_reject(with("esm2cpp_gelu", "relu"), "esm2cpp_gelu", "'relu'");
  expect_reject(with("rope_theta", 0.5), "rope_theta", "must be > 1");
  // Shape inconsistencies are caught by ModelConfig::validate, prefixed with the file.
  try {
    parse_hf_config(with("num_attention_heads", 7).dump(), "cfg/config.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cfg/config.json: model config: hidden_size 320 is not divisible"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(parse_hf_config("{\"model_type\": ", "x"), Error);
  EXPECT_THROW(parse_hf_config("[1]", "x"), Error);
  EXPECT_THROW(read_hf_config("/nonexistent/config.json"), Error);
}

TEST(HfTokenizer, WritesEsmTokenizerFiles) {
  const fs::path dir = temp_dir("tok");
  write_hf_tokenizer_files(dir, 1026);
  const std::string vocab = read_file(dir / "vocab.txt");
  EXPECT_EQ(vocab.substr(0, 26), "<cls>\n<pad>\n<eos>\n<unk>\nL\n");
  EXPECT_TRUE(vocab.ends_with("-\n<null_1>\n<mask>\n"));
  EXPECT_EQ(std::count(vocab.begin(), vocab.end(), '\n'), 33);
  const json map = json::parse(read_file(dir / "special_tokens_map.json"));
  EXPECT_EQ(map, json::parse(R"({"cls_token":"<cls>","eos_token":"<eos>","mask_token":"<mask>",
                                 "pad_token":"<pad>","unk_token":"<unk>"})"));
  const json cfg = json::parse(read_file(dir / "tokenizer_config.json"));
  EXPECT_EQ(cfg["tokenizer_class"], "EsmTokenizer");
  EXPECT_EQ(cfg["model_max_length"], 1026);
  EXPECT_EQ(cfg["added_tokens_decoder"]["32"]["content"], "<mask>");
  EXPECT_EQ(cfg["added_tokens_decoder"]["1"]["special"], true);
  EXPECT_FALSE(cfg["added_tokens_decoder"].contains("4"));  // residues are plain vocabulary
  EXPECT_NO_THROW(check_hf_vocab(dir));
  fs::remove_all(dir);
}

TEST(HfTokenizer, VocabCheckNamesTheLine) {
  const fs::path dir = temp_dir("vocab");
  EXPECT_NO_THROW(check_hf_vocab(dir));  // absent: nothing to check
  std::string good;
  for (auto t : kVocab) (good += t) += "\r\n";  // CRLF is tolerated
  write_file(dir / "vocab.txt", good);
  EXPECT_NO_THROW(check_hf_vocab(dir));
  const auto expect_msg = [&](const std::string& text, const std::string& piece) {
    write_file(dir / "vocab.txt", text);
    try {
      check_hf_vocab(dir);
      ADD_FAILURE() << "accepted; expected " << piece;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(piece), std::string::npos) << e.what();
    }
  };
  std::string swapped = good;
  swapped.replace(swapped.find("L\r\nA"), 4, "A\r\nL");
  expect_msg(swapped, "line 5: token 'A' but the ESM-2 vocabulary has 'L'");
  expect_msg("<cls>\n<pad>\n", "2 tokens, the ESM-2 vocabulary has 33");
  expect_msg(good + "extra\n", "line 34: 'extra' beyond the 33 ESM-2 tokens");
  fs::remove_all(dir);
}
