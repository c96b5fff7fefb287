#include "comm/nccl/nccl_communicator.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <type_traits>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"
#include "comm/nccl/nccl_rank_sum.cuh"

namespace esm2 {

namespace {

using Clock = std::chrono::steady_clock;

// Received shard copies per exchange round: [world × chunk] elements within this budget, so a
// reduction of any size needs a bounded scratch buffer.
constexpr size_t kRecvBudgetBytes = size_t{256} << 20;
constexpr size_t kMinChunkElems = size_t{1} << 16;
// Host-memory operations move at most this much per round through the staging buffer.
constexpr size_t kStageBytes = size_t{64} << 20;

template <class T>
ncclDataType_t nccl_type();
template <>
ncclDataType_t nccl_type<float>() { return ncclFloat32; }
template <>
ncclDataType_t nccl_type<double>() { return ncclFloat64; }
template <>
ncclDataType_t nccl_type<__nv_bfloat16>() { return ncclBfloat16; }

cudaStream_t as_stream(CUstream_st* s) { return s; }

// Shard bounds [W+1] of an n-element buffer split into W pieces of ⌈n/W⌉ (the last ones shorter or
// empty): the layout MpiCommunicator's padded all-reduce and ZeRO-1 use, hence the same sums.
std::vector<size_t> even_bounds(size_t n, int world) {
  const size_t s = (n + size_t(world) - 1) / size_t(world);
  std::vector<size_t> b(size_t(world) + 1);
  for (int p = 0; p <= world; ++p) b[size_t(p)] = std::min(n, s * size_t(p));
  return b;
}

ncclUniqueId parse_id(const std::string& hex) {
  ncclUniqueId id;
  ESM2_CHECK(hex.size() == 2 * sizeof id.internal,
             "NCCL unique id (ESM2_NCCL_ID): expected {} hex digits, got {}", 2 * sizeof id.internal, hex.size());
  auto nibble = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    fail("NCCL unique id (ESM2_NCCL_ID): '{}' is not a hex digit", c);
  };
  for (size_t i = 0; i < sizeof id.internal; ++i)
    id.internal[i] = static_cast<char>(nibble(hex[2 * i]) * 16 + nibble(hex[2 * i + 1]));
  return id;
}

}  // namespace

std::string nccl_unique_id_hex() {
  ncclUniqueId id;
  const ncclResult_t r = ncclGetUniqueId(&id);
  ESM2_CHECK(r == ncclSuccess, "ncclGetUniqueId failed: {} ({})", ncclGetErrorString(r), ncclGetLastError(nullptr));
  static const char* digits = "0123456789abcdef";
  std::string hex;
  for (char c : id.internal) {
    const auto b = static_cast<unsigned char>(c);
    hex += digits[b >> 4];
    hex += digits[b & 15];
  }
  return hex;
}

NcclCommunicator::NcclCommunicator(const std::string& id_hex, int rank, int world, Backend& backend,
                                   double collective_timeout_s, std::unique_ptr<Communicator> bootstrap)
    : bootstrap_(std::move(bootstrap)),
      rank_(rank),
      world_(world),
      world_rank_(rank),
      device_(cuda_backend_device(backend)),
      stream_(static_cast<CUstream_st*>(cuda_backend_stream(backend))),
      timeout_s_(collective_timeout_s) {
  ESM2_CHECK(world >= 1 && rank >= 0 && rank < world, "nccl: rank {} outside a world of {}", rank, world);
  const ncclUniqueId id = parse_id(id_hex);
  const cudaError_t e = cudaSetDevice(device_);
  ESM2_CHECK(e == cudaSuccess, "rank {}: cudaSetDevice({}) failed: {}", rank, device_, cudaGetErrorString(e));
  // Initialisation waits for every rank: the watchdog covers it like a collective (no event: it is
  // done when the entry is removed below).
  if (timeout_s_ > 0) {
    pending_.push_back({nullptr, "NCCL communicator initialisation", Clock::now()});
    watchdog_ = std::thread([this] { watchdog_loop(); });
  }
  ncclComm_t c = nullptr;
  const ncclResult_t r = ncclCommInitRank(&c, world, id, rank);
  {
    std::lock_guard<std::mutex> lk(mu_);
    comm_ = c;
    if (timeout_s_ > 0) pending_.pop_front();
  }
  if (r != ncclSuccess) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    fail("rank {}: NCCL error in communicator initialisation ({} ranks, GPU {}): {} ({})", rank, world, device_,
         ncclGetErrorString(r), ncclGetLastError(nullptr));
  }
}

