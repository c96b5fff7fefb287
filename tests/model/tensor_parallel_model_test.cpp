// Tensor parallelism at the model level, in one process: the local parameter tables of the TP ranks
// tile the full layout exactly once (owned pieces), and TP ranks run as threads joined by an
// in-process communicator reproduce the unsplit model's loss and every gradient element. The oracle
// is the TP=1 model on the same weights; the MPI end-to-end runs are in tests/parallel/dist.
#include <gtest/gtest.h>

#include <barrier>
#include <cmath>
#include <random>
#include <thread>

#include "backend/backend.h"
#include "core/error.h"
#include "data/tokenizer.h"
#include "comm/communicator.h"
#include "model/esm2.h"
#include "model/param_table.h"
#include "model/recompute.h"

using namespace esm2;

namespace {

ModelConfig tp_config() {
  ModelConfig c;
  c.num_layers = 2;
  c.hidden_size = 16;
  c.num_attention_heads = 4;  // divisible by 1, 2, 4
  c.ffn_hidden_size = 32;
  return c;
}

// Rank-ordered sums over the threads of one process (one thread per tensor-parallel rank).
struct ThreadGroup {
  explicit ThreadGroup(int n) : size(n), sync(n), bufs(n) {}
  int size;
  std::barrier<> sync;
  std::vector<const void*> bufs;
};

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(ThreadGroup& g, int rank) : g_(g), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return g_.size; }
  std::string name() const override { return "thread"; }
  void allreduce_sum(float* data, size_t n, const char*) override {
    sum_in_rank_order(data, n);
    ++allreduces;
  }
  void allreduce_sum(double* data, size_t n, const char*) override { sum_in_rank_order(data, n); }
  void barrier(const char*) override { g_.sync.arrive_and_wait(); }
  // Tensor parallelism inside the model must need nothing but the all-reduce: any other collective
  // reaching this test double fails the test, naming it.
  void broadcast(void*, size_t, int, const char* what) override { forbidden(what); }
  void reduce_scatter_sum(const float*, float*, size_t, const char* what) override { forbidden(what); }
  void allgather(const float*, float*, size_t, const char* what) override { forbidden(what); }
  void gather(const float*, float*, size_t, int, const char* what) override { forbidden(what); }
  std::unique_ptr<Communicator> split(int, int, const char* what) override { forbidden(what); }
  void send(const void*, size_t, int, const char* what) override { forbidden(what); }
  void recv(void*, size_t, int, const char* what) override { forbidden(what); }
  void sendrecv(const void*, size_t, int, void*, size_t, int, const char* what) override { forbidden(what); }
  int allreduces = 0;

 private:
  // Each rank posts its buffer, waits for all, sums the buffers in rank order into a private copy,
  // waits again (nobody still reads), then writes its own.
  template <class T>
  void sum_in_rank_order(T* data, size_t n) {
    g_.bufs[rank_] = data;
    g_.sync.arrive_and_wait();
    std::vector<T> sum(static_cast<const T*>(g_.bufs[0]), static_cast<const T*>(g_.bufs[0]) + n);
    for (int r = 1; r < g_.size; ++r)
      for (size_t i = 0; i < n; ++i) sum[i] += static_cast<const T*>(g_.bufs[r])[i];
    g_.sync.arrive_and_wait();
    std::copy(sum.begin(), sum.end(), data);
  }
  [[noreturn]] static void forbidden(const char* what) {
    ADD_FAILURE() << "tensor-parallel model used the collective '" << what << "'";
    fail("thread communicator: '{}' is outside what tensor parallelism may use", what);
  }
  ThreadGroup& g_;
  int rank_;
};

// Three sequences with masked positions and labels (as the model test's batch).
MicroBatch batch() {
  MicroBatch mb;
  const std::vector<std::vector<int32_t>> seqs = {
      {kCls, 5, 32, 7, 8, kEos}, {kCls, 9, 10, 32, 32, 13, 14, kEos}, {kCls, 20, 21, kEos}};
  mb.cu_seqlens = {0};
  for (const auto& s : seqs) {
    for (size_t i = 0; i < s.size(); ++i) {
      mb.input_ids.push_back(s[i]);
      mb.labels.push_back(s[i] == kMask || i == 2 ? 6 + static_cast<int32_t>(i) : kIgnoreLabel);
    }
    mb.cu_seqlens.push_back(static_cast<int32_t>(mb.input_ids.size()));
    mb.max_seqlen = std::max<int32_t>(mb.max_seqlen, static_cast<int32_t>(s.size()));
  }
  mb.token_budget = mb.num_tokens();
  return mb;
}

