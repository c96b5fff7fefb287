// ESM-2 model shape and numerics options, the presets, and validation of user-given shapes.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace esm2 {

struct ModelConfig {
  int num_layers = 6;
  int hidden_size = 320;
  int num_attention_heads = 20;
  int ffn_hidden_size = 1280;
  int vocab_size = 33;
  int max_position_embeddings = 1026;
  float layer_norm_eps = 1e-5f;
  float rotary_base = 10000.0f;
  bool gelu_tanh = false;      // false: exact erf GELU (HF/fair-esm); true: tanh approximation (Megatron)
  bool token_dropout = true;   // ESM-2 rescaling of embeddings by the mask ratio
  float mask_ratio_train = 0.15f * 0.8f;  // the 0.12 in (1 - 0.12) / (1 - n_mask/n_real)

  int head_dim() const { return hidden_size / num_attention_heads; }
  // Throws esm2::Error naming the inconsistent field (hidden % heads, odd head_dim, …).
  void validate() const;
  // Number of trainable parameters (decoder tied to the embedding).
  int64_t num_parameters() const;
  // Training FLOPs per token as in performance.md: 6·N_matmul + 6·L·seq_eff·d.
  double train_flops_per_token(double seq_eff) const;
};

// Preset names: demo, 8M, esm2_t6_8M, 35M, 150M, 650M, 3B, 15B. Throws on unknown name.
ModelConfig model_preset(const std::string& name);
std::vector<std::string> model_preset_names();

}  // namespace esm2
