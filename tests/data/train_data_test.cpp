// Sampler (epoch permutations, member choice, cropping, min length), packing and padded batches
// (MicroBatch invariants, efficiency on the bundled corpus), rank sharding, exact resume, validation.
#include <gmock/gmock.h>

#include <map>
#include <set>

#include "data/corpus.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "data/train_data.h"
#include "test_util.h"

using namespace esm2;
using namespace esm2::testing;
using ::testing::HasSubstr;

namespace {

std::shared_ptr<const Corpus> prepared(const ScratchDir& d, const std::string& name, PrepareOptions o) {
  o.output = d / name;
  prepare_corpus(o);
  return std::make_shared<const Corpus>(Corpus::open(o.output));
}

std::shared_ptr<const Corpus> bundled_train(const ScratchDir& d) {
  PrepareOptions o;
  o.fasta = {sample_dir() / "train.fasta.gz"};
  o.clusters = sample_dir() / "train_clusters.tsv";
  return prepared(d, "train", o);
}

// Every MicroBatch invariant the model relies on; returns real tokens.
int64_t check_micro(const MicroBatch& mb, const Corpus& corpus, const DataConfig& cfg) {
  const int64_t T = mb.num_tokens();
  EXPECT_EQ(mb.labels.size(), mb.input_ids.size());
  EXPECT_EQ(mb.cu_seqlens.front(), 0);
  EXPECT_EQ(mb.cu_seqlens.back(), T);
  EXPECT_EQ(static_cast<int64_t>(mb.sample_ids.size()), mb.num_sequences());
  EXPECT_LE(T, mb.token_budget);
  int32_t longest = 0;
  for (int64_t s = 0; s < mb.num_sequences(); ++s) {
    int32_t a = mb.cu_seqlens[s], b = mb.cu_seqlens[s + 1];
    EXPECT_GE(b - a, 3);
    EXPECT_LE(b - a, cfg.max_seq_length);
    EXPECT_GE(b - a, cfg.min_seq_length);
    longest = std::max(longest, b - a);
    // <cls> … <eos> always survive: special tokens are never masked, and cropping keeps both.
    EXPECT_EQ(mb.input_ids[a], kCls);
    EXPECT_EQ(mb.input_ids[b - 1], kEos);
    EXPECT_EQ(mb.labels[a], kIgnoreLabel);
    EXPECT_EQ(mb.labels[b - 1], kIgnoreLabel);
    for (int32_t k = a + 1; k < b - 1; ++k) {
      int32_t original = mb.labels[k] == kIgnoreLabel ? mb.input_ids[k] : mb.labels[k];
      EXPECT_TRUE(original >= kUnk && original < kFirstAminoAcid + 25) << original;
    }
  }
  EXPECT_EQ(mb.max_seqlen, longest);
  if (cfg.micro_batch_size > 0) {
    EXPECT_EQ(mb.num_sequences(), cfg.micro_batch_size);
    EXPECT_EQ(mb.token_budget, static_cast<int64_t>(cfg.micro_batch_size) * longest);
  } else {
    EXPECT_EQ(mb.token_budget, cfg.micro_batch_tokens);
  }
  return T;
}

bool same(const MicroBatch& a, const MicroBatch& b) {
  return a.input_ids == b.input_ids && a.labels == b.labels && a.cu_seqlens == b.cu_seqlens &&
         a.sample_ids == b.sample_ids && a.max_seqlen == b.max_seqlen && a.token_budget == b.token_budget;
}

DataConfig packed(int64_t budget, int accum = 1) {
  DataConfig c;
  c.micro_batch_tokens = budget;
  c.accumulate_grad_batches = accum;
  return c;
}

}  // namespace

TEST(Sampler, EachEpochVisitsEveryClusterOnceAndEpochsDiffer) {
  ScratchDir d;
  auto corpus = bundled_train(d);
  ClusterSampler s(corpus, 42, 1024, 0);
  const int64_t C = 4000;
  ASSERT_EQ(s.num_eligible_clusters(), 4000u);
  std::vector<uint32_t> e0, e1;
  for (int64_t i = 0; i < C; ++i) e0.push_back(s.cluster_of(i));
  for (int64_t i = C; i < 2 * C; ++i) e1.push_back(s.cluster_of(i));
  EXPECT_EQ(std::set<uint32_t>(e0.begin(), e0.end()).size(), 4000u);
  EXPECT_EQ(std::set<uint32_t>(e1.begin(), e1.end()).size(), 4000u);
  EXPECT_NE(e0, e1);
  // The member always comes from the permuted cluster; a fresh sampler reproduces every draw.
  ClusterSampler again(corpus, 42, 1024, 0), other(corpus, 43, 1024, 0);
  int differ = 0;
  for (int64_t i : {int64_t{0}, int64_t{1}, int64_t{3999}, int64_t{4000}, int64_t{123457}}) {
    SampleRef a = s.sample(i), b = again.sample(i);
    EXPECT_EQ(a.sequence, b.sequence);
    EXPECT_EQ(a.start, b.start);
    auto members = corpus->cluster_members(s.cluster_of(i));
    EXPECT_NE(std::find(members.begin(), members.end(), a.sequence), members.end());
    differ += other.sample(i).sequence != a.sequence;
  }
  EXPECT_GE(differ, 3);
}

