// How the commands treat what they read and write, driven through the real binary:
// a command that fails writes none of its outputs, two outputs never share a path, a failed write to
// stdout is an error, CSV in and out follows RFC 4180, flags after --config override the file, and prepare
// refuses inputs it would destroy or misread.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>

#include "cli_runner.h"
#include "core/atomic_dir.h"

using namespace esm2::testing;
namespace fs = std::filesystem;

namespace {

const std::string kWildType = "MKTAYIAKQRQISFVKSHFSRQ";

fs::path hf_model() { return source_dir() / "tests/fixtures/hf/tiny-hd16/model"; }

// `esm2 <args>` with stdout sent to `out` and stderr captured (run_cli merges the two).
CliResult run_with_stdout(const std::string& args, const std::string& out) {
  return run_command(std::string(ESM2_BINARY) + " " + args + " 2>&1 >" + out);
}

void write(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

// Nothing but the listed names (no temp files) in dir.
std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

class CliOutputs : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = scratch_dir(std::string("cli-outputs-") + ::testing::UnitTest::GetInstance()->current_test_info()->name()); }
  std::string score() const {
    return "score --threads 1 --checkpoint " + hf_model().string() + " --sequence " + kWildType;
  }
  fs::path dir_;
};

TEST_F(CliOutputs, AFailedWriteToStdoutIsAnError) {
  const auto r = run_with_stdout(score() + " --mutations K2R", "/dev/full");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("esm2: error: writing to standard output failed"), std::string::npos) << r.output;
  // The same scores reach a file through stdout.
  const auto ok = run_with_stdout(score() + " --mutations K2R", (dir_ / "s.csv").string());
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_EQ(esm2::read_file(dir_ / "s.csv").rfind("variant,score\nK2R,", 0), 0u) << esm2::read_file(dir_ / "s.csv");
}

TEST_F(CliOutputs, TwoOutputsOnOnePathAreRefusedBeforeAnyWork) {
  const auto r = run_cli(score() + " --mutations K2R --output " + (dir_ / "same.csv").string() + " --matrix " +
                         (dir_ / "sub/../same.csv").string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("--output and --matrix name the same file"), std::string::npos) << r.output;
  write(dir_ / "in.fa", ">a\n" + kWildType + "\n");
  const auto e = run_cli("eval --threads 1 --checkpoint " + hf_model().string() + " --fasta " + (dir_ / "in.fa").string() +
                         " --pseudo-perplexity --json " + (dir_ / "e.out").string() + " --per-sequence " +
                         (dir_ / "e.out").string());
  EXPECT_EQ(e.exit_code, 1) << e.output;
  EXPECT_NE(e.output.find("--json and --per-sequence name the same file"), std::string::npos) << e.output;
  EXPECT_EQ(names_in(dir_), std::vector<std::string>{"in.fa"});
}

// The scores CSV is complete before the matrix is written; the matrix's destination is a directory, so the
// command fails, and neither output (nor a temp file) may be left behind.
TEST_F(CliOutputs, ACommandThatFailsLeavesNoneOfItsOutputs) {
  fs::create_directories(dir_ / "m.csv");
  write(dir_ / "m.csv/keep", "x");
  const auto r = run_cli(score() + " --mutations K2R --force --output " + (dir_ / "o.csv").string() + " --matrix " +
                         (dir_ / "m.csv").string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("m.csv: is a directory"), std::string::npos) << r.output;
  EXPECT_EQ(names_in(dir_), std::vector<std::string>{"m.csv"});
  EXPECT_EQ(names_in(dir_ / "m.csv"), std::vector<std::string>{"keep"});
}

TEST_F(CliOutputs, FlagsAfterConfigOverrideTheFile) {
  write(dir_ / "score.json", "{\"checkpoint\": \"" + hf_model().string() + "\", \"sequence\": \"" + kWildType +
                                  "\", \"mutations\": \"K2R\", \"threads\": 1}");
  const auto r = run_cli("score --config " + (dir_ / "score.json").string() + " --mutations M1A");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("M1A,"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("K2R,"), std::string::npos) << r.output;
  EXPECT_NE(run_cli("score --help").output.find("--config FILE"), std::string::npos);
}

