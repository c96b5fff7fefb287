// docs/cli.md (the commands and flags moved out of the README) cannot drift from the binary: every
// subcommand that `esm2 --help` lists, and every flag that its `--help` prints, must appear there.
#include <gtest/gtest.h>

#include <regex>
#include <set>
#include <sstream>

#include "cli_runner.h"
#include "core/atomic_dir.h"

using namespace esm2::testing;

namespace {

// The long flags of one --help text (--help itself excepted).
std::set<std::string> flags_of(const std::string& help) {
  static const std::regex flag(R"((^|[^\w-])(--[a-z0-9][a-z0-9-]*))");
  std::set<std::string> out;
  for (auto it = std::sregex_iterator(help.begin(), help.end(), flag); it != std::sregex_iterator(); ++it)
    if ((*it)[2] != "--help") out.insert((*it)[2]);
  return out;
}

bool mentions(const std::string& doc, const std::string& flag) {
  return std::regex_search(doc, std::regex(flag + "(?![a-z0-9-])"));
}

// The names under "Subcommands:" of `esm2 --help`.
std::vector<std::string> subcommands() {
  const auto r = run_cli("--help");
  std::istringstream in(r.output);
  std::vector<std::string> out;
  std::string line;
  bool in_list = false;
  while (std::getline(in, line)) {
    if (line.rfind("Subcommands:", 0) == 0) {
      in_list = true;
    } else if (in_list) {
      std::smatch m;
      if (!std::regex_match(line, m, std::regex(R"(\s+([a-z]+)\s.*)"))) break;
      out.push_back(m[1]);
    }
  }
  return out;
}

}  // namespace

TEST(CliDocs, EveryCommandAndFlagOfHelpIsInDocsCli) {
  const std::string doc = esm2::read_file(source_dir() / "docs/cli.md");
  const auto cmds = subcommands();
  ASSERT_GE(cmds.size(), 9u) << "could not read the subcommands of `esm2 --help`";
  size_t checked = 0;
  for (const auto& cmd : cmds) {
    EXPECT_NE(doc.find("esm2 " + cmd), std::string::npos) << "docs/cli.md does not mention `esm2 " << cmd << "`";
    const auto r = run_cli(cmd + " --help");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    for (const auto& f : flags_of(r.output)) {
      EXPECT_TRUE(mentions(doc, f)) << "`esm2 " << cmd << " " << f << "` is not in docs/cli.md";
      ++checked;
    }
  }
  EXPECT_GT(checked, 100u);  // the regex found the flags at all
}
