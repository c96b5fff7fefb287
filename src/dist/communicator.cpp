#include <cstdio>
#include <cstdlib>

#include "core/error.h"
#include "dist/communicator.h"
#ifdef ESM2_HAVE_MPI
#include "dist/mpi_communicator.h"
#endif

namespace esm2 {

namespace {

// Set by mpirun/mpiexec (OpenMPI, MPICH/Hydra, PMIx) or srun.
const char* launcher_variable() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_NTASKS"})
    if (std::getenv(v)) return v;
  return nullptr;
}

}  // namespace

void Communicator::allreduce_sum_typed(void* data, size_t n, DType dtype, const char* what) {
  ESM2_CHECK(dtype == DType::F32, "rank {}: {} communicator cannot sum {} buffers (in {})", rank(), name(),
             dtype_name(dtype), what);
  allreduce_sum(static_cast<float*>(data), n, what);
}

void LocalCommunicator::no_peer(int peer, const char* what) {
  fail("rank 0: point-to-point to rank {} in {}, but this communicator has a single rank", peer, what);
}

std::unique_ptr<Communicator> make_communicator(double collective_timeout_s) {
  const char* launcher = launcher_variable();
  if (!launcher) return std::make_unique<LocalCommunicator>();
#ifdef ESM2_HAVE_MPI
  return std::make_unique<MpiCommunicator>(collective_timeout_s);
#else
  // A multi-rank launch without MPI would train N independent copies on the same data: refuse.
  const char* n = std::getenv(launcher);
  ESM2_CHECK(n && std::atoi(n) <= 1,
             "train: started by a parallel launcher ({}={}) but this build has no MPI; rebuild with MPI "
             "(libopenmpi-dev) or run a single process",
             launcher, n ? n : "?");
  return std::make_unique<LocalCommunicator>();
#endif
}

void abort_job(Communicator& comm, int exit_code) {
#ifdef ESM2_HAVE_MPI
  if (auto* mpi = dynamic_cast<MpiCommunicator*>(&comm)) mpi->abort(exit_code);
#endif
  (void)comm;
  (void)exit_code;
}

}  // namespace esm2
