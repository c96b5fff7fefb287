#include "comm/mpi/mpi_communicator.h"

#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace esm2 {

// Marks a collective as in progress for the watchdog.
class CollectiveScope {
 public:
  CollectiveScope(MpiCommunicator& c, const char* what) : c_(c) {
    c_.started_ns_.store(std::chrono::steady_clock::now().time_since_epoch().count());
    c_.current_.store(what);
  }
  ~CollectiveScope() { c_.current_.store(nullptr); }

 private:
  MpiCommunicator& c_;
};

namespace {

// MPI counts are int: larger buffers are exchanged in chunks of at most this many elements.
constexpr size_t kMaxChunk = size_t{1} << 28;

template <class T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<float>() { return MPI_FLOAT; }
template <>
MPI_Datatype mpi_type<double>() { return MPI_DOUBLE; }
template <>
MPI_Datatype mpi_type<uint16_t>() { return MPI_UINT16_T; }

// The value a wire element adds: bf16 bits widen to float, the rest are already the sum's type.
inline float widen(uint16_t bf16) { return bf16_to_f32(bf16); }
inline float widen(float x) { return x; }
inline double widen(double x) { return x; }

void check_mpi(int rc, int rank, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail("rank {}: MPI error in {}: {}", rank, what, std::string(msg, static_cast<size_t>(len)));
}

}  // namespace

MpiCommunicator::MpiCommunicator(double collective_timeout_s) : timeout_s_(collective_timeout_s) {
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) {
    // MULTIPLE: the watchdog thread may call MPI_Abort while the main thread is inside a collective.
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
    owns_mpi_ = true;
  }
  comm_ = MPI_COMM_WORLD;
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &world_);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
  if (timeout_s_ > 0) watchdog_ = std::thread([this] { watchdog_loop(); });
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, double collective_timeout_s, std::string label)
    : label_(std::move(label)), timeout_s_(collective_timeout_s) {
  comm_ = comm;
  owns_comm_ = true;
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &world_);
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_);
  if (timeout_s_ > 0) watchdog_ = std::thread([this] { watchdog_loop(); });
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key, const char* what) {
  MPI_Comm sub = MPI_COMM_NULL;
  {
    CollectiveScope scope(*this, what);
    check_mpi(MPI_Comm_split(comm_, color, key, &sub), world_rank_, what);
  }
  return std::unique_ptr<Communicator>(new MpiCommunicator(sub, timeout_s_, what));
}

void MpiCommunicator::send(const void* data, size_t bytes, int peer, const char* what) {
  CollectiveScope scope(*this, what);
  const auto* p = static_cast<const char*>(data);
  for (size_t c0 = 0; c0 < bytes; c0 += kMaxChunk)
    check_mpi(MPI_Send(p + c0, static_cast<int>(std::min(kMaxChunk, bytes - c0)), MPI_BYTE, peer, 5, comm_),
              world_rank_, what);
}

void MpiCommunicator::recv(void* data, size_t bytes, int peer, const char* what) {
  CollectiveScope scope(*this, what);
  auto* p = static_cast<char*>(data);
  for (size_t c0 = 0; c0 < bytes; c0 += kMaxChunk)
    check_mpi(MPI_Recv(p + c0, static_cast<int>(std::min(kMaxChunk, bytes - c0)), MPI_BYTE, peer, 5, comm_,
                       MPI_STATUS_IGNORE),
              world_rank_, what);
}

void MpiCommunicator::sendrecv(const void* send_data, size_t send_bytes, int dst, void* recv_data, size_t recv_bytes,
                               int src, const char* what) {
  CollectiveScope scope(*this, what);
  const auto* sp = static_cast<const char*>(send_data);
  auto* rp = static_cast<char*>(recv_data);
  const size_t total = std::max(send_bytes, recv_bytes);
  for (size_t c0 = 0; c0 < total; c0 += kMaxChunk) {
    MPI_Request reqs[2];
    int nreq = 0;
    if (c0 < recv_bytes)
      check_mpi(MPI_Irecv(rp + c0, static_cast<int>(std::min(kMaxChunk, recv_bytes - c0)), MPI_BYTE, src, 5, comm_,
                          &reqs[nreq++]),
                world_rank_, what);
    if (c0 < send_bytes)
      check_mpi(MPI_Isend(sp + c0, static_cast<int>(std::min(kMaxChunk, send_bytes - c0)), MPI_BYTE, dst, 5, comm_,
                          &reqs[nreq++]),
                world_rank_, what);
    check_mpi(MPI_Waitall(nreq, reqs, MPI_STATUSES_IGNORE), world_rank_, what);
  }
}

