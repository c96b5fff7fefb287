// Training recipes: the hyperparameters `esm2 train` uses where no flag sets them (docs/recipes.md).
// `esm2-paper` is the reference's recipe; `short-run` is a per-preset row for short single-GPU runs.
// A row that the sweep (bench/sweep_device_run.sh) measured is its preset's default; the others are
// starting values from the literature, opt-in until measured. Explicit flags always win.
#pragma once
#include <cstdint>
#include <string>

#include "core/enum_names.h"
#include "model/config.h"
#include "optim/optimizer_config.h"
#include "optim/schedule.h"

namespace esm2 {

// Warm-up as a share of the schedule's steps, at most `cap` steps. A rule rather than a count because
// a --time-budget run learns its length only after measuring its throughput.
struct WarmupRule {
  double fraction = 0.1;
  int64_t cap = 2000;
  int64_t steps(int64_t schedule_steps) const;  // min(cap, floor(fraction × schedule_steps))
};

struct Recipe {
  std::string label;          // for the banner and the report: "short-run (8M)", "esm2-paper"
  ScheduleKind schedule = ScheduleKind::WarmupAnnealDecayHold;
  double lr = 4e-4;
  double min_lr_ratio = 0.1;  // min_lr = ratio × lr
  WarmupRule warmup;
  double decay_fraction = 0.2;  // warmup_stable_decay only
  OptimizerConfig optim;
  // The batch, used only when none of --micro-batch-tokens/--micro-batch-size/--accumulate-grad-batches
  // is given. Per rank: with N data-parallel ranks the global batch is N times this.
  int64_t micro_batch_tokens = 16384;
  int accumulate_grad_batches = 1;
  int64_t tokens_per_step() const { return micro_batch_tokens * accumulate_grad_batches; }
};

enum class RecipeKind { ShortRun, Esm2Paper };
inline constexpr EnumName<RecipeKind> kRecipeNames[] = {{"short-run", RecipeKind::ShortRun},
                                                        {"esm2-paper", RecipeKind::Esm2Paper}};

// The preset's recipe. Presets without a short-run row (demo, esm2_t6_8M, 3B, 15B) get esm2-paper.
Recipe training_recipe(RecipeKind kind, const std::string& preset);

// The recipe without --recipe: short-run where the preset's row was measured (8M), else esm2-paper.
RecipeKind default_recipe(const std::string& preset);

// The preset whose shape `m` has (layers, hidden size, heads, FFN size), else `fallback`: the row of a run
// that names no --preset because its model comes from a checkpoint (a resumed 8M run keeps 8M's recipe).
std::string preset_of_model(const ModelConfig& m, const std::string& fallback);

}  // namespace esm2
