// Training checkpoints. Each checkpoint is a directory that Hugging Face loads directly
// (config.json, model.safetensors with fp32 master weights under HF names, tokenizer files) plus
// trainer_state/ (AdamW moments, state.json: step, data position, metric history, top-k list).
// Directories are built under a temp name and renamed (AtomicDir); the `latest` pointer file is
// replaced atomically after the rename, so a crash at any point leaves the previous checkpoint valid.
#pragma once
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/train_data.h"
#include "io/safetensors.h"
#include "model/esm2.h"
#include "train/optimizer.h"
#include "train/train_config.h"

namespace esm2 {

constexpr int kTrainerStateVersion = 1;

struct CheckpointRecord {
  std::string name;      // directory name under checkpoints/
  int64_t step = 0;
  double metric = 0;     // monitored metric (lower is better); NaN when none
};

struct TrainerState {
  int64_t step = 0;               // optimizer steps completed
  DataPosition data;              // next sample of the training stream
  int64_t skipped_steps = 0;      // steps skipped for non-finite loss/gradients
  int64_t consumed_tokens = 0;    // real tokens trained on (global)
  nlohmann::json history = nlohmann::json::array();  // [{step, train_loss, lr, grad_norm, val_loss?, …}]
  std::vector<CheckpointRecord> checkpoints;          // existing checkpoints, oldest first
  nlohmann::json to_json() const;
  static TrainerState from_json(const nlohmann::json& j, const std::string& where);
};

std::string checkpoint_dir_name(int64_t step);  // "step-00001234"

// The whole model's training state in the whole model's flat layout (Esm2Model::full_params_info()),
// whatever the tensor/pipeline split of the ranks that held it (src/train/model_state.h gathers it).
struct FullModelState {
  std::vector<float> params, exp_avg, exp_avg_sq;
  int64_t optimizer_steps = 0;
};

// Collective over the model's data-parallel (`dp`) and model-parallel groups: the full state on world
// rank 0 (dp rank 0, mp rank 0); other ranks get an empty state. `dp_root`: this rank is dp rank 0.
FullModelState collect_full_state(Esm2Model& model, Optimizer& optim, bool dp_root);

// Writes checkpoints/<name> atomically and then points checkpoints/latest at it.
// `extra`: tensors the model does not train but the checkpoint carries (the contact head of a
// published model we fine-tune), written verbatim; a missing contact head is written as zeros.
void save_checkpoint(const std::filesystem::path& ckpt_root, const std::string& name, const Esm2Model& model,
                     const FullModelState& full, const TrainerState& state, const TrainConfig& cfg,
                     const std::map<std::string, RawTensor>& extra = {});

// The checkpoint `latest` points to; if the pointer is missing or names a missing directory, the
// complete checkpoint with the highest step. nullopt when there is none. First repairs what a killed
// writer left behind (recover_checkpoint_root), so a resumed run never sees a partial checkpoint.
std::optional<std::filesystem::path> find_latest_checkpoint(const std::filesystem::path& ckpt_root);

// Cleans up after a process killed while writing checkpoints (SIGKILL, power loss): AtomicDir temp
// directories "<name>.tmp-<pid>" of dead processes are partial and removed; "<name>.old-<pid>" (a
// checkpoint being replaced) is renamed back to <name> when the replacement never landed, else
// removed. Entries of a live process are left alone. Returns the number of entries repaired.
int recover_checkpoint_root(const std::filesystem::path& ckpt_root);

// True if dir has trainer_state/ (a full training checkpoint) rather than only HF model files.
bool is_training_checkpoint(const std::filesystem::path& dir);

// Loads weights (and, for training checkpoints and when optim/state are given, the optimizer and
// trainer state). The checkpoint's model shape must equal the model's: otherwise an error naming both.
// `extra` (optional) receives the checkpoint's tensors outside the parameter table (esm.contact_head.*).
void load_checkpoint(const std::filesystem::path& dir, Esm2Model& model, Optimizer* optim, TrainerState* state,
                     std::map<std::string, RawTensor>* extra = nullptr);

// Removes checkpoints that are neither the newest (if keep_last) nor among the best top_k
// (top_k < 0: keep all); updates state.checkpoints.
void prune_checkpoints(const std::filesystem::path& ckpt_root, TrainerState& state, int top_k, bool keep_last);

}  // namespace esm2
