#include "io/hf_config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/atomic_dir.h"
#include "core/error.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;
using nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace esm2 {

std::string_view torch_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    default: fail("no torch_dtype for {} weights", dtype_name(dtype));
  }
}

namespace {

// The float's shortest decimal as a double: 1e-5f is written "1e-05", not "9.999999747378752e-06".
double short_double(float f) { return std::stod(fmt::format("{}", f)); }

// Typed access to config keys; every error names the file and the key.
class ConfigReader {
 public:
  ConfigReader(const json& j, const std::string& source) : j_(j), source_(source) {}

  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  [[noreturn]] void bad(const char* key, const std::string& why) const { fail("{}: {}: {}", source_, key, why); }

  int get_int(const char* key) const {
    if (!has(key)) bad(key, "missing (required)");
    const json& v = j_[key];
    if (!v.is_number_integer()) bad(key, fmt::format("expected an integer, got {}", v.dump()));
    const int64_t x = v.get<int64_t>();
    if (x < INT32_MIN || x > INT32_MAX) bad(key, fmt::format("{} is out of range", x));
    return static_cast<int>(x);
  }
  int get_int(const char* key, int dflt) const { return has(key) ? get_int(key) : dflt; }
  float get_float(const char* key, float dflt) const {
    if (!has(key)) return dflt;
    const json& v = j_[key];
    if (!v.is_number()) bad(key, fmt::format("expected a number, got {}", v.dump()));
    const double x = v.get<double>();
    if (!std::isfinite(static_cast<float>(x))) bad(key, fmt::format("{} is not a finite float", x));
    return static_cast<float>(x);
  }
  bool get_bool(const char* key, bool dflt) const {
    if (!has(key)) return dflt;
    if (!j_[key].is_boolean()) bad(key, fmt::format("expected true/false, got {}", j_[key].dump()));
    return j_[key].get<bool>();
  }
  std::string get_string(const char* key, const std::string& dflt) const {
    if (!has(key)) return dflt;
    if (!j_[key].is_string()) bad(key, fmt::format("expected a string, got {}", j_[key].dump()));
    return j_[key].get<std::string>();
  }

 private:
  const json& j_;
  const std::string& source_;
};

}  // namespace

std::string hf_config_json(const ModelConfig& cfg, DType dtype) {
  const std::string_view td = torch_dtype_name(dtype);
  ojson j;
  j["architectures"] = {"EsmForMaskedLM"};
  j["attention_probs_dropout_prob"] = 0.0;
  j["classifier_dropout"] = nullptr;
  // transformers 5.x reads "dtype", 4.x "torch_dtype": write both.
  j["dtype"] = td;
  j["emb_layer_norm_before"] = false;
  j["esm2cpp_gelu"] = cfg.gelu_tanh ? "tanh" : "erf";
  j["esm2cpp_mask_ratio_train"] = short_double(cfg.mask_ratio_train);
  j["esmfold_config"] = nullptr;
  j["hidden_act"] = "gelu";
  j["hidden_dropout_prob"] = 0.0;
  j["hidden_size"] = cfg.hidden_size;
  j["initializer_range"] = 0.02;
  j["intermediate_size"] = cfg.ffn_hidden_size;
  j["is_folding_model"] = false;
  j["layer_norm_eps"] = short_double(cfg.layer_norm_eps);
  j["mask_token_id"] = kMask;
  j["max_position_embeddings"] = cfg.max_position_embeddings;
  j["model_type"] = "esm";
  j["num_attention_heads"] = cfg.num_attention_heads;
  j["num_hidden_layers"] = cfg.num_layers;
  j["pad_token_id"] = kPad;
  j["position_embedding_type"] = "rotary";
  j["rope_theta"] = short_double(cfg.rotary_base);
  j["tie_word_embeddings"] = true;
  j["token_dropout"] = cfg.token_dropout;
  j["torch_dtype"] = td;
  j["use_cache"] = true;
  j["vocab_size"] = cfg.vocab_size;
  return j.dump(2) + "\n";
}

