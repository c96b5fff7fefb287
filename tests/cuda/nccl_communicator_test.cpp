// NcclCommunicator on the device machine. World size 1 (one GPU): every collective is the identity,
// split and send/recv to self work, and ZeRO-1 over NCCL trains bitwise like the replicated AdamW on
// the CUDA backend (the gathered parameters reach the bf16 weight cache). With two or more GPUs, two
// ranks in threads of this process: every reduction equals the rank-ordered host sum bitwise.
// `esm2 train --gpus 1` equals the plain run bitwise. Every test skips (GTEST_SKIP) without a GPU or
// without NCCL in the build.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "../integration/cli_runner.h"
#include "backend/backend.h"
#include "core/error.h"
#include "data/batch.h"
#include "data/tokenizer.h"
#include "model/esm2.h"
#include "train/optimizer.h"
#include "train/zero_optimizer.h"
#ifdef ESM2_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif
#ifdef ESM2_HAVE_NCCL
#include "dist/nccl_communicator.h"
#endif

using namespace esm2;
namespace fs = std::filesystem;

namespace {

int gpus() {
#if defined(ESM2_HAVE_CUDA) && defined(ESM2_HAVE_NCCL)
  return cuda_device_count();
#else
  return 0;
#endif
}

// A shell command line (not the esm2 binary alone), stdout + stderr captured.
esm2::testing::CliResult run_shell(const std::string& cmd) {
  esm2::testing::CliResult r;
  FILE* pipe = popen((cmd + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  while (fgets(buf, sizeof buf, pipe)) r.output += buf;
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

#define REQUIRE_GPUS(n)                                                                                        \
  do {                                                                                                         \
    if (gpus() < (n)) GTEST_SKIP() << "needs " << (n) << " CUDA device(s) and NCCL in the build: skipped"; \
  } while (0)

#if defined(ESM2_HAVE_CUDA) && defined(ESM2_HAVE_NCCL)

std::vector<float> values(size_t n, int rank) {
  std::vector<float> v(n);
  // Magnitudes spread over many binades, so a different summation order would change low bits.
  for (size_t i = 0; i < n; ++i) v[i] = std::sin(0.37f * float(i) + float(rank)) * std::exp2(float(int(i % 23) - 11));
  return v;
}

template <class T>
T* upload(Backend& be, const std::vector<T>& h) {
  T* d = static_cast<T*>(be.alloc(h.size() * sizeof(T)));
  be.copy_to_device(d, h.data(), h.size() * sizeof(T));
  return d;
}

template <class T>
std::vector<T> download(Backend& be, const T* d, size_t n) {
  std::vector<T> h(n);
  be.copy_to_host(h.data(), d, n * sizeof(T));
  return h;
}

ModelConfig tiny_config() {
  ModelConfig c;
  c.num_layers = 2;
  c.hidden_size = 64;
  c.num_attention_heads = 2;
  c.ffn_hidden_size = 128;
  c.validate();
  return c;
}

MicroBatch batch(uint32_t seed) {
  MicroBatch mb;
  std::mt19937 g(seed);
  mb.cu_seqlens = {0};
  for (int len : {40, 90, 17}) {
    mb.input_ids.push_back(kCls);
    mb.labels.push_back(kIgnoreLabel);
    for (int i = 1; i + 1 < len; ++i) {
      const int32_t tok = 4 + static_cast<int32_t>(g() % 20);
      const bool masked = g() % 100 < 15;
      mb.input_ids.push_back(masked ? kMask : tok);
      mb.labels.push_back(masked ? tok : kIgnoreLabel);
    }
    mb.input_ids.push_back(kEos);
    mb.labels.push_back(kIgnoreLabel);
    mb.cu_seqlens.push_back(static_cast<int32_t>(mb.input_ids.size()));
    mb.max_seqlen = std::max(mb.max_seqlen, len);
  }
  mb.token_budget = mb.num_tokens();
  return mb;
}

#endif

}  // namespace

TEST(NcclCommunicator, WorldOfOneIsTheIdentity) {
  REQUIRE_GPUS(1);
#if defined(ESM2_HAVE_CUDA) && defined(ESM2_HAVE_NCCL)
  auto be = make_cuda_backend(DType::BF16, 0);
  NcclCommunicator c(nccl_unique_id_hex(), 0, 1, *be, 60);
  EXPECT_EQ(c.world_size(), 1);
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.name(), "nccl");
  const size_t n = 1000;
  const std::vector<float> x = values(n, 0);
  float* d = upload(*be, x);
  c.allreduce_sum(d, n, "allreduce");
  EXPECT_EQ(download(*be, d, n), x);
  c.allreduce_sum_typed(d, n, DType::F32, "typed f32");
  EXPECT_EQ(download(*be, d, n), x);
  float* out = static_cast<float*>(be->alloc(n * 4));
  c.reduce_scatter_sum(d, out, n, "reduce-scatter");
  EXPECT_EQ(download(*be, out, n), x);
  be->memset_zero(out, n * 4);
  c.allgather(d, out, n, "allgather");
  EXPECT_EQ(download(*be, out, n), x);
  be->memset_zero(out, n * 4);
  c.gather(d, out, n, 0, "gather");
  EXPECT_EQ(download(*be, out, n), x);
  // Send to self inside one group (sendrecv) is allowed by NCCL.
  be->memset_zero(out, n * 4);
  c.sendrecv(d, n * 4, 0, out, n * 4, 0, "sendrecv to self");
  EXPECT_EQ(download(*be, out, n), x);
  double h[3] = {1.5, -2.0, 1e300};
  c.allreduce_sum(h, 3, "double allreduce");
  EXPECT_EQ(h[0], 1.5);
  EXPECT_EQ(h[2], 1e300);
  char msg[6] = "hello";
  c.broadcast(msg, sizeof msg, 0, "broadcast");
  EXPECT_STREQ(msg, "hello");
  c.barrier("barrier");
  const auto sub = c.split(0, 0, "split");
  EXPECT_EQ(sub->world_size(), 1);
  EXPECT_EQ(sub->name(), "nccl");
  sub->allreduce_sum(d, n, "sub allreduce");
  EXPECT_EQ(download(*be, d, n), x);
  EXPECT_THROW(c.allreduce_sum_typed(d, n, DType::I32, "typed i32"), Error);
  be->free(d);
  be->free(out);
#endif
}

// ZeRO-1 at world 1 does exactly the replicated optimizer's arithmetic; what it adds on a GPU is the
// parameter all-gather into a staging buffer and the copy back, which must invalidate the backend's
// bf16 weight copies. Training both for 3 steps must give bitwise the same losses and weights.
TEST(NcclCommunicator, ZeroOptimizerTrainsLikeReplicatedAdamW) {
  REQUIRE_GPUS(1);
#if defined(ESM2_HAVE_CUDA) && defined(ESM2_HAVE_NCCL)
  const ModelConfig cfg = tiny_config();
  const MicroBatch mb = batch(5);
  auto be_a = make_cuda_backend(DType::BF16, 0), be_z = make_cuda_backend(DType::BF16, 0);
  NcclCommunicator comm(nccl_unique_id_hex(), 0, 1, *be_z, 60);
  Esm2Model ma(cfg, *be_a), mz(cfg, *be_z);
  ma.init_weights(11);
  mz.init_weights(11);
  OptimizerConfig oc;
  oc.weight_decay = 0.01;
  AdamW adam(ma, oc);
  ZeroAdamW zero(mz, oc, comm);
  const float scale = 1.0f / static_cast<float>(mb.num_labels());
  for (int step = 0; step < 3; ++step) {
    ma.zero_grads();
    mz.zero_grads();
    const double la = ma.forward_backward(mb, scale).loss_sum, lz = mz.forward_backward(mb, scale).loss_sum;
    EXPECT_EQ(la, lz) << "step " << step;
    adam.reduce_gradients();
    zero.reduce_gradients();
    const double na = adam.grad_norm(), nz = zero.grad_norm();
    EXPECT_EQ(na, nz) << "step " << step;
    adam.step_with_norm(1e-3, na);
    zero.step_with_norm(1e-3, nz);
  }
  std::vector<float> pa(ma.num_params()), pz(mz.num_params());
  ma.get_params(pa);
  mz.get_params(pz);
  EXPECT_EQ(0, std::memcmp(pa.data(), pz.data(), pa.size() * 4));
  // Checkpoint path: gathered moments equal the replicated ones.
  zero.gather_for_checkpoint();
  std::vector<float> ma1(pa.size()), va1(pa.size()), mz1(pa.size()), vz1(pa.size());
  adam.get_moments(ma1, va1);
  zero.get_moments(mz1, vz1);
  EXPECT_EQ(ma1, mz1);
  EXPECT_EQ(va1, vz1);
#endif
}

// Two ranks, one thread and one GPU each: every reduction is the host's rank-ordered sum, bitwise.
TEST(NcclCommunicator, TwoRanksReduceInRankOrder) {
  REQUIRE_GPUS(2);
#if defined(ESM2_HAVE_CUDA) && defined(ESM2_HAVE_NCCL)
  const std::string id = nccl_unique_id_hex();
  const size_t n = 100003;  // not a multiple of the world size: uneven shards
  const size_t shard = 5001;
  std::vector<std::string> failures[2];
  auto rank_main = [&](int r) {
    auto& fails = failures[r];
    auto expect = [&](bool ok, const std::string& what) {
      if (!ok) fails.push_back(what);
    };
    auto be = make_cuda_backend(DType::BF16, r);
    NcclCommunicator c(id, r, 2, *be, 120);
    const std::vector<float> mine = values(n, r), x0 = values(n, 0), x1 = values(n, 1);
    std::vector<float> sum(n);
    for (size_t i = 0; i < n; ++i) sum[i] = x0[i] + x1[i];
    float* d = upload(*be, mine);
    c.allreduce_sum(d, n, "allreduce");
    expect(download(*be, d, n) == sum, "allreduce");
    // reduce-scatter: [2 × shard] in, this rank's shard of the sum out.
    float* in = upload(*be, std::vector<float>(mine.begin(), mine.begin() + 2 * shard));
    float* out = static_cast<float*>(be->alloc(shard * 4));
    c.reduce_scatter_sum(in, out, shard, "reduce-scatter");
    expect(download(*be, out, shard) == std::vector<float>(sum.begin() + r * shard, sum.begin() + (r + 1) * shard),
           "reduce-scatter");
    // allgather (in place) and gather to rank 1.
    float* all = static_cast<float*>(be->alloc(2 * shard * 4));
    be->copy_to_device(all + r * shard, mine.data(), shard * 4);
    c.allgather(all + r * shard, all, shard, "allgather");
    std::vector<float> want(2 * shard);
    std::copy(x0.begin(), x0.begin() + shard, want.begin());
    std::copy(x1.begin(), x1.begin() + shard, want.begin() + shard);
    expect(download(*be, all, 2 * shard) == want, "allgather");
    be->memset_zero(all, 2 * shard * 4);
    c.gather(d, r == 1 ? all : nullptr, shard, 1, "gather");
    if (r == 1) {
      std::vector<float> g = download(*be, all, 2 * shard);
      expect(std::equal(g.begin(), g.begin() + shard, sum.begin()) &&
                 std::equal(g.begin() + shard, g.end(), sum.begin()),
             "gather");
    }
    // Host-memory operations.
    double h[2] = {0.1 * (r + 1), 1e-17 * (r + 1)};
    c.allreduce_sum(h, 2, "double allreduce");
    expect(h[0] == 0.1 + 0.2 && h[1] == 1e-17 + 2e-17, "double allreduce");
    int token = r == 0 ? 4242 : 0;
    c.broadcast(&token, sizeof token, 0, "broadcast");
    expect(token == 4242, "broadcast");
    c.barrier("barrier");
    // Point to point both ways at once.
    float* back = static_cast<float*>(be->alloc(n * 4));
    float* src = upload(*be, mine);
    c.sendrecv(src, n * 4, 1 - r, back, n * 4, 1 - r, "sendrecv");
    expect(download(*be, back, n) == (r == 0 ? x1 : x0), "sendrecv");
    // Split by rank parity: two communicators of one rank.
    const auto alone = c.split(r, 0, "split");
    expect(alone->world_size() == 1 && alone->rank() == 0, "split");
    // bf16: fp32 sum of the two, rounded once.
    std::vector<float> b0 = values(64, 0), b1 = values(64, 1);
    std::vector<uint16_t> bh(64);
    auto to_bf16 = [](float f) {
      uint32_t u;
      std::memcpy(&u, &f, 4);
      u += 0x7fff + ((u >> 16) & 1);
      return static_cast<uint16_t>(u >> 16);
    };
    auto from_bf16 = [](uint16_t b) {
      const uint32_t u = uint32_t(b) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    };
    for (size_t i = 0; i < 64; ++i) bh[i] = to_bf16(r == 0 ? b0[i] : b1[i]);
    uint16_t* db = upload(*be, bh);
    c.allreduce_sum_typed(db, 64, DType::BF16, "bf16 allreduce");
    const std::vector<uint16_t> got = download(*be, db, 64);
    bool bf_ok = true;
    for (size_t i = 0; i < 64; ++i)
      bf_ok = bf_ok && got[i] == to_bf16(from_bf16(to_bf16(b0[i])) + from_bf16(to_bf16(b1[i])));
    expect(bf_ok, "bf16 allreduce");
  };
  std::thread t0([&] {
    try {
      rank_main(0);
    } catch (const std::exception& e) {
      failures[0].push_back(e.what());
    }
  });
  std::thread t1([&] {
    try {
      rank_main(1);
    } catch (const std::exception& e) {
      failures[1].push_back(e.what());
    }
  });
  t0.join();
  t1.join();
  for (int r = 0; r < 2; ++r)
    for (const auto& f : failures[r]) ADD_FAILURE() << "rank " << r << ": " << f;
#endif
}

// `esm2 train --gpus 1` (launcher, worker, NCCL communicator of one rank) against the plain run on the
// same GPU: 20 steps, bf16-mixed, losses bitwise equal (the same kernels on the same data; nothing is
// summed across ranks at world 1).
TEST(TrainGpus, OneGpuLaunchEqualsThePlainRun) {
  REQUIRE_GPUS(1);
  const fs::path dir = esm2::testing::scratch_dir("gpus1");
  const auto prep = esm2::testing::prepare_sample_corpus(dir / "corpus");
  ASSERT_EQ(prep.exit_code, 0) << prep.output;
  const std::string common = " --train-data " + (dir / "corpus").string() + esm2::testing::kTinyModelShape +
                             " --backend cuda --precision bf16-mixed --num-steps 20 --lr 1e-3 --warmup-steps 2"
                             " --log-every-n-steps 1 --val-check-interval 100 --no-report --no-tensorboard"
                             " --disable-checkpointing --result-dir " +
                             dir.string();
  const auto plain = esm2::testing::run_cli("train" + common + " --experiment-name plain");
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  const auto launched = esm2::testing::run_cli("train --gpus 1" + common + " --experiment-name gpus1");
  ASSERT_EQ(launched.exit_code, 0) << launched.output;
  EXPECT_NE(launched.output.find("nccl communicator"), std::string::npos) << launched.output;
  const auto a = esm2::testing::train_losses(dir / "plain"), b = esm2::testing::train_losses(dir / "gpus1");
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  for (const auto& [step, loss] : a) EXPECT_EQ(loss, b.at(step)) << "step " << step;
}

// Two GPUs: `--gpus 2` (ZeRO-1 over NCCL) against one GPU with accumulation 2 on the same global batch,
// fp32 so that only the grouping of the gradient sums differs (tolerance as the MPI test's); and
// `mpirun -np 2` on the cuda backend (NCCL, id over MPI) against `--gpus 2`: the same deterministic
// sums, so bitwise equal losses.
TEST(TrainGpus, TwoGpusMatchOneGpuWithAccumulation) {
  REQUIRE_GPUS(2);
  const fs::path dir = esm2::testing::scratch_dir("gpus2");
  const auto prep = esm2::testing::prepare_sample_corpus(dir / "corpus");
  ASSERT_EQ(prep.exit_code, 0) << prep.output;
  const std::string common = " --train-data " + (dir / "corpus").string() + esm2::testing::kTinyModelShape +
                             " --backend cuda --precision 32 --num-steps 8 --lr 1e-3 --warmup-steps 2"
                             " --log-every-n-steps 1 --val-check-interval 100 --no-report --no-tensorboard"
                             " --disable-checkpointing --result-dir " +
                             dir.string();
  const auto acc = esm2::testing::run_cli("train" + common + " --accumulate-grad-batches 2 --experiment-name acc");
  ASSERT_EQ(acc.exit_code, 0) << acc.output;
  const auto two = esm2::testing::run_cli("train --gpus 2" + common + " --experiment-name gpus2");
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_NE(two.output.find("DP 2"), std::string::npos) << two.output;
  const auto a = esm2::testing::train_losses(dir / "acc"), b = esm2::testing::train_losses(dir / "gpus2");
  ASSERT_EQ(a.size(), 8u);
  ASSERT_EQ(b.size(), 8u);
  for (const auto& [step, loss] : a) EXPECT_NEAR(b.at(step), loss, 1e-5 * std::abs(loss)) << "step " << step;
  if (std::system("command -v mpirun >/dev/null 2>&1") != 0) GTEST_SKIP() << "mpirun not installed: MPI-launched case skipped";
  const auto mpi = run_shell("mpirun --allow-run-as-root --oversubscribe --mca btl self,vader "
                                              "--mca btl_vader_single_copy_mechanism none -np 2 " +
                                              std::string(ESM2_BINARY) + " train" + common +
                                              " --experiment-name mpi2");
  ASSERT_EQ(mpi.exit_code, 0) << mpi.output;
  const auto c = esm2::testing::train_losses(dir / "mpi2");
  ASSERT_EQ(c.size(), 8u);
  for (const auto& [step, loss] : b) EXPECT_EQ(c.at(step), loss) << "step " << step;
}
