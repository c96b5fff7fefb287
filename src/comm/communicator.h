// Collective communication between ranks. The trainer and the model are written for N ranks and talk
// only to this interface; `LocalCommunicator` is the 1-rank implementation (every collective is the
// identity). MPI (CPU buffers, src/comm/mpi/mpi_communicator.h) implements it for N ranks; groups of a
// DP × TP × PP grid are sub-communicators made with split() (src/parallel/parallel_layout.h).
//
// Memory: the float collectives, allreduce_sum_typed and send/recv/sendrecv take buffers in the memory
// of the backend this communicator serves (host memory for MPI with the cpu backend, device memory for
// NCCL with the cuda backend), so model and optimizer code pass their backend buffers directly. The
// double collectives, broadcast and barrier take host memory.
//
// Every implementation must be deterministic: the same inputs on the same world size give bitwise
// the same result on every run (sums are taken in rank order), so a run is reproducible and a
// resumed run continues exactly.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

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
  // In-place sum of n elements of `dtype` (F32 everywhere; BF16 where the implementation supports it,
  // e.g. tensor-parallel partial activations on GPUs). The default handles F32 through the float overload.
  virtual void allreduce_sum_typed(void* data, size_t n, DType dtype, const char* what);

  // Overlapped gradient reduction (ZeRO-1 buckets). The sum of reduce_scatter_sum (in: [world × shard_n]
  // fp32, out: [shard_n] fp32, rank-ordered), with `wire` the dtype that travels: F32, or BF16 (every
  // rank's input, its own included, is rounded to bf16 — round to nearest even — and the copies are
  // added in rank order in fp32; out stays fp32: half the traffic, one rounding per rank).
  // May return before the result exists: NCCL runs it on a side stream that first waits for the work
  // already enqueued on the backend's stream, so it overlaps the compute enqueued after it. Until
  // wait_async(), `in` must not change and `out` must not be read. Synchronous implementations (MPI,
  // local) finish before returning. The default: F32 through reduce_scatter_sum; BF16 is an error.
  virtual void reduce_scatter_sum_async(const float* in, float* out, size_t shard_n, DType wire, const char* what);
  // Work enqueued after this on the backend's stream (the host, for host memory) sees the results of
  // every async operation issued before it.
  virtual void wait_async() {}

  // The ranks that pass the same `color` form a new communicator, ranked by (key, old rank) as
  // MPI_Comm_split does. Collective: every rank of this communicator must call it.
  virtual std::unique_ptr<Communicator> split(int color, int key, const char* what) = 0;

  // Point-to-point (pipeline parallel). Blocking: returns when `data` may be reused / has arrived.
  // Messages between one pair of ranks arrive in the order they were sent.
  virtual void send(const void* data, size_t bytes, int peer, const char* what) = 0;
  virtual void recv(void* data, size_t bytes, int peer, const char* what) = 0;
  // Send to `dst` and receive from `src` at once (no deadlock when two stages exchange both ways).
  // A side with 0 bytes is skipped.
  virtual void sendrecv(const void* send_data, size_t send_bytes, int dst, void* recv_data, size_t recv_bytes,
                        int src, const char* what) = 0;

  // Ends every rank of the job with `exit_code` (MPI_Abort; NCCL: ncclCommAbort and exit, the launcher
  // ends the others). Transports of a single process have nothing to end and return.
  virtual void abort_job(int exit_code) {}

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
  std::unique_ptr<Communicator> split(int, int, const char*) override { return std::make_unique<LocalCommunicator>(); }
  // A single rank has no peer: a pipeline of one stage never sends.
  void send(const void*, size_t, int peer, const char* what) override { no_peer(peer, what); }
  void recv(void*, size_t, int peer, const char* what) override { no_peer(peer, what); }
  void sendrecv(const void*, size_t, int dst, void*, size_t, int, const char* what) override { no_peer(dst, what); }

 private:
  static void copy(const float* in, float* out, size_t n) {
    if (in != out) std::copy(in, in + n, out);
  }
  [[noreturn]] static void no_peer(int peer, const char* what);
};

// How this process was started. `launcher` is empty for a single process, "esm2 --gpus" for a worker
// of `esm2 train --gpus N` (ESM2_RANK, ESM2_WORLD_SIZE, ESM2_LOCAL_RANK, ESM2_NCCL_ID), else the
// MPI/Slurm variable that gave it away (OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK, SLURM_NTASKS).
// rank/world/local_rank come from the environment where it says (-1 where it does not: PMIx alone).
struct LaunchInfo {
  std::string launcher;
  int rank = 0, world = 1, local_rank = 0;
  bool multi_process() const { return !launcher.empty(); }
};
LaunchInfo detect_launch();

class Backend;

// ---- Transport registry ----
// Multi-process transports (src/comm/mpi, src/comm/nccl) are libraries of their own that register
// themselves: the executable's builtin_components.cpp, generated by CMake from the transports it
// links, calls each one's register function before main. This library names none of them, so it
// links without them.
struct CommunicatorTransport {
  std::string name;  // "mpi", "nccl"
  // Joins the job the launcher started (mpirun/mpiexec/srun): MPI. Null for transports that need an id.
  std::function<std::unique_ptr<Communicator>(double collective_timeout_s)> join_launched_job;
  // Transports bootstrapped by a shared id (NCCL): new_id makes one (the process that made it must
  // outlive the others' initialisation), join_with_id joins world `world` as `rank` on `backend`'s
  // device; `bootstrap` (may be null: the communicator that carried the id) lives as long as the result.
  std::function<std::string()> new_id;
  std::function<std::unique_ptr<Communicator>(const std::string& id, int rank, int world, Backend& backend,
                                              double collective_timeout_s, std::unique_ptr<Communicator> bootstrap)>
      join_with_id;
};
// A second registration of one name is an error.
void register_communicator(CommunicatorTransport transport);
// Null when this build has no such transport.
const CommunicatorTransport* find_communicator(std::string_view name);
// Names of the registered transports, in registration order.
std::vector<std::string> registered_communicators();

// The communicator for this process, serving the buffers of `backend` (nullptr: host memory):
// - a worker of `esm2 train --gpus N`: NCCL (the id comes from the launcher's environment);
// - under mpirun/mpiexec/srun: NCCL when the backend is cuda (the id travels over MPI, which stays
//   initialised for the communicator's lifetime), MPI for the cpu backend;
// - otherwise LocalCommunicator.
// The CUDA backend must already run on this rank's GPU (gpu_for_local_rank). A collective that has not
// finished after `collective_timeout_s` seconds ends every rank with "rank R: timed out in <what>".
// Throws esm2::Error when the launch needs MPI or NCCL and this build lacks it, or pairs a backend with
// a transport that cannot move its buffers (a multi-process `--gpus` launch on the cpu backend).
std::unique_ptr<Communicator> make_communicator(double collective_timeout_s, Backend* backend = nullptr);

// Ends every rank of the job after an error on this one (MPI_Abort; NCCL: ncclCommAbort and exit, the
// launcher ends the others); no-op for LocalCommunicator.
// Call after reporting the error: without it the other ranks would wait in their next collective.
void abort_job(Communicator& comm, int exit_code);

}  // namespace esm2