TEST(Sampler, MembersAreChosenUniformly) {
  ScratchDir d;
  write_text(d / "s.fa", ">a\nMK\n>b\nMKV\n>c\nMKVL\n>d\nMKVLA\n>e\nW\n");
  write_text(d / "c.tsv", "x\ta\nx\tb\nx\tc\nx\td\ny\te\n");
  PrepareOptions o;
  o.fasta = {d / "s.fa"};
  o.clusters = d / "c.tsv";
  auto corpus = prepared(d, "c", o);
  ClusterSampler s(corpus, 9, 1024, 0);
  std::map<uint32_t, int> count;
  const int n = 40000;
  for (int64_t i = 0; i < n; ++i) ++count[s.sample(i).sequence];
  EXPECT_EQ(count[4], n / 2);  // cluster y, one member, half of all draws
  for (uint32_t m = 0; m < 4; ++m) EXPECT_NEAR(count[m], n / 8, 5 * std::sqrt(n / 2 * 0.25 * 0.75)) << m;
}

TEST(Sampler, CropKeepsClsEosAndATrueWindow) {
  ScratchDir d;
  std::string seq;
  for (int i = 0; i < 300; ++i) seq += "LAGVSERTIDPKQNFYMHWC"[(i * 7) % 20];
  write_text(d / "s.fa", ">long\n" + seq + "\n");
  PrepareOptions o;
  o.fasta = {d / "s.fa"};
  auto corpus = prepared(d, "c", o);
  ClusterSampler s(corpus, 5, 50, 0);
  std::set<uint32_t> starts;
  auto full = corpus->sequence(0);
  for (int64_t i = 0; i < 2000; ++i) {
    SampleRef r = s.sample(i);
    ASSERT_EQ(r.tokens(), 50);
    ASSERT_LE(r.start + r.residues, 300u);
    starts.insert(r.start);
    std::vector<int32_t> t;
    append_sample_tokens(*corpus, r, t);
    ASSERT_EQ(t.front(), kCls);
    ASSERT_EQ(t.back(), kEos);
    ASSERT_TRUE(std::equal(t.begin() + 1, t.end() - 1, full.begin() + r.start));
  }
  // 253 possible offsets: both extremes and nearly all in between are drawn.
  EXPECT_TRUE(starts.count(0));
  EXPECT_TRUE(starts.count(252));
  EXPECT_GT(starts.size(), 240u);
}

TEST(Sampler, MinSeqLengthDropsShortMembersAndEmptyClusters) {
  ScratchDir d;
  write_text(d / "s.fa", ">a\nMK\n>b\nMKVLAGG\n>c\nMKV\n>d\nMKVLAGGW\n");
  write_text(d / "c.tsv", "x\ta\nx\tb\ny\tc\nz\td\n");
  PrepareOptions o;
  o.fasta = {d / "s.fa"};
  o.clusters = d / "c.tsv";
  auto corpus = prepared(d, "c", o);
  ClusterSampler s(corpus, 1, 1024, 9);  // 9 tokens: b (7+2) and d (8+2) qualify
  EXPECT_EQ(s.num_eligible_clusters(), 2u);
  EXPECT_EQ(s.num_dropped_clusters(), 1u);
  for (int64_t i = 0; i < 200; ++i) {
    uint32_t q = s.sample(i).sequence;
    EXPECT_TRUE(q == 1 || q == 3) << q;
  }
  EXPECT_THAT(error_of([&] { ClusterSampler(corpus, 1, 1024, 20); }), HasSubstr("min_seq_length"));
}

