// AdamW + clipping against an independent fp64 implementation of torch.optim.AdamW and
// torch.nn.utils.clip_grad_norm_, on the real parameter table of a tiny ESM-2.
#include "optim/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/backend.h"
#include "model/esm2.h"

using namespace esm2;

namespace {

ModelConfig tiny() {
  ModelConfig c;
  c.num_layers = 1;
  c.hidden_size = 16;
  c.num_attention_heads = 2;
  c.ffn_hidden_size = 32;
  return c;
}

struct RefAdam {
  std::vector<double> p, m, v;
};

}  // namespace

TEST(AdamW, MatchesTorchSemanticsWithDecayOnlyOnMatrices) {
  auto be = make_cpu_backend(1);
  Esm2Model model(tiny(), *be);
  model.init_weights(3);
  OptimizerConfig oc;
  oc.weight_decay = 0.1;  // large, so a wrongly decayed tensor shows
  oc.clip_grad = 0;       // clipping tested separately
  AdamW opt(model, oc);
  const size_t n = model.num_params();
  std::vector<float> p0(n);
  model.get_params(p0);
  RefAdam ref{std::vector<double>(p0.begin(), p0.end()), std::vector<double>(n, 0), std::vector<double>(n, 0)};
  std::mt19937 rng(7);
  std::normal_distribution<float> g01(0.f, 1.f);
  const double lrs[3] = {1e-3, 5e-4, 2e-3};
  for (int t = 1; t <= 3; ++t) {
    std::vector<float> g(n);
    for (auto& x : g) x = 0.1f * g01(rng);
    std::copy(g.begin(), g.end(), model.grad_data());  // CPU backend: host memory
    opt.step(lrs[t - 1]);
    for (const auto& info : model.params_info()) {
      const double wd = info.weight_decay ? oc.weight_decay : 0.0;
      for (size_t i = info.offset; i < info.offset + info.numel; ++i) {
        const double lr = lrs[t - 1];
        ref.p[i] *= 1 - lr * wd;
        ref.m[i] = oc.beta1 * ref.m[i] + (1 - oc.beta1) * g[i];
        ref.v[i] = oc.beta2 * ref.v[i] + (1 - oc.beta2) * double(g[i]) * g[i];
        const double mh = ref.m[i] / (1 - std::pow(oc.beta1, t)), vh = ref.v[i] / (1 - std::pow(oc.beta2, t));
        ref.p[i] -= lr * mh / (std::sqrt(vh) + oc.eps);
      }
    }
  }
  std::vector<float> p(n);
  model.get_params(p);
  double max_err = 0;
  for (size_t i = 0; i < n; ++i) max_err = std::max(max_err, std::abs(p[i] - ref.p[i]));
  EXPECT_LT(max_err, 2e-6);
  // Which tensors decay: Linear weight matrices only.
  for (const auto& info : model.params_info()) {
    const bool matrix = info.shape.size() == 2 && info.name != "esm.embeddings.word_embeddings.weight";
    EXPECT_EQ(info.weight_decay, matrix) << info.name;
  }
  EXPECT_EQ(opt.steps_taken(), 3);
}

TEST(AdamW, WeightDecayAloneShrinksOnlyMatricesAndEmbeddingsOnRequest) {
  for (bool decay_emb : {false, true}) {
    auto be = make_cpu_backend(1);
    Esm2Model model(tiny(), *be);
    model.init_weights(5);
    OptimizerConfig oc;
    oc.weight_decay = 0.5;
    oc.decay_embeddings = decay_emb;
    AdamW opt(model, oc);
    std::vector<float> before(model.num_params()), after(model.num_params());
    model.get_params(before);
    model.zero_grads();  // zero gradient: only the decoupled decay moves parameters
    opt.step(0.1);
    model.get_params(after);
    for (const auto& info : model.params_info()) {
      const bool emb = info.name == "esm.embeddings.word_embeddings.weight";
      const bool decays = info.weight_decay || (emb && decay_emb);
      for (size_t i = info.offset; i < info.offset + info.numel; ++i) {
        const float expect = decays ? before[i] * (1.0f - 0.1f * 0.5f) : before[i];
        ASSERT_FLOAT_EQ(after[i], expect) << info.name;
      }
    }
  }
}

TEST(AdamW, GlobalNormClippingLikeTorch) {
  auto be = make_cpu_backend(1);
  Esm2Model model(tiny(), *be);
  model.init_weights(9);
  OptimizerConfig oc;
  oc.clip_grad = 1.0;
  oc.weight_decay = 0;
  AdamW opt(model, oc);
  const size_t n = model.num_params();
  std::vector<float> g(n);
  double ss = 0;
  for (size_t i = 0; i < n; ++i) {
    g[i] = static_cast<float>(std::sin(0.37 * double(i)));
    ss += double(g[i]) * g[i];
  }
  std::copy(g.begin(), g.end(), model.grad_data());
  EXPECT_NEAR(opt.grad_norm(), std::sqrt(ss), 1e-9 * std::sqrt(ss));
  const OptimizerStepStats st = opt.step(1e-3);
  EXPECT_NEAR(st.clip_coef, 1.0 / (std::sqrt(ss) + 1e-6), 1e-12);
  // After clipping, Adam's first step moves each parameter by lr·sign(g) (m̂/√v̂ = g/|g| for any scale):
  // the clipping must not change that, but it must change the stored moments by the clip factor.
  std::vector<float> m(n), v(n);
  opt.get_moments(m, v);
  for (size_t i = 0; i < n; i += 97) EXPECT_NEAR(m[i], 0.1 * g[i] * st.clip_coef, 1e-7);
  // Small gradients are not scaled up.
  std::fill(g.begin(), g.end(), 1e-4f);
  std::copy(g.begin(), g.end(), model.grad_data());
  EXPECT_DOUBLE_EQ(opt.step(1e-3).clip_coef, 1.0);
}
