// The transport registry (comm/communicator.h) against what CMake compiled in: exactly the transports
// of this build (ESM2_EXPECTED_TRANSPORTS: mpi with MPI, nccl with the CUDA backend and NCCL), each
// offering the way it joins a job, and a single process still gets the local communicator.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "comm/communicator.h"
#include "core/error.h"

using namespace esm2;

namespace {
// The registry's names as CMake writes the expected list: comma-separated, in registration order.
std::string names() { return fmt::format("{}", fmt::join(registered_communicators(), ",")); }
}  // namespace

TEST(CommunicatorRegistry, ListsExactlyTheCompiledInTransports) {
  EXPECT_EQ(names(), ESM2_EXPECTED_TRANSPORTS);
  if (const CommunicatorTransport* mpi = find_communicator("mpi")) {
    EXPECT_TRUE(mpi->join_launched_job);
    EXPECT_FALSE(mpi->join_with_id);
  }
  if (const CommunicatorTransport* nccl = find_communicator("nccl")) {
    EXPECT_TRUE(nccl->new_id);
    EXPECT_TRUE(nccl->join_with_id);
  }
  EXPECT_EQ(find_communicator("gloo"), nullptr);
}

TEST(CommunicatorRegistry, SecondRegistrationOfANameIsAnError) {
  register_communicator({.name = "test-transport", .join_launched_job = nullptr, .new_id = nullptr,
                         .join_with_id = nullptr});
  EXPECT_THROW(register_communicator({.name = "test-transport", .join_launched_job = nullptr, .new_id = nullptr,
                                      .join_with_id = nullptr}),
               Error);
}

TEST(CommunicatorRegistry, SingleProcessGetsTheLocalCommunicator) {
  for (const char* v : {"ESM2_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_NTASKS"})
    if (std::getenv(v)) GTEST_SKIP() << v << " is set: this test needs a single process";
  auto comm = make_communicator(60);
  EXPECT_EQ(comm->name(), "local");
  EXPECT_EQ(comm->world_size(), 1);
  abort_job(*comm, 3);  // nothing to end: returns
}
