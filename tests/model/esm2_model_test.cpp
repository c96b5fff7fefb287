// The whole ESM-2 model on the CPU backend: gradient check of every parameter tensor against finite
// differences, packing invariance, token dropout and rotary defaults, initialisation, the parameter
// table, config validation and determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/backend.h"
#include "core/error.h"
#include "data/tokenizer.h"
#include "model/esm2.h"

using namespace esm2;

namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.num_layers = 2;
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.ffn_hidden_size = 32;
  return c;
}

// Three sequences <cls> … <eos> with some <mask> inputs; labels on masked and on some kept positions.
MicroBatch tiny_batch() {
  MicroBatch mb;
  const std::vector<std::vector<int32_t>> seqs = {
      {kCls, 5, 32, 7, 8, kEos}, {kCls, 9, 10, 32, 32, 13, 14, kEos}, {kCls, 20, 21, kEos}};
  const std::vector<std::vector<int32_t>> orig = {
      {kCls, 5, 6, 7, 8, kEos}, {kCls, 9, 10, 11, 12, 13, 14, kEos}, {kCls, 20, 21, kEos}};
  mb.cu_seqlens = {0};
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (size_t i = 0; i < seqs[s].size(); ++i) {
      mb.input_ids.push_back(seqs[s][i]);
      const bool labelled = seqs[s][i] == kMask || (s == 0 && i == 4) || (s == 2 && i == 1);
      mb.labels.push_back(labelled ? orig[s][i] : kIgnoreLabel);
    }
    mb.cu_seqlens.push_back(static_cast<int32_t>(mb.input_ids.size()));
    mb.sample_ids.push_back(static_cast<int64_t>(s));
    mb.max_seqlen = std::max<int32_t>(mb.max_seqlen, static_cast<int32_t>(seqs[s].size()));
  }
  mb.token_budget = mb.num_tokens();
  return mb;
}

MicroBatch slice(const MicroBatch& mb, int s) {
  MicroBatch one;
  const int a = mb.cu_seqlens[s], b = mb.cu_seqlens[s + 1];
  one.input_ids.assign(mb.input_ids.begin() + a, mb.input_ids.begin() + b);
  one.labels.assign(mb.labels.begin() + a, mb.labels.begin() + b);
  one.cu_seqlens = {0, b - a};
  one.max_seqlen = b - a;
  return one;
}

// Random parameters of O(0.25) (LayerNorm weights around 1) so every path carries signal.
void randomise(Esm2Model& m, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-0.25f, 0.25f);
  std::vector<float> p(m.num_params());
  for (auto& x : p) x = d(g);
  for (const ParamInfo& info : m.params_info())
    if (info.name.find("LayerNorm.weight") != std::string::npos || info.name.find("layer_norm.weight") != std::string::npos)
      for (size_t i = 0; i < info.numel; ++i) p[info.offset + i] += 1.0f;
  m.set_params(p);
}

}  // namespace

// d(Σ CE)/dθ of every parameter tensor vs central differences of forward_loss (fp32 forward, loss
// summed in double). eps = 1e-2 on O(0.25) parameters: truncation ≈ 1e-4, fp32 noise in the loss sum
// (≈ 40) ≈ 1e-5 / 2e-2 ≈ 5e-4, hence |fd − g| <= 3e-3 + 2e-2·|fd|.
TEST(Esm2Model, GradientOfEveryParameterTensorMatchesFiniteDifferences) {
  auto be = make_cpu_backend(2);
  Esm2Model m(tiny_config(), *be);
  randomise(m, 1);
  const MicroBatch mb = tiny_batch();
  m.zero_grads();
  const LossSum ls = m.forward_backward(mb, 1.0f);
  EXPECT_EQ(ls.num_labels, mb.num_labels());
  std::vector<float> grad(m.num_params()), p(m.num_params());
  m.get_grads(grad);
  m.get_params(p);
  const float eps = 1e-2f;
  int checked = 0;
  for (const ParamInfo& info : m.params_info()) {
    // up to 12 elements spread over the tensor, plus its largest gradient
    std::vector<size_t> idx;
    const size_t step = std::max<size_t>(1, info.numel / 12);
    for (size_t i = 0; i < info.numel; i += step) idx.push_back(info.offset + i);
    size_t arg = info.offset;
    for (size_t i = 0; i < info.numel; ++i)
      if (std::abs(grad[info.offset + i]) > std::abs(grad[arg])) arg = info.offset + i;
    idx.push_back(arg);
    float gmax = 0;
    for (size_t i : idx) {
      const float p0 = p[i];
      p[i] = p0 + eps;
      m.set_params(p);
      const double lp = m.forward_loss(mb).loss_sum;
      p[i] = p0 - eps;
      m.set_params(p);
      const double lm = m.forward_loss(mb).loss_sum;
      p[i] = p0;
      const double fd = (lp - lm) / (2.0 * eps);
      EXPECT_NEAR(grad[i], fd, 3e-3 + 2e-2 * std::abs(fd)) << info.name << " element " << i - info.offset;
      gmax = std::max(gmax, std::abs(grad[i]));
      ++checked;
    }
    // every tensor (but the pad row-only region) receives gradient: a missing backward path would be 0
    EXPECT_GT(gmax, 1e-4f) << info.name;
  }
  m.set_params(p);
  EXPECT_GT(checked, 400);
}

