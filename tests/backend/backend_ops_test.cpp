// Every CPU backend op: forwards against small double-precision references written here, backwards
// against central finite differences of the op's own forward.
//
// Finite differences run the fp32 forward with eps = 1e-2 and sum the objective J = Σ w·y in double.
// Truncation error is O(eps²·|f'''|) ≈ 1e-4 for these O(1) inputs and the fp32 rounding noise in J is
// about 1e-7·Σ|w·y| / eps ≈ 1e-4, so |fd − analytic| <= 2e-3 + 1e-2·|analytic| separates a correct
// backward from a wrong one (a wrong term is O(0.1–1)).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <numbers>
#include <random>

#include "backend/backend.h"
#include "backend/cpu/cpu_math.h"

using namespace esm2;

namespace {

std::vector<float> randv(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Checks analytic (dJ/dx) against central differences of J(x) = Σ w·fwd(x).
void expect_grad(const char* what, std::vector<float>& x, const std::vector<float>& analytic,
                 const std::function<std::vector<float>()>& fwd, const std::vector<float>& w, float eps = 1e-2f) {
  ASSERT_EQ(x.size(), analytic.size());
  auto J = [&] {
    std::vector<float> y = fwd();
    double s = 0;
    for (size_t i = 0; i < y.size(); ++i) s += static_cast<double>(w[i]) * y[i];
    return s;
  };
  for (size_t i = 0; i < x.size(); ++i) {
    const float x0 = x[i];
    x[i] = x0 + eps;
    const double jp = J();
    x[i] = x0 - eps;
    const double jm = J();
    x[i] = x0;
    const double fd = (jp - jm) / (2.0 * eps);
    EXPECT_NEAR(analytic[i], fd, 2e-3 + 1e-2 * std::abs(fd)) << what << " element " << i;
  }
}

struct Ops : ::testing::Test {
  std::unique_ptr<Backend> be = make_cpu_backend(2);
};

}  // namespace

TEST_F(Ops, GemmAllTransposesBiasBeta) {
  const int64_t M = 7, N = 5, K = 9;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (float beta : {0.0f, 0.5f}) {
        auto A = randv(M * K, 1), B = randv(K * N, 2), bias = randv(N, 3), C = randv(M * N, 4);
        std::vector<double> ref(M * N);
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j) {
            double s = 0;
            for (int64_t k = 0; k < K; ++k)
              s += static_cast<double>(ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
            ref[i * N + j] = 1.5 * s + beta * C[i * N + j] + bias[j];
          }
        GemmArgs g;
        g.trans_a = ta, g.trans_b = tb, g.M = M, g.N = N, g.K = K, g.alpha = 1.5f, g.beta = beta;
        g.A = A.data(), g.B = B.data(), g.C = C.data(), g.bias = bias.data();
        be->gemm(g);
        for (int64_t i = 0; i < M * N; ++i) EXPECT_NEAR(C[i], ref[i], 1e-5) << ta << tb << beta;
      }
}

TEST_F(Ops, BiasBackwardAndAdd) {
  const int64_t M = 300, N = 70;
  auto dy = randv(M * N, 5);
  std::vector<float> db(N, 1.0f);
  be->bias_backward(db.data(), dy.data(), M, N);
  for (int64_t j = 0; j < N; ++j) {
    double s = 1.0;
    for (int64_t i = 0; i < M; ++i) s += dy[i * N + j];
    EXPECT_NEAR(db[j], s, 1e-4);
  }
  auto a = randv(10, 6), b = randv(10, 7);
  std::vector<float> o(10);
  be->add(o.data(), a.data(), b.data(), 10);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(o[i], a[i] + b[i]);
}

TEST_F(Ops, LayerNormForwardAndBackward) {
  const int64_t T = 3, C = 8;
  auto x = randv(T * C, 8, -2, 2), w = randv(C, 9, 0.5f, 1.5f), b = randv(C, 10);
  std::vector<float> out(T * C), mean(T), rstd(T);
  be->layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), T, C, 1e-5f);
  for (int64_t t = 0; t < T; ++t) {
    double m = 0, v = 0;
    for (int64_t j = 0; j < C; ++j) m += x[t * C + j];
    m /= C;
    for (int64_t j = 0; j < C; ++j) v += (x[t * C + j] - m) * (x[t * C + j] - m);
    v /= C;
    for (int64_t j = 0; j < C; ++j)
      EXPECT_NEAR(out[t * C + j], (x[t * C + j] - m) / std::sqrt(v + 1e-5) * w[j] + b[j], 1e-5);
  }
  auto wy = randv(T * C, 11);
  std::vector<float> dx(T * C, 0.25f), dw(C, 0.0f), dbias(C, 0.0f);
  be->layernorm_backward(dx.data(), dw.data(), dbias.data(), wy.data(), x.data(), w.data(), mean.data(), rstd.data(),
                         T, C);
  for (auto& v : dx) v -= 0.25f;  // dx accumulates (+=)
  auto fwd = [&] {
    std::vector<float> o(T * C), m(T), r(T);
    be->layernorm_forward(o.data(), m.data(), r.data(), x.data(), w.data(), b.data(), T, C, 1e-5f);
    return o;
  };
  expect_grad("ln dx", x, dx, fwd, wy);
  expect_grad("ln dw", w, dw, fwd, wy);
  expect_grad("ln db", b, dbias, fwd, wy);
}

