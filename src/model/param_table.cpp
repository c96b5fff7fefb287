#include "model/param_table.h"

#include <fmt/format.h>

#include "core/error.h"

namespace esm2 {

std::string encoder_layer_name(int layer, std::string_view leaf) {
  return fmt::format("esm.encoder.layer.{}.{}", layer, leaf);
}

namespace {

// How a tensor is split over the tensor-parallel ranks.
enum class Split {
  None,  // replicated
  Rows,  // dim 0 (output features: column-parallel Linear and its bias), one contiguous run
  Cols,  // dim 1 (input features: row-parallel Linear), one run per row
};

}  // namespace

ParamTable build_param_table(const ModelConfig& cfg, const ShardCoord& coord) {
  cfg.validate();
  const int TP = coord.tp_size, tr = coord.tp_rank;
  ESM2_CHECK(TP >= 1 && tr >= 0 && tr < TP, "parameter table: tensor-parallel rank {} of size {}", tr, TP);
  ESM2_CHECK(coord.pp_size == 1, "model: pipeline parallel {} is not supported by this build", coord.pp_size);
  ESM2_CHECK(cfg.num_attention_heads % TP == 0,
             "tensor parallel: {} attention heads do not divide by --tensor-model-parallel-size {}",
             cfg.num_attention_heads, TP);
  ESM2_CHECK(cfg.ffn_hidden_size % TP == 0,
             "tensor parallel: FFN width {} does not divide by --tensor-model-parallel-size {}", cfg.ffn_hidden_size,
             TP);
  ParamTable t;
  const int64_t C = cfg.hidden_size, F = cfg.ffn_hidden_size, V = cfg.vocab_size;
  auto add = [&t, TP, tr](std::string name, std::vector<int64_t> full_shape, bool decay, Split split) {
    size_t full_numel = 1;
    for (int64_t d : full_shape) full_numel *= static_cast<size_t>(d);
    ParamInfo p;
    p.name = std::move(name);
    p.shape = full_shape;
    p.offset = t.total;
    p.weight_decay = decay;
    p.owner = split != Split::None || tr == 0;
    if (TP == 1) split = Split::None;  // a split of one is the identity: one run per tensor
    const size_t full = t.full_total;
    switch (split) {
      case Split::None:
        t.runs.push_back({t.total, full, full_numel, p.owner});
        break;
      case Split::Rows: {
        const size_t rows = static_cast<size_t>(full_shape[0] / TP);
        const size_t width = full_numel / static_cast<size_t>(full_shape[0]);
        p.shape[0] = static_cast<int64_t>(rows);
        t.runs.push_back({t.total, full + static_cast<size_t>(tr) * rows * width, rows * width, true});
        break;
      }
      case Split::Cols: {
        const size_t rows = static_cast<size_t>(full_shape[0]), cols = static_cast<size_t>(full_shape[1] / TP);
        p.shape[1] = static_cast<int64_t>(cols);
        for (size_t r = 0; r < rows; ++r)
          t.runs.push_back({t.total + r * cols, full + r * cols * TP + static_cast<size_t>(tr) * cols, cols, true});
        break;
      }
    }
    p.numel = 1;
    for (int64_t d : p.shape) p.numel *= static_cast<size_t>(d);
    t.total += p.numel;
    t.full_total += full_numel;
    t.infos.push_back(std::move(p));
    return t.infos.back().offset;
  };
  t.wte = add("esm.embeddings.word_embeddings.weight", {V, C}, false, Split::None);
  for (int l = 0; l < cfg.num_layers; ++l) {
    auto n = [l](std::string_view leaf) { return encoder_layer_name(l, leaf); };
    LayerOffsets o;
    // Column-parallel q, k, v: the local rows of each are adjacent, so the local [3C/TP, C] block is
    // q_local | k_local | v_local, the layout attention expects for H/TP heads.
    o.w_qkv = add(n("attention.self.query.weight"), {C, C}, true, Split::Rows);
    add(n("attention.self.key.weight"), {C, C}, true, Split::Rows);
    add(n("attention.self.value.weight"), {C, C}, true, Split::Rows);
    o.b_qkv = add(n("attention.self.query.bias"), {C}, false, Split::Rows);
    add(n("attention.self.key.bias"), {C}, false, Split::Rows);
    add(n("attention.self.value.bias"), {C}, false, Split::Rows);
    o.w_o = add(n("attention.output.dense.weight"), {C, C}, true, Split::Cols);
    o.b_o = add(n("attention.output.dense.bias"), {C}, false, Split::None);
    o.ln1_w = add(n("attention.LayerNorm.weight"), {C}, false, Split::None);
    o.ln1_b = add(n("attention.LayerNorm.bias"), {C}, false, Split::None);
    o.w_fc = add(n("intermediate.dense.weight"), {F, C}, true, Split::Rows);
    o.b_fc = add(n("intermediate.dense.bias"), {F}, false, Split::Rows);
    o.w_proj = add(n("output.dense.weight"), {C, F}, true, Split::Cols);
    o.b_proj = add(n("output.dense.bias"), {C}, false, Split::None);
    o.ln2_w = add(n("LayerNorm.weight"), {C}, false, Split::None);
    o.ln2_b = add(n("LayerNorm.bias"), {C}, false, Split::None);
    t.layers.push_back(o);
  }
  t.first_layer = 0;
  t.end_layer = cfg.num_layers;
  t.lnf_w = add("esm.encoder.emb_layer_norm_after.weight", {C}, false, Split::None);
  t.lnf_b = add("esm.encoder.emb_layer_norm_after.bias", {C}, false, Split::None);
  t.head_w = add("lm_head.dense.weight", {C, C}, true, Split::None);
  t.head_b = add("lm_head.dense.bias", {C}, false, Split::None);
  t.head_ln_w = add("lm_head.layer_norm.weight", {C}, false, Split::None);
  t.head_ln_b = add("lm_head.layer_norm.bias", {C}, false, Split::None);
  t.head_bias = add("lm_head.bias", {V}, false, Split::None);
  return t;
}

int find_param(const ParamTable& table, std::string_view name) {
  for (size_t i = 0; i < table.infos.size(); ++i)
    if (table.infos[i].name == name) return static_cast<int>(i);
  return -1;
}

}  // namespace esm2
