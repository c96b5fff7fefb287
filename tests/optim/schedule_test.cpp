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

TEST(Schedule, ParseNames) {
  EXPECT_EQ(parse_schedule_kind("cosine"), ScheduleKind::Cosine);
  EXPECT_EQ(parse_schedule_kind(schedule_kind_name(ScheduleKind::WarmupAnnealDecayHold)),
            ScheduleKind::WarmupAnnealDecayHold);
  EXPECT_THROW(parse_schedule_kind("linear"), Error);
}