TEST(Esm2Model, GradScaleAndAccumulation) {
  auto be = make_cpu_backend(2);
  Esm2Model m(tiny_config(), *be);
  randomise(m, 2);
  const MicroBatch mb = tiny_batch();
  std::vector<float> g1(m.num_params()), g2(m.num_params());
  m.zero_grads();
  m.forward_backward(mb, 1.0f);
  m.get_grads(g1);
  m.zero_grads();
  m.forward_backward(mb, 0.25f);
  m.forward_backward(mb, 0.25f);  // accumulates (+=)
  m.get_grads(g2);
  for (size_t i = 0; i < g1.size(); ++i) ASSERT_NEAR(g2[i], 0.5f * g1[i], 1e-6f + 1e-5f * std::abs(g1[i])) << i;
}

TEST(Esm2Model, DeterministicBitwise) {
  auto be = make_cpu_backend(2);
  Esm2Model m(tiny_config(), *be);
  randomise(m, 3);
  const MicroBatch mb = tiny_batch();
  std::vector<float> g1(m.num_params()), g2(m.num_params());
  m.zero_grads();
  const LossSum a = m.forward_backward(mb, 1.0f);
  m.get_grads(g1);
  m.zero_grads();
  const LossSum b = m.forward_backward(mb, 1.0f);
  m.get_grads(g2);
  EXPECT_EQ(a.loss_sum, b.loss_sum);
  EXPECT_EQ(0, std::memcmp(g1.data(), g2.data(), g1.size() * 4));
}

// Attention never crosses a sequence boundary: packed outputs equal each sequence run alone.
TEST(Esm2Model, PackedEqualsPerSequence) {
  auto be = make_cpu_backend(2);
  Esm2Model m(tiny_config(), *be);
  randomise(m, 4);
  const MicroBatch mb = tiny_batch();
  std::vector<float> logits, hidden, repr;
  m.forward_outputs(mb, &logits, &hidden, 1, &repr);
  const int V = 33, C = 16;
  double loss_singles = 0;
  for (int s = 0; s < 3; ++s) {
    const MicroBatch one = slice(mb, s);
    std::vector<float> l1, h1, r1;
    m.forward_outputs(one, &l1, &h1, 1, &r1);
    const int t0 = mb.cu_seqlens[s];
    for (size_t i = 0; i < l1.size(); ++i) ASSERT_NEAR(l1[i], logits[t0 * V + i], 1e-5) << s;
    for (size_t i = 0; i < h1.size(); ++i) ASSERT_NEAR(h1[i], hidden[t0 * C + i], 1e-5) << s;
    for (size_t i = 0; i < r1.size(); ++i) ASSERT_NEAR(r1[i], repr[t0 * C + i], 1e-5) << s;
    loss_singles += m.forward_loss(one).loss_sum;
  }
  const LossSum packed = m.forward_loss(mb);
  EXPECT_NEAR(packed.loss_sum, loss_singles, 1e-5 * loss_singles);
  // the labelled-rows head equals cross-entropy of the all-rows logits
  double ce = 0;
  for (int64_t t = 0; t < mb.num_tokens(); ++t) {
    if (mb.labels[t] == kIgnoreLabel) continue;
    double s = 0;
    for (int j = 0; j < V; ++j) s += std::exp(static_cast<double>(logits[t * V + j]));
    ce += std::log(s) - logits[t * V + mb.labels[t]];
  }
  EXPECT_NEAR(packed.loss_sum, ce, 1e-5 * ce);
}

