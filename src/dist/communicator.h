// Collective communication between data-parallel ranks. The trainer is written for N ranks and talks
// only to this interface; `LocalCommunicator` is the 1-rank implementation (every collective is the
// identity). MPI (CPU buffers) and NCCL (GPU buffers) implementations live beside it.
#pragma once
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
};

}  // namespace esm2