TEST(TrainData, PackedInvariantsEfficiencyAndNoSampleLost) {
  ScratchDir d;
  auto corpus = bundled_train(d);
  for (int64_t budget : {16384, 1024}) {
    DataConfig cfg = packed(budget, 4);
    TrainData data(corpus, cfg);
    DataPosition pos;
    int64_t tokens = 0, slots = 0;
    std::set<int64_t> seen;
    const int steps = budget == 16384 ? 40 : 200;
    for (int step = 0; step < steps; ++step) {
      StepBatch b = data.next_step(pos, 0, 1);
      ASSERT_EQ(b.micro.size(), 4u);
      int64_t t = 0, labels = 0, seqs = 0;
      for (const auto& mb : b.micro) {
        t += check_micro(mb, *corpus, cfg);
        labels += mb.num_labels();
        seqs += mb.num_sequences();
        for (int64_t id : mb.sample_ids) EXPECT_TRUE(seen.insert(id).second) << "sample placed twice: " << id;
      }
      EXPECT_EQ(b.global_num_tokens, t);
      EXPECT_EQ(b.global_num_labels, labels);
      EXPECT_EQ(b.global_num_sequences, seqs);
      EXPECT_EQ(b.global_token_slots, 4 * budget);
      tokens += t;
      slots += b.global_token_slots;
    }
    for (int64_t id : pos.deferred) EXPECT_TRUE(seen.insert(id).second);
    EXPECT_EQ(static_cast<int64_t>(seen.size()), pos.next_sample);  // every drawn sample placed or deferred
    double eff = static_cast<double>(tokens) / slots;
    std::printf("packing efficiency, budget %lld, max length 1024: %.4f over %d steps\n",
                static_cast<long long>(budget), eff, steps);
    if (budget == 16384) EXPECT_GE(eff, 0.98);
    else EXPECT_GE(eff, 0.95);
  }
}

TEST(TrainData, PaddedModeTakesConsecutiveSamples) {
  ScratchDir d;
  auto corpus = bundled_train(d);
  DataConfig cfg;
  cfg.micro_batch_size = 8;
  cfg.accumulate_grad_batches = 2;
  TrainData data(corpus, cfg);
  DataPosition pos;
  int64_t real = 0, slots = 0;
  for (int step = 0; step < 20; ++step) {
    StepBatch b = data.next_step(pos, 0, 1);
    ASSERT_EQ(b.micro.size(), 2u);
    for (size_t m = 0; m < 2; ++m) {
      real += check_micro(b.micro[m], *corpus, cfg);
      for (int k = 0; k < 8; ++k) EXPECT_EQ(b.micro[m].sample_ids[k], step * 16 + static_cast<int64_t>(m) * 8 + k);
    }
    slots += b.global_token_slots;
  }
  EXPECT_EQ(pos.next_sample, 320);
  std::printf("padded mode (8 per micro-batch) efficiency: %.4f\n", static_cast<double>(real) / slots);
}

TEST(TrainData, RanksSplitTheSameGlobalPlan) {
  ScratchDir d;
  auto corpus = bundled_train(d);
  for (bool padded : {false, true}) {
    auto cfg_for = [&](int accum) {
      DataConfig c = packed(4096, accum);
      if (padded) {
        c.micro_batch_tokens = 0;
        c.micro_batch_size = 5;
      }
      return c;
    };
    // world 1 × accumulate 4 == world 2 × accumulate 2 == world 4 × accumulate 1.
    TrainData one(corpus, cfg_for(4)), two(corpus, cfg_for(2)), four(corpus, cfg_for(1));
    DataPosition p1;
    std::vector<DataPosition> p2(2), p4(4);
    for (int step = 0; step < 15; ++step) {
      StepBatch ref = one.next_step(p1, 0, 1);
      for (int r = 0; r < 2; ++r) {
        StepBatch b = two.next_step(p2[r], r, 2);
        ASSERT_EQ(b.micro.size(), 2u);
        for (int a = 0; a < 2; ++a) EXPECT_TRUE(same(b.micro[a], ref.micro[2 * r + a])) << step << " " << r;
        EXPECT_EQ(b.global_num_labels, ref.global_num_labels);
        EXPECT_EQ(b.global_num_tokens, ref.global_num_tokens);
        EXPECT_EQ(b.global_token_slots, ref.global_token_slots);
        EXPECT_EQ(p2[r], p1);
      }
      for (int r = 0; r < 4; ++r) {
        StepBatch b = four.next_step(p4[r], r, 4);
        ASSERT_EQ(b.micro.size(), 1u);
        EXPECT_TRUE(same(b.micro[0], ref.micro[r]));
        EXPECT_EQ(b.global_num_sequences, ref.global_num_sequences);
        EXPECT_EQ(p4[r], p1);
      }
    }
  }
}