TEST_F(Ops, GeluBothFormsForwardAndBackward) {
  for (bool tanh_approx : {false, true}) {
    auto x = randv(40, 12, -4, 4);
    std::vector<float> y(40);
    be->gelu_forward(y.data(), x.data(), 40, tanh_approx);
    for (int i = 0; i < 40; ++i) {
      const double v = x[i];
      const double ref = tanh_approx ? 0.5 * v * (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (v + 0.044715 * v * v * v)))
                                     : 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
      EXPECT_NEAR(y[i], ref, 1e-6);
    }
    auto wy = randv(40, 13);
    std::vector<float> dx(40);
    be->gelu_backward(dx.data(), wy.data(), x.data(), 40, tanh_approx);
    auto fwd = [&] {
      std::vector<float> o(40);
      be->gelu_forward(o.data(), x.data(), 40, tanh_approx);
      return o;
    };
    expect_grad(tanh_approx ? "gelu tanh" : "gelu erf", x, dx, fwd, wy, 1e-3f);
  }
}

// Double reference of rotary attention, written directly from the HF formulas.
std::vector<double> attention_ref(const std::vector<float>& qkv, const std::vector<int32_t>& cu,
                                  const std::vector<int32_t>& ids, int H, int D, const std::vector<float>& inv_freq) {
  const int64_t C = H * D, T = cu.back();
  std::vector<double> out(T * C, 0.0);
  auto rot = [&](std::vector<double> x, int pos) {  // (x·cos) + (rotate_half(x)·sin)
    std::vector<double> y(D);
    for (int d = 0; d < D; ++d) {
      const double ang = static_cast<double>(static_cast<float>(pos) * inv_freq[d % (D / 2)]);
      const double rh = d < D / 2 ? -x[d + D / 2] : x[d - D / 2];
      y[d] = x[d] * std::cos(ang) + rh * std::sin(ang);
    }
    return y;
  };
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int h = 0; h < H; ++h) {
      const int t0 = cu[s], L = cu[s + 1] - cu[s];
      for (int i = 0; i < L; ++i) {
        std::vector<double> q(D);
        for (int d = 0; d < D; ++d) q[d] = qkv[(t0 + i) * 3 * C + h * D + d] / std::sqrt(static_cast<double>(D));
        q = rot(q, i);
        std::vector<double> sc(L);
        double mx = -1e300;
        for (int j = 0; j < L; ++j) {
          std::vector<double> k(D);
          for (int d = 0; d < D; ++d) k[d] = qkv[(t0 + j) * 3 * C + C + h * D + d];
          k = rot(k, j);
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += q[d] * k[d];
          sc[j] = ids[t0 + j] == 1 ? -1e300 : dot;
          mx = std::max(mx, sc[j]);
        }
        double sum = 0;
        for (int j = 0; j < L; ++j) sum += (sc[j] = ids[t0 + j] == 1 ? 0.0 : std::exp(sc[j] - mx));
        for (int j = 0; j < L; ++j)
          for (int d = 0; d < D; ++d)
            out[(t0 + i) * C + h * D + d] += sc[j] / sum * qkv[(t0 + j) * 3 * C + 2 * C + h * D + d];
      }
    }
  return out;
}

