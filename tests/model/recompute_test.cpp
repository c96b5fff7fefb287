// Activation recomputation (--recompute none|selective|full): on the deterministic CPU backend every
// mode gives bitwise the loss and gradients of `none`; the activation arena shrinks by exactly the
// tensors a mode stops keeping per layer.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "backend/backend.h"
#include "data/tokenizer.h"
#include "model/esm2.h"

using namespace esm2;

namespace {

// FFN width not 4·hidden, so that a mix-up of the C- and F-wide scratch shows.
ModelConfig small_config() {
  ModelConfig c;
  c.num_layers = 3;
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.ffn_hidden_size = 40;
  return c;
}

// Four packed sequences of lengths 7, 12, 3, 9 with <mask> inputs; about a third labelled.
MicroBatch packed_batch(uint32_t seed) {
  std::mt19937 g(seed);
  MicroBatch mb;
  mb.cu_seqlens = {0};
  for (int len : {7, 12, 3, 9}) {
    for (int i = 0; i < len; ++i) {
      const bool edge = i == 0 || i == len - 1;
      const int32_t tok = edge ? (i == 0 ? kCls : kEos) : static_cast<int32_t>(4 + g() % 20);
      const bool labelled = !edge && g() % 3 == 0;
      mb.input_ids.push_back(labelled && g() % 2 == 0 ? kMask : tok);
      mb.labels.push_back(labelled ? tok : kIgnoreLabel);
    }
    mb.cu_seqlens.push_back(static_cast<int32_t>(mb.input_ids.size()));
    mb.max_seqlen = std::max(mb.max_seqlen, len);
  }
  mb.token_budget = mb.num_tokens();
  return mb;
}

void randomise(Esm2Model& m, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-0.25f, 0.25f);
  std::vector<float> p(m.num_params());
  for (auto& x : p) x = d(g);
  for (const ParamInfo& info : m.params_info())
    if (info.name.ends_with("LayerNorm.weight") || info.name.ends_with("layer_norm.weight") ||
        info.name.ends_with("emb_layer_norm_after.weight"))
      for (size_t i = 0; i < info.numel; ++i) p[info.offset + i] += 1.0f;
  m.set_params(p);
}

struct Result {
  std::vector<double> losses;
  std::vector<float> grads;
};

// Two micro-batches of different sizes accumulated (the second smaller, so it runs in the arena sized
// for the first), then a validation forward.
Result run(Esm2Model& m) {
  Result r;
  const MicroBatch a = packed_batch(1), b = packed_batch(2);
  m.zero_grads();
  r.losses.push_back(m.forward_backward(a, 0.5f).loss_sum);
  r.losses.push_back(m.forward_backward(b, 0.25f).loss_sum);
  r.losses.push_back(m.forward_loss(a).loss_sum);
  r.grads.resize(m.num_params());
  m.get_grads(r.grads);
  return r;
}

}  // namespace

TEST(Recompute, LossAndEveryGradientBitwiseEqualToNone) {
  auto be = make_cpu_backend(2);
  Esm2Model ref(small_config(), *be);
  randomise(ref, 7);
  const Result want = run(ref);
  double gmax = 0;
  for (float g : want.grads) gmax = std::max(gmax, static_cast<double>(std::abs(g)));
  ASSERT_GT(gmax, 1e-3);
  for (Recompute mode : {Recompute::Selective, Recompute::Full}) {
    Esm2Model m(small_config(), *be);
    m.set_recompute(mode);
    randomise(m, 7);
    const Result got = run(m);
    EXPECT_EQ(got.losses, want.losses) << recompute_name(mode);
    ASSERT_EQ(got.grads.size(), want.grads.size());
    for (const ParamInfo& info : m.params_info())
      EXPECT_EQ(0, std::memcmp(got.grads.data() + info.offset, want.grads.data() + info.offset, info.numel * 4))
          << recompute_name(mode) << ": " << info.name;
  }
  // Switching the mode of a live model re-carves the arena and keeps the results.
  ref.set_recompute(Recompute::Full);
  EXPECT_EQ(ref.activation_bytes(), 0u);
  const Result again = run(ref);
  EXPECT_EQ(again.losses, want.losses);
  EXPECT_EQ(0, std::memcmp(again.grads.data(), want.grads.data(), want.grads.size() * 4));
}

TEST(Recompute, InferenceOutputsUnchanged) {
  auto be = make_cpu_backend(2);
  const MicroBatch mb = packed_batch(3);
  std::vector<float> logits0, hidden0, repr0;
  {
    Esm2Model m(small_config(), *be);
    randomise(m, 8);
    m.forward_outputs(mb, &logits0, &hidden0, 2, &repr0);
  }
  Esm2Model m(small_config(), *be);
  m.set_recompute(Recompute::Full);
  randomise(m, 8);
  std::vector<float> logits, hidden, repr;
  m.forward_outputs(mb, &logits, &hidden, 2, &repr);
  EXPECT_EQ(logits, logits0);
  EXPECT_EQ(hidden, hidden0);
  EXPECT_EQ(repr, repr0);
}

