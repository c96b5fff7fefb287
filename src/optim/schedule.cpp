#include "optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace esm2 {

ScheduleKind parse_schedule_kind(const std::string& name) {
  if (const auto k = parse_enum(kScheduleKindNames, name)) return *k;
  fail("unknown lr schedule '{}' (known: warmup_anneal_decay_hold, cosine, warmup_stable_decay, constant)", name);
}

std::string schedule_kind_name(ScheduleKind k) { return enum_name(kScheduleKindNames, k); }

double learning_rate(const ScheduleConfig& c, int64_t t) {
  if (t < c.warmup_steps) return c.max_lr * static_cast<double>(t) / static_cast<double>(c.warmup_steps);
  const double span = static_cast<double>(std::max<int64_t>(c.total_steps - c.warmup_steps, 1));
  const double progress = static_cast<double>(t - c.warmup_steps) / span;
  switch (c.kind) {
    case ScheduleKind::WarmupAnnealDecayHold:
      return std::max(c.max_lr * (1.0 - progress), c.min_lr);
    case ScheduleKind::Constant:
      return c.max_lr;
    case ScheduleKind::Cosine: {
      const double p = std::min(progress, 1.0);
      return c.min_lr + 0.5 * (c.max_lr - c.min_lr) * (1.0 + std::cos(M_PI * p));
    }
    case ScheduleKind::WarmupStableDecay: {
      const int64_t decay = std::max<int64_t>(1, std::llround(c.decay_fraction * static_cast<double>(c.total_steps)));
      const int64_t start = std::max(c.warmup_steps, c.total_steps - decay);
      if (t < start) return c.max_lr;
      if (t >= c.total_steps) return c.min_lr;
      const double q = static_cast<double>(t - start) / static_cast<double>(c.total_steps - start);
      return c.max_lr - (c.max_lr - c.min_lr) * q;
    }
  }
  return c.max_lr;
}

}  // namespace esm2
