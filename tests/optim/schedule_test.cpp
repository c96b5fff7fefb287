#include "optim/schedule.h"

#include <gtest/gtest.h>

#include "core/error.h"

using namespace esm2;

// Expected values written out by hand from the reference formula (bionemo-semantics.md).
TEST(Schedule, WarmupAnnealDecayHold) {
  ScheduleConfig c{ScheduleKind::WarmupAnnealDecayHold, 4e-4, 4e-5, 100, 1100};
  EXPECT_EQ(learning_rate(c, 0), 0.0);                      // step 0 has lr 0
  EXPECT_DOUBLE_EQ(learning_rate(c, 1), 4e-6);
  EXPECT_DOUBLE_EQ(learning_rate(c, 50), 2e-4);
  EXPECT_DOUBLE_EQ(learning_rate(c, 99), 3.96e-4);
  EXPECT_DOUBLE_EQ(learning_rate(c, 100), 4e-4);             // peak right after warmup
  EXPECT_DOUBLE_EQ(learning_rate(c, 600), 2e-4);             // halfway through the decay
  EXPECT_DOUBLE_EQ(learning_rate(c, 1000), 4e-4 * 0.1);      // 1 - 900/1000 = 0.1 → exactly min_lr
  EXPECT_DOUBLE_EQ(learning_rate(c, 1050), 4e-5);            // held at min_lr
  EXPECT_DOUBLE_EQ(learning_rate(c, 5000), 4e-5);            // and beyond total steps
  // Monotone non-increasing after warmup.
  for (int t = 100; t < 1200; ++t) ASSERT_LE(learning_rate(c, t + 1), learning_rate(c, t));
}

TEST(Schedule, ConstantAndCosine) {
  ScheduleConfig c{ScheduleKind::Constant, 1e-3, 1e-4, 10, 100};
  EXPECT_DOUBLE_EQ(learning_rate(c, 5), 5e-4);
  EXPECT_DOUBLE_EQ(learning_rate(c, 10), 1e-3);
  EXPECT_DOUBLE_EQ(learning_rate(c, 1000), 1e-3);
  c.kind = ScheduleKind::Cosine;
  EXPECT_DOUBLE_EQ(learning_rate(c, 10), 1e-3);
  EXPECT_NEAR(learning_rate(c, 55), 0.5 * (1e-3 + 1e-4), 1e-15);  // cos(pi/2) = 0
  EXPECT_NEAR(learning_rate(c, 100), 1e-4, 1e-15);
  EXPECT_NEAR(learning_rate(c, 500), 1e-4, 1e-15);
}

TEST(Schedule, WarmupStableDecay) {
  // T 100, decay 20% → D 20, the decay starts at step 80 and reaches min_lr at 100.
  ScheduleConfig c{ScheduleKind::WarmupStableDecay, 1e-3, 1e-4, 10, 100, 0.2};
  EXPECT_EQ(learning_rate(c, 0), 0.0);
  EXPECT_DOUBLE_EQ(learning_rate(c, 5), 5e-4);
  EXPECT_DOUBLE_EQ(learning_rate(c, 10), 1e-3);
  EXPECT_DOUBLE_EQ(learning_rate(c, 79), 1e-3);             // stable
  EXPECT_DOUBLE_EQ(learning_rate(c, 80), 1e-3);             // first decay step: q = 0
  EXPECT_DOUBLE_EQ(learning_rate(c, 90), 5.5e-4);           // 1e-3 − 9e-4·10/20
  EXPECT_DOUBLE_EQ(learning_rate(c, 99), 1.45e-4);          // 1e-3 − 9e-4·19/20
  EXPECT_DOUBLE_EQ(learning_rate(c, 100), 1e-4);
  EXPECT_DOUBLE_EQ(learning_rate(c, 5000), 1e-4);
  // A decay longer than the steps after warmup starts right after warmup: 90% of 20 → D 18, S = W = 10.
  ScheduleConfig d{ScheduleKind::WarmupStableDecay, 1e-3, 1e-4, 10, 20, 0.9};
  EXPECT_DOUBLE_EQ(learning_rate(d, 10), 1e-3);
  EXPECT_DOUBLE_EQ(learning_rate(d, 15), 5.5e-4);
  EXPECT_DOUBLE_EQ(learning_rate(d, 20), 1e-4);
  for (int t = 10; t < 30; ++t) ASSERT_LE(learning_rate(d, t + 1), learning_rate(d, t));
}

TEST(Schedule, ParseNames) {
  EXPECT_EQ(parse_schedule_kind("cosine"), ScheduleKind::Cosine);
  EXPECT_EQ(parse_schedule_kind("warmup_stable_decay"), ScheduleKind::WarmupStableDecay);
  EXPECT_EQ(parse_schedule_kind(schedule_kind_name(ScheduleKind::WarmupAnnealDecayHold)),
            ScheduleKind::WarmupAnnealDecayHold);
  EXPECT_THROW(parse_schedule_kind("linear"), Error);
}