NcclCommunicator::NcclCommunicator(ncclComm* comm, int world_rank, int device, CUstream_st* stream,
                                   double collective_timeout_s)
    : comm_(comm), world_rank_(world_rank), device_(device), stream_(stream), timeout_s_(collective_timeout_s) {
  int n = 0, r = 0;
  check(ncclCommCount(comm_, &n), "ncclCommCount");
  check(ncclCommUserRank(comm_, &r), "ncclCommUserRank");
  world_ = n;
  rank_ = r;
  if (timeout_s_ > 0) watchdog_ = std::thread([this] { watchdog_loop(); });
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_) cudaStreamSynchronize(as_stream(stream_));
  if (side_) cudaStreamSynchronize(as_stream(side_));
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  for (const Pending& p : pending_)
    if (p.event) cudaEventDestroy(p.event);
  for (CUevent_st* e : free_events_) cudaEventDestroy(e);
  if (comm_) ncclCommDestroy(comm_);
  cudaFree(recv_);
  cudaFree(stage_);
  cudaFree(recv_async_);
  cudaFree(wire_);
  if (fork_) cudaEventDestroy(fork_);
  if (join_) cudaEventDestroy(join_);
  if (side_) cudaStreamDestroy(as_stream(side_));
  bootstrap_.reset();  // MPI_Finalize (if MPI carried the id) after NCCL is gone
}

void NcclCommunicator::check(int nccl_result, const char* what) const {
  const auto r = static_cast<ncclResult_t>(nccl_result);
  if (r == ncclSuccess) return;
  fail("rank {}: NCCL error in {}: {} ({})", world_rank_, what, ncclGetErrorString(r), ncclGetLastError(comm_));
}

void NcclCommunicator::die(const std::string& message) {
  if (!dying_.exchange(true)) {
    std::fprintf(stderr, "%s\n", message.c_str());
    std::fflush(stdout);
    std::fflush(stderr);
    // Unblocks NCCL kernels waiting for a peer; the process ends either way.
    if (comm_) ncclCommAbort(comm_);
    std::_Exit(1);
  }
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));  // the other thread is ending the process
}

void NcclCommunicator::abort(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  if (!dying_.exchange(true)) {
    if (comm_) ncclCommAbort(comm_);
    std::_Exit(code);
  }
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

class NcclCommunicator::OpScope {
 public:
  OpScope(NcclCommunicator& c, const char* what) : c_(c), what_(what) {
    if (c_.timeout_s_ <= 0) return;
    std::lock_guard<std::mutex> lk(c_.mu_);
    c_.pending_.push_back({nullptr, what, Clock::now()});
    active_ = true;
  }
  // Everything is enqueued on the stream: the watchdog now waits for an event after it.
  void enqueued() { enqueued(c_.stream_); }
  void enqueued(CUstream_st* stream) {
    if (!active_) return;
    std::lock_guard<std::mutex> lk(c_.mu_);
    CUevent_st* e = nullptr;
    if (!c_.free_events_.empty()) {
      e = c_.free_events_.back();
      c_.free_events_.pop_back();
    } else {
      const cudaError_t ce = cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
      ESM2_CHECK(ce == cudaSuccess, "rank {}: cudaEventCreate failed in {}: {}", c_.world_rank_, what_,
                 cudaGetErrorString(ce));
    }
    const cudaError_t ce = cudaEventRecord(e, as_stream(stream));
    ESM2_CHECK(ce == cudaSuccess, "rank {}: cudaEventRecord failed in {}: {}", c_.world_rank_, what_,
               cudaGetErrorString(ce));
    c_.pending_.back().event = e;  // the main thread is the only producer: back() is this operation
    active_ = false;
  }
  ~OpScope() {
    if (!active_) return;
    // An error was thrown before the operation was enqueued: nothing to wait for.
    std::lock_guard<std::mutex> lk(c_.mu_);
    c_.pending_.pop_back();
  }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  NcclCommunicator& c_;
  const char* what_;
  bool active_ = false;
};

void NcclCommunicator::wait(const char* what) {
  const cudaError_t e = cudaStreamSynchronize(as_stream(stream_));
  ESM2_CHECK(e == cudaSuccess, "rank {}: CUDA error in {}: {}", world_rank_, what, cudaGetErrorString(e));
}

void NcclCommunicator::watchdog_loop() {
  cudaSetDevice(device_);
  const auto poll = std::chrono::milliseconds(std::min<int64_t>(1000, std::max<int64_t>(10, int64_t(timeout_s_ * 100))));
  std::unique_lock<std::mutex> lk(mu_);
  while (!stopping_) {
    cv_.wait_for(lk, poll);
    if (stopping_) break;
    // Retire finished operations; the next one's clock starts when it becomes the oldest, so time
    // spent queued behind compute does not count.
    while (!pending_.empty() && pending_.front().event) {
      const cudaError_t q = cudaEventQuery(pending_.front().event);
      if (q == cudaErrorNotReady) break;
      if (q != cudaSuccess)
        die(fmt::format("rank {}: CUDA error while in {}: {}; aborting", world_rank_, pending_.front().what,
                        cudaGetErrorString(q)));
      free_events_.push_back(pending_.front().event);
      pending_.pop_front();
      if (!pending_.empty()) pending_.front().since = std::max(pending_.front().since, Clock::now());
    }
    const char* what = pending_.empty() ? "(between collectives)" : pending_.front().what;
    if (comm_) {
      ncclResult_t async = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress)
        die(fmt::format("rank {}: NCCL error in {}: {} ({}); aborting", world_rank_, what, ncclGetErrorString(async),
                        ncclGetLastError(comm_)));
    }
    if (pending_.empty()) continue;
    const double elapsed = std::chrono::duration<double>(Clock::now() - pending_.front().since).count();
    if (elapsed >= timeout_s_)
      die(fmt::format("rank {}: timed out in {} after {:.0f} s (--collective-timeout); aborting", world_rank_, what,
                      elapsed));
  }
}

