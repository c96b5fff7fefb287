#include "infer/inference.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <map>
#include <set>
#include <unordered_set>

#include "backend/backend_factory.h"
#include "core/error.h"
#include "data/fasta.h"
#include "data/sequence_table.h"
#include "data/tokenizer.h"
#include "io/hf_config.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace esm2 {

InferenceModel load_inference_model(const fs::path& dir, BackendKind backend, Precision precision, int threads) {
  ESM2_CHECK(fs::is_directory(dir), "{}: checkpoint directory not found", dir.string());
  ESM2_CHECK(fs::exists(dir / "config.json"), "{}: no config.json (not a checkpoint or Hugging Face model directory)",
             dir.string());
  // FP8 is a training precision (its scaling is chosen for the linears' gradients too); scoring and
  // embedding run in bf16-mixed or fp32, which give the reference's numbers.
  ESM2_CHECK(precision != Precision::Fp8Mixed,
             "--precision fp8-mixed is for training (train, bench); inference runs in bf16-mixed or 32");
  InferenceModel m;
  const ModelConfig cfg = read_hf_config(dir / "config.json");
  m.backend = make_backend(backend, precision, threads);
  m.model = std::make_unique<Esm2Model>(cfg, *m.backend);
  load_checkpoint(dir, *m.model, nullptr, nullptr);
  return m;
}

int64_t tokenize_protein(std::string_view letters, std::vector<int32_t>& out) {
  for (size_t i = 0; i < letters.size(); ++i) {
    const int32_t t = residue_token(letters[i]);
    if (t < 0 || t == kUnk) return static_cast<int64_t>(i);
    out.push_back(t);
  }
  return -1;
}

namespace {

// read_protein_fasta's loop. only: the id of the one record to read (the others are neither validated nor
// kept), or null for all. hint: appended to an invalid record's error (what the command offers about it).
std::vector<ProteinRecord> read_records(const fs::path& path, bool skip_invalid, int64_t* skipped,
                                        const std::string* only, std::string_view hint) {
  ESM2_CHECK(fs::exists(path), "{}: FASTA file not found", path.string());
  const std::string file = path.string();
  std::vector<ProteinRecord> out;
  std::unordered_set<std::string> seen;
  ProteinRecord cur;
  uint64_t header_line = 0;
  bool in_record = false;
  std::string problem;  // the current record's first problem ("" = valid)
  int64_t n_skipped = 0;

  auto finish = [&] {
    if (!in_record) return;
    if (only && cur.id != *only) {
      cur = {};
      return;
    }
    if (problem.empty() && cur.residues.empty()) problem = "empty sequence";
    if (!problem.empty()) {
      ESM2_CHECK(skip_invalid, "{}: record '{}' (line {}): {}{}", file, cur.id, header_line, problem, hint);
      ++n_skipped;
    } else {
      ESM2_CHECK(seen.insert(cur.id).second, "{}: record '{}' (line {}): duplicate id", file, cur.id, header_line);
      out.push_back(std::move(cur));
    }
    cur = {};
    problem.clear();
  };

  scan_fasta(
      path, /*trim_trailing_space=*/true,
      [&](std::string_view id, uint64_t line_number) {
        finish();
        header_line = line_number;
        cur.id.assign(id);
        in_record = true;
      },
      [&](std::string_view line, uint64_t line_number) {
        if (!problem.empty() || (only && cur.id != *only)) return;
        const size_t before = cur.residues.size();
        const int64_t bad = tokenize_protein(line, cur.residues);
        if (bad >= 0)
          problem = fmt::format("invalid residue {} at position {} (line {}); accepted: the 25 ESM-2 residue letters "
                                "LAGVSERTIDPKQNFYMHWCXBUZO",
                                printable_byte(line[static_cast<size_t>(bad)]), before + static_cast<size_t>(bad) + 1,
                                line_number);
      });
  finish();
  if (skipped) *skipped = n_skipped;
  return out;
}

}  // namespace

