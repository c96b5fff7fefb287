// `esm2 version`: build configuration (which optional backends were compiled in).
#include <cstdio>

#include "apps/command.h"

namespace {
esm2::apps::RunFn setup_version(CLI::App& app) {
  return [] {
#ifdef ESM2_HAVE_CUDA
    const char* cuda = "yes";
#else
    const char* cuda = "no";
#endif
#ifdef ESM2_HAVE_MPI
    const char* mpi = "yes";
#else
    const char* mpi = "no";
#endif
    std::printf("esm2 %s\ncuda backend: %s\nmpi communicator: %s\n", ESM2_VERSION, cuda, mpi);
    return 0;
  };
}
}  // namespace
ESM2_COMMAND(version, "version", "Print the version and the compiled-in backends", setup_version);
