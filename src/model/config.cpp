#include "model/config.h"

#include "core/error.h"

namespace esm2 {

void ModelConfig::validate() const {
  ESM2_CHECK(num_layers >= 1, "model config: num_layers must be >= 1 (got {})", num_layers);
  ESM2_CHECK(hidden_size >= 2, "model config: hidden_size must be >= 2 (got {})", hidden_size);
  ESM2_CHECK(num_attention_heads >= 1, "model config: num_attention_heads must be >= 1 (got {})",
             num_attention_heads);
  ESM2_CHECK(hidden_size % num_attention_heads == 0,
             "model config: hidden_size {} is not divisible by num_attention_heads {}", hidden_size,
             num_attention_heads);
  ESM2_CHECK(head_dim() % 2 == 0, "model config: head dim {} (= {} / {}) must be even for rotary embeddings",
             head_dim(), hidden_size, num_attention_heads);
  ESM2_CHECK(ffn_hidden_size >= 1, "model config: ffn_hidden_size must be >= 1 (got {})", ffn_hidden_size);
  ESM2_CHECK(vocab_size == 33, "model config: vocab_size must be 33 for ESM-2 (got {})", vocab_size);
  ESM2_CHECK(layer_norm_eps > 0, "model config: layer_norm_eps must be > 0");
}

int64_t ModelConfig::num_parameters() const {
  const int64_t d = hidden_size, f = ffn_hidden_size, v = vocab_size;
  const int64_t per_layer = 4 * d * d + 4 * d   // q, k, v, out + biases
                            + 2 * d             // LN1
                            + d * f + f + f * d + d  // FFN
                            + 2 * d;            // LN2
  return v * d                      // embedding (tied decoder)
         + num_layers * per_layer   //
         + 2 * d                    // final LN
         + d * d + d + 2 * d + v;   // LM head dense, LN, bias
}

double ModelConfig::train_flops_per_token(double seq_eff) const {
  const double d = hidden_size, f = ffn_hidden_size, L = num_layers, v = vocab_size;
  const double n_matmul = L * (4 * d * d + 2 * d * f) + d * d + v * d;
  return 6.0 * n_matmul + 6.0 * L * seq_eff * d;
}

ModelConfig model_preset(const std::string& name) {
  auto make = [](int L, int d, int h, int f) {
    ModelConfig c;
    c.num_layers = L;
    c.hidden_size = d;
    c.num_attention_heads = h;
    c.ffn_hidden_size = f;
    return c;
  };
  if (name == "demo") return make(4, 128, 8, 512);
  if (name == "8M") return make(8, 320, 20, 1280);
  if (name == "esm2_t6_8M") return make(6, 320, 20, 1280);
  if (name == "35M") return make(12, 480, 20, 1920);
  if (name == "150M") return make(30, 640, 20, 2560);
  if (name == "650M") return make(33, 1280, 20, 5120);
  if (name == "3B") return make(36, 2560, 40, 10240);
  if (name == "15B") return make(48, 5120, 40, 20480);
  fail("unknown model preset '{}' (known: demo, 8M, esm2_t6_8M, 35M, 150M, 650M, 3B, 15B)", name);
}

std::vector<std::string> model_preset_names() {
  return {"demo", "8M", "esm2_t6_8M", "35M", "150M", "650M", "3B", "15B"};
}

}  // namespace esm2