void* NcclCommunicator::grow(void*& buf, size_t& have, size_t bytes, CUstream_st* stream) {
  if (have >= bytes) return buf;
  if (buf) {
    // Queued operations may still use the old buffer.
    const cudaError_t se = cudaStreamSynchronize(as_stream(stream));
    ESM2_CHECK(se == cudaSuccess, "rank {}: CUDA error in scratch reallocation: {}", world_rank_, cudaGetErrorString(se));
    cudaFree(buf);
    buf = nullptr;
    have = 0;
  }
  const cudaError_t e = cudaMalloc(&buf, bytes);
  ESM2_CHECK(e == cudaSuccess, "rank {}: nccl communicator: cannot allocate {:.1f} MiB of device scratch: {}",
             world_rank_, double(bytes) / 1048576.0, cudaGetErrorString(e));
  have = bytes;
  return buf;
}

// Rank r's result: out[0, len_r) = Σ in rank order of every rank's in[bounds[r] + ·]. Each round moves a
// chunk of every shard: rank r sends in[bounds[p] + c0, …) to each peer p and receives the peers'
// copies of its own chunk into recv_, then adds them. Every rank derives the same rounds and lengths
// from `bounds`, so the sends and receives always match (zero-length ones are skipped on both sides).
template <class T, class Out>
void NcclCommunicator::reduce_shards(const T* in, Out* out, const std::vector<size_t>& bounds, const char* what,
                                     CUstream_st* stream, void*& recv_buf, size_t& recv_bytes) {
  const size_t r = size_t(rank_), w = size_t(world_);
  auto len_of = [&](size_t p) { return bounds[p + 1] - bounds[p]; };
  size_t longest = 0;
  for (size_t p = 0; p < w; ++p) longest = std::max(longest, len_of(p));
  if (longest == 0) return;
  const size_t chunk = std::min(longest, std::max(kMinChunkElems, kRecvBudgetBytes / (w * sizeof(T))));
  T* recv = static_cast<T*>(grow(recv_buf, recv_bytes, w * chunk * sizeof(T), stream));
  const ncclDataType_t type = nccl_type<T>();
  OpScope op(*this, what);
  for (size_t c0 = 0; c0 < longest; c0 += chunk) {
    auto piece = [&](size_t p) { return len_of(p) > c0 ? std::min(chunk, len_of(p) - c0) : size_t{0}; };
    const size_t mine = piece(r);
    check(ncclGroupStart(), what);
    for (size_t p = 0; p < w; ++p) {
      if (p == r) continue;
      if (const size_t n = piece(p)) check(ncclSend(in + bounds[p] + c0, n, type, int(p), comm_, as_stream(stream)), what);
      if (mine) check(ncclRecv(recv + p * chunk, mine, type, int(p), comm_, as_stream(stream)), what);
    }
    check(ncclGroupEnd(), what);
    if constexpr (std::is_same_v<T, Out>)
      nccl_detail::launch_rank_sum<T>(out + c0, recv, chunk, in + bounds[r] + c0, rank_, world_, mine, as_stream(stream));
    else
      nccl_detail::launch_rank_sum_widen(out + c0, recv, chunk, in + bounds[r] + c0, rank_, world_, mine,
                                         as_stream(stream));
  }
  op.enqueued(stream);
}

