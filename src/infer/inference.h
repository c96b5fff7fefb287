// What users do with a trained model (esm2-model.md "Uses of a trained model"): embeddings,
// pseudo-perplexity, masked-marginal mutation scores and validation loss. Everything runs on packed
// micro-batches through Esm2Model, so the same code serves the CPU and the CUDA backend.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backend/backend.h"
#include "backend/backend_factory.h"
#include "data/batch.h"
#include "model/esm2.h"

namespace esm2 {

// A model ready for inference: the backend it computes on and the weights of `dir` (a training
// checkpoint or any Hugging Face ESM-2 directory; its config.json decides the shape).
struct InferenceModel {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Esm2Model> model;
};
InferenceModel load_inference_model(const std::filesystem::path& dir, BackendKind backend = BackendKind::Auto,
                                    Precision precision = Precision::Auto, int threads = 0);

// One input sequence: residue token ids (no <cls>/<eos>).
struct ProteinRecord {
  std::string id;
  std::vector<int32_t> residues;
};

// Residue letters → token ids for inference. Stricter than training's reader: a letter outside the
// ESM-2 alphabet (J, '*', digits, …) is rejected rather than silently becoming <unk>, because an
// embedding or score of a mistyped sequence is a wrong answer. Returns the 0-based index of the
// first rejected byte, or -1 when all are valid.
int64_t tokenize_protein(std::string_view letters, std::vector<int32_t>& out);

// FASTA / FASTA.gz records. An empty record or one with a rejected character is an error naming the
// file, the record and the character; with skip_invalid such records are dropped and counted in
// *skipped instead. Duplicate ids are an error (outputs are keyed by id).
std::vector<ProteinRecord> read_protein_fasta(const std::filesystem::path& path, bool skip_invalid = false,
                                              int64_t* skipped = nullptr);
// One record of a FASTA file, validated as above: the one with this id (the other records are not read
// further, so a problem elsewhere in the file does not matter), or with an empty id the file's only record.
ProteinRecord read_protein_record(const std::filesystem::path& path, const std::string& id);

// A warning on stderr when records are longer than the model's max_position_embeddings covers (they still
// run: ESM-2's rotary positions extrapolate, as in transformers).
void warn_if_beyond_training(const ModelConfig& cfg, std::span<const ProteinRecord> records);

// Packs token sequences (each already <cls> … <eos>, labels -100 unless given) into micro-batches of
// at most `budget` tokens, in order; a sequence longer than the budget gets a micro-batch of its own.
// Returns, per micro-batch, the indices of the sequences it holds.
struct PackedSequences {
  std::vector<MicroBatch> batches;
  std::vector<std::vector<int64_t>> members;  // [batch] → sequence indices, in packing order
};
PackedSequences pack_sequences(std::span<const std::vector<int32_t>> tokens,
                               std::span<const std::vector<int32_t>> labels, int64_t budget);

// <cls> residues <eos>
std::vector<int32_t> with_specials(std::span<const int32_t> residues);

// ---- Embeddings --------------------------------------------------------------------------------
struct EmbedOptions {
  int layer = -1;                    // 0..num_layers (repr_layer semantics); -1: the last (num_layers)
  bool per_residue = false;
  bool mean = true;
  bool logits = false;
  int64_t micro_batch_tokens = 16384;
};
struct Embeddings {
  int hidden = 0;
  std::vector<float> mean;           // [N, hidden] mean over residues (not <cls>/<eos>), as fair-esm
  std::vector<float> per_residue;    // [R, hidden] residues of all sequences, concatenated
  std::vector<int64_t> offsets;      // [N+1] sequence i = per_residue rows [offsets[i], offsets[i+1])
  // Padded view (with logits): tokens incl. <cls>/<eos>, right-padded with <pad> to Lmax.
  int64_t max_len = 0;               // Lmax
  std::vector<int64_t> input_ids;    // [N, Lmax]
  std::vector<int64_t> attention_mask;  // [N, Lmax]
  std::vector<float> logits;         // [N, Lmax, vocab], zero at padding
};
Embeddings embed(Esm2Model& model, std::span<const ProteinRecord> records, const EmbedOptions& opt);

// ---- Pseudo-perplexity -------------------------------------------------------------------------
// Exact: every residue position masked in turn (one masked copy per position, the copies packed
// into micro-batches). nll_sum = Σ_i −log p(x_i | x with position i masked).
struct PseudoPerplexity {
  double nll_sum = 0;
  int64_t residues = 0;
  double pppl() const;  // exp(nll_sum / residues)
};
PseudoPerplexity pseudo_perplexity(Esm2Model& model, std::span<const int32_t> residues, int64_t micro_batch_tokens);

// ---- Masked-marginal mutation scores (Meier et al. 2021) ---------------------------------------
struct Substitution {
  int position = 0;  // 1-based in the residue sequence
  char wt = 0, mut = 0;
};
using Variant = std::vector<Substitution>;  // a multi-mutant: all substituted at once

// "A42G" or "A42G:L50P" (':' joins the substitutions of one variant). Checks the letters are
// residues, the position is inside the sequence and the wild-type letter matches it; errors name
// the mutation.
Variant parse_variant(std::string_view text, std::span<const int32_t> wild_type);

// For each variant: mask all its positions at once in the wild type and sum
// log p(mut) − log p(wt) (log-softmax over the whole vocabulary) over them.
std::vector<double> masked_marginal_scores(Esm2Model& model, std::span<const int32_t> wild_type,
                                           std::span<const Variant> variants, int64_t micro_batch_tokens);

// The single-mutant matrix [L, 20]: entry (i, a) = score of substituting standard amino acid a
// (token order L A G V S E R T I D P K Q N F Y M H W C) at residue i+1; 0 for the wild type itself.
std::vector<double> single_mutant_matrix(Esm2Model& model, std::span<const int32_t> wild_type,
                                         int64_t micro_batch_tokens);

}  // namespace esm2
