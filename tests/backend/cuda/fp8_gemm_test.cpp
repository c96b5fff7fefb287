// fp8-mixed on the CUDA backend against the CPU FP8 oracle (core/fp8.h): each FP8 product of a Linear
// (forward, dgrad, wgrad) is emulated on the host — quantise both operands with current scaling exactly
// as the oracle does, multiply the FP8 values in double, apply the two dequantisation factors — and the
// GPU must match that emulation tightly (only accumulation order and the output's rounding differ),
// while it differs from the unquantised product by FP8's own error (several times more). Then the whole
// model: fp8-mixed gradients and losses against bf16-mixed. Skips without a Hopper GPU (or without CUDA).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>

#include "backend/backend.h"
#include "backend/backend_factory.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/fp8.h"
#include "data/batch.h"
#include "data/tokenizer.h"
#include "model/config.h"
#include "model/esm2.h"
#include "optim/optimizer.h"
#ifdef ESM2_HAVE_CUDA
#include <cuda_runtime.h>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/fp8_quantize.cuh"
#endif

using namespace esm2;

namespace {

// The fp8-mixed backend, or null with the reason to skip.
std::unique_ptr<Backend> fp8_backend(std::string* why) {
#ifdef ESM2_HAVE_CUDA
  if (cuda_device_count() == 0) {
    *why = "no CUDA device visible: skipped";
    return nullptr;
  }
  try {
    return make_cuda_backend(DType::BF16, 0, true);
  } catch (const Error& e) {
    *why = std::string(e.what()) + ": skipped";
    return nullptr;
  }
#else
  *why = "built without CUDA: skipped";
  return nullptr;
#endif
}

// Products the backend ran in FP8 and Linear products it had to run in bf16.
struct Counts {
  int64_t fp8 = 0, bf16_fallback = 0, dy_reused = 0;
};
#ifdef ESM2_HAVE_CUDA
Counts counts(Backend& b) {
  const Fp8GemmCounts c = cuda_backend_fp8_gemm_counts(b);
  return {c.fp8, c.bf16_fallback, c.dy_reused};
}
#else
Counts counts(Backend&) { return {}; }
#endif

std::vector<float> normal(size_t n, uint32_t seed, float sd, bool round_bf16) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (auto& x : v) {
    x = d(g);
    if (round_bf16) x = bf16_to_f32(f32_to_bf16(x));
  }
  return v;
}

double rel_l2(const std::vector<float>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

// The oracle's view of a tensor after current-scaling quantisation: the FP8 values (still scaled) and
// the dequantisation factor 1/scale, computed exactly as the GPU must (fp32 product, then RNE + saturate).
struct Quantised {
  std::vector<double> q;
  double inv = 1;
};
Quantised quantise(const std::vector<float>& x, Fp8Format f) {
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  const float scale = fp8_scale_for_amax(amax, f);
  Quantised out;
  out.inv = 1.0f / scale;
  out.q.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) out.q[i] = fp8_round(x[i] * scale, f);
  return out;
}

// C[M,N] = Σ_k a(m,k)·b(n,k) for accessors a, b.
template <class A, class B>
std::vector<double> matmul_nt(int64_t M, int64_t N, int64_t K, A a, B b) {
  std::vector<double> c(static_cast<size_t>(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += a(m, k) * b(n, k);
      c[m * N + n] = s;
    }
  return c;
}

class Fp8Gemm : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    be = fp8_backend(&why);
    if (!be) GTEST_SKIP() << why;
  }
  void TearDown() override {
    for (void* p : owned) be->free(p);
  }
  void* act(const std::vector<float>& h) {
    void* p = be->alloc(h.size() * 2);
    owned.push_back(p);
    be->act_from_host_f32(p, h.data(), h.size());
    return p;
  }
  float* f32(const std::vector<float>& h) {
    auto* p = static_cast<float*>(be->alloc(h.size() * 4));
    owned.push_back(p);
    be->copy_to_device(p, h.data(), h.size() * 4);
    return p;
  }
  std::vector<float> get_act(const void* p, size_t n) {
    std::vector<float> h(n);
    be->act_to_host_f32(h.data(), p, n);
    return h;
  }
  std::unique_ptr<Backend> be;
  std::vector<void*> owned;
};

