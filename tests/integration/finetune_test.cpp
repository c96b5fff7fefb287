// Fine-tuning start: `esm2 train --init-from-hf` / `--restore-from-checkpoint-path` with a Hugging Face
// directory take the model shape from its config.json, load its weights (the first step's loss is
// the HF model's loss on that batch, recomputed here by our forward) and start a fresh optimizer.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "cli_runner.h"
#include "core/atomic_dir.h"
#include "data/corpus.h"
#include "data/train_data.h"
#include "io/hf_checkpoint.h"
#include "model/esm2.h"

using namespace esm2::testing;
namespace fs = std::filesystem;

namespace {

// No shape flags: the checkpoint (tiny-hd16: 2 layers, hidden 32, 2 heads, ffn 64) decides.
const std::string kRun =
    " --max-seq-length 64 --micro-batch-tokens 512 --accumulate-grad-batches 2 --seed 7 --lr 1e-3 --warmup-steps 1"
    " --num-steps 3 --val-check-interval 3 --limit-val-batches 1 --log-every-n-steps 1 --threads 2 --no-report"
    " --no-tensorboard";

fs::path hf_model() { return source_dir() / "tests/fixtures/hf/tiny-hd16/model"; }

class FineTune : public SampleCorpusTest {
 protected:
};


// The loss of the HF model on the run's first global batch, recomputed independently: the same
// data plan (TrainData from the same settings as kRun), the fixture weights, our forward.
double hf_loss_on_first_batch(const fs::path& corpus) {
  esm2::DataConfig dc;
  dc.seed = 7;
  dc.max_seq_length = 64;
  dc.micro_batch_tokens = 512;
  dc.accumulate_grad_batches = 2;
  esm2::TrainData data(std::make_shared<const esm2::Corpus>(esm2::Corpus::open(corpus)), dc);
  esm2::DataPosition pos;
  const esm2::StepBatch batch = data.next_step(pos, 0, 1);

  const esm2::HfCheckpoint ck = esm2::load_hf_checkpoint(hf_model());
  auto backend = esm2::make_cpu_backend(2);
  esm2::Esm2Model model(ck.config, *backend);
  std::vector<float> flat(model.num_params());
  for (const auto& p : model.params_info())
    std::copy(ck.tensors.at(p.name).begin(), ck.tensors.at(p.name).end(), flat.begin() + static_cast<std::ptrdiff_t>(p.offset));
  model.set_params(flat);
  model.set_inv_freq(ck.inv_freq);
  double sum = 0;
  int64_t labels = 0;
  for (const auto& mb : batch.micro) {
    const esm2::LossSum l = model.forward_loss(mb);
    sum += l.loss_sum;
    labels += l.num_labels;
  }
  EXPECT_EQ(labels, batch.global_num_labels);
  return sum / static_cast<double>(labels);
}

nlohmann::json final_state(const fs::path& run) {
  return nlohmann::json::parse(esm2::read_file(run / "checkpoints/step-00000003/trainer_state/state.json"));
}

}  // namespace

TEST_F(FineTune, InitFromHfTakesShapeAndWeights) {
  const fs::path root = scratch_dir("finetune");
  auto r = run_cli("train" + kRun + data_args() + " --result-dir " + root.string() + " --experiment-name init" +
                   " --init-from-hf " + hf_model().string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("fresh optimizer"), std::string::npos) << r.output;

  const double want = hf_loss_on_first_batch(corpus_);
  const auto losses = train_losses(root / "init");
  ASSERT_TRUE(losses.contains(1));
  // Same forward, same data, same thread count: equal up to the last digits of the accumulation.
  EXPECT_NEAR(losses.at(1), want, 1e-6 * want) << "step 1 must see the HF weights";
  std::printf("first-step loss %.9f, HF model on that batch (our forward) %.9f\n", losses.at(1), want);

  // Fresh optimizer: three AdamW steps taken in this run, none inherited.
  const auto st = final_state(root / "init");
  EXPECT_EQ(st.at("step"), 3);
  EXPECT_EQ(st.at("optimizer_steps"), 3);
  EXPECT_EQ(st.at("model_shape").at("hidden_size"), 32);
  EXPECT_EQ(st.at("model_shape").at("num_layers"), 2);

  // --restore-from-checkpoint-path with the same HF directory is the same start.
  r = run_cli("train" + kRun + data_args() + " --result-dir " + root.string() + " --experiment-name restore" +
              " --restore-from-checkpoint-path " + hf_model().string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(train_losses(root / "restore"), losses);
  EXPECT_TRUE(esm2::read_file(root / "init/checkpoints/step-00000003/model.safetensors") ==
              esm2::read_file(root / "restore/checkpoints/step-00000003/model.safetensors"));

  // The run's own checkpoint is a clean HF directory with the per-layer rotary table.
  const esm2::HfCheckpoint out = esm2::load_hf_checkpoint(root / "init/checkpoints/step-00000003");
  const esm2::HfCheckpoint in = esm2::load_hf_checkpoint(hf_model());
  EXPECT_EQ(out.inv_freq, in.inv_freq);
  // The contact head (untouched by MLM training) is carried over byte for byte.
  ASSERT_EQ(out.extra.size(), 2u);
  for (const auto& [name, t] : in.extra) EXPECT_TRUE(out.extra.at(name).data == t.data) << name;

  // Resuming that run needs no shape flags either: its checkpoint decides.
  r = run_cli("train" + kRun + data_args() + " --result-dir " + root.string() +
              " --experiment-name init --resume-if-exists --num-steps 4");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
}

TEST_F(FineTune, ConflictingShapeFlagIsAnError) {
  const fs::path root = scratch_dir("finetune-conflict");
  auto r = run_cli("train" + kRun + data_args() + " --result-dir " + root.string() + " --init-from-hf " +
                   hf_model().string() + " --hidden-size 64");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("--hidden-size 64 conflicts with the checkpoint"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--hidden-size 32"), std::string::npos) << r.output;

  r = run_cli("train" + kRun + data_args() + " --result-dir " + root.string() + " --preset 8M" +
              " --restore-from-checkpoint-path " + hf_model().string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("--preset 8M"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("hidden 32"), std::string::npos) << r.output;

  // Agreeing flags are fine.
  r = run_cli("train" + kRun + data_args() + " --result-dir " + root.string() + " --init-from-hf " +
              hf_model().string() + " --hidden-size 32 --num-layers 2 --num-steps 2 --val-check-interval 2");
  EXPECT_EQ(r.exit_code, 0) << r.output;
}
