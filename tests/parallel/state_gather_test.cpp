// FullStateGather and the sliced loaders (src/parallel/model_state.h) across tensor × pipeline splits
// with pieces much smaller than a tensor: pieces that start mid-row of a row-parallel tensor, the tied
// decoder replica on the last stage, several pieces per tensor. Oracle: the unsplit model's flat
// parameters — every loaded run and every gathered tensor must equal them exactly. (Checkpoints use
// 4 MiB pieces, larger than every tensor of the test models, so only this test covers the piece loop.)
#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <tuple>

#include "backend/backend.h"
#include "core/error.h"
#include "comm/communicator.h"
#include "model/esm2.h"
#include "model/param_table.h"
#include "parallel/model_state.h"
#include "../comm/thread_p2p_communicator.h"

using namespace esm2;
using esm2::testing::Mailboxes;
using esm2::testing::ThreadComm;

namespace {



ModelConfig cfg_small() {
  ModelConfig c;
  c.num_layers = 3;
  c.hidden_size = 64;
  c.num_attention_heads = 4;
  c.ffn_hidden_size = 256;
  c.max_position_embeddings = 64;
  return c;
}

}  // namespace

class StateGather : public ::testing::TestWithParam<std::tuple<int, int, size_t>> {};

TEST_P(StateGather, PiecesEqualTheWholeModel) {
  const int kTp = std::get<0>(GetParam()), kPp = std::get<1>(GetParam());
  const size_t piece = std::get<2>(GetParam());
  const ModelConfig cfg = cfg_small();
  auto be = make_cpu_backend(1);
  Esm2Model a(cfg, *be);
  a.init_weights(3);
  const size_t n = a.num_params();
  std::vector<float> whole(n);
  a.get_params(whole);
  const int kWorld = kTp * kPp;
  Mailboxes mp_box(kWorld);
  std::vector<std::unique_ptr<Mailboxes>> tpb, ppb;
  for (int i = 0; i < kPp; ++i) tpb.push_back(std::make_unique<Mailboxes>(kTp));
  for (int i = 0; i < kTp; ++i) ppb.push_back(std::make_unique<Mailboxes>(kPp));
  std::vector<std::string> errors(kWorld);
  std::vector<float> got(n, -1.f);
  std::vector<std::thread> th;
  for (int r = 0; r < kWorld; ++r) th.emplace_back([&, r] {
    try {
      const int tr = r % kTp, pr = r / kTp;
      ThreadComm tp(*tpb[pr], tr), pp(*ppb[tr], pr), mp(mp_box, r);
      auto rbe = make_cpu_backend(1);
      Esm2Model m(cfg, *rbe, ModelParallel{&tp, &pp, &mp});
      read_local_params(m, [&](const ParamInfo& p, size_t b, std::span<float> d) {
        std::copy_n(whole.data() + p.offset + b, d.size(), d.data());
      }, piece);
      std::vector<float> loc(m.num_params());
      m.get_params(loc);
      for (const FlatRun& run : m.full_runs())
        ESM2_CHECK(std::equal(loc.begin() + run.local, loc.begin() + run.local + run.length, whole.begin() + run.full),
                   "load run {}", run.full);
      std::vector<float> loc2(m.num_params());
      read_local_state(m, [&](const ParamInfo& p, size_t b, std::span<float> d) {
        std::copy_n(whole.data() + p.offset + b, d.size(), d.data());
      }, loc2);
      ESM2_CHECK(loc2 == loc, "read_local_state differs");
      FullStateGather g(&mp, m, piece);
      LocalStateReader rd = [&](size_t b, std::span<float> d) { std::copy_n(loc.data() + b, d.size(), d.data()); };
      for (const auto& p : m.full_params_info()) {
        size_t at = p.offset;
        g.gather_tensor(p, rd, [&](std::span<const float> v) { std::copy(v.begin(), v.end(), got.begin() + at); at += v.size(); });
      }
    } catch (const std::exception& e) {
      errors[r] = e.what();
    }
  });
  for (auto& t : th) t.join();
  for (int r = 0; r < kWorld; ++r) ASSERT_TRUE(errors[r].empty()) << r << ": " << errors[r];
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += got[i] != whole[i];
  EXPECT_EQ(bad, 0u);
}
// (TP, PP, piece elements): a selection of the 45 combinations a reviewer ran by hand, all bitwise.
INSTANTIATE_TEST_SUITE_P(Splits, StateGather,
                         ::testing::Values(std::make_tuple(2, 2, size_t{7}), std::make_tuple(4, 3, size_t{37}),
                                           std::make_tuple(2, 3, size_t{100}), std::make_tuple(4, 1, size_t{61}),
                                           std::make_tuple(1, 2, size_t{1} << 20)));
