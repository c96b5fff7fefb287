// `esm2 eval`: validation loss / perplexity of a checkpoint on corpora or FASTA files with exactly
// the trainer's validation masks (validation_batches, fixed seed), and optionally the exact
// pseudo-perplexity (every residue masked in turn) of the same sequence windows.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string_view>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "apps/command.h"
#include "apps/infer_options.h"
#include "core/atomic_dir.h"
#include "core/error.h"
#include "data/corpus.h"
#include "data/sampler.h"
#include "data/train_data.h"
#include "io/csv.h"

namespace fs = std::filesystem;

namespace {

struct EvalArgs {
  esm2::apps::InferOptions common;
  std::vector<fs::path> data, fasta;
  int64_t limit_batches = -1;
  int max_seq_length = 1024;
  // The masking of the validation set; a run trained with other settings validated with those.
  esm2::MaskStrategy mask_strategy = esm2::MaskStrategy::AllTokens;
  float mask_prob = 0.15f, mask_token_prob = 0.8f, random_token_prob = 0.1f;
  bool pppl = false, skip_invalid = false;
  fs::path json_out, per_sequence;
};

// A FASTA file evaluated like a validation corpus: written as a temporary corpus (one cluster per
// record) so that cropping, masking and packing are validation_batches' own, not a copy of them. The
// directory is removed as soon as the corpus is open (its files stay mapped), so that a run killed while
// evaluating leaves nothing behind; one killed while writing it is cleaned up by the next eval.
struct TempCorpus {
  fs::path dir;
  ~TempCorpus() {
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
};

constexpr std::string_view kTempPrefix = "esm2-eval-";

// This host's name in temp names: a TMPDIR shared between machines must not see another host's pids.
std::string host_name() {
  char h[256] = {};
  ::gethostname(h, sizeof h - 1);
  std::string s = h;
  for (char& c : s)
    if (c == '/' || c == '-') c = '_';
  return s.empty() ? "host" : s;
}

// Temp corpora "esm2-eval-<host>-<pid>-<n>" of this host whose process is gone.
void remove_stale_temp_corpora() {
  std::error_code ec;
  const fs::path tmp = fs::temp_directory_path(ec);
  if (ec) return;
  for (const auto& e : fs::directory_iterator(tmp, ec)) {
    const std::string n = e.path().filename().string();
    const std::string mine = std::string(kTempPrefix) + host_name() + "-";
    if (n.rfind(mine, 0) != 0) continue;
    const long pid = std::strtol(n.c_str() + mine.size(), nullptr, 10);
    if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) fs::remove_all(e.path(), ec);
  }
}

esm2::Corpus corpus_from_fasta(const fs::path& fasta, bool skip_invalid, int max_seq_length, TempCorpus& tmp,
                               int64_t& skipped) {
  const auto recs = esm2::read_protein_fasta(fasta, skip_invalid, &skipped);
  ESM2_CHECK(!recs.empty(), "{}: no valid sequences", fasta.string());
  esm2::SequenceTable table;
  std::vector<uint8_t> tok;
  for (const auto& r : recs) {
    tok.assign(r.residues.begin(), r.residues.end());
    table.add(r.id, tok);
  }
  static int counter = 0;
  tmp.dir = fs::temp_directory_path() / fmt::format("{}{}-{}-{}", kTempPrefix, host_name(), ::getpid(), counter++);
  esm2::write_corpus(tmp.dir, table, esm2::ClusterTable::singletons(table.size()),
                     {{"sources", {fasta.string()}}, {"command", "esm2 eval"}}, max_seq_length);
  esm2::Corpus c = esm2::Corpus::open(tmp.dir);
  std::error_code ec;
  fs::remove_all(tmp.dir, ec);
  return c;
}

nlohmann::json evaluate(esm2::Esm2Model& model, const esm2::Corpus& corpus, const std::string& name,
                        const EvalArgs& a, std::string& per_seq_csv) {
  esm2::DataConfig dc;
  dc.max_seq_length = a.max_seq_length;
  dc.micro_batch_tokens = a.common.micro_batch_tokens;
  dc.mask_strategy = a.mask_strategy;
  dc.mask_prob = a.mask_prob;
  dc.mask_token_prob = a.mask_token_prob;
  dc.random_token_prob = a.random_token_prob;
  const auto batches = esm2::validation_batches(corpus, dc, a.limit_batches, 0, 1);
  double loss_sum = 0;
  int64_t labels = 0, sequences = 0;
  for (const auto& mb : batches) {
    const esm2::LossSum l = model.forward_loss(mb);
    loss_sum += l.loss_sum;
    labels += l.num_labels;
    sequences += mb.num_sequences();
  }
  ESM2_CHECK(labels > 0, "{}: no masked positions in the evaluated batches", name);
  nlohmann::json r = {{"file", name}, {"batches", batches.size()}, {"sequences", sequences}, {"masked_tokens", labels},
                      {"val_loss", loss_sum / static_cast<double>(labels)},
                      {"val_ppl", std::exp(loss_sum / static_cast<double>(labels))}};
  std::printf("%s: val_loss %.6f val_ppl %.4f (%lld masked tokens, %lld sequences, %zu batches)\n", name.c_str(),
              r["val_loss"].get<double>(), r["val_ppl"].get<double>(), static_cast<long long>(labels),
              static_cast<long long>(sequences), batches.size());
  if (!a.pppl) return r;
  // The same windows the loss saw: sample i is the first member of cluster i, cropped by the
  // validation rule.
  double nll = 0;
  int64_t residues = 0;
  for (const auto& mb : batches)
    for (int64_t i : mb.sample_ids) {
      const uint32_t seq = corpus.cluster_members(static_cast<size_t>(i))[0];
      const esm2::SampleRef s = esm2::crop_sample(i, seq, corpus.length(seq), esm2::kValidationSeed, a.max_seq_length);
      const auto full = corpus.sequence(seq).subspan(s.start, s.residues);
      const std::vector<int32_t> res(full.begin(), full.end());
      const esm2::PseudoPerplexity p = esm2::pseudo_perplexity(model, res, a.common.micro_batch_tokens);
      nll += p.nll_sum;
      residues += p.residues;
      per_seq_csv += fmt::format("{},{},{},{},{:.9g},{:.9g}\n", esm2::csv_field(name), esm2::csv_field(corpus.id(seq)), s.start + 1, p.residues,
                                 p.nll_sum, p.pppl());
    }
  r["pseudo_perplexity"] = std::exp(nll / static_cast<double>(residues));
  r["pseudo_perplexity_residues"] = residues;
  r["pseudo_nll_sum"] = nll;
  std::printf("%s: pseudo-perplexity %.4f (%lld residues, every position masked in turn)\n", name.c_str(),
              r["pseudo_perplexity"].get<double>(), static_cast<long long>(residues));
  return r;
}

esm2::apps::RunFn setup_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  a->common.add_to(app);
  app.add_option("--data", a->data, "Corpus directory made by `esm2 prepare` (repeatable; each reported separately)");
  app.add_option("--fasta", a->fasta, "FASTA / FASTA.gz file (repeatable; each reported separately)");
  app.add_option("--limit-batches", a->limit_batches, "Evaluate only the first N packed micro-batches of each file (-1: all)")
      ->capture_default_str();
  app.add_option("--max-seq-length", a->max_seq_length,
                 "Tokens incl. <cls>/<eos>; longer sequences get the validation crop window (as in training)")
      ->capture_default_str();
  esm2::apps::add_enum_option(app, "--random-mask-strategy", a->mask_strategy, esm2::kMaskStrategyNames,
                              "As the training run: all_tokens (33-token vocab) or amino_acids_only");
  app.add_option("--mask-prob", a->mask_prob, "As the training run: fraction of positions masked")->capture_default_str();
  app.add_option("--mask-token-prob", a->mask_token_prob, "As the training run: of those, fraction set to <mask>")
      ->capture_default_str();
  app.add_option("--random-token-prob", a->random_token_prob, "As the training run: of those, fraction set to a random token")
      ->capture_default_str();
  app.add_flag("--pseudo-perplexity", a->pppl, "Also compute exact pseudo-perplexity (every residue masked in turn)");
  app.add_option("--json", a->json_out, "Write the results as JSON to this file");
  app.add_option("--per-sequence", a->per_sequence,
                 "With --pseudo-perplexity: CSV of file,id,start,residues,nll_sum,pppl per sequence window");
  app.add_flag("--skip-invalid", a->skip_invalid, "FASTA: drop records with invalid letters or no residues (counted)");
  return [a]() -> int {
    ESM2_CHECK(!a->data.empty() || !a->fasta.empty(), "eval: give --data CORPUS or --fasta FILE");
    ESM2_CHECK(a->limit_batches == -1 || a->limit_batches > 0, "eval: --limit-batches {} must be positive (or -1: all)",
               a->limit_batches);
    ESM2_CHECK(a->per_sequence.empty() || a->pppl, "eval: --per-sequence needs --pseudo-perplexity");
    esm2::apps::check_output_free(a->json_out, a->common.force, "--json");
    esm2::apps::check_output_free(a->per_sequence, a->common.force, "--per-sequence");
    esm2::apps::check_distinct_outputs({{"--json", &a->json_out}, {"--per-sequence", &a->per_sequence}});
    for (const auto* list : {&a->data, &a->fasta})
      for (const auto& in : *list)
        esm2::apps::check_outputs_spare_inputs({{"--json", &a->json_out}, {"--per-sequence", &a->per_sequence}},
                                               {{list == &a->data ? "--data" : "--fasta", &in},
                                                {"--checkpoint", &a->common.checkpoint}});
    remove_stale_temp_corpora();
    // Inputs are opened before the model is loaded so that a bad path fails fast.
    std::vector<std::pair<std::string, esm2::Corpus>> inputs;
    std::vector<std::unique_ptr<TempCorpus>> temps;
    for (const auto& d : a->data) inputs.emplace_back(d.string(), esm2::Corpus::open(d));
    for (const auto& f : a->fasta) {
      temps.push_back(std::make_unique<TempCorpus>());
      int64_t skipped = 0;
      inputs.emplace_back(f.string(), corpus_from_fasta(f, a->skip_invalid, a->max_seq_length, *temps.back(), skipped));
      if (skipped) std::printf("%s: skipped %lld invalid records\n", f.c_str(), static_cast<long long>(skipped));
    }
    auto m = a->common.load();
    nlohmann::json out = {{"checkpoint", a->common.checkpoint.string()}, {"max_seq_length", a->max_seq_length},
                          {"micro_batch_tokens", a->common.micro_batch_tokens}, {"files", nlohmann::json::array()}};
    std::string csv = "file,id,start,residues,nll_sum,pppl\n";
    for (const auto& [name, corpus] : inputs) out["files"].push_back(evaluate(*m.model, corpus, name, *a, csv));
    esm2::StagedFiles files;
    if (!a->json_out.empty()) files.add(a->json_out, out.dump(2) + "\n");
    if (!a->per_sequence.empty()) files.add(a->per_sequence, csv);
    files.commit();
    return 0;
  };
}

}  // namespace

ESM2_COMMAND(eval, "eval", "Validation loss / perplexity and exact pseudo-perplexity of a checkpoint", setup_eval);