// data[bounds[p], bounds[p+1]) of every rank p → everyone (shards of unequal length allowed).
template <class T>
void NcclCommunicator::allgather_shards(T* data, const std::vector<size_t>& bounds, const char* what) {
  const size_t r = size_t(rank_);
  const size_t mine = bounds[r + 1] - bounds[r];
  const ncclDataType_t type = nccl_type<T>();
  OpScope op(*this, what);
  check(ncclGroupStart(), what);
  for (size_t p = 0; p < size_t(world_); ++p) {
    if (p == r) continue;
    if (mine) check(ncclSend(data + bounds[r], mine, type, int(p), comm_, as_stream(stream_)), what);
    if (const size_t n = bounds[p + 1] - bounds[p])
      check(ncclRecv(data + bounds[p], n, type, int(p), comm_, as_stream(stream_)), what);
  }
  check(ncclGroupEnd(), what);
  op.enqueued();
}

template <class T>
void NcclCommunicator::allreduce_impl(T* data, size_t n, const char* what) {
  if (world_ == 1 || n == 0) return;
  const std::vector<size_t> bounds = even_bounds(n, world_);
  // In place: rank r's shard is overwritten only by its own sum kernel, after the peers' copies of it
  // arrived; the regions it sends belong to other shards.
  reduce_shards(data, data + bounds[size_t(rank_)], bounds, what, stream_, recv_, recv_bytes_);
  allgather_shards(data, bounds, what);
}

void NcclCommunicator::allreduce_sum(float* data, size_t n, const char* what) { allreduce_impl(data, n, what); }

void NcclCommunicator::allreduce_sum_typed(void* data, size_t n, DType dtype, const char* what) {
  if (dtype == DType::F32) return allreduce_impl(static_cast<float*>(data), n, what);
  if (dtype == DType::BF16) return allreduce_impl(static_cast<__nv_bfloat16*>(data), n, what);
  fail("rank {}: nccl communicator cannot sum {} buffers (in {}; F32 and BF16 are supported)", world_rank_,
       dtype_name(dtype), what);
}

void NcclCommunicator::reduce_scatter_sum(const float* in, float* out, size_t shard_n, const char* what) {
  if (world_ == 1) {
    if (in == out || shard_n == 0) return;
    const cudaError_t e = cudaMemcpyAsync(out, in, shard_n * sizeof(float), cudaMemcpyDeviceToDevice, as_stream(stream_));
    ESM2_CHECK(e == cudaSuccess, "rank {}: CUDA error in {}: {}", world_rank_, what, cudaGetErrorString(e));
    return;
  }
  const std::vector<size_t> bounds = even_bounds(size_t(world_) * shard_n, world_);  // p · shard_n
  reduce_shards(in, out, bounds, what, stream_, recv_, recv_bytes_);
}

// One communicator on two streams is safe because NCCL serialises a communicator's kernels itself:
// each launch first makes its stream wait for the communicator's internal "strong" deviceStream (the
// previous NCCL kernel of this communicator, whatever stream it ran on), and afterwards advances it
// past the new kernel (NCCL 2.28 src/enqueue.cc: ncclLaunchPrepare, ncclLaunchFinish; 2.14 already
// did the same). So this communicator's kernels run in the order the host issued them, and every
// rank issues the same sequence (the optimizer's bucket order and the trainer's synchronous
// collectives are the same program everywhere); ZeRO-1 also joins the side stream (wait_async) before
// its next synchronous collective here. Not ordered by default are kernels of *different*
// communicators (the world's stop-decision all-reduce, the tensor-parallel all-reduces on the
// backend's stream beside a data-parallel bucket on the side stream): they rely on the GPU fitting
// both at once (an NCCL kernel takes one block per channel), as NCCL's documentation warns and as
// Megatron overlaps them. NCCL_LAUNCH_ORDER_IMPLICIT=1 (NCCL >= 2.26) extends the host-issue-order
// rule to every communicator of a device should that ever hang.
CUstream_st* NcclCommunicator::side_stream() {
  if (side_) return side_;
  auto ok = [&](cudaError_t e, const char* call) {
    ESM2_CHECK(e == cudaSuccess, "rank {}: {} failed (overlapped gradient reduction): {}", world_rank_, call,
               cudaGetErrorString(e));
  };
  cudaStream_t s = nullptr;
  ok(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  ok(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming), "cudaEventCreate");
  ok(cudaEventCreateWithFlags(&join_, cudaEventDisableTiming), "cudaEventCreate");
  side_ = s;
  return side_;
}