TEST_F(Ops, AttentionForwardMatchesReferenceAndBackwardMatchesFiniteDifferences) {
  const int H = 2, D = 4;
  const int64_t C = H * D;
  std::vector<int32_t> cu = {0, 3, 4, 9};             // three sequences, one of length 1
  std::vector<int32_t> ids = {0, 5, 2, 0, 0, 6, 32, 2, 1};  // last token is a pad key
  const int64_t T = cu.back();
  std::vector<float> inv_freq = {1.0f, 0.01f};
  auto qkv = randv(T * 3 * C, 14, -1.5f, 1.5f);
  AttentionShape as;
  as.T = T, as.S = 3, as.H = H, as.D = D, as.max_seqlen = 5;
  as.cu_seqlens = cu.data(), as.ids = ids.data(), as.inv_freq = inv_freq.data();
  std::vector<float> out(T * C), lse(H * T);
  be->attention_forward(out.data(), lse.data(), qkv.data(), as);
  auto ref = attention_ref(qkv, cu, ids, H, D, inv_freq);
  for (int64_t i = 0; i < T * C; ++i) EXPECT_NEAR(out[i], ref[i], 1e-5) << i;

  auto wy = randv(T * C, 15);
  std::vector<float> dqkv(T * 3 * C, 99.0f);  // "=" output: the sentinel must be overwritten
  be->attention_backward(dqkv.data(), wy.data(), qkv.data(), out.data(), lse.data(), as);
  auto fwd = [&] {
    std::vector<float> o(T * C), l(H * T);
    be->attention_forward(o.data(), l.data(), qkv.data(), as);
    return o;
  };
  expect_grad("attention dqkv", qkv, dqkv, fwd, wy);
}

// Rotary by hand: D = 4 (pairs (0,2) and (1,3) — rotate-half, not interleaved), inv_freq = [1, 0.01].
// Token 1's query e0 at position 1 becomes 0.5·(cos 1, 0, sin 1, 0); token 0's key e2 is unrotated at
// position 0, so score(1,0) = 0.5·sin 1, and token 1's zero key gives score(1,1) = 0.
TEST_F(Ops, RotaryRotateHalfByHand) {
  const int64_t C = 4;
  std::vector<float> qkv(2 * 3 * C, 0.0f);
  qkv[1 * 3 * C + 0] = 1.0f;      // q of token 1 = e0
  qkv[0 * 3 * C + C + 2] = 1.0f;  // k of token 0 = e2
  qkv[0 * 3 * C + 2 * C + 0] = 1.0f;  // v0 = e0
  qkv[1 * 3 * C + 2 * C + 1] = 1.0f;  // v1 = e1
  std::vector<int32_t> cu = {0, 2};
  std::vector<float> inv_freq = {1.0f, 0.01f}, out(2 * C), lse(2);
  AttentionShape as;
  as.T = 2, as.S = 1, as.H = 1, as.D = 4, as.max_seqlen = 2, as.cu_seqlens = cu.data(), as.inv_freq = inv_freq.data();
  be->attention_forward(out.data(), lse.data(), qkv.data(), as);
  const double e = std::exp(0.5 * std::sin(1.0)), p = e / (e + 1.0);
  EXPECT_NEAR(out[C + 0], p, 1e-6);
  EXPECT_NEAR(out[C + 1], 1.0 - p, 1e-6);
  EXPECT_NEAR(lse[1], std::log(e + 1.0), 1e-6);
  // token 0: q = 0 → uniform attention
  EXPECT_NEAR(out[0], 0.5, 1e-6);
  EXPECT_NEAR(out[1], 0.5, 1e-6);
}

