// An option whose value is one of an enum's spellings (core/enum_names.h): CLI11 checks the spelling
// and stores the enum, so nothing behind the CLI compares strings. --help lists the spellings and the
// current value of `target` as the default.
#pragma once
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "core/enum_names.h"

namespace esm2::apps {

template <class E, size_t N>
CLI::Option* add_enum_option(CLI::App& app, const std::string& flag, E& target, const EnumName<E> (&names)[N],
                             const std::string& description) {
  std::vector<std::string> spellings;
  for (const auto& n : names) spellings.emplace_back(n.name);
  CLI::Option* o = app.add_option_function<std::string>(
      flag, [&target, &names](const std::string& s) { target = *parse_enum(names, s); }, description);
  o->check(CLI::IsMember(spellings));
  o->default_str(enum_name(names, target));
  return o;
}

}  // namespace esm2::apps