void NcclCommunicator::reduce_scatter_sum_async(const float* in, float* out, size_t shard_n, DType wire,
                                                const char* what) {
  ESM2_CHECK(wire == DType::F32 || wire == DType::BF16, "rank {}: nccl communicator cannot send gradients as {} (in {})",
             world_rank_, dtype_name(wire), what);
  CUstream_st* side = side_stream();
  // Start after the work already enqueued on the backend's stream: the gradients of this bucket.
  auto ok = [&](cudaError_t e) {
    ESM2_CHECK(e == cudaSuccess, "rank {}: CUDA error in {}: {}", world_rank_, what, cudaGetErrorString(e));
  };
  ok(cudaEventRecord(fork_, as_stream(stream_)));
  ok(cudaStreamWaitEvent(as_stream(side), fork_, 0));
  side_busy_ = true;
  const size_t n = size_t(world_) * shard_n;
  const std::vector<size_t> bounds = even_bounds(size_t(world_) * shard_n, world_);  // p · shard_n
  if (wire == DType::F32) {
    if (world_ == 1) {
      if (in != out && shard_n) ok(cudaMemcpyAsync(out, in, shard_n * sizeof(float), cudaMemcpyDeviceToDevice, as_stream(side)));
      return;
    }
    return reduce_shards(in, out, bounds, what, side, recv_async_, recv_async_bytes_);
  }
  // bf16 wire: every copy rounded once (the own one too, so every rank's sum is the MPI path's).
  auto* w = static_cast<__nv_bfloat16*>(grow(wire_, wire_bytes_, n * sizeof(__nv_bfloat16), side));
  nccl_detail::launch_round_to_bf16(w, in, n, as_stream(side));
  if (world_ == 1) return nccl_detail::launch_rank_sum_widen(out, nullptr, 0, w, 0, 1, shard_n, as_stream(side));
  reduce_shards(static_cast<const __nv_bfloat16*>(w), out, bounds, what, side, recv_async_, recv_async_bytes_);
}

void NcclCommunicator::wait_async() {
  if (!side_busy_) return;
  cudaError_t e = cudaEventRecord(join_, as_stream(side_));
  if (e == cudaSuccess) e = cudaStreamWaitEvent(as_stream(stream_), join_, 0);
  ESM2_CHECK(e == cudaSuccess, "rank {}: CUDA error joining the gradient reduction stream: {}", world_rank_,
             cudaGetErrorString(e));
  side_busy_ = false;
}

void NcclCommunicator::allgather(const float* in, float* out, size_t shard_n, const char* what) {
  if (shard_n == 0) return;
  // NCCL's in-place form is in == out + rank·shard_n, which the interface allows; no arithmetic, so
  // NCCL's own algorithm is deterministic here.
  OpScope op(*this, what);
  check(ncclAllGather(in, out, shard_n, ncclFloat32, comm_, as_stream(stream_)), what);
  op.enqueued();
}

void NcclCommunicator::gather(const float* in, float* out, size_t shard_n, int root, const char* what) {
  if (shard_n == 0) return;
  OpScope op(*this, what);
  check(ncclGroupStart(), what);
  if (rank_ != root) {
    check(ncclSend(in, shard_n, ncclFloat32, root, comm_, as_stream(stream_)), what);
  } else {
    for (int p = 0; p < world_; ++p)
      if (p != rank_) check(ncclRecv(out + size_t(p) * shard_n, shard_n, ncclFloat32, p, comm_, as_stream(stream_)), what);
  }
  check(ncclGroupEnd(), what);
  float* own = rank_ == root ? out + size_t(rank_) * shard_n : nullptr;
  if (own && own != in) {
    const cudaError_t e =
        cudaMemcpyAsync(own, in, shard_n * sizeof(float), cudaMemcpyDeviceToDevice, as_stream(stream_));
    ESM2_CHECK(e == cudaSuccess, "rank {}: CUDA error in {}: {}", world_rank_, what, cudaGetErrorString(e));
  }
  op.enqueued();
}

