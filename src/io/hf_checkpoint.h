// Hugging Face EsmForMaskedLM checkpoint directories: config.json + model.safetensors (or shards +
// model.safetensors.index.json) + EsmTokenizer files.
//
// Loading accepts every variant seen in the wild (reference/esm2-model.md):
//   - encoder-layer LayerNorms as `.gamma/.beta` (transformers 5.x) or `.weight/.bias`;
//   - the rotary inv_freq once under the literal key `esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq`,
//     once per layer, or not at all;
//   - `lm_head.decoder.weight` present (checked equal to the tied embedding, then dropped) or absent;
//   - F32, F16 or BF16 (F64 too) tensors, one file or shards.
// Tensors are returned under the canonical `.weight/.bias` names of hf_parameter_table(); anything
// else (esm.contact_head.*, …) is kept byte for byte in `extra` so load → save loses nothing.
// Saving writes `.weight/.bias` names and a per-layer inv_freq (what transformers 4.x and the
// published checkpoints use).
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/config.h"

namespace esm2 {

struct HfParam {
  std::string name;            // canonical HF name, e.g. "esm.encoder.layer.3.attention.self.query.weight"
  std::vector<int64_t> shape;  // PyTorch order ([out, in] for Linear weights)
};

// Every trainable tensor of EsmForMaskedLM for cfg in state_dict order (the decoder is tied and
// not listed; the inv_freq buffers are not parameters).
std::vector<HfParam> hf_parameter_table(const ModelConfig& cfg);
// The name of layer i's rotary buffer.
std::string hf_inv_freq_name(int layer);
// inv_freq[j] = 1 / base^(2j / head_dim), j < head_dim/2, in float arithmetic as transformers does.
std::vector<float> rotary_inv_freq(const ModelConfig& cfg);

struct HfCheckpoint {
  ModelConfig config;
  std::map<std::string, std::vector<float>> tensors;    // canonical name → values (row-major)
  std::map<std::string, std::vector<int64_t>> shapes;   // canonical name → shape
  std::vector<float> inv_freq;                          // [head_dim/2]; empty if the file had none
  std::map<std::string, RawTensor> extra;               // unknown tensors, verbatim
};

// A checkpoint directory opened without reading its parameters: the files are memory-mapped and every
// check of load_hf_checkpoint runs at open (names, shapes, dtypes, inv_freq, the tied decoder); the
// parameters are then read on demand, whole or as element ranges, so a rank of a model-parallel run
// reads (and pages in) only its own pieces.
class HfCheckpointReader {
 public:
  explicit HfCheckpointReader(const std::filesystem::path& dir);
  const ModelConfig& config() const { return config_; }
  const std::string& source() const { return set_.source(); }  // the file or index, for messages
  // Canonical name → shape, every tensor of hf_parameter_table(config()).
  const std::map<std::string, std::vector<int64_t>>& shapes() const { return shapes_; }
  const std::vector<float>& inv_freq() const { return inv_freq_; }  // [head_dim/2]; empty if none stored
  // Elements [begin, begin + out.size()) of canonical tensor `name` (row-major), converted to fp32.
  void read_f32(const std::string& name, size_t begin, std::span<float> out) const;
  std::vector<float> to_f32(const std::string& name) const;
  // The tensors outside the parameter table (esm.contact_head.*, …), verbatim copies.
  std::map<std::string, RawTensor> extra() const;

 private:
  ModelConfig config_;
  SafetensorsSet set_;
  std::map<std::string, std::string> stored_as_;  // canonical → name in the file
  std::map<std::string, std::vector<int64_t>> shapes_;
  std::vector<float> inv_freq_;
  std::vector<std::string> extra_names_;
};

// Throws esm2::Error naming the file and tensor: missing tensor, wrong shape (both shapes given),
// a per-layer inv_freq that differs between layers, a decoder that is not the embedding, a
// tensor of a layer index beyond num_hidden_layers, a `.gamma` next to its `.weight`.
HfCheckpoint load_hf_checkpoint(const std::filesystem::path& dir);

struct HfSaveOptions {
  DType dtype = DType::F32;         // F32, BF16 or F16 for the parameters (inv_freq stays F32)
  uint64_t max_shard_bytes = 0;     // 0: one model.safetensors; else shards of at most this size
};

// Canonical name → the caller's fp32 data (e.g. slices of the model's flat parameter buffer); no
// copy is made. Must hold exactly the names of hf_parameter_table(cfg) with matching sizes.
using HfWeightViews = std::map<std::string, std::span<const float>>;

// Writes config.json, model.safetensors (or shards + index) and the tokenizer files into an
// existing directory the caller owns (e.g. inside the trainer's own AtomicDir). inv_freq empty →
// rotary_inv_freq(cfg). An esm.contact_head.regression.{weight,bias} missing from `extra` is
// written as zeros (transformers reports an absent contact head as MISSING).
void write_hf_checkpoint_files(const std::filesystem::path& dir, const ModelConfig& cfg, const HfWeightViews& weights,
                               std::span<const float> inv_freq, const std::map<std::string, RawTensor>& extra,
                               const HfSaveOptions& opt = {});
// The same with the parameters produced on demand, in hf_parameter_table order: `source(p, put)` must
// call put with p's values in row-major order, in pieces of any size (numel in all). The files are
// written while the values arrive (SafetensorsStreamWriter), so no parameter is ever held whole: the
// trainer gathers each piece from the model-parallel ranks that own it. Byte-identical to the
// HfWeightViews overload for the same values.
using HfPut = std::function<void(std::span<const float>)>;
using HfTensorSource = std::function<void(const HfParam& p, const HfPut& put)>;
void stream_hf_checkpoint_files(const std::filesystem::path& dir, const ModelConfig& cfg, const HfTensorSource& source,
                                std::span<const float> inv_freq, const std::map<std::string, RawTensor>& extra,
                                const HfSaveOptions& opt = {});
void write_hf_checkpoint_files(const std::filesystem::path& dir, const HfCheckpoint& ckpt,
                               const HfSaveOptions& opt = {});
// The same through an AtomicDir: `dir` appears complete or not at all (an existing one is replaced).
void save_hf_checkpoint(const std::filesystem::path& dir, const HfCheckpoint& ckpt, const HfSaveOptions& opt = {});

}  // namespace esm2
