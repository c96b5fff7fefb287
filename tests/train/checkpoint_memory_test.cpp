// Checkpoint save and load never hold the whole model, nor a rank's local share of it: the heap bytes a
// rank allocates inside save_checkpoint / load_checkpoint are counted (every operator new of this
// binary, per thread) and bounded by a few pieces of kStatePieceElems, parameters and Adam moments
// alike, on a ~63 MB model: one rank, TP=2 × PP=2, and ZeRO-1 at DP=3 with several buckets (one thread
// per rank). The split ranks load the one-rank checkpoint (sliced reads) and save it again: the files
// must come out byte for byte the same.
#include <gtest/gtest.h>
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <new>
#include <thread>

#include "backend/backend.h"
#include "core/atomic_dir.h"
#include "core/error.h"
#include "core/philox.h"
#include "comm/communicator.h"
#include "../comm/thread_p2p_communicator.h"
#include "model/esm2.h"
#include "train/checkpoint.h"
#include "parallel/model_state.h"
#include "optim/optimizer.h"
#include "optim/zero_optimizer.h"

// ---- per-thread heap accounting (replaces the global allocation functions of this binary) ----
namespace {
thread_local int64_t t_live = 0, t_peak = 0;
void* counted(void* p) {
  if (!p) throw std::bad_alloc();
  t_live += static_cast<int64_t>(malloc_usable_size(p));
  t_peak = std::max(t_peak, t_live);
  return p;
}
void uncount(void* p) {
  if (!p) return;
  t_live -= static_cast<int64_t>(malloc_usable_size(p));
  std::free(p);
}
size_t round_up(size_t n, size_t a) { return (std::max<size_t>(n, 1) + a - 1) / a * a; }
}  // namespace

