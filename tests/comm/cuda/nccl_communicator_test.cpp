// NcclCommunicator on the device machine. World size 1 (one GPU): every collective is the identity,
// split and send/recv to self work, and ZeRO-1 over NCCL trains bitwise like the replicated AdamW on
// the CUDA backend (the gathered parameters reach the bf16 weight cache). With two or more GPUs, two
// ranks in threads of this process: every reduction equals the rank-ordered host sum bitwise; the
// overlapped reduce-scatter (up to 4 ranks) equals the synchronous one (fp32 wire) and the host's
// bf16-rounded rank-ordered fp32 sum (bf16 wire), with several operations in flight at once.
// `esm2 train --gpus 1` equals the plain run bitwise. Every test skips (GTEST_SKIP) without a GPU or
// without NCCL in the build.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <iterator>
#include <random>
#include <thread>

#include "../../integration/cli_runner.h"
#include "backend/backend.h"
#include "core/atomic_dir.h"
#include "core/error.h"
#include "data/batch.h"
#include "data/tokenizer.h"
#include "model/esm2.h"
#include "optim/optimizer.h"
#include "optim/zero_optimizer.h"
#ifdef ESM2_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif
#ifdef ESM2_HAVE_NCCL
#include "comm/nccl/nccl_communicator.h"
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

// Host bf16 round to nearest even (finite inputs) and back: the oracle of the bf16 wire.
float bf16_round(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  u &= 0xffff0000u;
  std::memcpy(&f, &u, 4);
  return f;
}

// Element idx of rank p's gradient buffer: 24 random mantissa bits (so bf16 rounding changes most of
// them) over 23 binades (so the summation order shows in the low bits).
float grad_value(size_t idx, int p) {
  uint32_t h = static_cast<uint32_t>(idx) * 2654435761u ^ (static_cast<uint32_t>(p) * 0x9e3779b9u + 0x7f4a7c15u);
  h ^= h >> 15;
  h *= 0x2c1b3c6du;
  h ^= h >> 12;
  h *= 0x297a2d39u;
  h ^= h >> 15;
  const float mant = float(int32_t(h & 0xffffffu) - 0x800000) / float(0x800000);
  return std::ldexp(mant, int(idx % 23) - 11);
}

// "" when equal bitwise, else where and how they first differ.
std::string first_difference(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return "size " + std::to_string(got.size()) + " != " + std::to_string(want.size());
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], 4) != 0)
      return "element " + std::to_string(i) + ": " + std::to_string(got[i]) + " != " + std::to_string(want[i]);
  return "";
}