// repr_layer 0 is the embedding after token dropout: <mask> rows zero, each sequence scaled by
// 0.88 / (1 - n_mask / n_real).
TEST(Esm2Model, TokenDropoutOfEmbeddings) {
  auto be = make_cpu_backend(1);
  Esm2Model m(tiny_config(), *be);
  randomise(m, 5);
  const MicroBatch mb = tiny_batch();
  std::vector<float> repr, p(m.num_params());
  m.get_params(p);
  m.forward_outputs(mb, nullptr, nullptr, 0, &repr);
  const int C = 16;
  const float scale[3] = {0.88f / (1.0f - 1.0f / 6.0f), 0.88f / (1.0f - 2.0f / 8.0f), 0.88f};
  for (int s = 0; s < 3; ++s)
    for (int t = mb.cu_seqlens[s]; t < mb.cu_seqlens[s + 1]; ++t)
      for (int j = 0; j < C; ++j) {
        const float e = mb.input_ids[t] == kMask ? 0.0f : p[mb.input_ids[t] * C + j] * scale[s];
        ASSERT_NEAR(repr[t * C + j], e, 1e-6) << t;
      }
}

TEST(Esm2Model, InvFreqDefaultAndOverride) {
  auto be = make_cpu_backend(1);
  Esm2Model m(tiny_config(), *be);  // head dim 8
  const auto f = m.inv_freq();
  ASSERT_EQ(f.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(f[i], 1.0 / std::pow(10000.0, 2.0 * i / 8.0), 1e-7);
  randomise(m, 6);
  const MicroBatch mb = tiny_batch();
  std::vector<float> l0, l1;
  m.forward_outputs(mb, &l0, nullptr);
  m.set_inv_freq(std::vector<float>{1.0f, 0.1f, 0.0099945068f, 0.0009999275f});  // fp16-rounded
  EXPECT_EQ(m.inv_freq()[2], 0.0099945068f);
  m.forward_outputs(mb, &l1, nullptr);
  double diff = 0;
  for (size_t i = 0; i < l0.size(); ++i) diff = std::max(diff, static_cast<double>(std::abs(l0[i] - l1[i])));
  EXPECT_GT(diff, 0.0);  // the stored buffer is used
  EXPECT_THROW(m.set_inv_freq(std::vector<float>{1.0f}), Error);
}

TEST(Esm2Model, ParameterTableNamesShapesDecay) {
  auto be = make_cpu_backend(1);
  const ModelConfig cfg = model_preset("8M");
  Esm2Model m(cfg, *be);
  EXPECT_EQ(static_cast<int64_t>(m.num_params()), cfg.num_parameters());
  size_t off = 0, decay = 0;
  for (const ParamInfo& p : m.params_info()) {
    EXPECT_EQ(p.offset, off) << p.name;
    off += p.numel;
    decay += p.weight_decay;
    EXPECT_EQ(p.name.find("decoder"), std::string::npos);
    EXPECT_EQ(p.name.find("inv_freq"), std::string::npos);
  }
  EXPECT_EQ(off, m.num_params());
  EXPECT_EQ(decay, 6u * 8 + 1);
  auto find = [&](const std::string& n) -> const ParamInfo* {
    for (const ParamInfo& p : m.params_info())
      if (p.name == n) return &p;
    return nullptr;
  };
  const ParamInfo* q = find("esm.encoder.layer.0.attention.self.query.weight");
  ASSERT_TRUE(q);
  EXPECT_EQ(q->shape, (std::vector<int64_t>{320, 320}));
  EXPECT_TRUE(q->weight_decay);
  const ParamInfo* fc = find("esm.encoder.layer.7.intermediate.dense.weight");
  ASSERT_TRUE(fc);
  EXPECT_EQ(fc->shape, (std::vector<int64_t>{1280, 320}));
  ASSERT_TRUE(find("esm.encoder.layer.3.attention.LayerNorm.weight"));
  ASSERT_TRUE(find("esm.encoder.layer.3.LayerNorm.bias"));
  ASSERT_TRUE(find("esm.encoder.emb_layer_norm_after.weight"));
  ASSERT_TRUE(find("lm_head.layer_norm.bias"));
  const ParamInfo* bias = find("lm_head.bias");
  ASSERT_TRUE(bias);
  EXPECT_EQ(bias->shape, (std::vector<int64_t>{33}));
  EXPECT_FALSE(find("esm.embeddings.word_embeddings.weight")->weight_decay);
  EXPECT_FALSE(find("lm_head.dense.bias")->weight_decay);
  EXPECT_TRUE(find("lm_head.dense.weight")->weight_decay);
}

TEST(Esm2Model, InitStatistics) {
  auto be = make_cpu_backend(2);
  Esm2Model m(model_preset("demo"), *be);
  m.init_weights(1234);
  std::vector<float> p(m.num_params()), p2(m.num_params());
  m.get_params(p);
  double s = 0, s2 = 0;
  size_t n = 0;
  for (const ParamInfo& info : m.params_info()) {
    const bool normal = info.weight_decay || info.name == "esm.embeddings.word_embeddings.weight";
    const bool ln_w = info.name.ends_with("LayerNorm.weight") || info.name.ends_with("layer_norm.weight") ||
                      info.name.ends_with("emb_layer_norm_after.weight");
    for (size_t i = 0; i < info.numel; ++i) {
      const float v = p[info.offset + i];
      if (normal) {
        s += v;
        s2 += static_cast<double>(v) * v;
        ++n;
      } else {
        ASSERT_EQ(v, ln_w ? 1.0f : 0.0f) << info.name;
      }
    }
  }
  const double mean = s / n, sd = std::sqrt(s2 / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 3e-4);
  EXPECT_NEAR(sd, 0.02, 4e-4);
  for (int j = 0; j < 128; ++j) EXPECT_EQ(p[kPad * 128 + j], 0.0f);  // padding_idx row
  m.init_weights(1234);
  m.get_params(p2);
  EXPECT_EQ(p, p2);
  m.init_weights(1235);
  m.get_params(p2);
  EXPECT_NE(p, p2);
}

TEST(Esm2Model, ValidateErrorsNameTheProblem) {
  auto be = make_cpu_backend(1);
  ModelConfig c = tiny_config();
  c.hidden_size = 30;
  c.num_attention_heads = 4;
  try {
    Esm2Model m(c, *be);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("hidden_size 30 is not divisible by num_attention_heads 4"), std::string::npos)
        << e.what();
  }
  c.hidden_size = 12;  // head dim 3
  try {
    c.validate();
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head dim 3"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("even"), std::string::npos) << e.what();
  }
}