void* operator new(size_t n) { return counted(std::malloc(std::max<size_t>(n, 1))); }
void* operator new[](size_t n) { return counted(std::malloc(std::max<size_t>(n, 1))); }
void* operator new(size_t n, std::align_val_t a) {
  return counted(std::aligned_alloc(static_cast<size_t>(a), round_up(n, static_cast<size_t>(a))));
}
void* operator new[](size_t n, std::align_val_t a) {
  return counted(std::aligned_alloc(static_cast<size_t>(a), round_up(n, static_cast<size_t>(a))));
}
void operator delete(void* p) noexcept { uncount(p); }
void operator delete[](void* p) noexcept { uncount(p); }
void operator delete(void* p, size_t) noexcept { uncount(p); }
void operator delete[](void* p, size_t) noexcept { uncount(p); }
void operator delete(void* p, std::align_val_t) noexcept { uncount(p); }
void operator delete[](void* p, std::align_val_t) noexcept { uncount(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { uncount(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { uncount(p); }

using namespace esm2;
using esm2::testing::Mailboxes;
using esm2::testing::ThreadComm;
namespace fs = std::filesystem;

namespace {

// Peak heap bytes this thread allocated on top of what it held when the meter started.
struct HeapMeter {
  int64_t base = t_live;
  HeapMeter() { t_peak = t_live; }
  double extra_mb() const { return static_cast<double>(t_peak - base) / (1 << 20); }
};

constexpr double kPieceMb = kStatePieceElems * 4.0 / (1 << 20);
constexpr double kSlackMb = 2.0;  // names, tables, JSON, the FlatRun lists of the other ranks
// A save's bound on every rank: FullStateGather's window, packing and output pieces, a spare piece.
constexpr double kSaveMb = 4 * kPieceMb + kSlackMb;

ModelConfig big_config() {  // 15.8 M parameters: 63 MB per fp32 copy
  ModelConfig c;
  c.num_layers = 5;
  c.hidden_size = 512;
  c.num_attention_heads = 8;
  c.ffn_hidden_size = 2048;
  c.max_position_embeddings = 128;
  return c;
}

std::vector<float> philox_values(size_t n, uint64_t a) {
  const PhiloxStream rng{7, RngStream::Init, a};
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(rng.word(i) >> 8) * 0x1p-24f;
  return v;
}

std::string file_bytes(const fs::path& p) { return read_file(p); }


fs::path fresh_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("esm2-ckptmem-" + std::to_string(::getpid()) + "-" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

const char* kFiles[] = {"model.safetensors", "trainer_state/optimizer.safetensors", "trainer_state/state.json"};

}  // namespace

TEST(CheckpointMemory, SaveAndLoadHoldOnlyLocalState) {
  const ModelConfig cfg = big_config();
  const TrainConfig tcfg;
  const fs::path root = fresh_dir("root");
  const std::string name = "step-00000007";

  // ---- one rank: save, then load into a fresh model ----
  auto be = make_cpu_backend(1);
  Esm2Model a(cfg, *be);
  a.init_weights(11);
  AdamW opt_a(a, OptimizerConfig{});
  const size_t n = a.num_params();
  const double full_mb = n * 4.0 / (1 << 20);
  ASSERT_GT(full_mb, 12 * kPieceMb) << "the model must dwarf the pieces for the bounds below to mean anything";
  {
    const std::vector<float> m = philox_values(n, 1), v = philox_values(n, 2);
    opt_a.set_moments(m, v);
  }
  opt_a.set_steps_taken(7);
  TrainerState state;
  state.step = 7;
  double save1_mb = 0;
  {
    HeapMeter meter;
    save_checkpoint(root / "one", name, a, opt_a, true, state, tcfg);
    save1_mb = meter.extra_mb();
  }
  const fs::path ck = root / "one" / name;
  // One rank: parameters and moments alike go piece by piece (the moments once took 2 × the model).
  EXPECT_LT(save1_mb, kSaveMb);

  Esm2Model b(cfg, *be);
  double load_model_mb = 0, load_train_mb = 0;
  {
    HeapMeter meter;
    load_checkpoint(ck, b, nullptr, nullptr);
    load_model_mb = meter.extra_mb();
  }
  EXPECT_LT(load_model_mb, kPieceMb + kSlackMb);  // weights only: one piece, whatever the model size
  AdamW opt_b(b, OptimizerConfig{});
  TrainerState state_b;
  {
    HeapMeter meter;
    load_checkpoint(ck, b, &opt_b, &state_b);
    load_train_mb = meter.extra_mb();
  }
  EXPECT_LT(load_train_mb, kPieceMb + kSlackMb);  // moments too: one piece at a time
  {
    std::vector<float> pa(n), pb(n), ma(n), va(n), mb(n), vb(n);
    a.get_params(pa);
    b.get_params(pb);
    opt_a.get_moments(ma, va);
    opt_b.get_moments(mb, vb);
    EXPECT_TRUE(pa == pb && ma == mb && va == vb) << "load did not restore the saved state bitwise";
    EXPECT_EQ(opt_b.steps_taken(), 7);
    EXPECT_EQ(state_b.step, 7);
  }

  // ---- TP=2 × PP=2, one thread per rank: sliced loads of that checkpoint, then a gathered save ----
  constexpr int kTp = 2, kPp = 2, kWorld = kTp * kPp;
  Mailboxes mp_box(kWorld), tp_box0(kTp), tp_box1(kTp), pp_box0(kPp), pp_box1(kPp);
  Mailboxes* tp_boxes[] = {&tp_box0, &tp_box1};
  Mailboxes* pp_boxes[] = {&pp_box0, &pp_box1};
  std::vector<double> load_mb(kWorld), save_mb(kWorld), local_mb(kWorld);
  std::vector<std::string> errors(kWorld);
  std::vector<std::thread> threads;
  for (int r = 0; r < kWorld; ++r)
    threads.emplace_back([&, r] {
      try {
        const int tp_rank = r % kTp, pp_rank = r / kTp;
        ThreadComm tp(*tp_boxes[pp_rank], tp_rank), pp(*pp_boxes[tp_rank], pp_rank), mp(mp_box, r);
        auto rbe = make_cpu_backend(1);
        Esm2Model m(cfg, *rbe, ModelParallel{&tp, &pp, &mp});
        AdamW opt(m, OptimizerConfig{});
        local_mb[r] = m.num_params() * 4.0 / (1 << 20);
        TrainerState st;
        {
          HeapMeter meter;
          load_checkpoint(ck, m, &opt, &st);
          load_mb[r] = meter.extra_mb();
        }
        // The slices are the one-rank model's elements (FlatRun: local ← full).
        std::vector<float> full(n), part(m.num_params());
        a.get_params(full);
        m.get_params(part);
        for (const FlatRun& run : m.full_runs())
          ESM2_CHECK(std::equal(part.begin() + run.local, part.begin() + run.local + run.length,
                                full.begin() + run.full),
                     "rank {}: run at full offset {} differs from the checkpoint", r, run.full);
        full = {};
        part = {};
        mp.barrier("loaded");
        {
          HeapMeter meter;
          save_checkpoint(root / "split", name, m, opt, true, st, tcfg);
          save_mb[r] = meter.extra_mb();
        }
      } catch (const std::exception& e) {
        errors[r] = e.what();
        for (Mailboxes* box : {&mp_box, &tp_box0, &tp_box1, &pp_box0, &pp_box1}) box->abort();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < kWorld; ++r) ASSERT_TRUE(errors[r].empty()) << "rank " << r << ": " << errors[r];
  for (const char* f : kFiles)
    EXPECT_TRUE(file_bytes(ck / f) == file_bytes(root / "split" / name / f))
        << f << ": the TP=2 × PP=2 save differs from the one-rank save of the same state";
  for (int r = 0; r < kWorld; ++r) {
    // Training load: one piece (parameters, then moments), never the local moments.
    EXPECT_LT(load_mb[r], kPieceMb + kSlackMb) << "rank " << r;
    // Save: the gather's pieces (and rank 0's output piece), never the local moments.
    EXPECT_LT(save_mb[r], kSaveMb) << "rank " << r;
    EXPECT_LT(kSaveMb, 2 * local_mb[r]) << "the local moments must dwarf the bound for it to mean anything";
  }
  // ---- ZeRO-1 at DP=3, one thread per rank: sharded loads of that checkpoint, then a save ----
  // Buckets of ~4M elements (the first one padded), 3 owners each: a piece of the save's reads spans
  // several owners and sometimes two buckets.
  constexpr int kDp = 3;
  Mailboxes dp_box(kDp);
  std::vector<double> zload_mb(kDp), zsave_mb(kDp);
  std::vector<std::string> zerrors(kDp);
  size_t buckets = 0;
  threads.clear();
  for (int r = 0; r < kDp; ++r)
    threads.emplace_back([&, r] {
      try {
        ThreadComm dp(dp_box, r);
        auto rbe = make_cpu_backend(1);
        Esm2Model m(cfg, *rbe);
        GradReduceOptions reduce;
        reduce.bucket_elements = 4'000'000;
        ZeroAdamW opt(m, OptimizerConfig{}, dp, reduce);
        if (r == 0) buckets = opt.num_buckets();
        TrainerState st;
        {
          HeapMeter meter;
          load_checkpoint(ck, m, &opt, &st);
          zload_mb[r] = meter.extra_mb();
        }
        ESM2_CHECK(opt.steps_taken() == 7, "rank {}: resumed at optimizer step {}", r, opt.steps_taken());
        // Ranges across owners and buckets, against the one-rank optimizer's moments.
        if (r == 0) {
          std::vector<float> want_m(n), want_v(n);
          opt_a.get_moments(want_m, want_v);
          for (const auto& [b, len] : {std::pair<size_t, size_t>{0, 17}, {n - 4'000'002 - 5, 11}, {1'333'330, 9},
                                      {n / 2 - 3, 2'000'001}, {n - 1, 1}}) {
            std::vector<float> part(len);
            opt.read_moments(Moment::ExpAvg, b, part);
            ESM2_CHECK(std::equal(part.begin(), part.end(), want_m.begin() + b), "exp_avg [{}, {}) differs", b, b + len);
            opt.read_moments(Moment::ExpAvgSq, b, part);
            ESM2_CHECK(std::equal(part.begin(), part.end(), want_v.begin() + b), "exp_avg_sq [{}, {}) differs", b,
                       b + len);
          }
        }
        opt.end_moment_reads();
        HeapMeter meter;
        save_checkpoint(root / "zero", name, m, opt, r == 0, st, tcfg);
        zsave_mb[r] = meter.extra_mb();
      } catch (const std::exception& e) {
        zerrors[r] = e.what();
        dp_box.abort();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < kDp; ++r) ASSERT_TRUE(zerrors[r].empty()) << "dp rank " << r << ": " << zerrors[r];
  EXPECT_GE(buckets, 3u);
  for (const char* f : kFiles)
    EXPECT_TRUE(file_bytes(ck / f) == file_bytes(root / "zero" / name / f))
        << f << ": the ZeRO-1 DP=3 save differs from the one-rank save of the same state";
  for (int r = 0; r < kDp; ++r) {
    EXPECT_LT(zload_mb[r], kPieceMb + kSlackMb) << "dp rank " << r;  // its shard, a piece at a time
    EXPECT_LT(zsave_mb[r], kSaveMb) << "dp rank " << r;  // dp rank 0: the writer; others: no host copies
  }
  std::printf("model %.1f MB (fp32), piece %.0f MB\n", full_mb, kPieceMb);
  std::printf("one rank: save %.1f MB, load weights %.1f MB, load weights+moments %.1f MB\n", save1_mb,
              load_model_mb, load_train_mb);
  for (int r = 0; r < kWorld; ++r)
    std::printf("TP2xPP2 rank %d (local %.1f MB): load %.1f MB, save %.1f MB\n", r, local_mb[r], load_mb[r],
                save_mb[r]);
  for (int r = 0; r < kDp; ++r)
    std::printf("ZeRO-1 DP3 (%zu buckets) rank %d: load %.1f MB, save %.1f MB\n", buckets, r, zload_mb[r], zsave_mb[r]);
  fs::remove_all(root);
}