std::vector<ProteinRecord> read_protein_fasta(const fs::path& path, bool skip_invalid, int64_t* skipped) {
  return read_records(path, skip_invalid, skipped, nullptr, " (use --skip-invalid to drop such records)");
}

ProteinRecord read_protein_record(const fs::path& path, const std::string& id) {
  if (!id.empty()) {
    auto recs = read_records(path, false, nullptr, &id, "");
    ESM2_CHECK(!recs.empty(), "{}: no record with id '{}'", path.string(), id);
    return std::move(recs[0]);
  }
  int64_t invalid = 0;
  auto recs = read_records(path, true, &invalid, nullptr, "");
  const int64_t total = static_cast<int64_t>(recs.size()) + invalid;
  ESM2_CHECK(total > 0, "{}: no FASTA records", path.string());
  ESM2_CHECK(total == 1, "{}: {} records; name the one to use with --id", path.string(), total);
  if (recs.empty()) read_records(path, false, nullptr, nullptr, "");  // throws the one record's problem
  return std::move(recs[0]);
}

std::vector<int32_t> with_specials(std::span<const int32_t> residues) {
  std::vector<int32_t> t;
  t.reserve(residues.size() + 2);
  t.push_back(kCls);
  t.insert(t.end(), residues.begin(), residues.end());
  t.push_back(kEos);
  return t;
}

namespace {

// Streams sequences into micro-batches of at most `budget` tokens and hands each full batch (with
// the caller's tags of its sequences) to `run`, so O(L²) masked copies are never held at once.
class StreamPacker {
 public:
  using RunFn = std::function<void(const MicroBatch&, const std::vector<int64_t>& tags)>;
  StreamPacker(int64_t budget, RunFn run) : budget_(budget), run_(std::move(run)) {
    ESM2_CHECK(budget > 0, "--micro-batch-tokens must be positive (got {})", budget);
    reset();
  }
  void add(std::span<const int32_t> tokens, std::span<const int32_t> labels, int64_t tag) {
    const auto n = static_cast<int64_t>(tokens.size());
    if (!tags_.empty() && mb_.num_tokens() + n > budget_) flush();
    mb_.input_ids.insert(mb_.input_ids.end(), tokens.begin(), tokens.end());
    if (labels.empty()) mb_.labels.insert(mb_.labels.end(), tokens.size(), kIgnoreLabel);
    else mb_.labels.insert(mb_.labels.end(), labels.begin(), labels.end());
    mb_.cu_seqlens.push_back(static_cast<int32_t>(mb_.input_ids.size()));
    mb_.sample_ids.push_back(tag);
    mb_.max_seqlen = std::max(mb_.max_seqlen, static_cast<int32_t>(n));
    tags_.push_back(tag);
  }
  void flush() {
    if (tags_.empty()) return;
    mb_.token_budget = std::max(budget_, mb_.num_tokens());
    run_(mb_, tags_);
    reset();
  }

