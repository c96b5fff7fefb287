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
  const std::vector<std::string> expect = {"train", "--seed", "1", "--num-steps", "12", "--lr", "1e-3",
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
