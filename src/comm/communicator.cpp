#include <cstdio>
#include <cstdlib>
#include <initializer_list>

#include "backend/backend.h"
#include "comm/communicator.h"
#include "core/error.h"
#include "core/registry.h"

namespace esm2 {

namespace {

// Set by mpirun/mpiexec (OpenMPI, MPICH/Hydra, PMIx) or srun.
const char* launcher_variable() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_NTASKS"})
    if (std::getenv(v)) return v;
  return nullptr;
}

// The first of `names` that is set, as an int; `fallback` if none is.
int env_int(std::initializer_list<const char*> names, int fallback) {
  for (const char* v : names)
    if (const char* s = std::getenv(v)) {
      char* end = nullptr;
      const long x = std::strtol(s, &end, 10);
      ESM2_CHECK(end != s && *end == '\0' && x >= 0 && x < (1 << 24), "environment variable {}={} is not a rank number",
                 v, s);
      return static_cast<int>(x);
    }
  return fallback;
}

}  // namespace

LaunchInfo detect_launch() {
  LaunchInfo l;
  if (std::getenv("ESM2_RANK")) {
    l.launcher = "esm2 --gpus";
    l.rank = env_int({"ESM2_RANK"}, 0);
    l.world = env_int({"ESM2_WORLD_SIZE"}, -1);
    l.local_rank = env_int({"ESM2_LOCAL_RANK"}, l.rank);
    ESM2_CHECK(l.world >= 1 && l.rank < l.world, "ESM2_RANK={} needs ESM2_WORLD_SIZE > ESM2_RANK (got {})", l.rank,
               l.world);
    return l;
  }
  const char* v = launcher_variable();
  if (!v) return l;
  l.launcher = v;
  l.rank = env_int({"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"}, -1);
  l.world = env_int({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"}, -1);
  l.local_rank = env_int({"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "ESM2_LOCAL_RANK"}, 0);
  return l;
}

void Communicator::allreduce_sum_typed(void* data, size_t n, DType dtype, const char* what) {
  ESM2_CHECK(dtype == DType::F32, "rank {}: {} communicator cannot sum {} buffers (in {})", rank(), name(),
             dtype_name(dtype), what);
  allreduce_sum(static_cast<float*>(data), n, what);
}

void Communicator::reduce_scatter_sum_async(const float* in, float* out, size_t shard_n, DType wire,
                                            const char* what) {
  ESM2_CHECK(wire == DType::F32, "rank {}: {} communicator cannot send gradients as {} (in {})", rank(), name(),
             dtype_name(wire), what);
  reduce_scatter_sum(in, out, shard_n, what);
}

void LocalCommunicator::no_peer(int peer, const char* what) {
  fail("rank 0: point-to-point to rank {} in {}, but this communicator has a single rank", peer, what);
}

namespace {
Registry<CommunicatorTransport>& transports() {
  static Registry<CommunicatorTransport> registry("communicator");
  return registry;
}
}  // namespace

void register_communicator(CommunicatorTransport transport) { transports().add(std::move(transport)); }
const CommunicatorTransport* find_communicator(std::string_view name) { return transports().find(name); }
std::vector<std::string> registered_communicators() { return transports().names(); }

namespace {

// The ranks the launcher's environment announced must be the MPI world that formed: `SLURM_NTASKS=8` inside
// an sbatch script run without srun, or an srun whose MPI did not wire up, gives one-rank worlds that would
// each train alone (a smaller batch than asked, or N copies racing on one run directory).
void checked_world(const LaunchInfo& launch, int world) {
  ESM2_CHECK(launch.world < 0 || launch.world == world,
             "train: the launcher's environment announces {} ranks ({}), but the MPI job that formed has {}: start "
             "the job with srun or mpirun (a batch script's own process is one rank)",
             launch.world, launch.launcher, world);
}

}  // namespace

std::unique_ptr<Communicator> make_communicator(double collective_timeout_s, Backend* backend) {
  const LaunchInfo launch = detect_launch();
  if (!launch.multi_process()) return std::make_unique<LocalCommunicator>();
  const bool cuda = backend && backend->name() == "cuda";
  const CommunicatorTransport* nccl = find_communicator("nccl");
  const CommunicatorTransport* mpi = find_communicator("mpi");
  if (launch.launcher == "esm2 --gpus") {
    // The launcher's workers share no MPI: the NCCL id came through the environment.
    ESM2_CHECK(cuda, "esm2 train --gpus: the workers need the cuda backend (got {}); multi-process CPU training "
               "runs under mpirun/srun", backend ? backend->name() : std::string("host memory"));
    ESM2_CHECK(nccl, "esm2 train --gpus: this build has no NCCL (libnccl-dev and the CUDA backend at configure time)");
    const char* id = std::getenv("ESM2_NCCL_ID");
    ESM2_CHECK(id, "rank {}: ESM2_RANK is set but ESM2_NCCL_ID is not (workers are started by `esm2 train --gpus N`)",
               launch.rank);
    return nccl->join_with_id(id, launch.rank, launch.world, *backend, collective_timeout_s, nullptr);
  }
  if (cuda) {
    // mpirun/srun on GPUs: MPI only carries NCCL's id; the collectives run over NCCL on device buffers.
    if (nccl && mpi) {
      auto bootstrap = mpi->join_launched_job(collective_timeout_s);
      checked_world(launch, bootstrap->world_size());
      const int rank = bootstrap->rank(), world = bootstrap->world_size();
      std::string id(256, '0');
      if (rank == 0) id = nccl->new_id();
      ESM2_ASSERT(id.size() == 256);
      bootstrap->broadcast(id.data(), id.size(), 0, "NCCL unique id broadcast");
      return nccl->join_with_id(id, rank, world, *backend, collective_timeout_s, std::move(bootstrap));
    }
    const char* missing = nccl ? "MPI (to carry NCCL's id)" : "NCCL";
    ESM2_CHECK(launch.world == 1,
               "train: {} ranks on the cuda backend need NCCL and MPI; this build has no {}. Use `esm2 train --gpus N` "
               "on one node, or --backend cpu over MPI",
               launch.world < 0 ? std::string("several") : std::to_string(launch.world), missing);
    return std::make_unique<LocalCommunicator>();
  }
  if (mpi) {
    auto comm = mpi->join_launched_job(collective_timeout_s);
    checked_world(launch, comm->world_size());
    return comm;
  }
  // A multi-rank launch without MPI would train N independent copies on the same data: refuse.
  const char* n = std::getenv(launch.launcher.c_str());
  ESM2_CHECK(n && std::atoi(n) <= 1,
             "train: started by a parallel launcher ({}={}) but this build has no MPI; rebuild with MPI "
             "(libopenmpi-dev) or run a single process",
             launch.launcher, n ? n : "?");
  return std::make_unique<LocalCommunicator>();
}

void abort_job(Communicator& comm, int exit_code) { comm.abort_job(exit_code); }

}  // namespace esm2
