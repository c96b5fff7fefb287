// Learning-rate schedules. `step` is the 0-based index of the optimizer step about to be taken.
#pragma once
#include <cstdint>
#include <string>

#include "core/enum_names.h"

namespace esm2 {

enum class ScheduleKind {
  WarmupAnnealDecayHold,  // the reference's default (NeMo WarmupAnnealDecayHoldScheduler)
  Constant,               // linear warmup, then constant max_lr
  Cosine,                 // linear warmup, then cosine decay to min_lr at total_steps, then hold
  WarmupStableDecay,      // linear warmup, max_lr held, then a linear decay to min_lr over the last
                          // decay_fraction of the steps, then hold (WSD)
};

inline constexpr EnumName<ScheduleKind> kScheduleKindNames[] = {
    {"warmup_anneal_decay_hold", ScheduleKind::WarmupAnnealDecayHold},
    {"cosine", ScheduleKind::Cosine},
    {"warmup_stable_decay", ScheduleKind::WarmupStableDecay},
    {"constant", ScheduleKind::Constant}};

struct ScheduleConfig {
  ScheduleKind kind = ScheduleKind::WarmupAnnealDecayHold;
  double max_lr = 4e-4;
  double min_lr = 4e-5;      // reference default: max_lr / 10
  int64_t warmup_steps = 2000;
  int64_t total_steps = 500000;  // --scheduler-num-steps (defaults to --num-steps)
  double decay_fraction = 0.2;   // WarmupStableDecay: share of total_steps in the final decay (0, 1]
};

// warmup_anneal_decay_hold | cosine | warmup_stable_decay | constant
ScheduleKind parse_schedule_kind(const std::string& name);
std::string schedule_kind_name(ScheduleKind k);

// WarmupAnnealDecayHold: t < W: max_lr·t/W (step 0 has lr 0); otherwise
// max(max_lr·(1 − (t−W)/(T−W)), min_lr): linear decay that is held at min_lr.
// WarmupStableDecay: D = max(1, round(decay_fraction·T)), S = max(W, T − D); max_lr for W ≤ t < S,
// then max_lr − (max_lr − min_lr)·(t−S)/(T−S) up to T, min_lr from T on.
double learning_rate(const ScheduleConfig& cfg, int64_t step);

}  // namespace esm2