// The quantisers alone, bit for bit against the oracle: amax, 1/scale, row-wise and transposed codes
// (both transposed kernels: the wide one for even widths, the simple one otherwise), bf16 and fp32 sources.
TEST_F(Fp8Gemm, QuantisersMatchOracleBitForBit) {
#ifdef ESM2_HAVE_CUDA
  auto* stream = static_cast<cudaStream_t>(cuda_backend_stream(*be));
  struct Case {
    int64_t rows, cols;
    bool bf16;
    float sd;
  };
  for (const Case& c : {Case{200, 96, true, 3.0f}, Case{37, 130, true, 1e-6f}, Case{61, 33, true, 50.0f},
                        Case{192, 128, false, 0.02f}, Case{5, 3, false, 1e4f}}) {
    const int64_t n = c.rows * c.cols, ldq = (c.rows + 15) / 16 * 16;
    const auto x = normal(static_cast<size_t>(n), static_cast<uint32_t>(n), c.sd, c.bf16);
    void* dx = c.bf16 ? act(x) : static_cast<void*>(f32(x));
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    for (Fp8Format f : {Fp8Format::E4M3, Fp8Format::E5M2}) {
      auto* q = static_cast<uint8_t*>(be->alloc(static_cast<size_t>(n)));
      auto* qt = static_cast<uint8_t*>(be->alloc(static_cast<size_t>(c.cols * ldq)));
      auto* sc = static_cast<float*>(be->alloc(cuda::kFp8ScaleWords * sizeof(float)));
      for (void* p : {static_cast<void*>(q), static_cast<void*>(qt), static_cast<void*>(sc)}) owned.push_back(p);
      const DType dt = c.bf16 ? DType::BF16 : DType::F32;
      cuda::launch_fp8_amax(sc, dx, dt, static_cast<size_t>(n), stream);
      cuda::launch_fp8_quantize(q, sc, dx, dt, static_cast<size_t>(n), f, stream);
      cuda::launch_fp8_quantize_transpose(qt, ldq, sc, dx, dt, c.rows, c.cols, f, stream);
      // Both layouts from one pass (the output gradient's quantiser): the same bytes as the two kernels.
      auto* q2 = static_cast<uint8_t*>(be->alloc(static_cast<size_t>(n)));
      auto* qt2 = static_cast<uint8_t*>(be->alloc(static_cast<size_t>(c.cols * ldq)));
      owned.push_back(q2), owned.push_back(qt2);
      cuda::launch_fp8_quantize_both(q2, qt2, ldq, sc, dx, dt, c.rows, c.cols, f, stream);
      std::vector<uint8_t> hq2(static_cast<size_t>(n)), hqt2(static_cast<size_t>(c.cols * ldq));
      be->copy_to_host(hq2.data(), q2, hq2.size());
      be->copy_to_host(hqt2.data(), qt2, hqt2.size());
      std::vector<uint8_t> hq(static_cast<size_t>(n)), hqt(static_cast<size_t>(c.cols * ldq));
      float hsc[cuda::kFp8ScaleWords] = {};
      be->copy_to_host(hq.data(), q, hq.size());
      be->copy_to_host(hqt.data(), qt, hqt.size());
      be->copy_to_host(hsc, sc, sizeof hsc);
      const float scale = fp8_scale_for_amax(amax, f);
      ASSERT_EQ(hsc[0], amax) << c.rows << "x" << c.cols;
      ASSERT_EQ(hsc[cuda::kFp8InvScaleWord], 1.0f / scale) << c.rows << "x" << c.cols;
      // Codes compared as values, so that a zero's sign (which the GEMM cannot see) is not a difference.
      int bad = 0;
      for (int64_t r = 0; r < ldq; ++r)
        for (int64_t k = 0; k < c.cols; ++k) {
          const float want = r < c.rows ? fp8_round(x[r * c.cols + k] * scale, f) : 0.0f;
          const float got_t = fp8_to_f32(hqt[k * ldq + r], f);
          const float got = r < c.rows ? fp8_to_f32(hq[r * c.cols + k], f) : want;
          if ((got != want || got_t != want) && bad++ < 5)
            ADD_FAILURE() << c.rows << "x" << c.cols << " [" << r << "," << k << "]: row-wise " << got
                          << ", transposed " << got_t << ", oracle " << want;
        }
      EXPECT_EQ(bad, 0);
      EXPECT_TRUE(hq2 == hq) << c.rows << "x" << c.cols << ": launch_fp8_quantize_both's row-wise codes";
      EXPECT_TRUE(hqt2 == hqt) << c.rows << "x" << c.cols << ": launch_fp8_quantize_both's transposed codes";
    }
  }
#endif
}

