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
#include <string_view>
#include <vector>

#include "data/train_data.h"
#include "io/safetensors.h"
#include "model/esm2.h"
#include "optim/optimizer.h"
#include "train/train_config.h"

namespace esm2 {

constexpr int kTrainerStateVersion = 1;

struct CheckpointRecord {
  std::string name;      // directory name under checkpoints/
  int64_t step = 0;
  double metric = 0;     // monitored metric (lower is better); NaN when none
};

// The schedule length a --time-budget run fixed from its measured throughput. Recorded in the
// trainer state so that a resumed run keeps it instead of measuring again (exact resume).
struct BudgetPlan {
  double budget_s = 0;        // --time-budget of the run that made the plan
  int64_t num_steps = 0;      // the schedule's (and the run's) steps
  int64_t warmup_steps = 0;
  double step_s = 0;          // measured seconds per step (forward, backward, reduction)
  double eval_s = 0;          // seconds per validation + checkpoint (validation measured, checkpoint estimated)
  nlohmann::json to_json() const;
  static BudgetPlan from_json(const nlohmann::json& j);
};

struct TrainerState {
  int64_t step = 0;               // optimizer steps completed
  DataPosition data;              // next sample of the training stream
  int64_t skipped_steps = 0;      // steps skipped for non-finite loss/gradients
  int64_t consumed_tokens = 0;    // real tokens trained on (global)
  nlohmann::json history = nlohmann::json::array();  // [{step, train_loss, lr, grad_norm, val_loss?, …}]
  std::vector<CheckpointRecord> checkpoints;          // existing checkpoints, oldest first
  std::optional<BudgetPlan> budget;                   // set by --time-budget
  nlohmann::json to_json() const;
  static TrainerState from_json(const nlohmann::json& j, const std::string& where);
};

std::string checkpoint_dir_name(int64_t step);  // "step-00001234"

// Writes checkpoints/<name> atomically and then points checkpoints/latest at it. Collective: every rank
// calls it. The ranks with `dp_root` (dp rank 0) stream their model-parallel pieces to world rank 0, a
// bounded piece at a time, while it writes the files in the whole model's layout; each piece's moments
// come from Optimizer::read_moments (ZeRO-1: fetched from the DP ranks that own them, which answer
// inside Optimizer::end_moment_reads). Extra host memory per rank: a few pieces, never the model. Only world rank 0 writes, and only its
// `state`, `cfg` and `extra` are used. `extra`: tensors the model does not train but the checkpoint
// carries (the contact head of a published model we fine-tune), written verbatim; a missing contact
// head is written as zeros.
void save_checkpoint(const std::filesystem::path& ckpt_root, const std::string& name, Esm2Model& model,
                     Optimizer& optim, bool dp_root, const TrainerState& state, const TrainConfig& cfg,
                     const std::map<std::string, RawTensor>& extra = {});

// The checkpoint `latest` points to; if the pointer is missing or names a missing directory, the
// complete checkpoint with the highest step. nullopt when there is none. First repairs what a killed
// writer left behind (recover_checkpoint_root), so a resumed run never sees a partial checkpoint.
// "step-<digits>": the only names a run's checkpoint directories have (and the only ones pruning removes).
bool is_checkpoint_name(std::string_view name);
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
// Each rank reads only its own part from the memory-mapped files (any TP/PP split loads any checkpoint):
// extra host memory is a piece of the parameters plus, with an optimizer, the local moments.
// `extra` (optional) receives the checkpoint's tensors outside the parameter table (esm.contact_head.*).
void load_checkpoint(const std::filesystem::path& dir, Esm2Model& model, Optimizer* optim, TrainerState* state,
                     std::map<std::string, RawTensor>* extra = nullptr);

// Removes checkpoints that are neither the newest (if keep_last) nor among the best top_k
// (top_k < 0: keep all); updates state.checkpoints.
void prune_checkpoints(const std::filesystem::path& ckpt_root, TrainerState& state, int top_k, bool keep_last);

}  // namespace esm2
