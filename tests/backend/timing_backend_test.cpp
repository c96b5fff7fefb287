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

}  // namespace
