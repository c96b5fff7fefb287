// Errors: every failure is an esm2::Error carrying one human-readable line that names the
// file/record/key and the reason. Nothing calls exit(); apps catch at the top and return 1.
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace esm2 {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace esm2

// ESM2_CHECK(cond, "fmt {}", args...) throws esm2::Error with the formatted message.
#define ESM2_CHECK(cond, ...)                  \
  do {                                         \
    if (!(cond)) ::esm2::fail(__VA_ARGS__);    \
  } while (0)

// Internal invariant (a bug in esm2, not bad input): names file:line.
#define ESM2_ASSERT(cond)                                                                  \
  do {                                                                                     \
    if (!(cond)) ::esm2::fail("internal error at {}:{}: {}", __FILE__, __LINE__, #cond);   \
  } while (0)
