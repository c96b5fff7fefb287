// `esm2 embed`: mean-pooled and/or per-residue embeddings (any layer) and optionally logits of the
// sequences of a FASTA file, written as .npy files in a directory or as one safetensors file whose
// padded input_ids / attention_mask / logits are what scripts/verify-hf-load.py reads.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "apps/command.h"
#include "apps/infer_options.h"
#include "core/atomic_dir.h"
#include "core/error.h"
#include "data/tokenizer.h"
#include "io/npy.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace {

enum class EmbedFormat { Npy, Safetensors };
constexpr esm2::EnumName<EmbedFormat> kEmbedFormatNames[] = {{"npy", EmbedFormat::Npy},
                                                             {"safetensors", EmbedFormat::Safetensors}};

struct EmbedArgs {
  esm2::apps::InferOptions common;
  fs::path fasta, output;
  int layer = -1;
  bool per_residue = false, mean = false, logits = false, skip_invalid = false;
  EmbedFormat format = EmbedFormat::Npy;
};

void write_npy_dir(const fs::path& out, const esm2::Embeddings& e, const std::vector<esm2::ProteinRecord>& recs,
                   bool mean, bool per_residue) {
  esm2::AtomicDir dir(out);
  const auto N = static_cast<int64_t>(recs.size());
  if (mean) {
    const int64_t shape[] = {N, e.hidden};
    esm2::write_file(dir.path() / "mean.npy", esm2::npy_bytes(std::span<const float>(e.mean), shape));
  }
  if (per_residue) {
    const int64_t shape[] = {e.offsets.back(), e.hidden};
    esm2::write_file(dir.path() / "per_residue.npy", esm2::npy_bytes(std::span<const float>(e.per_residue), shape));
    const int64_t oshape[] = {N + 1};
    esm2::write_file(dir.path() / "per_residue_offsets.npy",
                     esm2::npy_bytes(std::span<const int64_t>(e.offsets), oshape));
  }
  if (!e.logits.empty()) {
    const int64_t s2[] = {N, e.max_len}, s3[] = {N, e.max_len, esm2::kVocabSize};
    esm2::write_file(dir.path() / "input_ids.npy", esm2::npy_bytes(std::span<const int64_t>(e.input_ids), s2));
    esm2::write_file(dir.path() / "attention_mask.npy",
                     esm2::npy_bytes(std::span<const int64_t>(e.attention_mask), s2));
    esm2::write_file(dir.path() / "logits.npy", esm2::npy_bytes(std::span<const float>(e.logits), s3));
  }
  std::string ids;
  for (const auto& r : recs) ids += r.id + "\n";
  esm2::write_file(dir.path() / "ids.txt", ids);
  dir.commit();
}

esm2::RawTensor int64_tensor(const std::vector<int64_t>& v, std::vector<int64_t> shape) {
  esm2::RawTensor t;
  t.dtype = esm2::DType::I64;
  t.shape = std::move(shape);
  t.data.assign(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(int64_t));
  return t;
}

void write_safetensors(const fs::path& out, const esm2::Embeddings& e, const std::vector<esm2::ProteinRecord>& recs,
                       bool mean, bool per_residue, int layer) {
  const auto N = static_cast<int64_t>(recs.size());
  esm2::SafetensorsWriter w;
  if (mean) w.add_f32("mean", {N, e.hidden}, e.mean);
  if (per_residue) {
    w.add_f32("per_residue", {e.offsets.back(), e.hidden}, e.per_residue);
    w.add_raw("offsets", int64_tensor(e.offsets, {N + 1}));
  }
  if (!e.logits.empty()) {
    w.add_raw("input_ids", int64_tensor(e.input_ids, {N, e.max_len}));
    w.add_raw("attention_mask", int64_tensor(e.attention_mask, {N, e.max_len}));
    w.add_f32("logits", {N, e.max_len, esm2::kVocabSize}, e.logits);
  }
  nlohmann::json ids = nlohmann::json::array();
  for (const auto& r : recs) ids.push_back(r.id);
  w.set_metadata("ids", ids.dump());
  w.set_metadata("layer", std::to_string(layer));
  if (out.has_parent_path()) fs::create_directories(out.parent_path());
  w.write(out);
}

esm2::apps::RunFn setup_embed(CLI::App& app) {
  auto a = std::make_shared<EmbedArgs>();
  a->common.add_to(app);
  app.add_option("--fasta", a->fasta, "Sequences to embed (FASTA or FASTA.gz)")->required();
  app.add_option("--output", a->output,
                 "npy: a directory (mean.npy, per_residue.npy, per_residue_offsets.npy, ids.txt); safetensors: one file")
      ->required();
  app.add_option("--layer", a->layer,
                 "Representation after this many layers (0 = embeddings; default: the last, after the final LayerNorm)")
      ->check(esm2::apps::at_least(0));
  app.add_flag("--per-residue", a->per_residue, "Write per-residue embeddings (residues only, no <cls>/<eos>)");
  app.add_flag("--mean", a->mean, "Write mean-pooled embeddings (the default when --per-residue is not given)");
  app.add_flag("--include-logits", a->logits,
               "Also write the padded batch: input_ids and attention_mask [N, Lmax] int64, logits [N, Lmax, 33] f32");
  esm2::apps::add_enum_option(app, "--format", a->format, kEmbedFormatNames, "npy or safetensors");
  app.add_flag("--skip-invalid", a->skip_invalid, "Drop records with invalid letters or no residues (counted) instead of failing");
  return [a]() -> int {
    esm2::apps::check_output_free(a->output, a->common.force, "--output");
    esm2::apps::check_outputs_spare_inputs({{"--output", &a->output}},
                                           {{"--fasta", &a->fasta}, {"--checkpoint", &a->common.checkpoint}});
    ESM2_CHECK(a->format != EmbedFormat::Safetensors || !fs::is_directory(a->output),
               "--output {}: is a directory (--format safetensors writes one file)", a->output.string());
    int64_t skipped = 0;
    const auto recs = esm2::read_protein_fasta(a->fasta, a->skip_invalid, &skipped);
    ESM2_CHECK(!recs.empty(), "{}: no valid sequences to embed", a->fasta.string());
    auto m = a->common.load();
    esm2::warn_if_beyond_training(m.model->config(), recs);
    esm2::EmbedOptions opt;
    opt.layer = a->layer;
    opt.per_residue = a->per_residue;
    opt.mean = a->mean || !a->per_residue;
    opt.logits = a->logits;
    opt.micro_batch_tokens = a->common.micro_batch_tokens;
    const esm2::Embeddings e = esm2::embed(*m.model, recs, opt);
    const int layer = a->layer < 0 ? m.model->config().num_layers : a->layer;
    if (a->format == EmbedFormat::Npy) write_npy_dir(a->output, e, recs, opt.mean, opt.per_residue);
    else write_safetensors(a->output, e, recs, opt.mean, opt.per_residue, layer);
    std::printf("embedded %zu sequences (%lld residues) from %s, layer %d, hidden %d%s -> %s\n", recs.size(),
                static_cast<long long>(e.offsets.back()), a->fasta.c_str(), layer, e.hidden,
                skipped ? fmt::format("; skipped {} invalid records", skipped).c_str() : "", a->output.c_str());
    return 0;
  };
}

}  // namespace

ESM2_COMMAND(embed, "embed", "Mean-pooled / per-residue embeddings and logits of the sequences of a FASTA file",
             setup_embed);
