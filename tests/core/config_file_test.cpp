#include "core/config_file.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "core/atomic_dir.h"
#include "core/error.h"

using namespace esm2;
namespace fs = std::filesystem;

namespace {
std::string write_tmp(const std::string& name, const std::string& text) {
  const fs::path p = fs::temp_directory_path() / ("esm2-config-test-" + name);
  write_file(p, text);
  return p.string();
}
}  // namespace

TEST(ConfigFile, TomlLinesExpandInPlace) {
  const auto p = write_tmp("a.toml",
                           "# a comment\n[train]\nnum-steps = 12\nlr = 1e-3  # peak\nexperiment_name = \"my run\"\n"
                           "resume-if-exists = true\nno-report = false\r\n");
  const auto out = expand_config_args({"train", "--seed", "1", "--config", p, "--num-steps", "5"});
  // --num-steps after --config replaces the file's (which is left out); --seed before it does not.
  const std::vector<std::string> expect = {"train", "--seed", "1", "--lr", "1e-3",
                                           "--experiment-name", "my run", "--resume-if-exists", "--num-steps", "5"};
  EXPECT_EQ(out, expect);
}

TEST(ConfigFile, JsonObject) {
  const auto p = write_tmp("b.json", R"({"num-steps": 3, "--fasta": ["a.fa", "b.fa"], "force": true, "x": false})");
  const auto out = expand_config_args({"prepare", "--config=" + p});
  const std::vector<std::string> expect = {"prepare", "--fasta", "a.fa", "--fasta", "b.fa", "--force", "--num-steps", "3"};
  EXPECT_EQ(out, expect);  // nlohmann orders object keys alphabetically
}

TEST(ConfigFile, ErrorsNameFileAndLine) {
  const auto p = write_tmp("c.toml", "num-steps = 3\nthis line has no equals\n");
  try {
    expand_config_args({"--config", p});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("c.toml:2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(expand_config_args({"--config", "/nonexistent/x.toml"}), Error);
  EXPECT_THROW(expand_config_args({"--config"}), Error);
  const auto bad = write_tmp("d.json", "{\"a\": ");
  EXPECT_THROW(expand_config_args({"--config", bad}), Error);
}

// With the command's options known, a key is checked against them and every option a file set is recorded,
// so that a later parse error can name the file.
TEST(ConfigFile, KeysAreCheckedAgainstTheCommandsOptions) {
  const OptionKindFn kind = [](const std::string& f) {
    if (f == "--force" || f == "--no-report") return OptionKind::Flag;
    if (f == "--num-steps" || f == "--experiment-name") return OptionKind::Value;
    return OptionKind::Unknown;
  };
  const auto ok = write_tmp("ok.json", R"({"num-steps": 3, "force": "true", "no-report": false})");
  std::map<std::string, std::string> origins;
  const auto out = expand_config_args({"train", "--config", ok}, kind, &origins);
  // false is passed on, so that a flag that defaults to on is turned off.
  EXPECT_EQ(out, (std::vector<std::string>{"train", "--force", "--no-report=false", "--num-steps", "3"}));
  EXPECT_EQ(origins.at("--num-steps"), ok + ": key num-steps");
  // An option the command line gives again after --config replaces the file's, a list included, and the
  // file is not blamed for its value.
  const auto lists = write_tmp("lists.json", R"({"num-steps": 3, "experiment-name": "a"})");
  origins.clear();
  const auto over = expand_config_args({"train", "--config", lists, "--num-steps=7"}, kind, &origins);
  EXPECT_EQ(over, (std::vector<std::string>{"train", "--experiment-name", "a", "--num-steps=7"}));
  EXPECT_EQ(origins.count("--num-steps"), 0u);
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"experiment-name": true})", "--experiment-name takes a value, not true"},
      {R"({"force": "maybe"})", "--force is an on/off flag: give true or false, not 'maybe'"},
      {R"({"nosuch": 1})", "--nosuch is not an option of this command"},
      {R"({"num-steps": 1, "num-steps": 2})", "key num-steps is given twice"},
      {"[1, 2]", "a JSON array"},
      {"experiment-name = true\n", ":1: --experiment-name takes a value, not true"},
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    const auto p = write_tmp("bad" + std::to_string(i), bad[i].first);
    try {
      expand_config_args({"train", "--config", p}, kind);
      ADD_FAILURE() << bad[i].first << ": accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(bad[i].second), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(expand_config_args({"train", "--config", fs::temp_directory_path().string()}, kind), Error);
}