// Runs fn(rank, failures) for `world` ranks, one thread each; reports every rank's failures.
template <class Fn>
void run_ranks(int world, Fn fn) {
  std::vector<std::vector<std::string>> failures(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        fn(r, failures[size_t(r)]);
      } catch (const std::exception& e) {
        failures[size_t(r)].push_back(e.what());
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < world; ++r)
    for (const auto& f : failures[size_t(r)]) ADD_FAILURE() << "rank " << r << ": " << f;
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

// The overlapped reduce-scatter of one rank: fp32 wire copies, bf16 wire rounds to nearest even (ties
// to the even mantissa, handmade values) and widens back, also in place; wait_async before any async
// operation is a no-op; other wire dtypes are refused.
TEST(NcclCommunicator, WorldOfOneAsyncRoundsToBf16) {
  REQUIRE_GPUS(1);
#if defined(ESM2_HAVE_CUDA) && defined(ESM2_HAVE_NCCL)
  auto be = make_cuda_backend(DType::BF16, 0);
  NcclCommunicator c(nccl_unique_id_hex(), 0, 1, *be, 60);
  c.wait_async();
  const size_t n = 100000;
  std::vector<float> x = values(n, 0);
  // 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties go to the even mantissa (1); 1 + 3·2^-8 is
  // halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even); 1 + 1.5·2^-8 is nearer to 1 + 2^-7.
  const float ties[] = {1.00390625f, 1.01171875f, -1.00390625f, 1.005859375f, 3.0f, -0.0f};
  const float rounded[] = {1.0f, 1.015625f, -1.0f, 1.0078125f, 3.0f, -0.0f};
  std::copy(std::begin(ties), std::end(ties), x.begin());
  float* in = upload(*be, x);
  float* out_f = static_cast<float*>(be->alloc(n * 4));
  float* out_b = static_cast<float*>(be->alloc(n * 4));
  c.reduce_scatter_sum_async(in, out_f, n, DType::F32, "async f32");
  c.reduce_scatter_sum_async(in, out_b, n, DType::BF16, "async bf16");
  float* inplace = upload(*be, x);
  c.reduce_scatter_sum_async(inplace, inplace, n, DType::BF16, "async bf16 in place");
  c.wait_async();
  EXPECT_EQ(first_difference(download(*be, out_f, n), x), "");
  std::vector<float> want(n);
  for (size_t i = 0; i < n; ++i) want[i] = bf16_round(x[i]);
  for (size_t i = 0; i < std::size(rounded); ++i) EXPECT_EQ(want[i], rounded[i]) << "host oracle, element " << i;
  const std::vector<float> got = download(*be, out_b, n);
  for (size_t i = 0; i < std::size(rounded); ++i) EXPECT_EQ(got[i], rounded[i]) << "element " << i;
  EXPECT_TRUE(std::signbit(got[5]));
  EXPECT_EQ(first_difference(got, want), "");
  EXPECT_EQ(first_difference(download(*be, inplace, n), want), "");
  EXPECT_THROW(c.reduce_scatter_sum_async(in, out_f, n, DType::I32, "async i32"), Error);
  for (float* p : {in, out_f, out_b, inplace}) be->free(p);
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
  // Checkpoint path: the moments read piecewise (ZeroAdamW::read_moments) equal the replicated ones.
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

// Overlapped reduce-scatter on min(GPUs, 4) ranks. Inputs are written on the backend's stream behind
// a large memset just before the async calls (the side stream must wait for them); six operations (both
// wires; a shard of 2^25 + 12345 elements, more than one fp32 exchange round and not a multiple of one; 5001;
// 1) are in flight with a large memset enqueued after them, then one wait_async, after which copies on
// the backend's stream must see the results. fp32 wire: bitwise the synchronous reduce_scatter_sum;
// bf16 wire: bitwise Σ_p float(bf16(x_p)) added in rank order in fp32 on the host. Then an async
// operation in flight while a synchronous all-reduce (its own scratch) runs.
TEST(NcclCommunicator, AsyncReduceScatterMatchesSyncAndBf16Oracle) {
  REQUIRE_GPUS(2);
#if defined(ESM2_HAVE_CUDA) && defined(ESM2_HAVE_NCCL)
  const int world = std::min(gpus(), 4);
  const std::string id = nccl_unique_id_hex();
  const std::vector<size_t> shards = {(size_t{1} << 25) + 12345, 5001, 1};
  run_ranks(world, [&](int r, std::vector<std::string>& fails) {
    auto expect_same = [&](const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
      const std::string d = first_difference(got, want);
      if (!d.empty()) fails.push_back(what + ": " + d);
    };
    auto be = make_cuda_backend(DType::BF16, r);
    NcclCommunicator c(id, r, world, *be, 120);
    const size_t w = size_t(world), k_count = shards.size();
    const size_t busy_bytes = size_t{1} << 30;
    void* busy = be->alloc(busy_bytes);
    std::vector<float*> in(k_count), staging(k_count), out_f(k_count), out_b(k_count);
    for (size_t k = 0; k < k_count; ++k) {
      std::vector<float> h(w * shards[k]);
      for (size_t i = 0; i < h.size(); ++i) h[i] = grad_value(i, r);
      staging[k] = upload(*be, h);
      in[k] = static_cast<float*>(be->alloc(h.size() * 4));
      out_f[k] = static_cast<float*>(be->alloc(shards[k] * 4));
      out_b[k] = static_cast<float*>(be->alloc(shards[k] * 4));
    }
    be->synchronize();
    be->memset_zero(busy, busy_bytes);
    for (size_t k = 0; k < k_count; ++k) be->copy(in[k], staging[k], w * shards[k] * 4);
    for (size_t k = 0; k < k_count; ++k) {
      c.reduce_scatter_sum_async(in[k], out_f[k], shards[k], DType::F32, "async f32");
      c.reduce_scatter_sum_async(in[k], out_b[k], shards[k], DType::BF16, "async bf16");
    }
    be->memset_zero(busy, busy_bytes);
    c.wait_async();
    std::vector<float*> seen_f(k_count), seen_b(k_count), ref(k_count);
    for (size_t k = 0; k < k_count; ++k) {
      seen_f[k] = static_cast<float*>(be->alloc(shards[k] * 4));
      seen_b[k] = static_cast<float*>(be->alloc(shards[k] * 4));
      be->copy(seen_f[k], out_f[k], shards[k] * 4);
      be->copy(seen_b[k], out_b[k], shards[k] * 4);
    }
    for (size_t k = 0; k < k_count; ++k) {
      ref[k] = static_cast<float*>(be->alloc(shards[k] * 4));
      c.reduce_scatter_sum(in[k], ref[k], shards[k], "reduce-scatter");
    }
    for (size_t k = 0; k < k_count; ++k) {
      const size_t n = shards[k];
      const std::string tag = " (shard " + std::to_string(n) + ")";
      const std::vector<float> want_f = download(*be, ref[k], n);
      expect_same(download(*be, seen_f[k], n), want_f, "async f32 vs reduce_scatter_sum" + tag);
      expect_same(download(*be, out_f[k], n), want_f, "async f32 output" + tag);
      std::vector<float> want_b(n);
      for (size_t i = 0; i < n; ++i) {
        const size_t idx = size_t(r) * n + i;
        float acc = bf16_round(grad_value(idx, 0));
        for (int p = 1; p < world; ++p) acc += bf16_round(grad_value(idx, p));
        want_b[i] = acc;
      }
      expect_same(download(*be, seen_b[k], n), want_b, "async bf16 vs host oracle" + tag);
    }
    // Async and synchronous operations in flight together, issued in the same order on every rank.
    const size_t n_all = 300007;
    std::vector<float> mine(n_all);
    for (size_t i = 0; i < n_all; ++i) mine[i] = grad_value(i + 7, r);
    float* all = upload(*be, mine);
    c.reduce_scatter_sum_async(in[0], out_b[0], shards[0], DType::BF16, "async bf16 beside allreduce");
    c.allreduce_sum(all, n_all, "allreduce beside async");
    c.wait_async();
    std::vector<float> want_all(n_all);
    for (size_t i = 0; i < n_all; ++i) {
      float acc = grad_value(i + 7, 0);
      for (int p = 1; p < world; ++p) acc += grad_value(i + 7, p);
      want_all[i] = acc;
    }
    expect_same(download(*be, all, n_all), want_all, "allreduce beside async");
    expect_same(download(*be, out_b[0], shards[0]), download(*be, seen_b[0], shards[0]), "async bf16 repeated");
    be->free(all);
    be->free(busy);
    for (size_t k = 0; k < k_count; ++k)
      for (float* p : {in[k], staging[k], out_f[k], out_b[k], seen_f[k], seen_b[k], ref[k]}) be->free(p);
  });
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

// Gradient buckets on two GPUs (778 parameters each, bf16-mixed, checkpoints compared): reduced on the
// side stream during the backward vs after it — bitwise the same run (a bucket sent before its
// gradients were final, or read by the optimizer before it arrived, would change it); also with
// accumulation 2. bf16 on the wire: close to fp32, not equal (the rounding happened).
TEST(TrainGpus, OverlappedGradientBucketsAreExact) {
  REQUIRE_GPUS(2);
  const fs::path dir = esm2::testing::scratch_dir("gpus2-buckets");
  const auto prep = esm2::testing::prepare_sample_corpus(dir / "corpus");
  ASSERT_EQ(prep.exit_code, 0) << prep.output;
  const std::string common = " --train-data " + (dir / "corpus").string() + esm2::testing::kTinyModelShape +
                             " --backend cuda --precision bf16-mixed --num-steps 6 --lr 1e-3 --warmup-steps 2"
                             " --log-every-n-steps 1 --val-check-interval 6 --no-report --no-tensorboard"
                             " --gpus 2 --ddp-bucket-size 777 --result-dir " +
                             dir.string();
  const fs::path ck = "checkpoints/step-00000006";
  auto same = [&](const std::string& a, const std::string& b) {
    for (const char* f : {"model.safetensors", "trainer_state/optimizer.safetensors"})
      EXPECT_TRUE(esm2::read_file(dir / a / ck / f) == esm2::read_file(dir / b / ck / f)) << a << " vs " << b << ": " << f;
  };
  for (const std::string acc : {"1", "2"}) {
    const std::string c = common + " --accumulate-grad-batches " + acc;
    const auto during = esm2::testing::run_cli("train" + c + " --experiment-name during" + acc);
    ASSERT_EQ(during.exit_code, 0) << during.output;
    EXPECT_NE(during.output.find("fp32 on the wire, overlapped with the backward"), std::string::npos) << during.output;
    const auto after = esm2::testing::run_cli("train" + c + " --no-overlap-grad-reduce --experiment-name after" + acc);
    ASSERT_EQ(after.exit_code, 0) << after.output;
    same("during" + acc, "after" + acc);
  }
  const auto bf16 = esm2::testing::run_cli("train" + common + " --grad-reduce-dtype bf16 --experiment-name bf16");
  ASSERT_EQ(bf16.exit_code, 0) << bf16.output;
  const auto a = esm2::testing::train_losses(dir / "during1"), b = esm2::testing::train_losses(dir / "bf16");
  ASSERT_EQ(b.size(), 6u);
  for (const auto& [step, loss] : a) EXPECT_NEAR(b.at(step), loss, 1e-2 * std::abs(loss)) << "step " << step;
  EXPECT_FALSE(esm2::read_file(dir / "during1" / ck / "model.safetensors") ==
               esm2::read_file(dir / "bf16" / ck / "model.safetensors"));
}

// Pipeline parallel on two GPUs with ONE micro-batch per step: stage 0's first grouped
// send-activation/receive-gradient meets stage 1's lone receive, a pattern that hung in NCCL's lazy
// link setup before PipelineSchedule connected the links up front. fp32, so it must track one GPU.
TEST(TrainGpus, PipelineWithOneMicroBatchPerStep) {
  REQUIRE_GPUS(2);
  const fs::path dir = esm2::testing::scratch_dir("gpus2-pp1mb");
  const auto prep = esm2::testing::prepare_sample_corpus(dir / "corpus");
  ASSERT_EQ(prep.exit_code, 0) << prep.output;
  const std::string common = " --train-data " + (dir / "corpus").string() + esm2::testing::kTinyModelShape +
                             " --backend cuda --precision 32 --num-steps 5 --lr 1e-3 --warmup-steps 2"
                             " --log-every-n-steps 1 --val-check-interval 5 --no-report --no-tensorboard"
                             " --accumulate-grad-batches 1 --collective-timeout 60 --result-dir " +
                             dir.string();
  const auto one = esm2::testing::run_cli("train" + common + " --experiment-name pp1");
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const auto two = esm2::testing::run_cli("train --gpus 2 --pipeline-model-parallel-size 2" + common + " --experiment-name pp2");
  ASSERT_EQ(two.exit_code, 0) << two.output;
  const auto a = esm2::testing::train_losses(dir / "pp1"), b = esm2::testing::train_losses(dir / "pp2");
  ASSERT_EQ(b.size(), 5u);
  for (const auto& [step, loss] : a) EXPECT_NEAR(b.at(step), loss, 1e-5 * std::abs(loss)) << "step " << step;
}
