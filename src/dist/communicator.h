// Collective communication between data-parallel ranks. The trainer is written for N ranks and talks
// only to this interface; `LocalCommunicator` is the 1-rank implementation (every collective is the
// identity). MPI (CPU buffers, src/dist/mpi_communicator.h) implements it for N ranks.
//
// Every implementation must be deterministic: the same inputs on the same world size give bitwise
// the same result on every run (sums are taken in rank order), so a run is reproducible and a
// resumed run continues exactly.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace esm2 {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual std::string name() const = 0;
  // In-place sum over ranks. `what` names the collective in timeout/failure diagnostics.
  virtual void allreduce_sum(float* data, size_t n, const char* what) = 0;
  virtual void allreduce_sum(double* data, size_t n, const char* what) = 0;
  virtual void broadcast(void* data, size_t bytes, int root, const char* what) = 0;
  virtual void barrier(const char* what) = 0;
  // ZeRO-1 collectives over equal shards of `shard_n` elements, shard r belonging to rank r.
  // in: [world × shard_n] (every rank's full buffer); out: [shard_n] = Σ over ranks (in rank order)
  // of in[rank()·shard_n, (rank()+1)·shard_n). `in` and `out` must not overlap.
  virtual void reduce_scatter_sum(const float* in, float* out, size_t shard_n, const char* what) = 0;
  // in: [shard_n] this rank's shard; out: [world × shard_n], shards in rank order. `in` may alias
  // out + rank()·shard_n.
  virtual void allgather(const float* in, float* out, size_t shard_n, const char* what) = 0;
  // Like allgather, but only `root` receives (out is ignored elsewhere and may be null there).
  virtual void gather(const float* in, float* out, size_t shard_n, int root, const char* what) = 0;
  bool is_root() const { return rank() == 0; }
};

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  std::string name() const override { return "local"; }
  void allreduce_sum(float*, size_t, const char*) override {}
  void allreduce_sum(double*, size_t, const char*) override {}
  void broadcast(void*, size_t, int, const char*) override {}
  void barrier(const char*) override {}
  void reduce_scatter_sum(const float* in, float* out, size_t n, const char*) override { copy(in, out, n); }
  void allgather(const float* in, float* out, size_t n, const char*) override { copy(in, out, n); }
  void gather(const float* in, float* out, size_t n, int, const char*) override { copy(in, out, n); }

 private:
  static void copy(const float* in, float* out, size_t n) {
    if (in != out) std::copy(in, in + n, out);
  }
};

// The communicator for this process: MPI when started by a launcher (mpirun/mpiexec: OMPI_COMM_WORLD_SIZE
// or PMI_SIZE; srun: SLURM_NTASKS with a PMI) and this build has MPI; otherwise LocalCommunicator.
// A collective that has not finished after `collective_timeout_s` seconds aborts every rank with
// "rank R: timed out in <what>". Throws esm2::Error if a launcher is detected but MPI is not built in.
std::unique_ptr<Communicator> make_communicator(double collective_timeout_s);

// Ends every rank of the job after an error on this one (MPI_Abort); no-op for LocalCommunicator.
// Call after reporting the error: without it the other ranks would wait in their next collective.
void abort_job(Communicator& comm, int exit_code);

}  // namespace esm2