// Handmade from the shapes: per token, the tensors of one layer that `none` keeps (bytes), and the part
// of them each mode stops keeping. Each of the arena's 31 buffers is rounded up to 256 bytes.
struct LayerBytes {
  size_t ln1, qkv, atty, mid, ln2, fch;  // per token, with fp32 statistics
};
LayerBytes layer_bytes(const ModelConfig& c, size_t es) {
  const size_t C = c.hidden_size, F = c.ffn_hidden_size, H = c.num_attention_heads;
  return {C * es + 8, 3 * C * es, C * es + 4 * H, C * es, C * es + 8, F * es};
}
constexpr size_t kSlack = 31 * 256;

TEST(Recompute, ActivationBytesShrinkByTheTensorsNotKept) {
  for (const auto& [preset, T, es, dt] :
       {std::tuple{"8M", int64_t{16384}, size_t{4}, DType::F32}, std::tuple{"650M", int64_t{8192}, size_t{2}, DType::BF16},
        std::tuple{"3B", int64_t{16384}, size_t{2}, DType::BF16}}) {
    const ModelConfig c = model_preset(preset);
    const size_t none = activation_arena_bytes(c, T, T / 7, Recompute::None, dt);
    const size_t sel = activation_arena_bytes(c, T, T / 7, Recompute::Selective, dt);
    const size_t full = activation_arena_bytes(c, T, T / 7, Recompute::Full, dt);
    ASSERT_GT(none, sel) << preset;
    ASSERT_GT(sel, full) << preset;
    // selective drops ln1, mid, ln2 (+ stats) on all but one layer; full also qkv, atty (+ lse), fch
    const LayerBytes b = layer_bytes(c, es);
    const double L1 = c.num_layers - 1;
    const double d_sel = L1 * T * (b.ln1 + b.mid + b.ln2), d_full = L1 * T * (b.qkv + b.atty + b.fch);
    EXPECT_NEAR(static_cast<double>(none - sel), d_sel, kSlack) << preset;
    EXPECT_NEAR(static_cast<double>(sel - full), d_full, kSlack) << preset;
    // the bulk: kept per-layer bytes, e.g. (8C+F) vs (5C+F) elements per token and layer at F = 4C
    const double per_layer_none = b.ln1 + b.qkv + b.atty + b.mid + b.ln2 + b.fch;
    const double per_layer_sel = b.qkv + b.atty + b.fch;
    EXPECT_NEAR(static_cast<double>(none - full) / static_cast<double>(sel - full), per_layer_none / per_layer_sel,
                1e-6)
        << preset;
  }
}

TEST(Recompute, ActivationBytesIsTheArenaOfTheLargestMicroBatch) {
  auto be = make_cpu_backend(2);
  const ModelConfig c = small_config();
  const MicroBatch mb = packed_batch(1);
  const int64_t T = mb.num_tokens(), R = mb.num_labels();
  size_t prev = SIZE_MAX;
  for (Recompute mode : {Recompute::None, Recompute::Selective, Recompute::Full}) {
    Esm2Model m(c, *be);
    m.set_recompute(mode);
    randomise(m, 1);
    EXPECT_EQ(m.activation_bytes(), 0u);
    m.forward_backward(mb, 1.0f);
    EXPECT_EQ(m.activation_bytes(), activation_arena_bytes(c, T, R, mode, DType::F32)) << recompute_name(mode);
    // the handmade count: residual stream, L or 1 slices of the per-layer tensors, final LN, head, scratch
    const size_t C = c.hidden_size, F = c.ffn_hidden_size, V = c.vocab_size, L = c.num_layers;
    const LayerBytes b = layer_bytes(c, 4);
    const size_t all = b.ln1 + b.qkv + b.atty + b.mid + b.ln2 + b.fch;
    const size_t kept = mode == Recompute::None ? all : mode == Recompute::Selective ? b.qkv + b.atty + b.fch : 0;
    const size_t expected = (L + 1) * T * C * 4 + T * (L * kept + (all - kept)) + T * (C * 4 + 8) +
                            R * (4 * C * 4 + 8 + V * 4 + 4) + T * (2 * F + 5 * C) * 4 + R * (2 * C + V) * 4;
    EXPECT_GE(m.activation_bytes(), expected) << recompute_name(mode);
    EXPECT_LT(m.activation_bytes(), expected + kSlack) << recompute_name(mode);
    EXPECT_LT(m.activation_bytes(), prev);
    prev = m.activation_bytes();
  }
}