MpiCommunicator::~MpiCommunicator() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  if (owns_comm_) MPI_Comm_free(&comm_);
  if (owns_mpi_) MPI_Finalize();
}

void MpiCommunicator::watchdog_loop() {
  const auto poll = std::chrono::milliseconds(std::min<int64_t>(1000, std::max<int64_t>(10, int64_t(timeout_s_ * 100))));
  std::unique_lock<std::mutex> lk(mu_);
  while (!stopping_) {
    cv_.wait_for(lk, poll);
    const char* what = current_.load();
    if (stopping_ || !what) continue;
    const double elapsed =
        1e-9 * double(std::chrono::steady_clock::now().time_since_epoch().count() - started_ns_.load());
    if (elapsed >= timeout_s_ && current_.load() == what) {
      std::fprintf(stderr, "rank %d: timed out in %s after %.0f s (--collective-timeout); aborting all ranks\n",
                   world_rank_, what, elapsed);
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
  }
}

void MpiCommunicator::abort(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; this satisfies [[noreturn]]
}

template <class W, class T>
void MpiCommunicator::reduce_scatter_impl(const W* in, T* out, size_t shard_n, std::vector<W>& recv,
                                          const char* what) {
  CollectiveScope scope(*this, what);
  const MPI_Datatype type = mpi_type<W>();
  const size_t chunk_max = std::min(shard_n, kMaxChunk);
  recv.resize(static_cast<size_t>(world_) * chunk_max);
  std::vector<MPI_Request> reqs(2 * static_cast<size_t>(world_));
  for (size_t c0 = 0; c0 < shard_n; c0 += chunk_max) {
    const size_t len = std::min(chunk_max, shard_n - c0);
    const int count = static_cast<int>(len);
    int nreq = 0;
    for (int p = 0; p < world_; ++p) {
      if (p == rank_) continue;
      check_mpi(MPI_Irecv(recv.data() + size_t(p) * chunk_max, count, type, p, 1, comm_, &reqs[nreq++]),
                world_rank_, what);
      check_mpi(MPI_Isend(in + size_t(p) * shard_n + c0, count, type, p, 1, comm_, &reqs[nreq++]), world_rank_,
                what);
    }
    std::memcpy(recv.data() + size_t(rank_) * chunk_max, in + size_t(rank_) * shard_n + c0, len * sizeof(W));
    check_mpi(MPI_Waitall(nreq, reqs.data(), MPI_STATUSES_IGNORE), world_rank_, what);
    // Rank order, whatever order the messages arrived in: the bitwise-reproducible part.
    T* o = out + c0;
    for (size_t i = 0; i < len; ++i) o[i] = widen(recv[i]);
    for (int p = 1; p < world_; ++p) {
      const W* r = recv.data() + size_t(p) * chunk_max;
      for (size_t i = 0; i < len; ++i) o[i] += widen(r[i]);
    }
  }
}

template <class T>
void MpiCommunicator::allgather_impl(const T* in, T* out, size_t shard_n, const char* what) {
  CollectiveScope scope(*this, what);
  const MPI_Datatype type = mpi_type<T>();
  T* own = out + size_t(rank_) * shard_n;
  if (in != own) std::memmove(own, in, shard_n * sizeof(T));
  std::vector<MPI_Request> reqs(2 * static_cast<size_t>(world_));
  for (size_t c0 = 0; c0 < shard_n; c0 += kMaxChunk) {
    const int count = static_cast<int>(std::min(kMaxChunk, shard_n - c0));
    int nreq = 0;
    for (int p = 0; p < world_; ++p) {
      if (p == rank_) continue;
      check_mpi(MPI_Irecv(out + size_t(p) * shard_n + c0, count, type, p, 2, comm_, &reqs[nreq++]), world_rank_,
                what);
      check_mpi(MPI_Isend(own + c0, count, type, p, 2, comm_, &reqs[nreq++]), world_rank_, what);
    }
    check_mpi(MPI_Waitall(nreq, reqs.data(), MPI_STATUSES_IGNORE), world_rank_, what);
  }
}

template <class T>
void MpiCommunicator::allreduce_impl(T* data, size_t n, std::vector<T>& scratch, const char* what) {
  if (world_ == 1 || n == 0) return;
  // Padded to a multiple of world: the same shard layout ZeRO-1 uses, hence the same sums.
  const size_t shard = (n + size_t(world_) - 1) / size_t(world_);
  scratch.assign(shard * size_t(world_), T(0));
  std::memcpy(scratch.data(), data, n * sizeof(T));
  std::vector<T> mine(shard);
  if constexpr (std::is_same_v<T, float>)
    reduce_scatter_impl(scratch.data(), mine.data(), shard, recv_f_, what);
  else
    reduce_scatter_impl(scratch.data(), mine.data(), shard, recv_d_, what);
  allgather_impl(mine.data(), scratch.data(), shard, what);
  std::memcpy(data, scratch.data(), n * sizeof(T));
}

void MpiCommunicator::allreduce_sum(float* data, size_t n, const char* what) { allreduce_impl(data, n, scratch_f_, what); }
void MpiCommunicator::allreduce_sum(double* data, size_t n, const char* what) { allreduce_impl(data, n, scratch_d_, what); }

void MpiCommunicator::reduce_scatter_sum(const float* in, float* out, size_t shard_n, const char* what) {
  if (world_ == 1) {
    std::memmove(out, in, shard_n * sizeof(float));
    return;
  }
  reduce_scatter_impl(in, out, shard_n, recv_f_, what);
}

void MpiCommunicator::reduce_scatter_sum_async(const float* in, float* out, size_t shard_n, DType wire,
                                               const char* what) {
  if (wire == DType::F32) return reduce_scatter_sum(in, out, shard_n, what);
  ESM2_CHECK(wire == DType::BF16, "rank {}: mpi communicator cannot send gradients as {} (in {})", world_rank_,
             dtype_name(wire), what);
  // Every rank's copy is rounded, its own too: the sum is the same whichever rank computes it.
  const size_t n = size_t(world_) * shard_n;
  wire_h_.resize(n);
  for (size_t i = 0; i < n; ++i) wire_h_[i] = f32_to_bf16(in[i]);
  if (world_ == 1) {
    for (size_t i = 0; i < shard_n; ++i) out[i] = bf16_to_f32(wire_h_[i]);
    return;
  }
  reduce_scatter_impl(wire_h_.data(), out, shard_n, recv_h_, what);
}

void MpiCommunicator::allgather(const float* in, float* out, size_t shard_n, const char* what) {
  allgather_impl(in, out, shard_n, what);
}

void MpiCommunicator::gather(const float* in, float* out, size_t shard_n, int root, const char* what) {
  CollectiveScope scope(*this, what);
  for (size_t c0 = 0; c0 < shard_n; c0 += kMaxChunk) {
    const int count = static_cast<int>(std::min(kMaxChunk, shard_n - c0));
    if (rank_ != root) {
      check_mpi(MPI_Send(in + c0, count, MPI_FLOAT, root, 3, comm_), world_rank_, what);
      continue;
    }
    std::vector<MPI_Request> reqs;
    for (int p = 0; p < world_; ++p) {
      if (p == rank_) {
        std::memmove(out + size_t(p) * shard_n + c0, in + c0, size_t(count) * sizeof(float));
        continue;
      }
      reqs.emplace_back();
      check_mpi(MPI_Irecv(out + size_t(p) * shard_n + c0, count, MPI_FLOAT, p, 3, comm_, &reqs.back()), world_rank_,
                what);
    }
    check_mpi(MPI_Waitall(static_cast<int>(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE), world_rank_, what);
  }
}

void MpiCommunicator::broadcast(void* data, size_t bytes, int root, const char* what) {
  CollectiveScope scope(*this, what);
  auto* p = static_cast<char*>(data);
  for (size_t c0 = 0; c0 < bytes; c0 += kMaxChunk)
    check_mpi(MPI_Bcast(p + c0, static_cast<int>(std::min(kMaxChunk, bytes - c0)), MPI_BYTE, root, comm_),
              world_rank_, what);
}

void MpiCommunicator::barrier(const char* what) {
  CollectiveScope scope(*this, what);
  check_mpi(MPI_Barrier(comm_), world_rank_, what);
}

}  // namespace esm2
