// The spellings of an option's values, one table per enum, so that a string is parsed into the enum
// once (by the CLI, src/apps/enum_option.h) and everything behind it compares enums. A value may have
// several spellings (the reference's aliases, e.g. --precision 32 / fp32 / 32-true); its first entry
// is the one printed.
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace esm2 {

template <class E>
struct EnumName {
  const char* name;
  E value;
};

template <class E, size_t N>
constexpr const char* enum_name(const EnumName<E> (&names)[N], E value) {
  for (const auto& n : names)
    if (n.value == value) return n.name;
  return "?";
}

template <class E, size_t N>
constexpr std::optional<E> parse_enum(const EnumName<E> (&names)[N], std::string_view s) {
  for (const auto& n : names)
    if (s == n.name) return n.value;
  return std::nullopt;
}

// "a, b or c": the accepted spellings, for error messages.
template <class E, size_t N>
std::string enum_spellings(const EnumName<E> (&names)[N]) {
  std::string out;
  for (size_t i = 0; i < N; ++i) out += std::string(i == 0 ? "" : i + 1 == N ? " or " : ", ") + names[i].name;
  return out;
}

}  // namespace esm2
