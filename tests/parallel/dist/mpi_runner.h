// Shared by the MPI end-to-end tests (data, tensor and pipeline parallel): launching
// `esm2 train` on N ranks and comparing the checkpoints two runs wrote.
#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "../../integration/cli_runner.h"
#include "io/safetensors.h"

namespace esm2::testing {

inline bool have_mpirun() { return std::system("command -v mpirun >/dev/null 2>&1") == 0; }

// One node: shared memory only (no TCP interface probing), and no CMA single-copy, which needs
// ptrace rights that containers (CI) often withhold.
inline std::string mpirun(int np) {
  return "mpirun --oversubscribe --allow-run-as-root --mca btl self,vader --mca btl_vader_single_copy_mechanism none -np " +
         std::to_string(np) + " " + std::string(ESM2_BINARY);
}

// Runs a shell command, capturing stdout + stderr; exit_code is 128 + signal for a killed command.
inline CliResult run_shell(const std::string& cmd) {
  CliResult r;
  FILE* pipe = popen((cmd + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  while (fgets(buf, sizeof buf, pipe)) r.output += buf;
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// `esm2 train <args>` on np ranks (np == 0: a plain single process, no launcher).
inline CliResult train(int np, const std::string& args) {
  if (np == 0) return run_cli("train" + args);
  return run_shell(mpirun(np) + " train" + args);
}

// Max |a − b| over every F32 tensor of two safetensors files; the tensor sets must match.
inline double max_abs_diff(const std::filesystem::path& a, const std::filesystem::path& b) {
  const auto fa = SafetensorsFile::open(a), fb = SafetensorsFile::open(b);
  EXPECT_EQ(fa.tensors().size(), fb.tensors().size()) << a << " vs " << b;
  double worst = 0;
  for (const auto& t : fa.tensors()) {
    if (t.dtype != DType::F32) continue;
    std::vector<float> x(static_cast<size_t>(t.numel())), y(x.size());
    fa.read_f32(t.name, x);
    fb.read_f32(t.name, y);
    for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(double(x[i]) - double(y[i])));
  }
  return worst;
}

}  // namespace esm2::testing
