#include "io/hf_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <set>

#include "core/atomic_dir.h"
#include "core/error.h"
#include "io/hf_config.h"

namespace fs = std::filesystem;

namespace esm2 {

namespace {

constexpr std::string_view kLayerPrefix = "esm.encoder.layer.";
constexpr std::string_view kInvFreqSuffix = ".attention.self.rotary_embeddings.inv_freq";
constexpr const char* kEmbedding = "esm.embeddings.word_embeddings.weight";
constexpr const char* kDecoder = "lm_head.decoder.weight";
constexpr const char* kContactWeight = "esm.contact_head.regression.weight";
constexpr const char* kContactBias = "esm.contact_head.regression.bias";

// "esm.encoder.layer.<i>.<rest>" → (i, rest); nullopt for other names or a malformed index.
std::optional<std::pair<int64_t, std::string_view>> split_layer(std::string_view name) {
  if (!name.starts_with(kLayerPrefix)) return std::nullopt;
  std::string_view s = name.substr(kLayerPrefix.size());
  size_t n = 0;
  while (n < s.size() && s[n] >= '0' && s[n] <= '9') ++n;
  if (n == 0 || n > 9 || n == s.size() || s[n] != '.') return std::nullopt;
  int64_t i = 0;
  for (size_t k = 0; k < n; ++k) i = i * 10 + (s[k] - '0');
  return std::make_pair(i, s.substr(n));
}

// transformers 5.x writes the encoder-layer LayerNorms under the legacy TF names.
std::string canonical_name(const std::string& name) {
  if (name.ends_with(".LayerNorm.gamma")) return name.substr(0, name.size() - 6) + ".weight";
  if (name.ends_with(".LayerNorm.beta")) return name.substr(0, name.size() - 5) + ".bias";
  return name;
}

bool is_inv_freq(std::string_view name) {
  if (name == "esm.encoder.layer.*.attention.self.rotary_embeddings.inv_freq") return true;
  auto layer = split_layer(name);
  return layer && layer->second == kInvFreqSuffix;
}

// Tolerance for the tied decoder copy: what storing one of the two copies in a 16-bit type can change.
float tie_tolerance(DType a, DType b) {
  if (a == DType::BF16 || b == DType::BF16) return 0x1p-8f;
  if (a == DType::F16 || b == DType::F16) return 0x1p-10f;
  return 0.0f;
}

}  // namespace

std::vector<HfParam> hf_parameter_table(const ModelConfig& cfg) {
  const int64_t d = cfg.hidden_size, f = cfg.ffn_hidden_size, v = cfg.vocab_size;
  std::vector<HfParam> t;
  auto linear = [&](const std::string& base, int64_t out, int64_t in) {
    t.push_back({base + ".weight", {out, in}});
    t.push_back({base + ".bias", {out}});
  };
  auto norm = [&](const std::string& base) {
    t.push_back({base + ".weight", {d}});
    t.push_back({base + ".bias", {d}});
  };
  t.push_back({kEmbedding, {v, d}});
  for (int i = 0; i < cfg.num_layers; ++i) {
    const std::string l = fmt::format("esm.encoder.layer.{}.", i);
    linear(l + "attention.self.query", d, d);
    linear(l + "attention.self.key", d, d);
    linear(l + "attention.self.value", d, d);
    linear(l + "attention.output.dense", d, d);
    norm(l + "attention.LayerNorm");
    linear(l + "intermediate.dense", f, d);
    linear(l + "output.dense", d, f);
    norm(l + "LayerNorm");
  }
  norm("esm.encoder.emb_layer_norm_after");
  linear("lm_head.dense", d, d);
  norm("lm_head.layer_norm");
  t.push_back({"lm_head.bias", {v}});
  return t;
}

std::string hf_inv_freq_name(int layer) { return fmt::format("esm.encoder.layer.{}{}", layer, kInvFreqSuffix); }

std::vector<float> rotary_inv_freq(const ModelConfig& cfg) {
  const int hd = cfg.head_dim();
  std::vector<float> out(static_cast<size_t>(hd / 2));
  // torch: 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), all in float32.
  for (int j = 0; j < hd / 2; ++j)
    out[j] = 1.0f / std::pow(cfg.rotary_base, static_cast<float>(2 * j) / static_cast<float>(hd));
  return out;
}

HfCheckpointReader::HfCheckpointReader(const fs::path& dir)
    : config_(read_hf_config(dir / "config.json")), set_((check_hf_vocab(dir), SafetensorsSet::open(dir))) {
  const SafetensorsSet& set = set_;
  const std::string& src = set.source();
  const ModelConfig& cfg = config_;

  std::map<std::string, std::vector<int64_t>> expected;
  for (auto& p : hf_parameter_table(cfg)) expected.emplace(p.name, p.shape);
  const std::vector<int64_t> inv_shape = {cfg.head_dim() / 2};

  std::string inv_freq_from;
  for (const std::string& name : set.names()) {
    const TensorInfo& info = set.info(name);
    if (auto layer = split_layer(name); layer && layer->first >= cfg.num_layers)
      fail("{}: tensor '{}' belongs to layer {} but config.json has num_hidden_layers {}", src, name, layer->first,
           cfg.num_layers);
    if (is_inv_freq(name)) {
      ESM2_CHECK(info.shape == inv_shape, "{}: tensor '{}' has shape {}, expected {} (head_dim/2)", src, name,
                 shape_str(info.shape), shape_str(inv_shape));
      std::vector<float> v = set.to_f32(name);
      if (inv_freq_.empty()) {
        inv_freq_ = std::move(v);
        inv_freq_from = name;
      } else {
        // One rotary table serves every layer; files that disagree cannot be represented.
        ESM2_CHECK(v == inv_freq_, "{}: tensor '{}' differs from '{}' (one inv_freq serves all layers)", src, name,
                   inv_freq_from);
      }
      continue;
    }
    if (name == kDecoder) continue;  // checked against the embedding below
    const std::string canon = canonical_name(name);
    auto it = expected.find(canon);
    if (it == expected.end()) {
      extra_names_.push_back(name);
      continue;
    }
    if (auto [prev, fresh] = stored_as_.emplace(canon, name); !fresh)
      fail("{}: tensors '{}' and '{}' are both '{}'", src, prev->second, name, canon);
    ESM2_CHECK(info.shape == it->second, "{}: tensor '{}' has shape {}, but the config needs {}", src, name,
               shape_str(info.shape), shape_str(it->second));
    // What reading it would say, said now: the parameters are read later, piece by piece.
    ESM2_CHECK(info.dtype == DType::F32 || info.dtype == DType::F16 || info.dtype == DType::BF16 ||
                   info.dtype == DType::F64,
               "{}: tensor '{}' has dtype {}, not a floating-point type", set.file_of(name).name(), name,
               dtype_name(info.dtype));
    shapes_.emplace(canon, info.shape);
  }
  for (const auto& [name, shape] : expected)
    ESM2_CHECK(shapes_.contains(name), "{}: missing tensor '{}' (expected shape {})", src, name, shape_str(shape));

  if (set.contains(kDecoder)) {
    const TensorInfo& dec = set.info(kDecoder);
    const auto& emb_shape = expected.at(kEmbedding);
    ESM2_CHECK(dec.shape == emb_shape, "{}: tensor '{}' has shape {}, but the config needs {}", src, kDecoder,
               shape_str(dec.shape), shape_str(emb_shape));
    const float tol = tie_tolerance(dec.dtype, set.info(stored_as_.at(kEmbedding)).dtype);
    // In pieces: the embedding of a large vocabulary need not be held twice.
    const size_t n = static_cast<size_t>(dec.numel());
    constexpr size_t kPiece = size_t{1} << 16;
    std::vector<float> d(std::min(n, kPiece)), e(d.size());
    for (size_t at = 0; at < n; at += kPiece) {
      const size_t len = std::min(kPiece, n - at);
      set.read_f32(kDecoder, at, std::span<float>(d).first(len));
      read_f32(kEmbedding, at, std::span<float>(e).first(len));
      for (size_t j = 0; j < len; ++j) {
        const float diff = std::abs(d[j] - e[j]);
        // The absolute floor covers values that are subnormal in F16.
        if (!(diff <= tol * std::max(std::abs(d[j]), std::abs(e[j])) + (tol > 0 ? 0x1p-24f : 0.0f)))
          fail("{}: tensor '{}' differs from the tied '{}' at element {} ({} vs {}); untied decoders are not supported",
               src, kDecoder, kEmbedding, at + j, d[j], e[j]);
      }
    }
  }
}

void HfCheckpointReader::read_f32(const std::string& name, size_t begin, std::span<float> out) const {
  auto it = stored_as_.find(name);
  ESM2_CHECK(it != stored_as_.end(), "{}: missing tensor '{}'", source(), name);
  set_.read_f32(it->second, begin, out);
}

std::vector<float> HfCheckpointReader::to_f32(const std::string& name) const {
  auto it = stored_as_.find(name);
  ESM2_CHECK(it != stored_as_.end(), "{}: missing tensor '{}'", source(), name);
  return set_.to_f32(it->second);
}

std::map<std::string, RawTensor> HfCheckpointReader::extra() const {
  std::map<std::string, RawTensor> out;
  for (const std::string& name : extra_names_) out.emplace(name, set_.raw(name));
  return out;
}

HfCheckpoint load_hf_checkpoint(const fs::path& dir) {
  const HfCheckpointReader reader(dir);
  HfCheckpoint ck;
  ck.config = reader.config();
  for (const auto& [name, shape] : reader.shapes()) {
    ck.tensors.emplace(name, reader.to_f32(name));
    ck.shapes.emplace(name, shape);
  }
  ck.inv_freq = reader.inv_freq();
  ck.extra = reader.extra();
  return ck;
}

namespace {

void check_save_args(const fs::path& dir, const ModelConfig& cfg, const HfSaveOptions& opt) {
  cfg.validate();
  ESM2_CHECK(opt.dtype == DType::F32 || opt.dtype == DType::BF16 || opt.dtype == DType::F16,
             "{}: cannot save a checkpoint as {}", dir.string(), dtype_name(opt.dtype));
}

}  // namespace

void write_hf_checkpoint_files(const fs::path& dir, const ModelConfig& cfg, const HfWeightViews& weights,
                               std::span<const float> inv_freq, const std::map<std::string, RawTensor>& extra,
                               const HfSaveOptions& opt) {
  check_save_args(dir, cfg, opt);
  const std::vector<HfParam> table = hf_parameter_table(cfg);
  std::set<std::string> known;
  for (const auto& p : table) known.insert(p.name);
  for (const auto& [name, view] : weights)
    ESM2_CHECK(known.contains(name), "{}: '{}' is not a parameter of this ESM-2 config", dir.string(), name);
  // Every check before the first byte: a bad argument leaves no file behind.
  for (const auto& p : table) {
    auto it = weights.find(p.name);
    ESM2_CHECK(it != weights.end(), "{}: no data for tensor '{}'", dir.string(), p.name);
    const int64_t n = shape_numel(p.shape, p.name);
    ESM2_CHECK(static_cast<int64_t>(it->second.size()) == n, "{}: tensor '{}' has {} values, shape {} needs {}",
               dir.string(), p.name, it->second.size(), shape_str(p.shape), n);
  }
  stream_hf_checkpoint_files(
      dir, cfg, [&](const HfParam& p, const HfPut& put) { put(weights.at(p.name)); }, inv_freq, extra, opt);
}

void stream_hf_checkpoint_files(const fs::path& dir, const ModelConfig& cfg, const HfTensorSource& source,
                                std::span<const float> inv_freq, const std::map<std::string, RawTensor>& extra,
                                const HfSaveOptions& opt) {
  check_save_args(dir, cfg, opt);
  const std::vector<HfParam> table = hf_parameter_table(cfg);
  std::vector<float> computed;
  if (inv_freq.empty()) {
    computed = rotary_inv_freq(cfg);
    inv_freq = computed;
  }
  ESM2_CHECK(static_cast<int>(inv_freq.size()) == cfg.head_dim() / 2, "{}: inv_freq has {} values, head_dim/2 is {}",
             dir.string(), inv_freq.size(), cfg.head_dim() / 2);

  // EsmForMaskedLM always has a contact head (logistic regression over the layers × heads attention
  // maps). Without it transformers 5.17 reports esm.contact_head.regression.* as MISSING and
  // initialises it randomly (checked with scripts/verify-hf-load.py). The MLM loss never trains it,
  // so a model that has none (trained from scratch) gets an all-zero head: deterministic, loads
  // cleanly, and says "untrained" (every contact probability 0.5). A head that exists is kept.
  // Extras go in name order whether given or filled in here, so a checkpoint written from scratch
  // and one re-written after loading it are byte-identical (exact resume compares files).
  std::map<std::string, RawTensor> zero_heads;
  const int64_t maps = static_cast<int64_t>(cfg.num_layers) * cfg.num_attention_heads;
  for (const auto& [name, shape] : {std::pair<std::string, std::vector<int64_t>>{kContactWeight, {1, maps}},
                                    std::pair<std::string, std::vector<int64_t>>{kContactBias, {1}}})
    if (!extra.contains(name))
      zero_heads.emplace(name, RawTensor{opt.dtype, shape, std::string(static_cast<size_t>(shape_numel(shape, name)) *
                                                                           dtype_size(opt.dtype), '\0')});
  std::map<std::string, const RawTensor*> extras;
  for (const auto& [name, raw] : extra) extras.emplace(name, &raw);
  for (const auto& [name, raw] : zero_heads) extras.emplace(name, &raw);

  std::vector<SafetensorsEntry> entries;
  for (const auto& p : table) {
    entries.push_back({p.name, opt.dtype, p.shape});
    // Per-layer buffer right after the value projection, where state_dict() puts it. Always F32:
    // the rotary angles are position × inv_freq, and BF16 would move them by up to 2^-9 relative.
    if (const auto layer = split_layer(p.name); layer && layer->second == ".attention.self.value.bias")
      entries.push_back({hf_inv_freq_name(static_cast<int>(layer->first)), DType::F32,
                         {static_cast<int64_t>(inv_freq.size())}});
  }
  for (const auto& [name, raw] : extras) {
    const int64_t n = shape_numel(raw->shape, name);
    ESM2_CHECK(static_cast<uint64_t>(n) * dtype_size(raw->dtype) == raw->data.size(),
               "safetensors writer: tensor '{}' has shape {} of {} but {} bytes", name, shape_str(raw->shape),
               dtype_name(raw->dtype), raw->data.size());
    entries.push_back({name, raw->dtype, raw->shape});
  }
  SafetensorsStreamWriter w = SafetensorsStreamWriter::to_dir(dir, std::move(entries), opt.max_shard_bytes);
  for (const auto& p : table) {
    const size_t n = static_cast<size_t>(shape_numel(p.shape, p.name));
    size_t given = 0;
    source(p, [&](std::span<const float> values) {
      ESM2_CHECK(values.size() <= n - given, "{}: tensor '{}' got more than the {} values of shape {}", dir.string(),
                 p.name, n, shape_str(p.shape));
      given += values.size();
      w.put_f32(values);
    });
    ESM2_CHECK(given == n, "{}: tensor '{}' got {} values, shape {} needs {}", dir.string(), p.name, given,
               shape_str(p.shape), n);
    if (const auto layer = split_layer(p.name); layer && layer->second == ".attention.self.value.bias")
      w.put_f32(inv_freq);
  }
  for (const auto& [name, raw] : extras) w.put_raw(raw->data);
  w.finish();
  write_hf_config(dir, cfg, opt.dtype);
  write_hf_tokenizer_files(dir, cfg.max_position_embeddings);
}

void write_hf_checkpoint_files(const fs::path& dir, const HfCheckpoint& ck, const HfSaveOptions& opt) {
  std::map<std::string, std::vector<int64_t>> table;
  for (auto& p : hf_parameter_table(ck.config)) table.emplace(p.name, p.shape);
  HfWeightViews views;
  for (const auto& [name, values] : ck.tensors) {
    auto s = ck.shapes.find(name);
    auto t = table.find(name);
    if (s != ck.shapes.end() && t != table.end())
      ESM2_CHECK(s->second == t->second, "{}: tensor '{}' has shape {}, but the config needs {}", dir.string(), name,
                 shape_str(s->second), shape_str(t->second));
    views.emplace(name, values);
  }
  write_hf_checkpoint_files(dir, ck.config, views, ck.inv_freq, ck.extra, opt);
}

void save_hf_checkpoint(const fs::path& dir, const HfCheckpoint& ck, const HfSaveOptions& opt) {
  AtomicDir out(dir);
  write_hf_checkpoint_files(out.path(), ck, opt);
  out.commit();
}

}  // namespace esm2
