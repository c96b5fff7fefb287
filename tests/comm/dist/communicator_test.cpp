// Communicator primitives that model parallelism stands on: split into the DP × TP × PP grid,
// point-to-point send/recv/sendrecv, the typed all-reduce. The MPI cases run this same binary under
// `mpirun -np 4` (the outer test launches it; the inner run is recognised by the launcher's
// environment) and check every rank's results against values computed from the rank numbers.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "core/error.h"
#include "comm/communicator.h"
#include "parallel/parallel_layout.h"

namespace {

using namespace esm2;

bool under_launcher() { return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr; }

TEST(LocalCommunicator, SplitAndPointToPoint) {
  if (under_launcher()) GTEST_SKIP() << "single-process case";
  LocalCommunicator c;
  auto sub = c.split(3, 0, "split");
  EXPECT_EQ(sub->world_size(), 1);
  float x = 2.5f;
  c.allreduce_sum_typed(&x, 1, DType::F32, "typed");
  EXPECT_EQ(x, 2.5f);
  EXPECT_THROW(c.allreduce_sum_typed(&x, 1, DType::BF16, "typed bf16"), Error);
  EXPECT_THROW(c.send(&x, 4, 1, "send"), Error);
  const ParallelGroups g = make_parallel_groups(c, 1, 1);
  EXPECT_EQ(g.dp_size, 1);
  EXPECT_TRUE(g.first_stage() && g.last_stage());
  EXPECT_THROW(make_parallel_groups(c, 2, 1), Error);
}

// The body run on every rank of `mpirun -np 4`.
TEST(MpiCommunicator, GridAndPointToPointOnFourRanks) {
  if (!under_launcher()) {
    if (std::system("command -v mpirun >/dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun not installed";
    char self[4096];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    ASSERT_GT(n, 0);
    self[n] = 0;
    const std::string cmd =
        "mpirun --oversubscribe --allow-run-as-root --mca btl self,vader --mca btl_vader_single_copy_mechanism none "
        "-np 4 " + std::string(self) + " --gtest_filter=MpiCommunicator.GridAndPointToPointOnFourRanks 2>&1";
    const int status = std::system(cmd.c_str());
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0) << "some rank failed (its output is above)";
    return;
  }
  auto world = make_communicator(60);
  ASSERT_EQ(world->world_size(), 4) << "run with -np 4";
  const int r = world->rank();

  // TP=2, PP=2 → DP=1: tp groups {0,1},{2,3}; pp groups {0,2},{1,3}.
  ParallelGroups g = make_parallel_groups(*world, 2, 2);
  EXPECT_EQ(g.dp_size, 1);
  EXPECT_EQ(g.tp_rank, r % 2);
  EXPECT_EQ(g.pp_rank, r / 2);
  EXPECT_EQ(g.tp->world_size(), 2);
  EXPECT_EQ(g.pp->world_size(), 2);
  EXPECT_EQ(g.tp->rank(), r % 2);
  EXPECT_EQ(g.pp->rank(), r / 2);
  float v[2] = {float(r), float(10 * r)};
  g.tp->allreduce_sum_typed(v, 2, DType::F32, "tp sum");
  const float base = float(r / 2 * 2);  // the group's ranks are base, base+1
  EXPECT_EQ(v[0], 2 * base + 1);
  EXPECT_EQ(v[1], 10 * (2 * base + 1));
  double d = r;
  g.pp->allreduce_sum(&d, 1, "pp sum");
  EXPECT_EQ(d, double(r % 2) * 2 + 2);  // ranks r%2 and r%2+2

  // TP=1, PP=2 → DP=2: dp groups {0,1},{2,3}; pp groups {0,2},{1,3}.
  ParallelGroups h = make_parallel_groups(*world, 1, 2);
  EXPECT_EQ(h.dp_size, 2);
  EXPECT_EQ(h.dp_rank, r % 2);
  EXPECT_EQ(h.pp_rank, r / 2);
  EXPECT_EQ(h.dp->world_size(), 2);

  // Pipeline hand-off inside h.pp: stage 0 → stage 1, then the gradient back with sendrecv.
  std::vector<float> act(1000), grad(1000);
  if (h.first_stage()) {
    std::iota(act.begin(), act.end(), float(r));
    h.pp->send(act.data(), act.size() * 4, 1, "activation send");
    h.pp->recv(grad.data(), grad.size() * 4, 1, "gradient recv");
    for (size_t i = 0; i < grad.size(); ++i) ASSERT_EQ(grad[i], -(float(r) + float(i))) << i;
  } else {
    h.pp->recv(act.data(), act.size() * 4, 0, "activation recv");
    const int src_world = r - 2;
    for (size_t i = 0; i < act.size(); ++i) ASSERT_EQ(act[i], float(src_world) + float(i)) << i;
    for (size_t i = 0; i < act.size(); ++i) grad[i] = -act[i];
    h.pp->send(grad.data(), grad.size() * 4, 0, "gradient send");
  }
  // A ring over the world with sendrecv: both directions at once never deadlock.
  int out = 100 + r, in = -1;
  world->sendrecv(&out, sizeof out, (r + 1) % 4, &in, sizeof in, (r + 3) % 4, "ring");
  EXPECT_EQ(in, 100 + (r + 3) % 4);
  // One-sided: only receive (send side empty).
  int one = 7 * r, got = -1;
  if (r == 0) world->sendrecv(&one, sizeof one, 3, nullptr, 0, 0, "one-sided send");
  if (r == 3) {
    world->sendrecv(nullptr, 0, 0, &got, sizeof got, 0, "one-sided recv");
    EXPECT_EQ(got, 0);
  }

  // Gradient reduce-scatter (ZeRO-1 buckets). Rank p contributes value(p, j) to element j; with bf16
  // on the wire every copy (the own one too) is rounded to bf16, and the copies are added in rank order
  // in fp32. The values carry more mantissa than bf16 keeps, so the rounding is visible.
  const size_t shard = 1000;
  auto value = [](int p, size_t j) { return 1.0f + 0.001f * float(p) + 1e-5f * float(j) - 0.37f * float(j % 3); };
  std::vector<float> grads(4 * shard), rs16(shard), rs32(shard), plain(shard);
  for (size_t j = 0; j < grads.size(); ++j) grads[j] = value(r, j);
  world->reduce_scatter_sum_async(grads.data(), rs16.data(), shard, DType::BF16, "bf16 reduce-scatter");
  world->reduce_scatter_sum_async(grads.data(), rs32.data(), shard, DType::F32, "fp32 reduce-scatter");
  world->wait_async();
  world->reduce_scatter_sum(grads.data(), plain.data(), shard, "reduce-scatter");
  size_t rounded = 0;
  for (size_t i = 0; i < shard; ++i) {
    const size_t j = size_t(r) * shard + i;
    float want16 = 0, want32 = 0;
    for (int p = 0; p < 4; ++p) {
      want16 += bf16_to_f32(f32_to_bf16(value(p, j)));
      want32 += value(p, j);
    }
    ASSERT_EQ(rs16[i], want16) << "bf16 wire, element " << j;
    ASSERT_EQ(rs32[i], want32) << "fp32 wire, element " << j;
    ASSERT_EQ(plain[i], want32) << "reduce_scatter_sum, element " << j;
    rounded += rs16[i] != rs32[i];
  }
  EXPECT_GT(rounded, shard / 2) << "bf16 rounding should change most sums";
  world->barrier("end");
}

}  // namespace