TEST_F(Ops, EmbeddingForwardBackward) {
  const int64_t V = 5, C = 3, T = 4;
  auto wte = randv(V * C, 16);
  std::vector<int32_t> ids = {2, 0, 2, 4};
  std::vector<float> out(T * C);
  be->embedding_forward(out.data(), ids.data(), wte.data(), T, C);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < C; ++j) EXPECT_EQ(out[t * C + j], wte[ids[t] * C + j]);
  auto dout = randv(T * C, 17);
  std::vector<float> dwte(V * C, 0.0f);
  be->embedding_backward(dwte.data(), dout.data(), ids.data(), T, C);
  for (int64_t j = 0; j < C; ++j) {
    EXPECT_FLOAT_EQ(dwte[2 * C + j], dout[0 * C + j] + dout[2 * C + j]);
    EXPECT_EQ(dwte[1 * C + j], 0.0f);
    EXPECT_EQ(dwte[4 * C + j], dout[3 * C + j]);
  }
}

// Token dropout by hand: sequence A = <cls> L <mask> <eos> (1 mask of 4 real tokens), sequence
// B = <cls> A <eos> <pad> (no mask, pad row zeroed). Scale of A = 0.88 / (1 - 1/4).
TEST_F(Ops, TokenDropoutByHand) {
  const int64_t C = 2;
  std::vector<int32_t> ids = {0, 4, 32, 2, 0, 5, 2, 1}, cu = {0, 4, 8};
  std::vector<float> x(8 * C);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 1.0f + static_cast<float>(i);
  auto y = x;
  be->token_dropout_forward(y.data(), ids.data(), cu.data(), 2, C, 32, 1, 0.12f, true);
  const float sa = 0.88f / 0.75f;
  for (int t = 0; t < 8; ++t)
    for (int j = 0; j < C; ++j) {
      float expect = t < 4 ? x[t * C + j] * sa : x[t * C + j];
      if (t == 2 || t == 7) expect = 0.0f;
      if (t >= 4 && t < 7) expect = x[t * C + j] * 0.88f;  // B: 0 masks → scale 0.88 / 1
      EXPECT_NEAR(y[t * C + j], expect, 1e-5 * std::abs(expect)) << t;
    }
  // without rescaling only pad rows change
  auto z = x;
  be->token_dropout_forward(z.data(), ids.data(), cu.data(), 2, C, 32, 1, 0.12f, false);
  for (int t = 0; t < 8; ++t) EXPECT_EQ(z[t * C], t == 7 ? 0.0f : x[t * C]);
  // backward = the same linear map (checked by finite differences)
  auto wy = randv(8 * C, 18);
  auto dx = wy;
  be->token_dropout_backward(dx.data(), ids.data(), cu.data(), 2, C, 32, 1, 0.12f, true);
  auto fwd = [&] {
    auto o = x;
    be->token_dropout_forward(o.data(), ids.data(), cu.data(), 2, C, 32, 1, 0.12f, true);
    return o;
  };
  expect_grad("token dropout", x, dx, fwd, wy);
}

TEST_F(Ops, GatherScatterAreAdjoint) {
  const int64_t T = 6, C = 3, R = 3;
  auto x = randv(T * C, 19), y = randv(R * C, 20);
  std::vector<int32_t> idx = {4, 0, 5};
  std::vector<float> gx(R * C), sy(T * C, 0.0f);
  be->gather_rows(gx.data(), x.data(), idx.data(), R, C);
  be->scatter_add_rows(sy.data(), y.data(), idx.data(), R, C);
  double a = 0, b = 0;
  for (int64_t i = 0; i < R * C; ++i) a += static_cast<double>(gx[i]) * y[i];
  for (int64_t i = 0; i < T * C; ++i) b += static_cast<double>(x[i]) * sy[i];
  EXPECT_NEAR(a, b, 1e-5);
  EXPECT_EQ(gx[0], x[4 * C]);
  EXPECT_EQ(sy[1 * C], 0.0f);
}

