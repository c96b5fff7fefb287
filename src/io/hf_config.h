// Hugging Face side files of an EsmForMaskedLM directory: config.json and the EsmTokenizer files
// (vocab.txt, special_tokens_map.json, tokenizer_config.json).
//
// config.json ↔ ModelConfig:
//   num_hidden_layers ↔ num_layers, hidden_size, num_attention_heads, intermediate_size ↔ ffn_hidden_size,
//   vocab_size (must be 33), max_position_embeddings, layer_norm_eps, rope_theta ↔ rotary_base,
//   token_dropout, esm2cpp_gelu ("erf" | "tanh") ↔ gelu_tanh, esm2cpp_mask_ratio_train ↔ mask_ratio_train.
// Keys that transformers reads but our model fixes are written with the only values we support and
// checked on reading (model_type esm, position_embedding_type rotary, emb_layer_norm_before false,
// tie_word_embeddings true, mask_token_id 32, pad_token_id 1). Optional keys that are absent take
// the EsmConfig defaults of transformers, so a file means the same thing to both readers.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>

#include "io/safetensors.h"
#include "model/config.h"

namespace esm2 {

// "float32" / "bfloat16" / "float16" (the torch_dtype spelling); throws for other dtypes.
std::string_view torch_dtype_name(DType dtype);

// config.json text (2-space indent, trailing newline). `dtype` is the weights' storage type.
std::string hf_config_json(const ModelConfig& cfg, DType dtype = DType::F32);
// Parses and validates config.json text; errors are one line "<source>: <key>: <reason>".
ModelConfig parse_hf_config(std::string_view json_text, const std::string& source);
ModelConfig read_hf_config(const std::filesystem::path& config_json);
void write_hf_config(const std::filesystem::path& dir, const ModelConfig& cfg, DType dtype = DType::F32);

// vocab.txt (the 33 tokens of data/tokenizer.h, one a line), special_tokens_map.json and
// tokenizer_config.json (EsmTokenizer, model_max_length = max_position_embeddings).
void write_hf_tokenizer_files(const std::filesystem::path& dir, int model_max_length = 1026);
// If dir/vocab.txt exists it must list exactly our vocabulary in our order; throws naming the line.
void check_hf_vocab(const std::filesystem::path& dir);

}  // namespace esm2