// Token counts that are not multiples of 16 (the wgrad pads them); widths that are.
constexpr int64_t kT = 200, kIn = 128, kOut = 192;

// Errors: against the emulation, bf16 output rounding (2^-9) and fp32 accumulation order only; against
// the exact product, E4M3's 3 (E5M2's 2) mantissa bits on both operands: a few percent.
constexpr double kOracleTol = 5e-3, kFp8Max = 0.12, kFp8Min = 4.0;

TEST_F(Fp8Gemm, ForwardMatchesOracleAndFollowsWeightUpdates) {
  const auto x = normal(kT * kIn, 1, 3.0f, true);
  auto w = normal(kOut * kIn, 2, 0.05f, false);
  const auto b = normal(kOut, 3, 0.1f, false);
  void* dx = act(x);
  float* dw = f32(w);
  float* db = f32(b);
  void* dy = act(std::vector<float>(kT * kOut));
  for (int round = 0; round < 2; ++round) {
    GemmArgs g;
    g.role = GemmRole::LinearForward;
    g.trans_b = true;
    g.M = kT, g.N = kOut, g.K = kIn;
    g.A = dx, g.a_dtype = DType::BF16, g.B = dw, g.b_dtype = DType::F32, g.C = dy, g.c_dtype = DType::BF16;
    g.bias = db;
    const int64_t before = counts(*be).fp8;
    be->gemm(g);
    EXPECT_EQ(counts(*be).fp8, before + 1) << "the forward did not run in FP8";
    const auto got = get_act(dy, kT * kOut);
    const Quantised qx = quantise(x, Fp8Format::E4M3), qw = quantise(w, Fp8Format::E4M3);
    auto emu = matmul_nt(kT, kOut, kIn, [&](int64_t m, int64_t k) { return qx.q[m * kIn + k]; },
                         [&](int64_t n, int64_t k) { return qw.q[n * kIn + k]; });
    auto exact = matmul_nt(kT, kOut, kIn, [&](int64_t m, int64_t k) { return double(x[m * kIn + k]); },
                           [&](int64_t n, int64_t k) { return double(w[n * kIn + k]); });
    for (size_t i = 0; i < emu.size(); ++i) {
      const double bias = bf16_to_f32(f32_to_bf16(b[i % kOut]));  // the epilogue reads a bf16 bias
      emu[i] = emu[i] * qx.inv * qw.inv + bias;
      exact[i] += b[i % kOut];
    }
    const double e_oracle = rel_l2(got, emu), e_exact = rel_l2(got, exact);
    EXPECT_LT(e_oracle, kOracleTol) << "round " << round;
    EXPECT_LT(e_exact, kFp8Max) << "round " << round;
    EXPECT_GT(e_exact, kFp8Min * e_oracle) << "round " << round << ": no FP8 error visible (bf16 product?)";
    // An optimizer-like write to the weight: the next product must use the new weight's FP8 copy.
    for (auto& v : w) v = -2.0f * v + 0.01f;
    be->copy_to_device(dw, w.data(), w.size() * 4);
  }
  EXPECT_EQ(counts(*be).bf16_fallback, 0);
}