TEST_F(Ops, CrossEntropyIgnoresMinus100) {
  const int64_t R = 4, V = 6;
  auto logits = randv(R * V, 21, -3, 3);
  std::vector<int32_t> labels = {2, -100, 5, 0};
  std::vector<float> loss(R);
  be->cross_entropy_forward(loss.data(), logits.data(), labels.data(), R, V);
  for (int64_t r = 0; r < R; ++r) {
    if (labels[r] < 0) {
      EXPECT_EQ(loss[r], 0.0f);
      continue;
    }
    double s = 0;
    for (int64_t j = 0; j < V; ++j) s += std::exp(static_cast<double>(logits[r * V + j]));
    EXPECT_NEAR(loss[r], std::log(s) - logits[r * V + labels[r]], 1e-5);
  }
  std::vector<float> dl(R * V, 7.0f);
  be->cross_entropy_backward(dl.data(), logits.data(), labels.data(), R, V, 0.5f);
  for (int64_t j = 0; j < V; ++j) EXPECT_EQ(dl[1 * V + j], 0.0f);
  std::vector<float> ones(R, 1.0f);
  auto fwd = [&] {
    std::vector<float> l(R);
    be->cross_entropy_forward(l.data(), logits.data(), labels.data(), R, V);
    return l;
  };
  std::vector<float> w(R, 0.5f);
  expect_grad("cross entropy", logits, dl, fwd, w);
}

TEST_F(Ops, AdamWMatchesTorchFormulaOverSteps) {
  const size_t n = 50;
  auto p = randv(n, 22), m = std::vector<float>(n, 0.0f), v = std::vector<float>(n, 0.0f);
  std::vector<double> pd(p.begin(), p.end()), md(n, 0.0), vd(n, 0.0);
  AdamWStep s;
  s.lr = 1e-2f, s.beta1 = 0.9f, s.beta2 = 0.98f, s.eps = 1e-8f, s.weight_decay = 0.01f, s.grad_scale = 0.5f;
  for (int t = 1; t <= 5; ++t) {
    auto g = randv(n, 100 + t);
    s.step = t;
    be->adamw_update(p.data(), g.data(), m.data(), v.data(), n, s);
    for (size_t i = 0; i < n; ++i) {
      const double gi = 0.5 * g[i];
      pd[i] *= 1.0 - 1e-2 * 0.01;
      md[i] = 0.9 * md[i] + 0.1 * gi;
      vd[i] = 0.98 * vd[i] + 0.02 * gi * gi;
      const double mh = md[i] / (1 - std::pow(0.9, t)), vh = vd[i] / (1 - std::pow(0.98, t));
      pd[i] -= 1e-2 * mh / (std::sqrt(vh) + 1e-8);
    }
  }
  for (size_t i = 0; i < n; ++i) {
    EXPECT_NEAR(p[i], pd[i], 1e-5);
    EXPECT_NEAR(m[i], md[i], 1e-6);
    EXPECT_NEAR(v[i], vd[i], 1e-7);
  }
}

TEST_F(Ops, SumSquaresFp64AndIndependentOfThreads) {
  const size_t n = 300001;
  auto x = randv(n, 23);
  double ref = 0;
  for (float f : x) ref += static_cast<double>(f) * f;
  const double a = be->sum_squares(x.data(), n);
  EXPECT_NEAR(a, ref, 1e-9 * ref);
  auto one = make_cpu_backend(1);
  EXPECT_EQ(one->sum_squares(x.data(), n), a);
}

