// Shared by the libFuzzer targets: the contract under test is "any bytes → a result or an
// esm2::Error". Any other exception, a crash, a sanitizer report, a leak or a hang is a finding.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include "core/atomic_dir.h"
#include "core/error.h"

namespace esm2::fuzz {

// A scratch directory private to this fuzzing process (libFuzzer -jobs/-fork run several).
inline const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    auto p = std::filesystem::temp_directory_path() / ("esm2-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(p);
    return p;
  }();
  return dir;
}

// Writes the input to scratch()/name for readers that take a path.
inline std::filesystem::path input_file(const char* name, const uint8_t* data, size_t size) {
  const auto p = scratch() / name;
  write_file(p, std::string_view(reinterpret_cast<const char*>(data), size));
  return p;
}

// The input as a file in memory (memfd), named /proc/self/fd/N, for readers that take a path. Writing
// every input to disk instead (input_file) made the FASTA and cluster-TSV fuzzers I/O-bound at ~100
// executions/s: ext4 flushes a truncated-and-rewritten file to disk on close.
inline std::filesystem::path memory_file(const uint8_t* data, size_t size) {
  static const int fd = [] {
    const int f = ::memfd_create("esm2-fuzz-input", MFD_CLOEXEC);
    if (f < 0) {
      std::perror("esm2 fuzz: memfd_create");
      std::abort();
    }
    return f;
  }();
  if (::ftruncate(fd, 0) != 0) std::abort();
  for (size_t done = 0; done < size;) {
    const ssize_t n = ::pwrite(fd, data + done, size - done, static_cast<off_t>(done));
    if (n <= 0) std::abort();
    done += static_cast<size_t>(n);
  }
  return "/proc/self/fd/" + std::to_string(fd);
}

// Runs the reader; esm2::Error is the accepted rejection of bad input, except an internal-invariant
// failure (ESM2_ASSERT), which is a bug in esm2 and aborts so that libFuzzer records it.
template <class F>
void expect_result_or_error(F&& reader) {
  try {
    reader();
  } catch (const esm2::Error& e) {
    if (std::string_view(e.what()).rfind("internal error at ", 0) == 0) {
      std::fprintf(stderr, "esm2 fuzz: %s\n", e.what());
      std::abort();
    }
  }
}

}  // namespace esm2::fuzz