 private:
  void reset() {
    mb_ = MicroBatch{};
    mb_.cu_seqlens.push_back(0);
    tags_.clear();
  }
  int64_t budget_;
  RunFn run_;
  MicroBatch mb_;
  std::vector<int64_t> tags_;
};

// log_softmax of one logits row, in double (the scores are differences of nearby values).
void log_softmax_row(const float* row, int vocab, double* out) {
  double mx = row[0];
  for (int v = 1; v < vocab; ++v) mx = std::max(mx, static_cast<double>(row[v]));
  double s = 0;
  for (int v = 0; v < vocab; ++v) s += std::exp(static_cast<double>(row[v]) - mx);
  const double lse = mx + std::log(s);
  for (int v = 0; v < vocab; ++v) out[v] = static_cast<double>(row[v]) - lse;
}

// For each set of 0-based residue positions: the wild type with exactly those positions masked,
// run through the model; returns per set the log-probabilities [|set|, vocab] at its positions.
std::vector<std::vector<double>> masked_log_probs(Esm2Model& model, std::span<const int32_t> wild_type,
                                                  const std::vector<std::vector<int>>& sets, int64_t budget) {
  std::vector<std::vector<double>> out(sets.size());
  const std::vector<int32_t> base = with_specials(wild_type);
  std::vector<float> logits;
  StreamPacker packer(budget, [&](const MicroBatch& mb, const std::vector<int64_t>& tags) {
    try {
      model.forward_outputs(mb, &logits, nullptr);
    } catch (const std::bad_alloc&) {
      fail("out of memory running the model on the {}-residue wild type ({} masked copies, {} tokens in the micro-batch)",
           wild_type.size(), tags.size(), mb.input_ids.size());
    }
    for (size_t s = 0; s < tags.size(); ++s) {
      const auto& set = sets[static_cast<size_t>(tags[s])];
      auto& dst = out[static_cast<size_t>(tags[s])];
      dst.resize(set.size() * kVocabSize);
      for (size_t k = 0; k < set.size(); ++k) {
        const size_t row = static_cast<size_t>(mb.cu_seqlens[s]) + 1 + static_cast<size_t>(set[k]);
        log_softmax_row(logits.data() + row * kVocabSize, kVocabSize, dst.data() + k * kVocabSize);
      }
    }
  });
  std::vector<int32_t> copy;
  for (size_t i = 0; i < sets.size(); ++i) {
    copy = base;
    for (int p : sets[i]) copy[static_cast<size_t>(p) + 1] = kMask;
    packer.add(copy, {}, static_cast<int64_t>(i));
  }
  packer.flush();
  return out;
}

}  // namespace

void warn_if_beyond_training(const ModelConfig& cfg, std::span<const ProteinRecord> records) {
  const size_t trained = static_cast<size_t>(std::max(cfg.max_position_embeddings - 2, 1));
  size_t n = 0, longest = 0;
  for (size_t i = 0; i < records.size(); ++i)
    if (records[i].residues.size() > trained) {
      if (n++ == 0 || records[i].residues.size() > records[longest].residues.size()) longest = i;
    }
  if (n == 0) return;
  std::fprintf(stderr,
               "esm2: warning: %zu sequence%s longer than the %zu residues the model's positions cover "
               "(max_position_embeddings %d; longest: '%s', %zu residues): rotary positions run them, as "
               "transformers does, but the model was not trained on such lengths, and memory grows with the square "
               "of the length\n",
               n, n == 1 ? " is" : "s are", trained, cfg.max_position_embeddings, records[longest].id.c_str(),
               records[longest].residues.size());
}

PackedSequences pack_sequences(std::span<const std::vector<int32_t>> tokens,
                               std::span<const std::vector<int32_t>> labels, int64_t budget) {
  PackedSequences out;
  StreamPacker packer(budget, [&](const MicroBatch& mb, const std::vector<int64_t>& tags) {
    out.batches.push_back(mb);
    out.members.push_back(tags);
  });
  for (size_t i = 0; i < tokens.size(); ++i)
    packer.add(tokens[i], labels.empty() ? std::span<const int32_t>{} : std::span<const int32_t>(labels[i]),
               static_cast<int64_t>(i));
  packer.flush();
  return out;
}