TEST_F(Fp8Gemm, DgradMatchesOracle) {
  // dx[T,In] = dy[T,Out]·W[Out,In], with gradients far below E5M2's normal range before scaling.
  const auto dyv = normal(kT * kOut, 4, 1e-6f, true);
  const auto w = normal(kOut * kIn, 5, 0.05f, false);
  void* d_dy = act(dyv);
  float* d_w = f32(w);
  void* d_dx = act(std::vector<float>(kT * kIn));
  GemmArgs g;
  g.role = GemmRole::LinearDgrad;
  g.M = kT, g.N = kIn, g.K = kOut;
  g.A = d_dy, g.a_dtype = DType::BF16, g.B = d_w, g.b_dtype = DType::F32, g.C = d_dx, g.c_dtype = DType::BF16;
  be->gemm(g);
  EXPECT_EQ(counts(*be).fp8, 1);
  const auto got = get_act(d_dx, kT * kIn);
  const Quantised qd = quantise(dyv, Fp8Format::E5M2), qw = quantise(w, Fp8Format::E4M3);
  auto emu = matmul_nt(kT, kIn, kOut, [&](int64_t m, int64_t k) { return qd.q[m * kOut + k]; },
                       [&](int64_t n, int64_t k) { return qw.q[k * kIn + n]; });
  for (auto& v : emu) v *= qd.inv * qw.inv;
  const auto exact = matmul_nt(kT, kIn, kOut, [&](int64_t m, int64_t k) { return double(dyv[m * kOut + k]); },
                               [&](int64_t n, int64_t k) { return double(w[k * kIn + n]); });
  const double e_oracle = rel_l2(got, emu), e_exact = rel_l2(got, exact);
  EXPECT_LT(e_oracle, kOracleTol);
  EXPECT_LT(e_exact, kFp8Max);
  EXPECT_GT(e_exact, kFp8Min * e_oracle);
  EXPECT_EQ(counts(*be).bf16_fallback, 0);
}

// linear_backward's order: the wgrad quantises dy once for itself and the dgrad that follows on the same dy.
// The dgrad must come out bitwise as when it quantises dy itself, and a copy left for one dy must never
// serve another (a dgrad on a different dy, or after another GEMM in between).
TEST_F(Fp8Gemm, DgradReusesTheWgradsQuantisedDyOnlyForTheSameDy) {
  const auto dy1 = normal(kT * kOut, 11, 1e-3f, true), dy2 = normal(kT * kOut, 12, 5.0f, true);
  const auto x = normal(kT * kIn, 13, 2.0f, true);
  const auto w = normal(kOut * kIn, 14, 0.05f, false);
  void* d_dy1 = act(dy1);
  void* d_dy2 = act(dy2);
  void* d_x = act(x);
  float* d_w = f32(w);
  float* d_dw = f32(std::vector<float>(kOut * kIn));
  void* d_dx = act(std::vector<float>(kT * kIn));
  auto wgrad = [&](void* dy) {
    GemmArgs g;
    g.role = GemmRole::LinearWgrad, g.trans_a = true, g.M = kOut, g.N = kIn, g.K = kT, g.beta = 1.0f;
    g.A = dy, g.a_dtype = DType::BF16, g.B = d_x, g.b_dtype = DType::BF16, g.C = d_dw, g.c_dtype = DType::F32;
    be->gemm(g);
  };
  auto dgrad = [&](void* dy) {
    GemmArgs g;
    g.role = GemmRole::LinearDgrad, g.M = kT, g.N = kIn, g.K = kOut;
    g.A = dy, g.a_dtype = DType::BF16, g.B = d_w, g.b_dtype = DType::F32, g.C = d_dx, g.c_dtype = DType::BF16;
    be->gemm(g);
    return get_act(d_dx, kT * kIn);
  };
  void* d_y = act(std::vector<float>(kT * kOut));
  auto forward = [&] {  // an FP8 product in between: it overwrites the scale words dy's copy relies on
    GemmArgs g;
    g.role = GemmRole::LinearForward, g.trans_b = true, g.M = kT, g.N = kOut, g.K = kIn;
    g.A = d_x, g.a_dtype = DType::BF16, g.B = d_w, g.b_dtype = DType::F32, g.C = d_y, g.c_dtype = DType::BF16;
    be->gemm(g);
  };
  const auto alone1 = dgrad(d_dy1), alone2 = dgrad(d_dy2);
  ASSERT_NE(alone1, alone2);
  EXPECT_EQ(counts(*be).dy_reused, 0);
  wgrad(d_dy1);
  EXPECT_EQ(dgrad(d_dy1), alone1) << "dgrad after the wgrad on the same dy";
  EXPECT_EQ(counts(*be).dy_reused, 1);
  wgrad(d_dy1);
  EXPECT_EQ(dgrad(d_dy2), alone2) << "dgrad on another dy after a wgrad";
  wgrad(d_dy1);
  forward();
  EXPECT_EQ(dgrad(d_dy1), alone1) << "dgrad on the same dy with another FP8 GEMM in between";
  EXPECT_EQ(counts(*be).dy_reused, 1);
  EXPECT_EQ(counts(*be).bf16_fallback, 0);
}