void NcclCommunicator::send(const void* data, size_t bytes, int peer, const char* what) {
  if (bytes == 0) return;
  OpScope op(*this, what);
  check(ncclSend(data, bytes, ncclUint8, peer, comm_, as_stream(stream_)), what);
  op.enqueued();
}

void NcclCommunicator::recv(void* data, size_t bytes, int peer, const char* what) {
  if (bytes == 0) return;
  OpScope op(*this, what);
  check(ncclRecv(data, bytes, ncclUint8, peer, comm_, as_stream(stream_)), what);
  op.enqueued();
}

void NcclCommunicator::sendrecv(const void* send_data, size_t send_bytes, int dst, void* recv_data,
                                size_t recv_bytes, int src, const char* what) {
  if (send_bytes == 0 && recv_bytes == 0) return;
  OpScope op(*this, what);
  check(ncclGroupStart(), what);
  if (send_bytes) check(ncclSend(send_data, send_bytes, ncclUint8, dst, comm_, as_stream(stream_)), what);
  if (recv_bytes) check(ncclRecv(recv_data, recv_bytes, ncclUint8, src, comm_, as_stream(stream_)), what);
  check(ncclGroupEnd(), what);
  op.enqueued();
}

void NcclCommunicator::allreduce_sum(double* data, size_t n, const char* what) {
  if (world_ == 1 || n == 0) return;
  auto* d = static_cast<double*>(grow(stage_, stage_bytes_, n * sizeof(double), stream_));
  auto cuda_ok = [&](cudaError_t e) {
    ESM2_CHECK(e == cudaSuccess, "rank {}: CUDA error in {}: {}", world_rank_, what, cudaGetErrorString(e));
  };
  cuda_ok(cudaMemcpyAsync(d, data, n * sizeof(double), cudaMemcpyHostToDevice, as_stream(stream_)));
  allreduce_impl(d, n, what);
  cuda_ok(cudaMemcpyAsync(data, d, n * sizeof(double), cudaMemcpyDeviceToHost, as_stream(stream_)));
  wait(what);
}

void NcclCommunicator::broadcast(void* data, size_t bytes, int root, const char* what) {
  if (world_ == 1 || bytes == 0) return;
  auto* host = static_cast<char*>(data);
  auto* d = static_cast<char*>(grow(stage_, stage_bytes_, std::min(bytes, kStageBytes), stream_));
  auto cuda_ok = [&](cudaError_t e) {
    ESM2_CHECK(e == cudaSuccess, "rank {}: CUDA error in {}: {}", world_rank_, what, cudaGetErrorString(e));
  };
  for (size_t c0 = 0; c0 < bytes; c0 += kStageBytes) {
    const size_t len = std::min(kStageBytes, bytes - c0);
    OpScope op(*this, what);
    if (rank_ == root) cuda_ok(cudaMemcpyAsync(d, host + c0, len, cudaMemcpyHostToDevice, as_stream(stream_)));
    check(ncclBroadcast(d, d, len, ncclUint8, root, comm_, as_stream(stream_)), what);
    op.enqueued();
    if (rank_ != root) cuda_ok(cudaMemcpyAsync(host + c0, d, len, cudaMemcpyDeviceToHost, as_stream(stream_)));
    wait(what);
  }
}

void NcclCommunicator::barrier(const char* what) {
  if (world_ == 1) return;
  auto* d = static_cast<float*>(grow(stage_, stage_bytes_, sizeof(float), stream_));
  OpScope op(*this, what);
  check(ncclAllReduce(d, d, 1, ncclFloat32, ncclSum, comm_, as_stream(stream_)), what);
  op.enqueued();
  wait(what);
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key, const char* what) {
  ESM2_CHECK(color >= 0, "rank {}: split in {}: color must be >= 0 (got {})", world_rank_, what, color);
  ncclComm_t sub = nullptr;
  OpScope op(*this, what);
  check(ncclCommSplit(comm_, color, key, &sub, nullptr), what);
  op.enqueued();
  ESM2_CHECK(sub != nullptr, "rank {}: ncclCommSplit in {} returned no communicator", world_rank_, what);
  return std::unique_ptr<Communicator>(new NcclCommunicator(sub, world_rank_, device_, stream_, timeout_s_));
}

}  // namespace esm2
