// Communicator over NCCL for device buffers of the CUDA backend (one GPU per rank). Every NCCL call is
// enqueued on the backend's stream, so collectives are ordered with the model's kernels and need no
// host synchronisation; only the host-memory operations (double sums, broadcast, barrier) wait.
//
// Determinism, as MpiCommunicator: sums are never left to NCCL's algorithm choice. A reduction is a
// grouped ncclSend/ncclRecv exchange (every rank receives every peer's copy of its own shard, in
// chunks) followed by a kernel that adds the copies in rank order 0, 1, …, W−1 (fp32 accumulation for
// bf16). Runs are bitwise reproducible for a given world size, allreduce equals reduce-scatter +
// allgather exactly (ZeRO-1 and the replicated optimizer see identical gradients), and the sums are
// those the MPI path computes from the same inputs. The traffic equals a ring reduce-scatter's
// ((W−1)/W of the buffer per rank); on NVLink/NVSwitch the direct exchange costs about the same.
//
// Diagnostics: NCCL result codes become esm2::Error naming the rank and the collective. Each enqueued
// operation is followed by a CUDA event; a watchdog thread polls the oldest unfinished one and
// ncclCommGetAsyncError, and on a timeout (--collective-timeout) or an asynchronous NCCL error prints
// "rank R: timed out in <what>" (or the error), calls ncclCommAbort and ends the process non-zero:
// the launcher (`esm2 train --gpus N`, mpirun, srun) then ends the other ranks.
//
// This header is plain C++ (NCCL and CUDA types are forward-declared) so that C++-only code can include it.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"

struct ncclComm;
struct CUstream_st;
struct CUevent_st;

namespace esm2 {

class Backend;

// NCCL's 128-byte ncclUniqueId as 256 hex digits: how the `--gpus N` launcher hands it to its workers
// (environment variable ESM2_NCCL_ID). nccl_unique_id_hex() makes a new one; the process that made it
// runs NCCL's bootstrap root and must outlive the workers' initialisation.
std::string nccl_unique_id_hex();

class NcclCommunicator final : public Communicator {
 public:
  // Joins the world of `world` ranks identified by `id_hex` (nccl_unique_id_hex() of one process) as
  // `rank`, on the device and stream of `backend` (a CUDA backend). Collective over the world.
  // `bootstrap`: the communicator that carried the id (MPI under mpirun/srun), kept alive until this
  // one is destroyed (it owns MPI_Init/MPI_Finalize); may be null.
  NcclCommunicator(const std::string& id_hex, int rank, int world, Backend& backend, double collective_timeout_s,
                   std::unique_ptr<Communicator> bootstrap = nullptr);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string name() const override { return "nccl"; }
  // Device memory (the backend's):
  void allreduce_sum(float* data, size_t n, const char* what) override;
  void allreduce_sum_typed(void* data, size_t n, DType dtype, const char* what) override;  // F32, BF16
  void reduce_scatter_sum(const float* in, float* out, size_t shard_n, const char* what) override;
  // On a side stream that first waits for the work enqueued so far on the backend's stream; F32 and
  // BF16 wire (a kernel rounds the input into a wire buffer; the copies are summed in fp32).
  void reduce_scatter_sum_async(const float* in, float* out, size_t shard_n, DType wire, const char* what) override;
  void wait_async() override;
  void allgather(const float* in, float* out, size_t shard_n, const char* what) override;
  void gather(const float* in, float* out, size_t shard_n, int root, const char* what) override;
  // Stream-ordered, like every device operation here: later work on the backend's stream sees the
  // received data and may overwrite the sent buffer; the host does not wait.
  void send(const void* data, size_t bytes, int peer, const char* what) override;
  void recv(void* data, size_t bytes, int peer, const char* what) override;
  void sendrecv(const void* send_data, size_t send_bytes, int dst, void* recv_data, size_t recv_bytes, int src,
                const char* what) override;
  // Host memory, staged through a device buffer; these wait for the result:
  void allreduce_sum(double* data, size_t n, const char* what) override;
  void broadcast(void* data, size_t bytes, int root, const char* what) override;
  void barrier(const char* what) override;
  // ncclCommSplit: same device and stream, ranks by (key, old rank).
  std::unique_ptr<Communicator> split(int color, int key, const char* what) override;

  // ncclCommAbort, then ends this process with `code` (the launcher ends the others).
  [[noreturn]] void abort(int code);
  void abort_job(int exit_code) override { abort(exit_code); }
  int world_rank() const { return world_rank_; }

 private:
  struct Pending {
    CUevent_st* event;
    const char* what;
    std::chrono::steady_clock::time_point since;  // enqueue time, or when it became the oldest
  };
  // A communicator made by split(): shares the parent's device and stream.
  NcclCommunicator(ncclComm* comm, int world_rank, int device, CUstream_st* stream, double collective_timeout_s);
  void check(int nccl_result, const char* what) const;
  // An operation from before its first NCCL call (connection setup inside ncclGroupEnd can block the
  // host on a dead peer) until the CUDA event recorded after its last kernel has completed.
  class OpScope;
  void wait(const char* what);      // host waits for the stream (the watchdog covers hangs)
  // Device buffers grown on demand (never shrunk): received shard copies / host staging.
  // `stream`: the one whose queued work may still read the old buffer (synchronised before freeing it).
  void* grow(void*& buf, size_t& have, size_t bytes, CUstream_st* stream);
  // Out = T, or float for bf16 wire elements (the copies widened and summed in fp32). On `stream` with
  // the receive scratch `recv`/`recv_bytes` (one per stream: operations on both may be in flight).
  template <class T, class Out>
  void reduce_shards(const T* in, Out* out, const std::vector<size_t>& bounds, const char* what, CUstream_st* stream,
                     void*& recv, size_t& recv_bytes);
  CUstream_st* side_stream();
  template <class T>
  void allgather_shards(T* data, const std::vector<size_t>& bounds, const char* what);
  template <class T>
  void allreduce_impl(T* data, size_t n, const char* what);
  void watchdog_loop();
  [[noreturn]] void die(const std::string& message);

  ncclComm* comm_ = nullptr;
  std::unique_ptr<Communicator> bootstrap_;
  int rank_ = 0, world_ = 1, world_rank_ = 0, device_ = 0;
  CUstream_st* stream_ = nullptr;
  double timeout_s_ = 0;
  void* recv_ = nullptr;  // device: [world × chunk] peers' copies of this rank's shard
  size_t recv_bytes_ = 0;
  void* stage_ = nullptr;  // device: host buffers of the double/broadcast/barrier operations
  size_t stage_bytes_ = 0;
  // Async (overlapped) operations: their own stream, events and scratch.
  CUstream_st* side_ = nullptr;
  CUevent_st* fork_ = nullptr;  // recorded on stream_, waited for by side_ before each async operation
  CUevent_st* join_ = nullptr;  // recorded on side_, waited for by stream_ in wait_async()
  bool side_busy_ = false;      // async operations issued since the last wait_async()
  void* recv_async_ = nullptr;  // device: as recv_, for the side stream
  size_t recv_async_bytes_ = 0;
  void* wire_ = nullptr;  // device: [world × shard] bf16 copy of an async operation's input
  size_t wire_bytes_ = 0;

  // Watchdog state: operations enqueued and not yet seen complete, oldest first.
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> pending_;
  std::vector<CUevent_st*> free_events_;
  bool stopping_ = false;
  std::atomic<bool> dying_{false};
  std::thread watchdog_;
};

// Adds the nccl transport to the registry (comm/communicator.h); the build's generated
// builtin_components.cpp calls it.
void register_nccl_communicator();

}  // namespace esm2