TEST_F(Fp8Gemm, WgradAccumulatesAndPadsTokens) {
  // dW[Out,In] += dy[T,Out]ᵀ·x[T,In] onto fp32 values already there.
  const auto dyv = normal(kT * kOut, 6, 1e-3f, true);
  const auto x = normal(kT * kIn, 7, 2.0f, true);
  const auto c0 = normal(kOut * kIn, 8, 0.1f, false);
  void* d_dy = act(dyv);
  void* d_x = act(x);
  float* d_c = f32(c0);
  GemmArgs g;
  g.role = GemmRole::LinearWgrad;
  g.trans_a = true;
  g.M = kOut, g.N = kIn, g.K = kT;
  g.A = d_dy, g.a_dtype = DType::BF16, g.B = d_x, g.b_dtype = DType::BF16, g.C = d_c, g.c_dtype = DType::F32;
  g.beta = 1.0f;
  be->gemm(g);
  EXPECT_EQ(counts(*be).fp8, 1);
  std::vector<float> got(kOut * kIn);
  be->copy_to_host(got.data(), d_c, got.size() * 4);
  for (size_t i = 0; i < got.size(); ++i) got[i] -= c0[i];  // the accumulated product alone
  const Quantised qd = quantise(dyv, Fp8Format::E5M2), qx = quantise(x, Fp8Format::E4M3);
  auto emu = matmul_nt(kOut, kIn, kT, [&](int64_t m, int64_t k) { return qd.q[k * kOut + m]; },
                       [&](int64_t n, int64_t k) { return qx.q[k * kIn + n]; });
  for (auto& v : emu) v *= qd.inv * qx.inv;
  const auto exact = matmul_nt(kOut, kIn, kT, [&](int64_t m, int64_t k) { return double(dyv[k * kOut + m]); },
                               [&](int64_t n, int64_t k) { return double(x[k * kIn + n]); });
  // fp32 output: only the accumulation order (and the subtraction of c0) separates it from the emulation.
  const double e_oracle = rel_l2(got, emu), e_exact = rel_l2(got, exact);
  EXPECT_LT(e_oracle, 1e-3);
  EXPECT_LT(e_exact, kFp8Max);
  EXPECT_GT(e_exact, kFp8Min * e_oracle);
  EXPECT_EQ(counts(*be).bf16_fallback, 0);
}

TEST_F(Fp8Gemm, OtherGemmsStayBf16) {
  // The LM head and every unmarked GEMM: no FP8 (a bf16 result bitwise equal to the bf16-mixed backend's).
  const auto x = normal(kT * kIn, 9, 1.0f, true);
  const auto w = normal(kOut * kIn, 10, 0.05f, false);
  std::vector<float> out[2];
#ifdef ESM2_HAVE_CUDA
  auto plain = make_cuda_backend(DType::BF16, 0, false);
#else
  std::unique_ptr<Backend> plain;
#endif
  Backend* backends[2] = {be.get(), plain.get()};
  for (int i = 0; i < 2; ++i) {
    Backend& b = *backends[i];
    void* dx = b.alloc(x.size() * 2);
    auto* dw = static_cast<float*>(b.alloc(w.size() * 4));
    void* dy = b.alloc(kT * kOut * 2);
    b.act_from_host_f32(dx, x.data(), x.size());
    b.copy_to_device(dw, w.data(), w.size() * 4);
    GemmArgs g;
    g.trans_b = true;
    g.M = kT, g.N = kOut, g.K = kIn;
    g.A = dx, g.a_dtype = DType::BF16, g.B = dw, g.b_dtype = DType::F32, g.C = dy, g.c_dtype = DType::BF16;
    b.gemm(g);
    out[i].resize(kT * kOut);
    b.act_to_host_f32(out[i].data(), dy, out[i].size());
    for (void* p : {dx, static_cast<void*>(dw), dy}) b.free(p);
  }
  EXPECT_EQ(counts(*be).fp8, 0);
  EXPECT_EQ(0, std::memcmp(out[0].data(), out[1].data(), out[0].size() * 4));
  EXPECT_EQ(precision_label(*be), "fp8-mixed");
}