Embeddings embed(Esm2Model& model, std::span<const ProteinRecord> records, const EmbedOptions& opt) {
  const ModelConfig& cfg = model.config();
  const int layer = opt.layer < 0 ? cfg.num_layers : opt.layer;
  ESM2_CHECK(layer >= 0 && layer <= cfg.num_layers, "--layer {}: the model has layers 0..{} (0 = embeddings)",
             opt.layer, cfg.num_layers);
  const int H = cfg.hidden_size;
  const size_t N = records.size();
  Embeddings e;
  e.hidden = H;
  e.offsets.assign(N + 1, 0);
  for (size_t i = 0; i < N; ++i) e.offsets[i + 1] = e.offsets[i] + static_cast<int64_t>(records[i].residues.size());
  if (opt.mean) e.mean.assign(N * H, 0.0f);
  if (opt.per_residue) e.per_residue.assign(static_cast<size_t>(e.offsets[N]) * H, 0.0f);
  if (opt.logits) {
    for (const auto& r : records) e.max_len = std::max<int64_t>(e.max_len, static_cast<int64_t>(r.residues.size()) + 2);
    e.input_ids.assign(N * e.max_len, kPad);
    e.attention_mask.assign(N * e.max_len, 0);
    e.logits.assign(N * e.max_len * kVocabSize, 0.0f);
  }
  std::vector<float> repr, logits;
  const bool need_repr = opt.mean || opt.per_residue;
  StreamPacker packer(opt.micro_batch_tokens, [&](const MicroBatch& mb, const std::vector<int64_t>& tags) {
    try {
      model.forward_outputs(mb, opt.logits ? &logits : nullptr, nullptr, need_repr ? layer : -1,
                            need_repr ? &repr : nullptr);
    } catch (const std::bad_alloc&) {
      size_t longest = 0;
      for (size_t s = 1; s < tags.size(); ++s)
        if (records[static_cast<size_t>(tags[s])].residues.size() > records[static_cast<size_t>(tags[longest])].residues.size())
          longest = s;
      const ProteinRecord& r = records[static_cast<size_t>(tags[longest])];
      fail("record '{}' ({} residues): out of memory running the model on its micro-batch ({} sequences, {} tokens); "
           "attention memory grows with the square of a sequence's length",
           r.id, r.residues.size(), tags.size(), mb.input_ids.size());
    }
    for (size_t s = 0; s < tags.size(); ++s) {
      const size_t i = static_cast<size_t>(tags[s]);
      const size_t begin = static_cast<size_t>(mb.cu_seqlens[s]);
      const size_t len = static_cast<size_t>(mb.cu_seqlens[s + 1]) - begin;  // incl. <cls>/<eos>
      const size_t L = len - 2;
      if (opt.mean) {
        std::vector<double> acc(H, 0.0);
        for (size_t r = 0; r < L; ++r)
          for (int h = 0; h < H; ++h) acc[h] += repr[(begin + 1 + r) * H + h];
        for (int h = 0; h < H; ++h) e.mean[i * H + h] = static_cast<float>(acc[h] / static_cast<double>(L));
      }
      if (opt.per_residue)
        std::copy_n(repr.data() + (begin + 1) * H, L * H, e.per_residue.data() + static_cast<size_t>(e.offsets[i]) * H);
      if (opt.logits) {
        const size_t row0 = i * static_cast<size_t>(e.max_len);
        for (size_t t = 0; t < len; ++t) {
          e.input_ids[row0 + t] = mb.input_ids[begin + t];
          e.attention_mask[row0 + t] = 1;
        }
        std::copy_n(logits.data() + begin * kVocabSize, len * kVocabSize, e.logits.data() + row0 * kVocabSize);
      }
    }
  });
  for (size_t i = 0; i < N; ++i) {
    ESM2_CHECK(!records[i].residues.empty(), "record '{}': empty sequence", records[i].id);
    packer.add(with_specials(records[i].residues), {}, static_cast<int64_t>(i));
  }
  packer.flush();
  return e;
}

double PseudoPerplexity::pppl() const { return std::exp(nll_sum / static_cast<double>(residues)); }

PseudoPerplexity pseudo_perplexity(Esm2Model& model, std::span<const int32_t> residues, int64_t micro_batch_tokens) {
  ESM2_CHECK(!residues.empty(), "pseudo-perplexity of an empty sequence");
  PseudoPerplexity r;
  StreamPacker packer(micro_batch_tokens, [&](const MicroBatch& mb, const std::vector<int64_t>&) {
    const LossSum l = model.forward_loss(mb);
    r.nll_sum += l.loss_sum;
    r.residues += l.num_labels;
  });
  const std::vector<int32_t> base = with_specials(residues);
  std::vector<int32_t> copy, labels(base.size(), kIgnoreLabel);
  for (size_t p = 1; p + 1 < base.size(); ++p) {
    copy = base;
    copy[p] = kMask;
    labels[p] = base[p];
    packer.add(copy, labels, static_cast<int64_t>(p));
    labels[p] = kIgnoreLabel;
  }
  packer.flush();
  ESM2_ASSERT(r.residues == static_cast<int64_t>(residues.size()));
  return r;
}

