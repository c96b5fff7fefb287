// esm2: one binary, one subcommand per file in src/apps/.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "apps/command.h"
#include "core/config_file.h"
#include "core/error.h"

namespace esm2::apps {
std::vector<Command>& command_registry() {
  static std::vector<Command> registry;
  return registry;
}
}  // namespace esm2::apps

namespace {

// CLI11 prints a negated flag as "--no-x{false}", the value it stores, which reads as the pair's
// default; the on/off pairs state their default in their description instead.
class HelpFormatter : public CLI::Formatter {
 public:
  std::string make_option_name(const CLI::Option* opt, bool positional) const override {
    std::string s = CLI::Formatter::make_option_name(opt, positional);
    for (const std::string v : {"{false}", "{true}"})
      for (size_t at = s.find(v); at != std::string::npos; at = s.find(v)) s.erase(at, v.size());
    return s;
  }
};

// CLI11's message as one line, with the subcommand named and unexpected arguments in the order given
// (CLI11's own message lists them backwards, as the parser is handed them reversed).
std::string parse_error_message(const CLI::App& app, const CLI::ParseError& e) {
  std::string where;
  for (const CLI::App* sub : app.get_subcommands()) where = sub->get_name() + ": ";
  std::string what = e.what();
  const std::vector<std::string> extras = app.remaining(true);
  auto unexpected = [&extras] {
    std::string s = extras.size() == 1 ? "unexpected argument" : "unexpected arguments";
    for (const auto& x : extras) s += " '" + x + "'";
    return s + " (--help lists the flags)";
  };
  if (dynamic_cast<const CLI::ExtrasError*>(&e)) {
    what = unexpected();
  } else if (dynamic_cast<const CLI::RequiredError*>(&e) && !app.get_subcommands().empty() && !extras.empty()) {
    // A misspelt flag usually is the required one: name it first (CLI11 checks requirements before extras).
    what = unexpected() + "; and " + what;
  } else if (dynamic_cast<const CLI::RequiredError*>(&e) && app.get_subcommands().empty()) {
    const std::vector<std::string> given = app.remaining();
    what = given.empty() ? "a command is required: esm2 <command> [OPTIONS] (esm2 --help lists the commands)"
                         : "unknown command '" + given.front() + "' (esm2 --help lists the commands)";
  }
  std::replace(what.begin(), what.end(), '\n', ' ');
  return where + what;
}

constexpr const char* kConfigHelp =
    "--config FILE: options from a file (JSON object or `key = value` lines, keys are the long flag names);\n"
    "flags after --config override the file.";

// What a command printed must have reached stdout: a full disk or a closed pipe behind `> file` is an
// error, not a silent empty result.
int finish_stdout(int rc) {
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
    std::fprintf(stderr, "esm2: error: writing to standard output failed: %s\n", std::strerror(errno));
    return 1;
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  // A file-size limit (ulimit -f) must make write() fail with EFBIG, reported like a full disk and
  // leaving the previous checkpoint intact, instead of killing the process mid-write with SIGXFSZ.
  signal(SIGXFSZ, SIG_IGN);
  // OpenMP threads that spin while waiting make a loaded or oversubscribed machine (a shared
  // workstation, ctest -j, several ranks per node) up to 10x slower. libgomp reads its settings when
  // it is loaded, before main, so the default is set by re-executing once; an explicit
  // OMP_WAIT_POLICY in the environment is respected.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    // exec the resolved path, not /proc/self/exe, so that ps/top show "esm2" rather than "exe".
    char self[4096];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
      self[n] = '\0';
      execv(self, argv);  // returns only on failure: then run on with the default policy
    }
  }
  using namespace esm2::apps;
  // Named, so that usage lines read "esm2 train [OPTIONS]".
  CLI::App app{"esm2.cpp — pretrain ESM-2 protein language models (version " ESM2_VERSION ")", "esm2"};
  app.require_subcommand(1);
  app.formatter(std::make_shared<HelpFormatter>());
  app.set_version_flag("--version", std::string(ESM2_VERSION));
  // A later occurrence of a flag overrides an earlier one: what --config splices in where it stands, and
  // an override appended to a long command line (repeatable options keep every value). Subcommands take
  // their option defaults from here.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  auto& commands = command_registry();
  std::sort(commands.begin(), commands.end(), [](auto& a, auto& b) { return a.name < b.name; });
  std::map<std::string, RunFn> runners;
  std::vector<std::pair<CLI::App*, std::string>> subs;
  for (auto& c : commands) {
    CLI::App* sub = app.add_subcommand(c.name, c.description);
    runners[c.name] = c.setup(*sub);
    sub->footer(kConfigHelp);
    subs.emplace_back(sub, c.name);
  }
  app.footer("Every subcommand also takes --config FILE (JSON object or `key = value` lines, keys are the long\n"
             "flag names); flags after --config override the file.");
  std::map<std::string, std::string> config_origins;  // flag → the config file (and key) that set it
  try {
    // CLI11 takes the arguments in reverse order when given a vector.
    // Config keys are checked against the options of the command being run (the first argument that
    // names one), so that a file's `true` can never swallow the next flag as an option's value.
    const std::vector<std::string> raw(argv + 1, argv + argc);
    CLI::App* cmd = nullptr;
    for (const auto& a : raw) {
      for (auto& [sub, name] : subs)
        if (a == name) cmd = sub;
      if (cmd || a.rfind("-", 0) != 0) break;
    }
    const esm2::OptionKindFn kind = [cmd](const std::string& flag) {
      const CLI::Option* o = cmd ? cmd->get_option_no_throw(flag) : nullptr;
      if (!o) return esm2::OptionKind::Unknown;
      return o->get_expected_max() == 0 ? esm2::OptionKind::Flag : esm2::OptionKind::Value;
    };
    std::vector<std::string> args = esm2::expand_config_args(raw, cmd ? kind : esm2::OptionKindFn{}, &config_origins);
    std::reverse(args.begin(), args.end());
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0 through CLI11; every parse error follows the one error contract.
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    std::string msg = parse_error_message(app, e);
    // A value a config file set: the message names the file and key too.
    for (const auto& [flag, where] : config_origins)
      if (msg.find(flag + " ") != std::string::npos || msg.find(flag + ":") != std::string::npos ||
          (msg.size() >= flag.size() && msg.compare(msg.size() - flag.size(), flag.size(), flag) == 0)) {
        msg += " (set by " + where + ")";
        break;
      }
    std::fprintf(stderr, "esm2: error: %s\n", msg.c_str());
    return 1;
  } catch (const esm2::Error& e) {
    std::fprintf(stderr, "esm2: error: %s\n", e.what());
    return 1;
  }
  try {
    for (auto& [sub, name] : subs)
      if (sub->parsed()) return finish_stdout(runners[name]());
  } catch (const esm2::Error& e) {
    std::fprintf(stderr, "esm2: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "esm2: error: out of memory (host): the input or the batch is too large for this machine\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "esm2: error: %s\n", e.what());
    return 1;
  }
  return 1;
}
