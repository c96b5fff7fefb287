// A Communicator over the threads of one process for the checkpoint tests (tests/train): point-to-point,
// broadcast and barrier by hand-over mailboxes, every other collective a named failure.
#pragma once
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "core/error.h"
#include "comm/communicator.h"

namespace esm2::testing {

// Point-to-point, broadcast and barrier between the threads of one process; send waits until recv has
// copied (no buffering, so no allocation is charged to the sender). The checkpoint gathers (model
// parallel, and ZeRO-1's moment reads) need nothing else.
struct Mailboxes {
  explicit Mailboxes(int n) : size(n) {}
  int size;
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::pair<int, int>, std::pair<const void*, size_t>> posted;  // (src, dst) → message
  int arrived = 0;
  int64_t generation = 0;
  bool aborted = false;  // a rank failed: every wait throws instead of blocking for ever
  void abort() {
    {
      std::lock_guard lock(mu);
      aborted = true;
    }
    cv.notify_all();
  }
};

class ThreadComm final : public Communicator {
 public:
  ThreadComm(Mailboxes& m, int rank) : m_(m), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return m_.size; }
  std::string name() const override { return "thread"; }
  void send(const void* data, size_t bytes, int peer, const char*) override {
    std::unique_lock lock(m_.mu);
    const auto key = std::make_pair(rank_, peer);
    wait(lock, [&] { return !m_.posted.contains(key); });
    m_.posted[key] = {data, bytes};
    m_.cv.notify_all();
    wait(lock, [&] { return !m_.posted.contains(key); });  // the receiver copied it
  }
  void recv(void* data, size_t bytes, int peer, const char* what) override {
    std::unique_lock lock(m_.mu);
    const auto key = std::make_pair(peer, rank_);
    wait(lock, [&] { return m_.posted.contains(key); });
    const auto [src, n] = m_.posted.at(key);
    ESM2_CHECK(n == bytes, "thread communicator: {}: {} bytes sent, {} expected", what, n, bytes);
    std::memcpy(data, src, n);
    m_.posted.erase(key);
    m_.cv.notify_all();
  }
  void barrier(const char*) override {
    std::unique_lock lock(m_.mu);
    const int64_t gen = m_.generation;
    if (++m_.arrived == m_.size) {
      m_.arrived = 0;
      ++m_.generation;
      m_.cv.notify_all();
    } else {
      wait(lock, [&] { return m_.generation != gen; });
    }
  }
  void allreduce_sum(float*, size_t, const char* what) override { forbidden(what); }
  void allreduce_sum(double*, size_t, const char* what) override { forbidden(what); }
  void broadcast(void* data, size_t bytes, int root, const char* what) override {
    if (rank_ != root) return recv(data, bytes, root, what);
    for (int r = 0; r < m_.size; ++r)
      if (r != root) send(data, bytes, r, what);
  }
  void reduce_scatter_sum(const float*, float*, size_t, const char* what) override { forbidden(what); }
  void allgather(const float*, float*, size_t, const char* what) override { forbidden(what); }
  void gather(const float*, float*, size_t, int, const char* what) override { forbidden(what); }
  std::unique_ptr<Communicator> split(int, int, const char* what) override { forbidden(what); }
  void sendrecv(const void*, size_t, int, void*, size_t, int, const char* what) override { forbidden(what); }

 private:
  template <class Pred>
  void wait(std::unique_lock<std::mutex>& lock, Pred ready) {
    m_.cv.wait(lock, [&] { return m_.aborted || ready(); });
    ESM2_CHECK(!m_.aborted, "thread communicator: rank {}: another rank failed", rank_);
  }
  [[noreturn]] static void forbidden(const char* what) {
    fail("thread communicator: checkpoint code used the collective '{}'", what);
  }
  Mailboxes& m_;
  int rank_;
};

}  // namespace esm2::testing