// --dms: a BOM, CRLF, a quoted comma and a quoted line break are read as RFC 4180 says, and written back
// quoted; a row with too few or too many fields, or a quote never closed, is an error naming the line.
TEST_F(CliOutputs, DmsCsvFollowsRfc4180) {
  write(dir_ / "ok.csv", "\xEF\xBB\xBFmutant,note\r\nK2R,\"two\nlines\"\r\nM1A,\"a,b\"\r\n");
  const auto r = run_cli(score() + " --dms " + (dir_ / "ok.csv").string() + " --output " + (dir_ / "o.csv").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string out = esm2::read_file(dir_ / "o.csv");
  EXPECT_EQ(out.rfind("mutant,note,esm2_score\nK2R,\"two\nlines\",", 0), 0u) << out;
  EXPECT_NE(out.find("\nM1A,\"a,b\","), std::string::npos) << out;

  const std::vector<std::pair<std::string, std::string>> bad = {
      {"mutant,y\nK2R,1\nM1A\n", "short.csv: line 3: 1 fields where the header has 2"},
      {"mutant,y\nK2R,1,extra\n", "long.csv: line 2: 3 fields where the header has 2"},
      {"mutant,y\nK2R,\"open\nM1A,2\n", "open.csv: line 2: a quoted field opened here is never closed"},
      {"mutant,y\nK2R,\"a\"b\n", "junk.csv: line 2: text after a closing quote"},
      {"mutant,y\nK2R,1\nQ1A,2\n", "wt.csv: line 3 (column mutant)"},
  };
  const char* names[] = {"short.csv", "long.csv", "open.csv", "junk.csv", "wt.csv"};
  for (size_t i = 0; i < bad.size(); ++i) {
    write(dir_ / names[i], bad[i].first);
    const auto b = run_cli(score() + " --dms " + (dir_ / names[i]).string());
    EXPECT_EQ(b.exit_code, 1) << names[i] << "\n" << b.output;
    EXPECT_NE(b.output.find(bad[i].second), std::string::npos) << names[i] << "\n" << b.output;
  }
  // A header and no rows: an output holding the header.
  write(dir_ / "empty.csv", "mutant,y\n");
  ASSERT_EQ(run_cli(score() + " --dms " + (dir_ / "empty.csv").string() + " --output " + (dir_ / "e.csv").string()).exit_code, 0);
  EXPECT_EQ(esm2::read_file(dir_ / "e.csv"), "mutant,y,esm2_score\n");
}

// --fasta with --id reads that record only: an invalid record elsewhere in the file does not matter; the
// chosen record's problem is named without offering a flag score does not have.
TEST_F(CliOutputs, ScoreReadsOnlyTheChosenRecord) {
  write(dir_ / "two.fa", ">wt\n" + kWildType + "\n>other\nMKJJ\n");
  const std::string base = "score --threads 1 --checkpoint " + hf_model().string() + " --fasta " + (dir_ / "two.fa").string();
  const auto ok = run_cli(base + " --id wt --mutations K2R");
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("K2R,"), std::string::npos);
  const auto bad = run_cli(base + " --id other --mutations K2R");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("record 'other' (line 3): invalid residue 'J'"), std::string::npos) << bad.output;
  EXPECT_EQ(bad.output.find("--skip-invalid"), std::string::npos) << bad.output;
  const auto none = run_cli(base + " --mutations K2R");
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_NE(none.output.find("2 records; name the one to use with --id"), std::string::npos) << none.output;
}

