// The parameter table of EsmForMaskedLM: Hugging Face names, PyTorch shapes and offsets into the one
// flat fp32 buffer (parameters and gradients share the layout). q, k and v weights are adjacent (then
// their biases), so the three projections run as one [3C, C] product.
#pragma once
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/esm2.h"

namespace esm2 {

// Tensor parallel (Megatron; TP ranks, tp rank r): q/k/v and intermediate.dense are split by output
// rows (column-parallel: rank r holds heads [r·H/TP, (r+1)·H/TP) and FFN units [r·F/TP, (r+1)·F/TP),
// one run each); attention.output.dense and output.dense by input columns (row-parallel: one run per
// row); every other tensor is replicated on the TP ranks and owned by tp rank 0.

// Offsets (in elements) of one encoder layer's tensors in the local flat buffer; C' = C/TP, F' = F/TP.
struct LayerOffsets {
  size_t w_qkv, b_qkv;    // [3C', C] = query|key|value .weight (local rows of each, adjacent); [3C'] biases
  size_t w_o, b_o;        // attention.output.dense [C, C'], [C]
  size_t ln1_w, ln1_b;    // attention.LayerNorm (pre-attention) [C]
  size_t w_fc, b_fc;      // intermediate.dense [F', C], [F']
  size_t w_proj, b_proj;  // output.dense [C, F'], [C]
  size_t ln2_w, ln2_b;    // LayerNorm (pre-FFN) [C]
};

// Which part of the model a rank holds: tensor-parallel shard and pipeline stage.
struct ShardCoord {
  int tp_rank = 0, tp_size = 1;
  int pp_rank = 0, pp_size = 1;
  bool whole() const { return tp_size == 1 && pp_size == 1; }
};

struct ParamTable {
  std::vector<ParamInfo> infos;  // in buffer order, LOCAL shapes (a rank's shard/stage)
  size_t total = 0;              // elements of the local flat buffer
  // Where the local buffer sits in the whole model's flat layout (build_param_table(cfg) with the
  // default coord): every local element is in exactly one run; `full_total` is the whole model's size.
  std::vector<FlatRun> runs;
  size_t full_total = 0;
  // Pipeline stage content: layers [first_layer, end_layer) (layers[i] is layer first_layer + i),
  // the embedding (first stage) and final LayerNorm + LM head with the tied decoder (last stage).
  int first_layer = 0, end_layer = 0;
  bool has_embedding = true, has_head = true;
  size_t wte = 0;                 // esm.embeddings.word_embeddings.weight [V, C] (also the tied decoder)
  std::vector<LayerOffsets> layers;
  size_t lnf_w = 0, lnf_b = 0;    // esm.encoder.emb_layer_norm_after [C]
  size_t head_w = 0, head_b = 0;  // lm_head.dense [C, C], [C]
  size_t head_ln_w = 0, head_ln_b = 0;  // lm_head.layer_norm [C]
  size_t head_bias = 0;           // lm_head.bias [V]
};

// "esm.encoder.layer.{layer}.{leaf}" — the one place encoder names are spelled.
std::string encoder_layer_name(int layer, std::string_view leaf);
// The local table of the rank at `coord` (default: the whole model on one rank): its tensor-parallel
// shards and, with pipeline stages, only its stage's layers (pipeline_stage_layers) in the whole model's
// order; names stay the whole model's. Throws esm2::Error when the heads or the FFN width do not divide
// by the tensor-parallel size.
ParamTable build_param_table(const ModelConfig& cfg, const ShardCoord& coord = {});
// Layers [first, end) of pipeline stage `stage` of `stages`: contiguous, uneven counts allowed, the
// first num_layers % stages stages one layer longer. Throws unless 1 <= stages <= num_layers.
std::pair<int, int> pipeline_stage_layers(int num_layers, int stages, int stage);
// Index into infos by name, or -1.
int find_param(const ParamTable& table, std::string_view name);

}  // namespace esm2
