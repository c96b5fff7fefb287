// Subcommand registry: each src/apps/<name>.cpp registers itself with ESM2_COMMAND, so adding a
// subcommand touches one file. `setup` declares the options on the CLI11 subcommand and returns the
// function that runs it; that function returns the process exit code. Errors are thrown as
// esm2::Error and reported by main as one line.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace esm2::apps {

using RunFn = std::function<int()>;
using SetupFn = std::function<RunFn(CLI::App&)>;

struct Command {
  std::string name;
  std::string description;
  SetupFn setup;
};

std::vector<Command>& command_registry();

struct CommandRegistrar {
  CommandRegistrar(std::string name, std::string description, SetupFn setup) {
    command_registry().push_back({std::move(name), std::move(description), std::move(setup)});
  }
};

}  // namespace esm2::apps

#define ESM2_COMMAND(ident, name, description, setup_fn) \
  static ::esm2::apps::CommandRegistrar esm2_command_##ident(name, description, setup_fn)
