#include "model/param_table.h"

#include <fmt/format.h>

#include "core/error.h"

namespace esm2 {

std::string encoder_layer_name(int layer, std::string_view leaf) {
  return fmt::format("esm.encoder.layer.{}.{}", layer, leaf);
}

ParamTable build_param_table(const ModelConfig& cfg, const ShardCoord& at) {
  cfg.validate();
  ESM2_CHECK(at.whole(), "model: tensor parallel {} / pipeline parallel {} is not supported by this build",
             at.tp_size, at.pp_size);
  ParamTable t;
  const int64_t C = cfg.hidden_size, F = cfg.ffn_hidden_size, V = cfg.vocab_size;
  auto add = [&t](std::string name, std::vector<int64_t> shape, bool decay) {
    ParamInfo p;
    p.name = std::move(name);
    p.shape = std::move(shape);
    p.offset = t.total;
    p.numel = 1;
    for (int64_t d : p.shape) p.numel *= static_cast<size_t>(d);
    p.weight_decay = decay;
    t.total += p.numel;
    t.infos.push_back(std::move(p));
    return t.infos.back().offset;
  };
  t.wte = add("esm.embeddings.word_embeddings.weight", {V, C}, false);
  for (int l = 0; l < cfg.num_layers; ++l) {
    auto n = [l](std::string_view leaf) { return encoder_layer_name(l, leaf); };
    LayerOffsets o;
    o.w_qkv = add(n("attention.self.query.weight"), {C, C}, true);
    add(n("attention.self.key.weight"), {C, C}, true);
    add(n("attention.self.value.weight"), {C, C}, true);
    o.b_qkv = add(n("attention.self.query.bias"), {C}, false);
    add(n("attention.self.key.bias"), {C}, false);
    add(n("attention.self.value.bias"), {C}, false);
    o.w_o = add(n("attention.output.dense.weight"), {C, C}, true);
    o.b_o = add(n("attention.output.dense.bias"), {C}, false);
    o.ln1_w = add(n("attention.LayerNorm.weight"), {C}, false);
    o.ln1_b = add(n("attention.LayerNorm.bias"), {C}, false);
    o.w_fc = add(n("intermediate.dense.weight"), {F, C}, true);
    o.b_fc = add(n("intermediate.dense.bias"), {F}, false);
    o.w_proj = add(n("output.dense.weight"), {C, F}, true);
    o.b_proj = add(n("output.dense.bias"), {C}, false);
    o.ln2_w = add(n("LayerNorm.weight"), {C}, false);
    o.ln2_b = add(n("LayerNorm.bias"), {C}, false);
    t.layers.push_back(o);
  }
  t.lnf_w = add("esm.encoder.emb_layer_norm_after.weight", {C}, false);
  t.lnf_b = add("esm.encoder.emb_layer_norm_after.bias", {C}, false);
  t.head_w = add("lm_head.dense.weight", {C, C}, true);
  t.head_b = add("lm_head.dense.bias", {C}, false);
  t.head_ln_w = add("lm_head.layer_norm.weight", {C}, false);
  t.head_ln_b = add("lm_head.layer_norm.bias", {C}, false);
  t.head_bias = add("lm_head.bias", {V}, false);
  t.full_total = t.total;
  t.first_layer = 0;
  t.end_layer = cfg.num_layers;
  for (const ParamInfo& p : t.infos) t.runs.push_back({p.offset, p.offset, p.numel, p.owner});
  return t;
}

int find_param(const ParamTable& table, std::string_view name) {
  for (size_t i = 0; i < table.infos.size(); ++i)
    if (table.infos[i].name == name) return static_cast<int>(i);
  return -1;
}

}  // namespace esm2