TEST(TrainData, ResumeFromSerializedPositionContinuesIdentically) {
  ScratchDir d;
  auto corpus = bundled_train(d);
  DataConfig cfg = packed(2048, 2);
  TrainData data(corpus, cfg);
  DataPosition pos;
  std::vector<StepBatch> straight;
  std::string saved;
  bool deferred_seen = false;
  for (int step = 0; step < 30; ++step) {
    if (step == 12) saved = pos.to_json().dump();
    straight.push_back(data.next_step(pos, 0, 1));
    deferred_seen |= !pos.deferred.empty();
  }
  EXPECT_TRUE(deferred_seen);  // the resume must carry deferred samples to be a real test
  // A new process: a new TrainData over a freshly opened corpus.
  auto corpus2 = std::make_shared<const Corpus>(Corpus::open(d / "train"));
  TrainData resumed(corpus2, cfg);
  DataPosition p = DataPosition::from_json(nlohmann::json::parse(saved));
  for (int step = 12; step < 30; ++step) {
    StepBatch b = resumed.next_step(p, 0, 1);
    ASSERT_EQ(b.micro.size(), straight[step].micro.size());
    for (size_t m = 0; m < b.micro.size(); ++m) EXPECT_TRUE(same(b.micro[m], straight[step].micro[m])) << step;
    EXPECT_EQ(b.global_num_labels, straight[step].global_num_labels);
  }
  EXPECT_EQ(p, pos);
  EXPECT_THAT(error_of([] { DataPosition::from_json({{"next_sample", 3}, {"deferred", {5}}}); }),
              HasSubstr("never drawn"));
  EXPECT_THAT(error_of([] { DataPosition::from_json({{"deferred", {}}}); }), HasSubstr("data position"));
}

TEST(TrainData, ConfigurationErrors) {
  ScratchDir d;
  auto corpus = bundled_train(d);
  DataConfig c = packed(512);
  EXPECT_THAT(error_of([&] { TrainData(corpus, c); }), HasSubstr("below --max-seq-length"));
  c.micro_batch_tokens = 4096;
  c.micro_batch_size = 4;
  EXPECT_THAT(error_of([&] { TrainData(corpus, c); }), HasSubstr("exactly one"));
  c.micro_batch_size = 0;
  c.mask_prob = 1.5f;
  EXPECT_THAT(error_of([&] { TrainData(corpus, c); }), HasSubstr("--mask-prob 1.5 is outside (0, 1]"));
  c.mask_prob = 0.15f;
  TrainData ok(corpus, c);
  DataPosition p;
  EXPECT_THAT(error_of([&] { ok.next_step(p, 2, 2); }), HasSubstr("rank 2 of 2"));
}

TEST(Validation, EverySequenceOnceFixedMasksRanksPartition) {
  ScratchDir d;
  PrepareOptions o;
  o.fasta = {sample_dir() / "valid.fasta.gz"};
  auto valid = prepared(d, "valid", o);
  DataConfig cfg = packed(8192);
  cfg.seed = 1;
  auto all = validation_batches(*valid, cfg, -1, 0, 1);
  std::vector<int64_t> ids;
  for (const auto& mb : all) {
    check_micro(mb, *valid, cfg);
    ids.insert(ids.end(), mb.sample_ids.begin(), mb.sample_ids.end());
  }
  std::sort(ids.begin(), ids.end());
  ASSERT_EQ(ids.size(), 500u);
  for (int64_t i = 0; i < 500; ++i) EXPECT_EQ(ids[i], i);
  // The training seed does not change validation masks.
  cfg.seed = 2;
  auto again = validation_batches(*valid, cfg, -1, 0, 1);
  ASSERT_EQ(again.size(), all.size());
  for (size_t b = 0; b < all.size(); ++b) EXPECT_TRUE(same(all[b], again[b]));
  // Two ranks: equal counts, together every sequence exactly once.
  auto r0 = validation_batches(*valid, cfg, -1, 0, 2), r1 = validation_batches(*valid, cfg, -1, 1, 2);
  EXPECT_EQ(r0.size(), r1.size());
  std::set<int64_t> both;
  for (const auto* v : {&r0, &r1})
    for (const auto& mb : *v)
      for (int64_t id : mb.sample_ids) EXPECT_TRUE(both.insert(id).second);
  EXPECT_EQ(both.size(), 500u);
  EXPECT_EQ(validation_batches(*valid, cfg, 3, 1, 2).size(), 3u);
}