ModelConfig parse_hf_config(std::string_view json_text, const std::string& source) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", source, e.what());
  }
  ESM2_CHECK(j.is_object(), "{}: not a JSON object", source);
  const ConfigReader r(j, source);

  if (!r.has("model_type")) r.bad("model_type", "missing (required, must be \"esm\")");
  const std::string model_type = r.get_string("model_type", "");
  if (model_type != "esm") r.bad("model_type", fmt::format("'{}' is not an ESM model (expected \"esm\")", model_type));
  // EsmConfig's default is "absolute", which ESM-2 never used.
  const std::string pos = r.get_string("position_embedding_type", "absolute");
  if (pos != "rotary") r.bad("position_embedding_type", fmt::format("'{}' is not supported (only \"rotary\")", pos));
  if (r.get_bool("emb_layer_norm_before", false))
    r.bad("emb_layer_norm_before", "true is not supported (ESM-2 has no embedding LayerNorm)");
  if (!r.get_bool("tie_word_embeddings", true))
    r.bad("tie_word_embeddings", "false is not supported (the decoder is the embedding matrix)");
  if (r.get_int("mask_token_id", kMask) != kMask) r.bad("mask_token_id", fmt::format("must be {}", kMask));
  if (r.get_int("pad_token_id", kPad) != kPad) r.bad("pad_token_id", fmt::format("must be {}", kPad));

  ModelConfig c;
  c.num_layers = r.get_int("num_hidden_layers");
  c.hidden_size = r.get_int("hidden_size");
  c.num_attention_heads = r.get_int("num_attention_heads");
  c.ffn_hidden_size = r.get_int("intermediate_size");
  c.vocab_size = r.get_int("vocab_size");
  if (c.vocab_size != kVocabSize) r.bad("vocab_size", fmt::format("{} is not the ESM-2 vocabulary size 33", c.vocab_size));
  c.max_position_embeddings = r.get_int("max_position_embeddings", 1026);
  if (c.max_position_embeddings < 3)
    r.bad("max_position_embeddings", fmt::format("{} is below 3 (<cls>, a residue, <eos>)", c.max_position_embeddings));
  c.layer_norm_eps = r.get_float("layer_norm_eps", 1e-12f);  // EsmConfig's default
  float theta = 10000.0f;
  if (r.has("rope_parameters")) {  // transformers 5.x may nest it
    const json& rp = j["rope_parameters"];
    if (!rp.is_object()) r.bad("rope_parameters", "expected an object");
    theta = ConfigReader(rp, source).get_float("rope_theta", theta);
  }
  c.rotary_base = r.get_float("rope_theta", theta);
  c.token_dropout = r.get_bool("token_dropout", false);  // EsmConfig's default
  const std::string gelu = r.get_string("esm2cpp_gelu", "erf");
  if (gelu != "erf" && gelu != "tanh") r.bad("esm2cpp_gelu", fmt::format("'{}' is not \"erf\" or \"tanh\"", gelu));
  c.gelu_tanh = gelu == "tanh";
  c.mask_ratio_train = r.get_float("esm2cpp_mask_ratio_train", c.mask_ratio_train);
  if (!(c.mask_ratio_train >= 0.0f && c.mask_ratio_train < 1.0f))
    r.bad("esm2cpp_mask_ratio_train", fmt::format("{} is outside [0, 1)", c.mask_ratio_train));
  if (!(c.rotary_base > 1.0f)) r.bad("rope_theta", fmt::format("{} must be > 1", c.rotary_base));
  try {
    c.validate();
  } catch (const Error& e) {
    fail("{}: {}", source, e.what());
  }
  return c;
}

ModelConfig read_hf_config(const fs::path& config_json) {
  return parse_hf_config(read_file(config_json), config_json.string());
}

void write_hf_config(const fs::path& dir, const ModelConfig& cfg, DType dtype) {
  write_file(dir / "config.json", hf_config_json(cfg, dtype));
}

void write_hf_tokenizer_files(const fs::path& dir, int model_max_length) {
  std::string vocab;
  for (auto t : kVocab) (vocab += t) += '\n';
  write_file(dir / "vocab.txt", vocab);

  const std::pair<const char*, int32_t> specials[] = {
      {"cls_token", kCls}, {"eos_token", kEos}, {"mask_token", kMask}, {"pad_token", kPad}, {"unk_token", kUnk}};
  ojson map;
  for (auto [key, id] : specials) map[key] = kVocab[id];
  write_file(dir / "special_tokens_map.json", map.dump(2) + "\n");

  ojson decoder;
  for (int32_t id : {kCls, kPad, kEos, kUnk, kMask})
    decoder[std::to_string(id)] = {{"content", kVocab[id]}, {"lstrip", false},      {"normalized", false},
                                   {"rstrip", false},       {"single_word", false}, {"special", true}};
  ojson cfg;
  cfg["added_tokens_decoder"] = decoder;
  cfg["clean_up_tokenization_spaces"] = true;
  for (auto [key, id] : specials) {
    cfg[key] = kVocab[id];
    if (std::string_view(key) == "mask_token") cfg["model_max_length"] = model_max_length;  // sorted keys
  }
  cfg["tokenizer_class"] = "EsmTokenizer";
  write_file(dir / "tokenizer_config.json", cfg.dump(2) + "\n");
}

void check_hf_vocab(const fs::path& dir) {
  const fs::path path = dir / "vocab.txt";
  if (!fs::exists(path)) return;
  const std::string text = read_file(path);
  size_t line = 0, pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view tok(text.data() + pos, end - pos);
    if (!tok.empty() && tok.back() == '\r') tok.remove_suffix(1);
    ESM2_CHECK(line < kVocab.size(), "{}: line {}: '{}' beyond the {} ESM-2 tokens", path.string(), line + 1, tok,
               kVocab.size());
    ESM2_CHECK(tok == kVocab[line], "{}: line {}: token '{}' but the ESM-2 vocabulary has '{}' (id {})",
               path.string(), line + 1, tok, kVocab[line], line);
    ++line;
    pos = end + 1;
  }
  ESM2_CHECK(line == kVocab.size(), "{}: {} tokens, the ESM-2 vocabulary has {}", path.string(), line, kVocab.size());
}

}  // namespace esm2
