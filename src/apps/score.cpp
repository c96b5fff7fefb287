// `esm2 score`: masked-marginal variant effect scores (Meier et al. 2021) for a list of mutations or
// a deep-mutational-scan CSV, and optionally the full single-mutant matrix of the wild type.
#include <algorithm>
#include <cstdio>
#include <fstream>

#include "apps/command.h"
#include "apps/infer_options.h"
#include "core/atomic_dir.h"
#include "core/error.h"
#include "data/sequence_table.h"
#include "data/tokenizer.h"

namespace fs = std::filesystem;

namespace {

struct ScoreArgs {
  esm2::apps::InferOptions common;
  std::string sequence, id, mutations, mutation_column = "mutant";
  fs::path fasta, dms, matrix, output;
};

// Fields of one CSV line (RFC 4180 quoting: "a,b" and "" inside quotes).
std::vector<std::string> csv_fields(std::string_view line) {
  std::vector<std::string> out(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') out.back() += '"', ++i;
      else if (c == '"') quoted = false;
      else out.back() += c;
    } else if (c == '"') quoted = true;
    else if (c == ',') out.emplace_back();
    else out.back() += c;
  }
  return out;
}

std::vector<int32_t> wild_type(const ScoreArgs& a) {
  ESM2_CHECK(a.sequence.empty() != a.fasta.empty(), "score: give exactly one of --sequence and --fasta");
  std::vector<int32_t> wt;
  if (!a.sequence.empty()) {
    const int64_t bad = esm2::tokenize_protein(a.sequence, wt);
    ESM2_CHECK(bad < 0, "score: --sequence: invalid residue {} at position {}",
               esm2::printable_byte(a.sequence[static_cast<size_t>(bad)]), bad + 1);
    ESM2_CHECK(!wt.empty(), "score: --sequence is empty");
    return wt;
  }
  const auto recs = esm2::read_protein_fasta(a.fasta);
  if (a.id.empty()) {
    ESM2_CHECK(recs.size() == 1, "{}: {} records; name the wild type with --id", a.fasta.string(), recs.size());
    return recs[0].residues;
  }
  for (const auto& r : recs)
    if (r.id == a.id) return r.residues;
  esm2::fail("{}: no record with id '{}'", a.fasta.string(), a.id);
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
    const std::vector<int32_t> wt = wild_type(*a);
    // Parse every variant before loading the model: a typo fails at once.
    std::vector<std::string> names, rows;
    std::string header;
    if (!a->mutations.empty()) {
      for (const auto& f : csv_fields(a->mutations)) names.push_back(f);
    } else if (!a->dms.empty()) {
      std::ifstream in(a->dms);
      ESM2_CHECK(in.good(), "{}: cannot open", a->dms.string());
      ESM2_CHECK(static_cast<bool>(std::getline(in, header)), "{}: empty file", a->dms.string());
      if (!header.empty() && header.back() == '\r') header.pop_back();
      const auto cols = csv_fields(header);
      const auto col = std::find(cols.begin(), cols.end(), a->mutation_column);
      ESM2_CHECK(col != cols.end(), "{}: no column '{}' in the header", a->dms.string(), a->mutation_column);
      const size_t k = static_cast<size_t>(col - cols.begin());
      std::string line;
      int64_t line_no = 1;
      while (std::getline(in, line)) {
        ++line_no;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty()) continue;
        const auto f = csv_fields(line);
        ESM2_CHECK(f.size() > k, "{}: line {}: no field {}", a->dms.string(), line_no, a->mutation_column);
        names.push_back(f[k]);
        rows.push_back(line);
      }
    }
    std::vector<esm2::Variant> variants;
    for (const auto& n : names) variants.push_back(esm2::parse_variant(n, wt));

    auto m = a->common.load();
    const int64_t budget = a->common.micro_batch_tokens;
    // Scores are printed with 5 decimals: a variant's masked copy is packed with others, and fp32
    // sums in GEMMs of another shape move its score by ~1e-7 (up to ~1e-6 for large log-probs), so
    // digits past the fifth would depend on what else is in the batch.
    if (!variants.empty()) {
      const auto scores = esm2::masked_marginal_scores(*m.model, wt, variants, budget);
      std::string csv = a->dms.empty() ? "variant,score\n" : header + ",esm2_score\n";
      for (size_t i = 0; i < scores.size(); ++i)
        csv += a->dms.empty() ? fmt::format("{},{:.5f}\n", names[i], scores[i]) : fmt::format("{},{:.5f}\n", rows[i], scores[i]);
      if (a->output.empty()) std::fputs(csv.c_str(), stdout);
      else esm2::write_file_atomically(a->output, csv);
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
      esm2::write_file_atomically(a->matrix, csv);
    }
    if (!a->output.empty() || !a->matrix.empty())
      std::printf("%zu-residue wild type: %zu variants scored%s\n", wt.size(), variants.size(),
                  a->matrix.empty() ? "" : fmt::format("; single-mutant matrix ({} x 20) -> {}", wt.size(),
                                                       a->matrix.string()).c_str());
    return 0;
  };
}

}  // namespace

ESM2_COMMAND(score, "score", "Masked-marginal mutation scores (Meier et al. 2021) and the single-mutant matrix",
             setup_score);