// ---- the whole model ----

MicroBatch random_batch(uint32_t seed) {
  MicroBatch mb;
  std::mt19937 g(seed);
  mb.cu_seqlens = {0};
  for (int len : {40, 130, 17, 75}) {  // 262 tokens: not a multiple of 16
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

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

// Four AdamW steps on the same batch: the fp8-mixed loss within 2% of bf16-mixed at every step, the
// gradients pointing the same way (cosine >= 0.99), every encoder GEMM in FP8, and the steps bitwise
// reproducible (current scaling has no state to drift).
TEST(Fp8Model, TracksBf16AndIsDeterministic) {
  std::string why;
  auto fp8 = fp8_backend(&why);
  if (!fp8) GTEST_SKIP() << why;
#ifdef ESM2_HAVE_CUDA
  auto bf16 = make_cuda_backend(DType::BF16, 0, false);
#else
  std::unique_ptr<Backend> bf16;
#endif
  ModelConfig cfg;
  cfg.num_layers = 3;
  cfg.hidden_size = 128;
  cfg.num_attention_heads = 4;
  cfg.ffn_hidden_size = 256;
  cfg.validate();
  const MicroBatch mb = random_batch(70);
  const float scale = 1.0f / static_cast<float>(mb.num_labels());
  std::vector<double> losses[3];
  std::vector<float> final_params[3];
  for (int run = 0; run < 3; ++run) {  // bf16, fp8, fp8 again
    Backend& b = run == 0 ? *bf16 : *fp8;
    Esm2Model m(cfg, b);
    m.init_weights(7);
    AdamW opt(m, OptimizerConfig{});
    for (int step = 0; step < 4; ++step) {
      m.zero_grads();
      losses[run].push_back(m.forward_backward(mb, scale).loss_sum);
      opt.step(1e-3);
    }
    final_params[run].resize(m.num_params());
    m.get_params(final_params[run]);
  }
  for (int step = 0; step < 4; ++step)
    EXPECT_NEAR(losses[1][step], losses[0][step], 0.02 * losses[0][step]) << "step " << step;
  EXPECT_EQ(losses[1], losses[2]);
  EXPECT_EQ(0, std::memcmp(final_params[1].data(), final_params[2].data(), final_params[1].size() * 4));
  EXPECT_NE(0, std::memcmp(final_params[0].data(), final_params[1].data(), final_params[0].size() * 4))
      << "fp8-mixed gave bitwise the bf16 result: the FP8 path did not run";
  // 2 runs × 4 steps × 3 layers × 4 linears × 3 products, all in FP8.
  EXPECT_EQ(counts(*fp8).fp8, 2 * 4 * 3 * 4 * 3);
  EXPECT_EQ(counts(*fp8).bf16_fallback, 0);
  // Every dgrad took the dy its wgrad had quantised (linear_backward runs them back to back).
  EXPECT_EQ(counts(*fp8).dy_reused, 2 * 4 * 3 * 4);
}

TEST(Fp8Model, GradientsMatchBf16) {
  std::string why;
  auto fp8 = fp8_backend(&why);
  if (!fp8) GTEST_SKIP() << why;
#ifdef ESM2_HAVE_CUDA
  auto bf16 = make_cuda_backend(DType::BF16, 0, false);
#else
  std::unique_ptr<Backend> bf16;
#endif
  ModelConfig cfg;
  cfg.num_layers = 2;
  cfg.hidden_size = 128;
  cfg.num_attention_heads = 4;
  cfg.ffn_hidden_size = 512;
  cfg.validate();
  const MicroBatch mb = random_batch(71);
  std::vector<float> grads[2];
  double loss[2];
  for (int run = 0; run < 2; ++run) {
    Esm2Model m(cfg, run == 0 ? *bf16 : *fp8);
    m.init_weights(9);
    m.zero_grads();
    loss[run] = m.forward_backward(mb, 1.0f / static_cast<float>(mb.num_labels())).loss_sum;
    grads[run].resize(m.num_params());
    m.get_grads(grads[run]);
  }
  EXPECT_NEAR(loss[1], loss[0], 0.01 * loss[0]);
  EXPECT_GE(cosine(grads[1], grads[0]), 0.99);
}

}  // namespace
