// The profiling wrapper must be transparent (same results as the wrapped backend) and charge each op
// to the right key: `esm2 bench --profile` tables are only as good as this bookkeeping.
#include <gtest/gtest.h>

#include <vector>

#include "backend/backend.h"
#include "backend/timing_backend.h"

namespace {

using namespace esm2;

TEST(TimingBackend, TransparentAndKeyedByProjection) {
  auto cpu = make_cpu_backend(1);
  TimingBackend t(*cpu);
  const int64_t M = 7, N = 5, K = 3;
  std::vector<float> a(M * K), b(N * K), direct(M * N), wrapped(M * N);
  for (size_t i = 0; i < a.size(); ++i) a[i] = 0.1f * float(i) - 1.0f;
  for (size_t i = 0; i < b.size(); ++i) b[i] = 0.05f * float(i * i % 7) - 0.2f;
  GemmArgs g;
  g.trans_b = true;
  g.M = M, g.N = N, g.K = K;
  g.A = a.data(), g.B = b.data();
  g.C = direct.data();
  cpu->gemm(g);
  g.C = wrapped.data();
  t.gemm(g);
  t.gemm(g);
  EXPECT_EQ(direct, wrapped);
  std::vector<float> x(64, 2.0f);
  t.scale(x.data(), 0.5f, x.size());
  EXPECT_EQ(x[63], 1.0f);
  const auto r = t.report();
  ASSERT_EQ(r.size(), 2u);
  bool saw_gemm = false;
  for (const auto& e : r) {
    if (e.op == "gemm fwd  5x3") {
      saw_gemm = true;
      EXPECT_EQ(e.calls, 2);
      EXPECT_DOUBLE_EQ(e.flops, 2.0 * 2 * M * N * K);
    } else {
      EXPECT_EQ(e.op, "scale");
      EXPECT_EQ(e.calls, 1);
    }
    EXPECT_GE(e.seconds, 0.0);
  }
  EXPECT_TRUE(saw_gemm);
  t.set_enabled(false);
  t.scale(x.data(), 0.5f, x.size());
  EXPECT_EQ(t.report().size(), 2u) << "disabled: not measured";
}

// The fused ops reach the wrapped backend as one op (their own key, not as the add / LayerNorm / GELU /
// bias ops they stand for) with the wrapped backend's results.
TEST(TimingBackend, FusedOpsForwardedUnderTheirOwnKeys) {
  auto cpu = make_cpu_backend(1);
  TimingBackend t(*cpu);
  const int64_t T = 3, C = 4;
  std::vector<float> a(T * C), b(T * C), w(C, 1.5f), bias(C, 0.25f);
  for (size_t i = 0; i < a.size(); ++i) a[i] = 0.3f * float(i % 5) - 0.4f, b[i] = 0.1f * float(i);
  std::vector<float> sum1(T * C), out1(T * C), mean1(T), rstd1(T), sum2(T * C), out2(T * C), mean2(T), rstd2(T);
  cpu->add(sum1.data(), a.data(), b.data(), T * C);
  cpu->layernorm_forward(out1.data(), mean1.data(), rstd1.data(), sum1.data(), w.data(), bias.data(), T, C, 1e-5f);
  t.add_layernorm_forward(sum2.data(), out2.data(), mean2.data(), rstd2.data(), a.data(), b.data(), w.data(),
                          bias.data(), T, C, 1e-5f);
  EXPECT_EQ(sum1, sum2);
  EXPECT_EQ(out1, out2);
  EXPECT_EQ(rstd1, rstd2);
  std::vector<float> dx1 = b, dx2 = b, db1(C, 1.0f), db2(C, 1.0f);
  cpu->gelu_backward(dx1.data(), dx1.data(), a.data(), T * C, false);
  cpu->bias_backward(db1.data(), dx1.data(), T, C);
  t.gelu_backward_bias(dx2.data(), db2.data(), dx2.data(), a.data(), T, C, false);
  EXPECT_EQ(dx1, dx2);
  EXPECT_EQ(db1, db2);
  const auto r = t.report();
  ASSERT_EQ(r.size(), 2u);
  for (const auto& e : r) {
    EXPECT_TRUE(e.op == "add_layernorm_forward" || e.op == "gelu_backward_bias") << e.op;
    EXPECT_EQ(e.calls, 1);
  }
}

}  // namespace