// Full-layout weights of O(0.25) (LayerNorm weights around 1, biases non-zero so the
// bias-on-rank-0-only path carries signal).
std::vector<float> random_full_params(const ModelConfig& cfg, uint32_t seed) {
  const ParamTable t = build_param_table(cfg);
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-0.25f, 0.25f);
  std::vector<float> p(t.total);
  for (auto& x : p) x = d(g);
  for (const ParamInfo& info : t.infos)
    if (info.name.ends_with("LayerNorm.weight") || info.name.ends_with("layer_norm.weight") ||
        info.name.ends_with("emb_layer_norm_after.weight"))
      for (size_t i = 0; i < info.numel; ++i) p[info.offset + i] += 1.0f;
  return p;
}

std::vector<float> slice(const std::vector<FlatRun>& runs, size_t local_total, const std::vector<float>& full) {
  std::vector<float> local(local_total);
  for (const FlatRun& r : runs) std::copy_n(full.data() + r.full, r.length, local.data() + r.local);
  return local;
}

}  // namespace

// For TP ∈ {1, 2, 4}: each rank's runs tile its local buffer exactly once; the owned runs of all
// ranks tile the full layout exactly once; non-owned runs fall on elements that some rank owns;
// local shapes are the full ones split along the documented dimension.
TEST(TensorParallelTable, OwnedRunsCoverTheFullLayoutExactlyOnce) {
  const ModelConfig cfg = tp_config();
  const ParamTable full = build_param_table(cfg);
  for (int tp : {1, 2, 4}) {
    std::vector<int> owned(full.total, 0), seen(full.total, 0);
    size_t local_sum = 0;
    for (int r = 0; r < tp; ++r) {
      const ParamTable t = build_param_table(cfg, ShardCoord{r, tp, 0, 1});
      EXPECT_EQ(t.full_total, full.total);
      ASSERT_EQ(t.infos.size(), full.infos.size());
      std::vector<int> local_hits(t.total, 0);
      for (const FlatRun& run : t.runs) {
        ASSERT_LE(run.local + run.length, t.total);
        ASSERT_LE(run.full + run.length, full.total);
        for (size_t i = 0; i < run.length; ++i) {
          ++local_hits[run.local + i];
          ++seen[run.full + i];
          if (run.owner) ++owned[run.full + i];
        }
      }
      for (size_t i = 0; i < t.total; ++i) ASSERT_EQ(local_hits[i], 1) << "TP " << tp << " rank " << r << " local " << i;
      for (size_t k = 0; k < t.infos.size(); ++k) {
        const ParamInfo &lp = t.infos[k], &fp = full.infos[k];
        EXPECT_EQ(lp.name, fp.name);
        std::vector<int64_t> want = fp.shape;
        const bool rows = lp.name.find("attention.self.") != std::string::npos ||
                          lp.name.find("intermediate.dense.") != std::string::npos;
        const bool cols = lp.name.ends_with("output.dense.weight");  // attention.output.dense and output.dense
        if (rows) want[0] /= tp;
        if (cols) want[1] /= tp;
        EXPECT_EQ(lp.shape, want) << lp.name << " at TP " << tp;
        EXPECT_EQ(lp.owner, rows || cols || r == 0) << lp.name;
      }
      // One run per tensor unless split by columns (then one per row).
      if (tp == 1) {
        EXPECT_EQ(t.runs.size(), t.infos.size());
      }
      local_sum += t.total;
    }
    for (size_t i = 0; i < full.total; ++i) {
      ASSERT_EQ(owned[i], 1) << "TP " << tp << ": full element " << i << " owned " << owned[i] << " times";
      ASSERT_GE(seen[i], 1);
    }
    EXPECT_GE(local_sum, full.total);
  }
}

TEST(TensorParallelTable, HeadsOrFfnNotDivisibleIsAnError) {
  ModelConfig cfg = tp_config();
  try {
    build_param_table(cfg, ShardCoord{0, 3, 0, 1});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("4 attention heads do not divide by --tensor-model-parallel-size 3"),
              std::string::npos)
        << e.what();
  }
  cfg.ffn_hidden_size = 30;  // 4 heads divide by 4, 30 FFN units do not
  try {
    build_param_table(cfg, ShardCoord{1, 4, 0, 1});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("FFN width 30 does not divide by --tensor-model-parallel-size 4"),
              std::string::npos)
        << e.what();
  }
}

