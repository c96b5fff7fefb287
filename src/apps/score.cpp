// `esm2 score`: masked-marginal variant effect scores (Meier et al. 2021) for a list of mutations or
// a deep-mutational-scan CSV, and optionally the full single-mutant matrix of the wild type.
#include <algorithm>
#include <cstdio>

#include "apps/command.h"
#include "apps/infer_options.h"
#include "core/atomic_dir.h"
#include "core/error.h"
#include "data/sequence_table.h"
#include "data/tokenizer.h"
#include "io/csv.h"

namespace fs = std::filesystem;

namespace {

struct ScoreArgs {
  esm2::apps::InferOptions common;
  std::string sequence, id, mutations, mutation_column = "mutant";
  fs::path fasta, dms, matrix, output;
};

std::vector<int32_t> wild_type(const ScoreArgs& a) {
  ESM2_CHECK(a.sequence.empty() || a.fasta.empty(), "score: give one of --sequence and --fasta, not both");
  ESM2_CHECK(a.id.empty() || !a.fasta.empty(), "score: --id names a record of --fasta");
  if (!a.fasta.empty()) return esm2::read_protein_record(a.fasta, a.id).residues;
  ESM2_CHECK(!a.sequence.empty(), "score: give the wild type with --sequence LETTERS or --fasta FILE");
  std::vector<int32_t> wt;
  const int64_t bad = esm2::tokenize_protein(a.sequence, wt);
  ESM2_CHECK(bad < 0, "score: --sequence: invalid residue {} at position {}",
             esm2::printable_byte(a.sequence[static_cast<size_t>(bad)]), bad + 1);
  return wt;
}

esm2::apps::RunFn setup_score(CLI::App& app) {
  auto a = std::make_shared<ScoreArgs>();
  a->common.add_to(app);
  app.add_option("--sequence", a->sequence, "Wild-type sequence (residue letters)");
  app.add_option("--fasta", a->fasta, "FASTA file holding the wild type");
  app.add_option("--id", a->id, "Record of --fasta to use (may be left out when the file has one record)");
  app.add_option("--mutations", a->mutations,
                 "Variants, comma-separated; ':' joins the substitutions of a multi-mutant (e.g. A42G,L50P:K51R); "
                 "positions 1-based in the residue sequence");
  app.add_option("--dms", a->dms, "CSV with a header line and one variant per row (e.g. ProteinGym)");
  app.add_option("--mutation-column", a->mutation_column, "Column of --dms holding the variant")->capture_default_str();
  app.add_option("--output", a->output,
                 "Scores CSV (mutations: variant,score; --dms: its rows with an esm2_score column); default stdout");
  app.add_option("--matrix", a->matrix, "Write the single-mutant matrix (positions × 20 amino acids) as CSV");
  return [a]() -> int {
    ESM2_CHECK(!(!a->mutations.empty() && !a->dms.empty()), "score: give --mutations or --dms, not both");
    ESM2_CHECK(!a->mutations.empty() || !a->dms.empty() || !a->matrix.empty(),
               "score: nothing to do: give --mutations, --dms or --matrix");
    esm2::apps::check_output_free(a->output, a->common.force, "--output");
    esm2::apps::check_output_free(a->matrix, a->common.force, "--matrix");
    esm2::apps::check_distinct_outputs({{"--output", &a->output}, {"--matrix", &a->matrix}});
    esm2::apps::check_outputs_spare_inputs(
        {{"--output", &a->output}, {"--matrix", &a->matrix}},
        {{"--dms", &a->dms}, {"--fasta", &a->fasta}, {"--checkpoint", &a->common.checkpoint}});
    const std::vector<int32_t> wt = wild_type(*a);
    // Parse every variant before loading the model: a typo fails at once.
    std::vector<std::string> names, header;
    std::vector<std::vector<std::string>> rows;
    std::vector<int64_t> row_lines;  // where each --dms row starts, for errors
    if (!a->mutations.empty()) {
      names = esm2::csv_split(a->mutations, "score: --mutations");
    } else if (!a->dms.empty()) {
      esm2::CsvReader in(a->dms);
      ESM2_CHECK(in.next(header), "{}: empty file (a header line naming the columns is expected)", a->dms.string());
      const auto col = std::find(header.begin(), header.end(), a->mutation_column);
      ESM2_CHECK(col != header.end(), "{}: no column '{}' in the header (--mutation-column names it)", a->dms.string(),
                 a->mutation_column);
      const size_t k = static_cast<size_t>(col - header.begin());
      std::vector<std::string> f;
      while (in.next(f)) {
        ESM2_CHECK(f.size() == header.size(), "{}: line {}: {} fields where the header has {}", a->dms.string(),
                   in.line(), f.size(), header.size());
        names.push_back(f[k]);
        rows.push_back(f);
        row_lines.push_back(in.line());
      }
    }
    std::vector<esm2::Variant> variants;
    for (size_t i = 0; i < names.size(); ++i) {
      try {
        variants.push_back(esm2::parse_variant(names[i], wt));
      } catch (const esm2::Error& e) {
        if (a->dms.empty()) throw;
        esm2::fail("{}: line {} (column {}): {}", a->dms.string(), row_lines[i], a->mutation_column, e.what());
      }
    }

    auto m = a->common.load();
    const esm2::ProteinRecord wt_record{a->fasta.empty() ? std::string("--sequence") : a->id.empty() ? a->fasta.string() : a->id, wt};
    esm2::warn_if_beyond_training(m.model->config(), std::span(&wt_record, 1));
    const int64_t budget = a->common.micro_batch_tokens;
    esm2::StagedFiles files;
    // Scores are printed with 5 decimals: a variant's masked copy is packed with others, and fp32
    // sums in GEMMs of another shape move its score by ~1e-7 (up to ~1e-6 for large log-probs), so
    // digits past the fifth would depend on what else is in the batch.
    std::string scores_csv;
    if (!a->mutations.empty() || !a->dms.empty()) {
      const auto scores = variants.empty() ? std::vector<double>{}
                                           : esm2::masked_marginal_scores(*m.model, wt, variants, budget);
      if (a->dms.empty()) {
        scores_csv = "variant,score\n";
        for (size_t i = 0; i < scores.size(); ++i) scores_csv += fmt::format("{},{:.5f}\n", esm2::csv_field(names[i]), scores[i]);
      } else {
        header.push_back("esm2_score");
        scores_csv = esm2::csv_record(header) + "\n";
        for (size_t i = 0; i < scores.size(); ++i)
          scores_csv += fmt::format("{},{:.5f}\n", esm2::csv_record(rows[i]), scores[i]);
      }
      if (!a->output.empty()) files.add(a->output, scores_csv);
    }
    if (!a->matrix.empty()) {
      const auto mat = esm2::single_mutant_matrix(*m.model, wt, budget);
      std::string csv = "position,wt";
      for (int k = 0; k < esm2::kNumStandardAminoAcids; ++k) csv += fmt::format(",{}", esm2::kVocab[esm2::kFirstAminoAcid + k]);
      csv += "\n";
      for (size_t i = 0; i < wt.size(); ++i) {
        csv += fmt::format("{},{}", i + 1, esm2::kVocab[wt[i]]);
        for (int k = 0; k < esm2::kNumStandardAminoAcids; ++k) csv += fmt::format(",{:.5f}", mat[i * esm2::kNumStandardAminoAcids + k]);
        csv += "\n";
      }
      files.add(a->matrix, csv);
    }
    files.commit();
    if (a->output.empty()) std::fputs(scores_csv.c_str(), stdout);
    // The summary goes where it does not mix with a CSV printed on stdout.
    const std::string summary =
        fmt::format("{}-residue wild type: {} variants scored{}\n", wt.size(), variants.size(),
                    a->matrix.empty() ? "" : fmt::format("; single-mutant matrix ({} x 20) -> {}", wt.size(), a->matrix.string()));
    if (!a->output.empty() || !a->matrix.empty()) std::fputs(summary.c_str(), scores_csv.empty() || !a->output.empty() ? stdout : stderr);
    return 0;
  };
}

}  // namespace

ESM2_COMMAND(score, "score", "Masked-marginal mutation scores (Meier et al. 2021) and the single-mutant matrix",
             setup_score);