Variant parse_variant(std::string_view text, std::span<const int32_t> wild_type) {
  Variant v;
  const std::string whole(text);
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(':', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view s = text.substr(start, end - start);
    while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
    while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
    ESM2_CHECK(s.size() >= 3, "mutation '{}': '{}' is not of the form <wt><position><mut>, e.g. A42G", whole, s);
    Substitution sub;
    sub.wt = static_cast<char>(std::toupper(static_cast<unsigned char>(s.front())));
    sub.mut = static_cast<char>(std::toupper(static_cast<unsigned char>(s.back())));
    const std::string_view digits = s.substr(1, s.size() - 2);
    ESM2_CHECK(!digits.empty() && digits.size() < 9 &&
                   std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }),
               "mutation '{}': '{}' is not of the form <wt><position><mut>, e.g. A42G", whole, s);
    sub.position = std::stoi(std::string(digits));
    std::vector<int32_t> tok;
    ESM2_CHECK(tokenize_protein(std::string(1, sub.wt) + sub.mut, tok) < 0,
               "mutation '{}': '{}' uses a letter that is not an ESM-2 residue", whole, s);
    ESM2_CHECK(sub.position >= 1 && static_cast<size_t>(sub.position) <= wild_type.size(),
               "mutation '{}': position {} is outside the sequence (1..{})", whole, sub.position, wild_type.size());
    const int32_t have = wild_type[static_cast<size_t>(sub.position) - 1];
    ESM2_CHECK(have == tok[0], "mutation '{}': the sequence has {} at position {}, not {}", whole, kVocab[have],
               sub.position, sub.wt);
    for (const auto& o : v)
      ESM2_CHECK(o.position != sub.position, "mutation '{}': position {} is substituted twice", whole, sub.position);
    v.push_back(sub);
    start = end + 1;
  }
  return v;
}

std::vector<double> masked_marginal_scores(Esm2Model& model, std::span<const int32_t> wild_type,
                                           std::span<const Variant> variants, int64_t micro_batch_tokens) {
  // Variants that mask the same positions share one forward pass.
  std::map<std::vector<int>, size_t> set_index;
  std::vector<std::vector<int>> sets;
  std::vector<size_t> which(variants.size());
  for (size_t i = 0; i < variants.size(); ++i) {
    std::vector<int> pos;
    for (const auto& s : variants[i]) pos.push_back(s.position - 1);
    std::sort(pos.begin(), pos.end());
    auto [it, added] = set_index.emplace(pos, sets.size());
    if (added) sets.push_back(pos);
    which[i] = it->second;
  }
  const auto lp = masked_log_probs(model, wild_type, sets, micro_batch_tokens);
  std::vector<double> scores(variants.size(), 0.0);
  for (size_t i = 0; i < variants.size(); ++i) {
    const auto& set = sets[which[i]];
    for (const auto& s : variants[i]) {
      const size_t k = static_cast<size_t>(std::lower_bound(set.begin(), set.end(), s.position - 1) - set.begin());
      const double* row = lp[which[i]].data() + k * kVocabSize;
      scores[i] += row[residue_token(s.mut)] - row[residue_token(s.wt)];
    }
  }
  return scores;
}

std::vector<double> single_mutant_matrix(Esm2Model& model, std::span<const int32_t> wild_type,
                                         int64_t micro_batch_tokens) {
  std::vector<std::vector<int>> sets(wild_type.size());
  for (size_t i = 0; i < wild_type.size(); ++i) sets[i] = {static_cast<int>(i)};
  const auto lp = masked_log_probs(model, wild_type, sets, micro_batch_tokens);
  std::vector<double> m(wild_type.size() * kNumStandardAminoAcids);
  for (size_t i = 0; i < wild_type.size(); ++i)
    for (int a = 0; a < kNumStandardAminoAcids; ++a)
      m[i * kNumStandardAminoAcids + a] = lp[i][kFirstAminoAcid + a] - lp[i][wild_type[i]];
  return m;
}

}  // namespace esm2