// TP=2 and TP=4 (threads) vs TP=1 on the same weights and batch, TP=2 also with selective and full
// activation recomputation (the recompute pass rebuilds the attention residual sum, one more
// all-reduce per layer): initialisation slices the unsplit model's weights bitwise; loss within 1e-6 relative; every gradient element within
// 2e-6 + 1e-4·|g| (fp32 round-off: the row-parallel products sum over K in TP pieces); replicated
// tensors' gradients bitwise equal on every TP rank (their inputs are the all-reduced, identical
// activations), so the replicas stay in sync without a gradient reduction.
TEST(TensorParallelModel, SplitRanksReproduceTheUnsplitModel) {
  const ModelConfig cfg = tp_config();
  const MicroBatch mb = batch();
  const float scale = 1.0f / static_cast<float>(mb.num_labels());
  const std::vector<float> full_p = random_full_params(cfg, 7);
  auto be1 = make_cpu_backend(1);
  Esm2Model ref(cfg, *be1);
  ref.set_params(full_p);
  ref.zero_grads();
  const LossSum ref_loss = ref.forward_backward(mb, scale);
  std::vector<float> ref_g(ref.num_params());
  ref.get_grads(ref_g);
  Esm2Model ref_init(cfg, *be1);
  ref_init.init_weights(42);
  std::vector<float> ref_init_p(ref_init.num_params());
  ref_init.get_params(ref_init_p);

  struct Case {
    int tp;
    Recompute recompute;
    int allreduces_per_layer;  // forward 2, backward 2, + 1 when the recompute pass rebuilds res_mid
  };
  for (const Case c : {Case{2, Recompute::None, 4}, Case{4, Recompute::None, 4}, Case{2, Recompute::Selective, 5},
                       Case{2, Recompute::Full, 5}}) {
    const int tp = c.tp;
    SCOPED_TRACE(std::string("TP ") + std::to_string(tp) + ", recompute " + recompute_name(c.recompute));
    ThreadGroup group(tp);
    std::vector<std::vector<float>> grads(tp), init_p(tp);
    std::vector<std::vector<FlatRun>> runs(tp);
    std::vector<LossSum> loss(tp);
    std::vector<int> allreduces(tp);
    std::vector<std::string> errors(tp);
    std::vector<std::thread> threads;
    for (int r = 0; r < tp; ++r)
      threads.emplace_back([&, r] {
        try {
          ThreadCommunicator comm(group, r);
          auto be = make_cpu_backend(1);
          Esm2Model m(cfg, *be, ModelParallel{&comm, nullptr});
          m.set_recompute(c.recompute);
          runs[r] = m.full_runs();
          m.init_weights(42);
          init_p[r].resize(m.num_params());
          m.get_params(init_p[r]);
          m.set_params(slice(runs[r], m.num_params(), full_p));
          m.zero_grads();
          loss[r] = m.forward_backward(mb, scale);
          grads[r].resize(m.num_params());
          m.get_grads(grads[r]);
          allreduces[r] = comm.allreduces;
        } catch (const std::exception& e) {
          errors[r] = e.what();
        }
      });
    for (auto& t : threads) t.join();
    for (int r = 0; r < tp; ++r) ASSERT_TRUE(errors[r].empty()) << "rank " << r << ": " << errors[r];
    EXPECT_EQ(allreduces[0], c.allreduces_per_layer * cfg.num_layers);
    for (int r = 0; r < tp; ++r) {
      EXPECT_EQ(init_p[r], slice(runs[r], init_p[r].size(), ref_init_p)) << "TP " << tp << " rank " << r;
      EXPECT_EQ(loss[r].num_labels, ref_loss.num_labels);
      EXPECT_NEAR(loss[r].loss_sum, ref_loss.loss_sum, 1e-6 * ref_loss.loss_sum) << "TP " << tp << " rank " << r;
      double worst = 0;
      for (const FlatRun& run : runs[r])
        for (size_t i = 0; i < run.length; ++i) {
          const float g = grads[r][run.local + i], want = ref_g[run.full + i];
          ASSERT_NEAR(g, want, 2e-6 + 1e-4 * std::abs(want)) << "TP " << tp << " rank " << r << " full " << run.full + i;
          worst = std::max(worst, std::abs(double(g) - double(want)));
          if (!run.owner) {  // a replica: bitwise equal to the owner's copy (rank 0 owns every replica)
            ASSERT_EQ(g, grads[0][run.local + i]) << "TP " << tp << " rank " << r;
          }
        }
      if (r == 0)
        std::printf("TP=%d (recompute %s) vs TP=1: max |Δgrad| %.3g, loss %.9g vs %.9g\n", tp,
                    recompute_name(c.recompute), worst, loss[r].loss_sum, ref_loss.loss_sum);
    }
  }
}
