#include "model/param_table.h"

#include <fmt/format.h>

#include <unordered_map>

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

// The table of every layer of the model (all pipeline stages) at this rank's tensor-parallel shard.
ParamTable build_all_layers(const ModelConfig& cfg, const ShardCoord& coord) {
  const int TP = coord.tp_size, tr = coord.tp_rank;
  ESM2_CHECK(TP >= 1 && tr >= 0 && tr < TP, "parameter table: tensor-parallel rank {} of size {}", tr, TP);
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

// Keeps the tensors of pipeline stage `at.pp_rank` from a table of all layers, in the same order,
// re-based to a dense local buffer; runs (already mapping into the whole model) follow their tensors.
ParamTable select_stage(const ParamTable& all, const ModelConfig& cfg, const ShardCoord& at) {
  const auto [first, end] = pipeline_stage_layers(cfg.num_layers, at.pp_size, at.pp_rank);
  ParamTable t;
  t.full_total = all.full_total;
  t.first_layer = first;
  t.end_layer = end;
  t.has_embedding = at.pp_rank == 0;
  t.has_head = at.pp_rank == at.pp_size - 1;
  const size_t layer_begin = all.layers[first].w_qkv;
  const size_t layer_end = end < cfg.num_layers ? all.layers[end].w_qkv : all.lnf_w;
  // The word embedding lives on the first stage (input) and, as the tied decoder, on the last; the
  // first stage's copy is THE copy (checkpoints, gradient norm), the last stage's a replica kept equal
  // by summing the two gradients (PipelineSchedule).
  auto keep = [&](size_t off) {
    if (off == all.wte) return t.has_embedding || t.has_head;
    if (off >= layer_begin && off < layer_end) return true;
    return off >= all.lnf_w && t.has_head;
  };
  std::unordered_map<size_t, size_t> local_of;  // tensor offset in `all` → offset in the stage's buffer
  size_t run = 0;
  for (const ParamInfo& p : all.infos) {
    while (run < all.runs.size() && all.runs[run].local < p.offset) ++run;
    if (!keep(p.offset)) continue;
    const bool replica = p.offset == all.wte && !t.has_embedding;
    ParamInfo q = p;
    q.offset = t.total;
    q.owner = p.owner && !replica;
    local_of[p.offset] = q.offset;
    for (size_t r = run; r < all.runs.size() && all.runs[r].local < p.offset + p.numel; ++r) {
      FlatRun fr = all.runs[r];
      fr.local = fr.local - p.offset + q.offset;
      fr.owner = fr.owner && !replica;
      t.runs.push_back(fr);
    }
    t.total += p.numel;
    t.infos.push_back(std::move(q));
  }
  auto loc = [&](size_t off) { return local_of.at(off); };
  if (t.has_embedding || t.has_head) t.wte = loc(all.wte);
  for (int l = first; l < end; ++l) {
    const LayerOffsets& o = all.layers[l];
    t.layers.push_back({loc(o.w_qkv), loc(o.b_qkv), loc(o.w_o), loc(o.b_o), loc(o.ln1_w), loc(o.ln1_b), loc(o.w_fc),
                        loc(o.b_fc), loc(o.w_proj), loc(o.b_proj), loc(o.ln2_w), loc(o.ln2_b)});
  }
  if (t.has_head) {
    t.lnf_w = loc(all.lnf_w);
    t.lnf_b = loc(all.lnf_b);
    t.head_w = loc(all.head_w);
    t.head_b = loc(all.head_b);
    t.head_ln_w = loc(all.head_ln_w);
    t.head_ln_b = loc(all.head_ln_b);
    t.head_bias = loc(all.head_bias);
  }
  return t;
}

}  // namespace

std::pair<int, int> pipeline_stage_layers(int num_layers, int stages, int stage) {
  ESM2_CHECK(stages >= 1 && stages <= num_layers,
             "model: --pipeline-model-parallel-size {} must be between 1 and the number of layers {}", stages,
             num_layers);
  ESM2_CHECK(stage >= 0 && stage < stages, "model: pipeline stage {} outside 0..{}", stage, stages - 1);
  // Contiguous ranges; the first (num_layers mod stages) stages take one layer more (33 on 4 = 9+8+8+8):
  // the last stage also runs the LM head, so it is the one to lighten.
  const int base = num_layers / stages, extra = num_layers % stages;
  const int first = stage * base + std::min(stage, extra);
  return {first, first + base + (stage < extra ? 1 : 0)};
}

ParamTable build_param_table(const ModelConfig& cfg, const ShardCoord& at) {
  cfg.validate();
  ParamTable all = build_all_layers(cfg, at);
  if (at.pp_size == 1) return all;
  return select_stage(all, cfg, at);
}

int find_param(const ParamTable& table, std::string_view name) {
  for (size_t i = 0; i < table.infos.size(); ++i)
    if (table.infos[i].name == name) return static_cast<int>(i);
  return -1;
}

}  // namespace esm2