TEST_F(CliOutputs, PerSequenceCsvQuotesIdsAndFileNames) {
  write(dir_ / "a,b.fa", ">x,1\nMKTAYIAKQR\n>q\"y\nMKV\n");
  const auto r = run_cli("eval --threads 1 --checkpoint " + hf_model().string() + " --fasta '" + (dir_ / "a,b.fa").string() +
                         "' --pseudo-perplexity --per-sequence " + (dir_ / "p.csv").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string csv = esm2::read_file(dir_ / "p.csv");
  const std::string file = "\"" + (dir_ / "a,b.fa").string() + "\"";
  EXPECT_NE(csv.find("\n" + file + ",\"x,1\",1,10,"), std::string::npos) << csv;
  EXPECT_NE(csv.find("\n" + file + ",\"q\"\"y\",1,3,"), std::string::npos) << csv;
}

TEST_F(CliOutputs, ReportNamesTheLineOfAMistypedValue) {
  write(dir_ / "metrics.jsonl", "{\"step\":1,\"train_loss\":3.5}\n{\"step\":2,\"train_loss\":\"abc\"}\n");
  const auto r = run_cli("report " + dir_.string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("metrics.jsonl:2: metric value \"abc\" is not a number"), std::string::npos) << r.output;
}

TEST_F(CliOutputs, SequencesLongerThanTheModelsPositionsWarn) {
  std::string long_seq;
  for (int i = 0; i < 106; ++i) long_seq += "MKTAYIAKQR";  // 1,060 residues > 1,024
  write(dir_ / "long.fa", ">short\nMKTAYIAKQR\n>long\n" + long_seq + "\n");
  const auto r = run_cli("embed --threads 1 --checkpoint " + hf_model().string() + " --fasta " + (dir_ / "long.fa").string() +
                         " --output " + (dir_ / "emb").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("warning: 1 sequence is longer than the 1024 residues the model's positions cover"),
            std::string::npos) << r.output;
  EXPECT_NE(r.output.find("'long', 1060 residues"), std::string::npos) << r.output;
}

// prepare: an input it would destroy (--force onto the input or its directory), misread (a pipe: inputs are
// read more than once) or silently drop (an empty path, an empty file) is refused naming it; "out/" is out.
TEST_F(CliOutputs, PrepareRefusesInputsItWouldDestroyOrMisread) {
  fs::create_directories(dir_ / "in");
  write(dir_ / "in/a.fa", ">a\nMKV\n>b\nACD\n");
  write(dir_ / "empty.fa", "");
  ASSERT_EQ(::mkfifo((dir_ / "c.fifo").c_str(), 0600), 0);  // never opened: refused before any read
  const std::string in = (dir_ / "in/a.fa").string();
  const std::vector<std::pair<std::string, std::string>> rows = {
      {"--fasta " + in + " --output " + (dir_ / "in").string() + " --force", "is the output"},
      {"--fasta " + in + " --output " + in + " --force", "is the output"},
      {"--fasta " + in + " --clusters " + (dir_ / "c.fifo").string() + " --output " + (dir_ / "o").string(),
       "c.fifo: not a regular file (a pipe or device)"},
      {"--fasta " + in + " --clusters '' --output " + (dir_ / "o").string(), "--clusters: an empty value"},
      {"--fasta " + in + " --fasta " + (dir_ / "empty.fa").string() + " --output " + (dir_ / "o").string(),
       "empty.fa: no FASTA records (an empty file)"},
      {"--fasta " + in + " --memory -1 --output " + (dir_ / "o").string(), "--memory: -1 must be a whole number >= 0"},
  };
  for (const auto& [args, expect] : rows) {
    const auto r = run_cli("prepare " + args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(expect), std::string::npos) << args << "\n" << r.output;
  }
  EXPECT_EQ(esm2::read_file(dir_ / "in/a.fa"), ">a\nMKV\n>b\nACD\n");
  EXPECT_FALSE(fs::exists(dir_ / "o"));
  const auto ok = run_cli("prepare --fasta " + in + " --output " + (dir_ / "o").string() + "/");
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_TRUE(fs::exists(dir_ / "o/manifest.json"));
  EXPECT_EQ(names_in(dir_), (std::vector<std::string>{"c.fifo", "empty.fa", "in", "o"}));
}

// --force replaces outputs, never inputs: an output that is an input, or a directory holding one, is refused.
TEST_F(CliOutputs, ForceNeverReplacesAnInput) {
  fs::create_directories(dir_ / "d");
  write(dir_ / "d/x.fa", ">a\n" + kWildType + "\n");
  const std::string fa = (dir_ / "d/x.fa").string();
  const std::string ck = " --threads 1 --checkpoint " + hf_model().string();
  const std::vector<std::pair<std::string, std::string>> rows = {
      {"embed" + ck + " --fasta " + fa + " --output " + (dir_ / "d").string() + " --force", "is the input --fasta"},
      {"embed" + ck + " --fasta " + fa + " --output " + fa + " --force --format safetensors", "is the input --fasta"},
      {"eval" + ck + " --fasta " + fa + " --pseudo-perplexity --per-sequence " + fa + " --force", "is the input --fasta"},
      {"score" + ck + " --fasta " + fa + " --mutations K2R --output " + fa + " --force", "is the input --fasta"},
  };
  for (const auto& [args, expect] : rows) {
    const auto r = run_cli(args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(expect), std::string::npos) << args << "\n" << r.output;
  }
  EXPECT_EQ(esm2::read_file(dir_ / "d/x.fa"), ">a\n" + kWildType + "\n");
  // A FASTA from a pipe is read once: prepare takes it (--clusters, read twice, must be a file).
  const fs::path fifo = dir_ / "in.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ASSERT_EQ(std::system(("cat " + fa + " > " + fifo.string() + " &").c_str()), 0);
  const auto piped = run_cli("prepare --fasta " + fifo.string() + " --output " + (dir_ / "c").string());
  EXPECT_EQ(piped.exit_code, 0) << piped.output;
  EXPECT_TRUE(fs::exists(dir_ / "c/manifest.json"));
}

TEST_F(CliOutputs, BenchRejectsMeaninglessCounts) {
  const auto w = run_cli("bench --backend cpu --data x --warmup -1");
  EXPECT_EQ(w.exit_code, 1);
  EXPECT_NE(w.output.find("--warmup: -1 must be a finite number >= 0"), std::string::npos) << w.output;
  const auto p = run_cli("bench --backend cpu --data x --peak-tflops 0");
  EXPECT_EQ(p.exit_code, 1);
  EXPECT_NE(p.output.find("--peak-tflops: 0 must be a finite number > 0"), std::string::npos) << p.output;
}

}  // namespace
