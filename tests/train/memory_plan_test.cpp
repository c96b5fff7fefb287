// The device-memory planner (train/memory_plan.h): its activation part is the arena the model really
// allocates, its other parts follow from the parameter table, its "largest micro-batch" is the
// boundary of what fits, and the out-of-memory message names that micro-batch.
#include <gtest/gtest.h>

#include "backend/backend.h"
#include "data/tokenizer.h"
#include "model/esm2.h"
#include "train/memory_plan.h"

using namespace esm2;

namespace {

ModelConfig shape(int L, int C, int H, int F) {
  ModelConfig c;
  c.num_layers = L;
  c.hidden_size = C;
  c.num_attention_heads = H;
  c.ffn_hidden_size = F;
  return c;
}

// n tokens in sequences of up to 50, every position labelled.
MicroBatch batch_of(int n) {
  MicroBatch mb;
  mb.cu_seqlens = {0};
  for (int t = 0; t < n; ++t) {
    mb.input_ids.push_back(4 + t % 20);
    mb.labels.push_back(4 + (t * 7) % 20);
    if ((t + 1) % 50 == 0 || t + 1 == n) mb.cu_seqlens.push_back(t + 1);
  }
  mb.max_seqlen = std::min(n, 50);
  return mb;
}

constexpr size_t kGiB = size_t{1} << 30;

// A GPU backend's answer without a GPU: a fixed library workspace plus scratch growing with the tokens
// (the form of the CUDA backend's own answer, whose numbers come from its kernels' scratch functions).
const WorkspaceQuery kGpuLike = [](const WorkspaceShape& s) {
  return (size_t{32} << 20) + static_cast<size_t>(s.tokens) * static_cast<size_t>(s.hidden + s.ffn) * 6;
};

}  // namespace

// The planner's workspaces are the backend's own answer for the micro-batch's shape (plus the token
// index buffers): it derives no backend's constants itself. The CPU backend computes in host memory.
TEST(MemoryPlan, WorkspacesAreTheBackendsAnswerForTheShape) {
  const ModelConfig c = shape(3, 24, 3, 40);
  WorkspaceShape seen;
  const WorkspaceQuery probe = [&seen](const WorkspaceShape& s) {
    seen = s;
    return size_t{12345};
  };
  const MemoryPlan p = plan_memory(c, 300, Recompute::None, DType::BF16, probe);
  EXPECT_EQ(p.workspaces, 12345u + 4 * (4 * 300 + 1));
  EXPECT_EQ(seen.tokens, 300);
  EXPECT_EQ(seen.hidden, 24);
  EXPECT_EQ(seen.ffn, 40);
  EXPECT_EQ(seen.heads, 3);
  EXPECT_EQ(seen.vocab, c.vocab_size);
  auto cpu = make_cpu_backend(1);
  EXPECT_EQ(plan_memory(c, 300, Recompute::None, DType::F32, workspace_query(*cpu)).workspaces, 4u * (4 * 300 + 1));
}

TEST(MemoryPlan, ActivationsEqualTheArenaTheModelAllocates) {
  auto be = make_cpu_backend(2);
  for (const ModelConfig& c : {shape(2, 16, 2, 64), shape(3, 24, 3, 40), shape(1, 32, 4, 128)})
    for (int T : {37, 200})
      for (Recompute mode : {Recompute::None, Recompute::Selective, Recompute::Full}) {
        Esm2Model m(c, *be);
        m.set_recompute(mode);
        m.init_weights(1);
        std::vector<float> logits;
        m.forward_outputs(batch_of(T), &logits, nullptr);  // every token reaches the head, as planned
        const MemoryPlan p = plan_memory(c, T, mode, DType::F32, workspace_query(*be));
        EXPECT_EQ(p.activations, m.activation_bytes()) << c.num_layers << "x" << c.hidden_size << " T " << T << " "
                                                       << recompute_name(mode);
        // a training micro-batch (labelled rows only) never needs more than the plan
        Esm2Model t(c, *be);
        t.set_recompute(mode);
        t.init_weights(1);
        MicroBatch mb = batch_of(T);
        for (size_t i = 0; i < mb.labels.size(); i += 2) mb.labels[i] = kIgnoreLabel;
        t.forward_backward(mb, 1.0f);
        EXPECT_LT(t.activation_bytes(), p.activations);
      }
}

