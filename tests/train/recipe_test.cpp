#include "train/recipe.h"

#include <gtest/gtest.h>

using namespace esm2;

// The warm-up share, counted by hand: floor(fraction × steps), at most the cap.
TEST(Recipe, WarmupRule) {
  const WarmupRule paper{0.1, 2000};
  EXPECT_EQ(paper.steps(1000), 100);
  EXPECT_EQ(paper.steps(30), 3);        // 0.1 × 30 is 3.0000000000000004 in doubles; still 3
  EXPECT_EQ(paper.steps(9), 0);
  EXPECT_EQ(paper.steps(19999), 1999);
  EXPECT_EQ(paper.steps(500000), 2000);  // the reference's 2,000
  const WarmupRule short_run{0.05, 2000};
  EXPECT_EQ(short_run.steps(1000), 50);
  EXPECT_EQ(short_run.steps(39), 1);
}

// esm2-paper is exactly the reference's recipe (bionemo-semantics.md), i.e. this program's defaults
// before the short-run rows existed.
TEST(Recipe, Esm2PaperIsTheReference) {
  for (const char* preset : {"demo", "8M", "650M", "15B"}) {
    const Recipe r = training_recipe(RecipeKind::Esm2Paper, preset);
    EXPECT_EQ(r.label, "esm2-paper");
    EXPECT_EQ(r.schedule, ScheduleKind::WarmupAnnealDecayHold);
    EXPECT_EQ(r.lr, 4e-4);
    EXPECT_EQ(r.min_lr_ratio, 0.1);
    EXPECT_EQ(r.warmup.fraction, 0.1);
    EXPECT_EQ(r.warmup.cap, 2000);
    EXPECT_EQ(r.optim.beta1, 0.9);
    EXPECT_EQ(r.optim.beta2, 0.98);
    EXPECT_EQ(r.optim.eps, 1e-8);
    EXPECT_EQ(r.optim.weight_decay, 0.01);
    EXPECT_EQ(r.optim.clip_grad, 1.0);
    EXPECT_EQ(r.micro_batch_tokens, 16384);
    EXPECT_EQ(r.accumulate_grad_batches, 1);
  }
}

TEST(Recipe, ShortRunRowsPerPreset) {
  for (const char* preset : {"8M", "35M", "150M", "650M"}) {
    const Recipe r = training_recipe(RecipeKind::ShortRun, preset);
    EXPECT_EQ(r.label, std::string("short-run (") + preset + ")");
    EXPECT_GT(r.lr, 0);
    EXPECT_GT(r.warmup.fraction, 0);
    EXPECT_LT(r.warmup.fraction, 0.5);
    EXPECT_GT(r.decay_fraction, 0);
    EXPECT_LE(r.decay_fraction, 1);
    EXPECT_GT(r.tokens_per_step(), 0);
  }
  // Smaller models take a higher peak lr.
  EXPECT_GT(training_recipe(RecipeKind::ShortRun, "8M").lr, training_recipe(RecipeKind::ShortRun, "650M").lr);
  // Presets without a row fall back to the reference's recipe, and say so.
  const Recipe demo = training_recipe(RecipeKind::ShortRun, "demo");
  EXPECT_EQ(demo.lr, 4e-4);
  EXPECT_EQ(demo.schedule, ScheduleKind::WarmupAnnealDecayHold);
  EXPECT_NE(demo.label.find("esm2-paper"), std::string::npos);
}

// Without --recipe: short-run where the sweep measured the preset's row (8M), the reference elsewhere.
TEST(Recipe, DefaultIsShortRunOnlyWhereMeasured) {
  EXPECT_EQ(default_recipe("8M"), RecipeKind::ShortRun);
  for (const char* preset : {"demo", "esm2_t6_8M", "35M", "150M", "650M", "3B", "15B", "no-such-preset"})
    EXPECT_EQ(default_recipe(preset), RecipeKind::Esm2Paper) << preset;
  // The measured 8M row (bench/results/recipes-8M-swissprot): lr 1e-3, 131,072 tokens per step.
  const Recipe r = training_recipe(default_recipe("8M"), "8M");
  EXPECT_EQ(r.lr, 1e-3);
  EXPECT_EQ(r.tokens_per_step(), 131072);
  EXPECT_EQ(r.schedule, ScheduleKind::WarmupStableDecay);
}

// A run without --preset (its model from a checkpoint) finds its row by the model's shape.
TEST(Recipe, PresetOfModelMatchesTheShape) {
  for (const char* preset : {"8M", "35M", "150M", "650M", "esm2_t6_8M"})
    EXPECT_EQ(preset_of_model(model_preset(preset), "demo"), preset);
  ModelConfig odd = model_preset("8M");
  odd.num_layers = 7;
  EXPECT_EQ(preset_of_model(odd, "demo"), "demo");
  odd = model_preset("8M");
  odd.ffn_hidden_size = 640;
  EXPECT_EQ(preset_of_model(odd, "fallback"), "fallback");
}
