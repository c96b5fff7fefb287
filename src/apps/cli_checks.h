// Rules shared by the subcommands' flags: value checks run by CLI11 while parsing (so a bad value is
// one error naming the flag and the value, before anything is read or written), and the one rule
// for outputs: an existing output is replaced only with --force.
#pragma once
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <iterator>
#include <utility>
#include <string>

#include "core/atomic_dir.h"
#include "core/error.h"

namespace esm2::apps {

// A finite number in [lo, hi] (integers and floating point alike; "inf", "nan" and "-5" fail with the value
// named). Above 9e18 is refused too: an integer option would otherwise take it clamped or wrapped.
inline CLI::Validator in_range(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || end != s.c_str() + s.size()) return fmt::format("'{}' is not a number", s);
        if (!std::isfinite(v) || v < lo) return fmt::format("{} must be a finite number >= {}", s, lo);
        if (v > hi) return fmt::format("{} is too large (at most {})", s, hi);
        return {};
      },
      "");
}
inline CLI::Validator at_least(double lo) { return in_range(lo, 9e18); }

// A finite number > 0 (a rate, a peak, a size that cannot be zero).
inline CLI::Validator positive() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || end != s.c_str() + s.size()) return fmt::format("'{}' is not a number", s);
        if (!std::isfinite(v) || v <= 0) return fmt::format("{} must be a finite number > 0", s);
        return {};
      },
      "");
}

// A value that is not the empty string: `--clusters "$UNSET"` must not silently mean "no clusters".
inline CLI::Validator nonempty() {
  return CLI::Validator([](std::string& s) -> std::string { return s.empty() ? "an empty value" : ""; }, "");
}

// A whole number >= 0 written without a sign: an unsigned option would otherwise take "-1" as 2^64-1.
inline CLI::Validator unsigned_integer() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos)
          return fmt::format("{} must be a whole number >= 0", s);
        errno = 0;
        std::strtoull(s.c_str(), nullptr, 10);
        if (errno == ERANGE) return fmt::format("{} is too large (at most 18446744073709551615)", s);
        return {};
      },
      "");
}

// --threads: far more than any machine has cores (OpenMP dies creating 100,000 threads).
inline constexpr double kMaxThreads = 4096;

// A run's name is one directory below --result-dir: not empty, ".", "..", or a path (--force replaces it).
inline CLI::Validator run_name() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        if (s.size() > 1 && s.back() == '/') s.pop_back();  // a shell's completion of an existing run
        if (s.empty() || s == "." || s == ".." || s.find('/') != std::string::npos)
          return fmt::format("'{}' must be a plain name (one directory inside --result-dir: no '/', not '.' or '..')", s);
        return {};
      },
      "");
}

// --force: the one overwrite rule of every command that writes a file or directory.
inline void add_force_flag(CLI::App& app, bool& force) {
  app.add_flag("--force", force, "Replace outputs that already exist (without it an existing output is an error)");
}

// Two outputs of one command given the same path would leave only the one written last: refused before any work.
inline void check_distinct_outputs(std::initializer_list<std::pair<const char*, const std::filesystem::path*>> outs) {
  for (auto i = outs.begin(); i != outs.end(); ++i)
    for (auto j = std::next(i); j != outs.end(); ++j) {
      if (i->second->empty() || j->second->empty()) continue;
      std::error_code ec;
      const auto a = std::filesystem::weakly_canonical(std::filesystem::absolute(*i->second, ec), ec);
      const auto b = std::filesystem::weakly_canonical(std::filesystem::absolute(*j->second, ec), ec);
      ESM2_CHECK(a != b, "{} and {} name the same file {}: give each output its own path", i->first, j->first,
                 i->second->string());
    }
}

// An output (replaced with --force) must not be an input or a directory holding one: checked before any work.
using NamedPaths = std::initializer_list<std::pair<const char*, const std::filesystem::path*>>;
inline void check_outputs_spare_inputs(NamedPaths outputs, NamedPaths inputs) {
  for (const auto& [oflag, out] : outputs)
    for (const auto& [iflag, in] : inputs) {
      if (out->empty() || in->empty()) continue;
      ESM2_CHECK(!is_same_or_inside(*in, *out), "{} {}: is the input {} {} or holds it (it would be replaced)", oflag,
                 out->string(), iflag, in->string());
    }
}

// Checked before any work, so that a refused output costs nothing and writes nothing.
inline void check_output_free(const std::filesystem::path& path, bool force, const char* flag) {
  if (path.empty() || force) return;
  ESM2_CHECK(!std::filesystem::exists(path), "{} {}: already exists (pass --force to replace it)", flag,
             path.string());
}

}  // namespace esm2::apps