// The batched optimizer ops by hand: the norm covers exactly the listed ranges (the gap at 3..4 is left
// out), and only ranges flagged `decay` shrink. Step 1 from zero moments moves each weight by
// -lr·sign(g) (bias-corrected; eps negligible).
TEST_F(Ops, OptimizerRangesByHand) {
  std::vector<float> p = {2.0f, -1.0f, 0.5f, 7.0f, 4.0f}, g = {1.0f, -2.0f, 3.0f, 100.0f, -0.5f};
  std::vector<float> m(5, 0.0f), v(5, 0.0f);
  const std::vector<TensorRange> r = {{0, 2, false}, {2, 1, true}, {4, 1, true}};
  EXPECT_EQ(be->sum_squares_ranges(g.data(), r.data(), r.size()), 1.0 + 4.0 + 9.0 + 0.25);
  AdamWStep s;
  s.lr = 0.1f, s.weight_decay = 0.5f, s.step = 1, s.eps = 1e-12f;
  be->adamw_update_ranges(p.data(), g.data(), m.data(), v.data(), r.data(), r.size(), s);
  const float expect[5] = {1.9f, -0.9f, 0.5f * 0.95f - 0.1f, 7.0f, 4.0f * 0.95f + 0.1f};
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(p[i], expect[i], 1e-6f) << i;
  EXPECT_EQ(m[3], 0.0f);  // outside every range: untouched
}

TEST(CpuMath, ExpApproxRelativeError) {
  double worst = 0;
  for (int i = 0; i <= 200000; ++i) {
    const float x = -87.0f + 87.0f * static_cast<float>(i) / 200000.0f;
    const double ref = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::abs(cpu::exp_approx(x) - ref) / ref);
  }
  EXPECT_LT(worst, 5e-7);
  EXPECT_EQ(cpu::exp_approx(-200.0f), 0.0f);
  EXPECT_EQ(cpu::exp_approx(0.0f), 1.0f);
  // A NaN (a diverged weight) propagates, without the undefined NaN-to-int conversion UBSan caught.
  EXPECT_TRUE(std::isnan(cpu::exp_approx(std::nanf(""))));
  EXPECT_TRUE(std::isnan(cpu::erf_approx(std::nanf(""))));
}

// The threaded gemm splits C into row (or column) blocks, each a single-threaded sgemm over the full
// K: repeated calls give the same bits, and the split agrees with the unsplit product to rounding
// (OpenBLAS edge kernels differ, so bits may differ between thread counts).
TEST(CpuGemm, ThreadedSplitIsDeterministicAndAgreesWithOneThread) {
  auto one = make_cpu_backend(1), two = make_cpu_backend(2);
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (auto [M, N] : {std::pair<int64_t, int64_t>{203, 70}, {40, 333}}) {
        const int64_t K = 301;
        auto A = randv(M * K, 30), B = randv(K * N, 31);
        std::vector<float> c1(M * N), c2(M * N);
        GemmArgs g;
        g.trans_a = ta, g.trans_b = tb, g.M = M, g.N = N, g.K = K, g.A = A.data(), g.B = B.data();
        g.C = c1.data();
        one->gemm(g);
        g.C = c2.data();
        two->gemm(g);
        std::vector<float> c3(M * N);
        g.C = c3.data();
        two->gemm(g);
        EXPECT_EQ(0, std::memcmp(c2.data(), c3.data(), c2.size() * 4)) << ta << tb << M;
        for (int64_t i = 0; i < M * N; ++i) ASSERT_NEAR(c1[i], c2[i], 1e-4) << ta << tb << M;
      }
}

TEST(CpuMath, ErfApproxAbsoluteError) {
  double worst = 0;
  for (int i = -300000; i <= 300000; ++i) {
    const float x = 6.0f * static_cast<float>(i) / 300000.0f;
    worst = std::max(worst, std::abs(cpu::erf_approx(x) - std::erf(static_cast<double>(x))));
  }
  EXPECT_LT(worst, 6e-7);  // 1.5e-7 of the formula + fp32 rounding
  EXPECT_EQ(cpu::erf_approx(0.0f), 0.0f);
}