TEST(MemoryPlan, StaticPartsFollowTheParameterTable) {
  auto be = make_cpu_backend(1);
  const ModelConfig c = model_preset("8M");
  Esm2Model m(c, *be);
  size_t gemm_weights = 0;  // the Linear weight matrices plus the tied decoder (the embedding)
  for (const ParamInfo& p : m.params_info())
    if (p.weight_decay || p.name == "esm.embeddings.word_embeddings.weight") gemm_weights += p.numel;
  const size_t n = m.num_params();
  const MemoryPlan f32 = plan_memory(c, 4096, Recompute::Selective, DType::F32, kGpuLike);
  EXPECT_EQ(f32.params, 4 * n);
  EXPECT_EQ(f32.grads, 4 * n);
  EXPECT_EQ(f32.adam, 8 * n);
  EXPECT_EQ(f32.weight_copies, 0u);
  const MemoryPlan bf = plan_memory(c, 4096, Recompute::Selective, DType::BF16, kGpuLike);
  EXPECT_EQ(bf.weight_copies, 2 * gemm_weights);
  EXPECT_LT(bf.activations, f32.activations);
  EXPECT_GT(bf.workspaces, size_t{32} << 20);  // the cuBLASLt workspace at least
  EXPECT_EQ(bf.total(), bf.params + bf.grads + bf.adam + bf.weight_copies + bf.activations + bf.workspaces);
  EXPECT_NE(format_memory_plan(bf).find("--recompute selective"), std::string::npos);
}

TEST(MemoryPlan, LargestMicroBatchIsTheBoundaryOfWhatFits) {
  for (const char* preset : {"650M", "3B"}) {
    const ModelConfig c = model_preset(preset);
    int64_t prev = 0;
    for (Recompute mode : {Recompute::None, Recompute::Selective, Recompute::Full}) {
      const size_t budget = 78 * kGiB;
      const int64_t n = largest_micro_batch_tokens(c, mode, DType::BF16, budget, kGpuLike);
      ASSERT_GT(n, 0) << preset;
      EXPECT_EQ(n % 256, 0);
      EXPECT_LE(plan_memory(c, n, mode, DType::BF16, kGpuLike).total(), budget);
      EXPECT_GT(plan_memory(c, n + 256, mode, DType::BF16, kGpuLike).total(), budget);
      EXPECT_GT(n, prev) << preset << " " << recompute_name(mode);  // each mode fits more than the last
      prev = n;
    }
  }
  // 15B's fp32 state alone (16 bytes per parameter) is over 200 GiB
  EXPECT_EQ(largest_micro_batch_tokens(model_preset("15B"), Recompute::Full, DType::BF16, 78 * kGiB, kGpuLike), 0);
}

TEST(MemoryPlan, OutOfMemoryMessageNamesTheMicroBatchThatFits) {
  const ModelConfig c = model_preset("3B");
  const size_t free = 9 * kGiB, held = 61 * kGiB;
  const OutOfDeviceMemory e("CUDA out of memory allocating 20480.0 MiB (9216.0 MiB free of 81559.0): out of memory",
                            20 * kGiB, free, 80 * kGiB, held, DType::BF16);
  const std::string msg = out_of_memory_message(e, c, 65536, Recompute::Selective, kGpuLike);
  const int64_t n = largest_micro_batch_tokens(c, Recompute::Selective, DType::BF16, free + held, kGpuLike);
  const int64_t nf = largest_micro_batch_tokens(c, Recompute::Full, DType::BF16, free + held, kGpuLike);
  ASSERT_GT(n, 0);
  ASSERT_GT(nf, n);
  EXPECT_EQ(msg.find("CUDA out of memory allocating 20480.0 MiB (9216.0 MiB free of 81559.0)"), 0u) << msg;
  EXPECT_NE(msg.find(fmt::format("the largest --micro-batch-tokens that fits with --recompute selective is {}", n)),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find(fmt::format("with --recompute full: {}", nf)), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos);
  // nothing fits: say what the fixed part needs
  const OutOfDeviceMemory small("CUDA out of memory allocating 1.0 MiB (1.0 MiB free of 8192.0): out of memory",
                                kGiB, kGiB, 8 * kGiB, 6 * kGiB, DType::BF16);
  const std::string none = out_of_memory_message(small, c, 4096, Recompute::Full, kGpuLike);
  EXPECT_NE(none.find("no --micro-batch-tokens fits with --recompute full"), std::string::npos) << none;
}
