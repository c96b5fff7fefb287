// Communicator over MPI_COMM_WORLD (or a sub-communicator made by split) for CPU buffers (OpenMPI, MPICH; launched by mpirun or srun).
//
// Determinism: sums are never left to the MPI library's algorithm choice. A reduction is a
// reduce-scatter by point-to-point exchange (every rank receives every peer's copy of its own shard)
// followed by a sum in rank order 0, 1, …, W−1, then (for allreduce) an allgather. The result is
// bitwise reproducible for a given world size, and allreduce equals reduce-scatter + allgather
// exactly, so ZeRO-1 and the replicated optimizer see identical gradients.
//
// Diagnostics: MPI_ERRORS_RETURN turns MPI failures into esm2::Error naming the rank and the
// collective (ranks are MPI_COMM_WORLD ranks, also in sub-communicators); a watchdog thread aborts the job (MPI_Abort, every rank exits non-zero) when a
// collective has not finished within the timeout, printing "rank R: timed out in <what>".
#pragma once
#include <mpi.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "comm/communicator.h"

namespace esm2 {

class MpiCommunicator final : public Communicator {
 public:
  // Initialises MPI (MPI_Init_thread) unless already initialised; finalises it in the destructor.
  explicit MpiCommunicator(double collective_timeout_s);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string name() const override { return "mpi"; }
  void allreduce_sum(float* data, size_t n, const char* what) override;
  void allreduce_sum(double* data, size_t n, const char* what) override;
  void broadcast(void* data, size_t bytes, int root, const char* what) override;
  void barrier(const char* what) override;
  void reduce_scatter_sum(const float* in, float* out, size_t shard_n, const char* what) override;
  // Synchronous (MPI has no stream to overlap on); F32 and BF16 wire.
  void reduce_scatter_sum_async(const float* in, float* out, size_t shard_n, DType wire, const char* what) override;
  void allgather(const float* in, float* out, size_t shard_n, const char* what) override;
  void gather(const float* in, float* out, size_t shard_n, int root, const char* what) override;
  std::unique_ptr<Communicator> split(int color, int key, const char* what) override;
  void send(const void* data, size_t bytes, int peer, const char* what) override;
  void recv(void* data, size_t bytes, int peer, const char* what) override;
  void sendrecv(const void* send_data, size_t send_bytes, int dst, void* recv_data, size_t recv_bytes, int src,
                const char* what) override;

  // MPI_Abort on MPI_COMM_WORLD: ends every rank with `code`.
  [[noreturn]] void abort(int code);
  void abort_job(int exit_code) override { abort(exit_code); }

 private:
  // W: the element type that travels (float, double, or uint16_t bf16 bits); T: the sum's type.
  template <class W, class T>
  void reduce_scatter_impl(const W* in, T* out, size_t shard_n, std::vector<W>& recv, const char* what);
  template <class T>
  void allgather_impl(const T* in, T* out, size_t shard_n, const char* what);
  template <class T>
  void allreduce_impl(T* data, size_t n, std::vector<T>& scratch, const char* what);
  // A sub-communicator made by split(); frees `comm` when destroyed.
  MpiCommunicator(MPI_Comm comm, double collective_timeout_s, std::string label);
  void watchdog_loop();

  MPI_Comm comm_;
  int rank_ = 0, world_ = 1;
  int world_rank_ = 0;  // rank in MPI_COMM_WORLD: what diagnostics name
  bool owns_mpi_ = false, owns_comm_ = false;
  std::string label_;
  double timeout_s_;
  std::vector<float> scratch_f_;   // [padded n] allreduce staging
  std::vector<double> scratch_d_;
  std::vector<float> recv_f_;      // [world × chunk] reduce-scatter receive buffer
  std::vector<double> recv_d_;
  std::vector<uint16_t> recv_h_;   // the same for bf16 gradients
  std::vector<uint16_t> wire_h_;   // [world × shard] bf16-rounded input

  // Watchdog state: the collective in progress (nullptr when none) and when it started.
  std::atomic<const char*> current_{nullptr};
  std::atomic<int64_t> started_ns_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread watchdog_;

  friend class CollectiveScope;
};

// Adds the mpi transport to the registry (comm/communicator.h); the build's generated
// builtin_components.cpp calls it.
void register_mpi_communicator();

}  // namespace esm2