TEST(Esm2Model, RejectsMalformedMicroBatch) {
  auto be = make_cpu_backend(1);
  Esm2Model m(tiny_config(), *be);
  MicroBatch mb = tiny_batch();
  mb.input_ids[3] = 40;
  EXPECT_THROW(m.forward_loss(mb), Error);
  mb = tiny_batch();
  mb.cu_seqlens.back() = 5;
  EXPECT_THROW(m.forward_loss(mb), Error);
  mb = tiny_batch();
  mb.labels[1] = 33;
  EXPECT_THROW(m.forward_loss(mb), Error);
  mb = tiny_batch();
  for (auto& l : mb.labels) l = kIgnoreLabel;
  const LossSum z = m.forward_backward(mb, 1.0f);
  EXPECT_EQ(z.num_labels, 0);
  EXPECT_EQ(z.loss_sum, 0.0);
}

// ESM2_CHECK_FINITE (diagnosis of a non-finite gradient): one NaN in layer 1's FFN input weight makes
// "layer 1 fc" the first non-finite tensor of the forward; the report names it, its row's token, and the
// parameter gradients that went non-finite (no forward tensor before it is reported). Without the variable nothing is printed.
TEST(Esm2Model, CheckFiniteNamesTheFirstNonFiniteOp) {
  auto run = [](bool check) {
    if (check) setenv("ESM2_CHECK_FINITE", "yes", 1);  // any value but 0 turns it on
    else setenv("ESM2_CHECK_FINITE", "0", 1);
    auto be = make_cpu_backend(2);
    Esm2Model m(tiny_config(), *be);
    unsetenv("ESM2_CHECK_FINITE");  // read when the model is made
    randomise(m, 3);
    std::vector<float> p(m.num_params());
    m.get_params(p);
    for (const ParamInfo& info : m.params_info())
      if (info.name == "esm.encoder.layer.1.intermediate.dense.weight") p[info.offset + 3 * 16] = NAN;  // row 3
    m.set_params(p);
    m.zero_grads();
    testing::internal::CaptureStderr();
    m.forward_backward(tiny_batch(), 1.0f);
    return testing::internal::GetCapturedStderr();
  };
  const std::string quiet = run(false);
  EXPECT_EQ(quiet.find("check-finite"), std::string::npos) << quiet;
  const std::string out = run(true);
  const size_t first = out.find("esm2: check-finite: ");
  ASSERT_NE(first, std::string::npos) << out;
  // Every token's fc output column 3 is NaN: 18 tokens of 32 columns, the first at token 0 (<cls>).
  const std::string want =
      "esm2: check-finite: layer 1 fc: 18 non-finite of 18x32; first at row 0 (token 0 id 0, unlabelled), column 3: "
      "nan; finite |max| ";
  EXPECT_EQ(out.compare(first, want.size(), want), 0) << out;
  EXPECT_LT(first, out.find("check-finite: layer 1 gelu: ")) << out;  // reported in op order
  EXPECT_NE(out.find("check-finite: gradient esm.encoder.layer.1.intermediate.dense.weight: "), std::string::npos)
      << out;
}
