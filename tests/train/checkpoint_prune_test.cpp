// Which checkpoints survive: the newest (save_last) plus the top-k by the monitored metric, and the
// `latest` pointer fallback when the pointer is missing or stale.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/atomic_dir.h"
#include "train/checkpoint.h"

using namespace esm2;
namespace fs = std::filesystem;

namespace {
fs::path make_root(const std::string& name, const std::vector<std::string>& dirs) {
  const fs::path root = fs::temp_directory_path() / ("esm2-prune-" + name);
  fs::remove_all(root);
  for (const auto& d : dirs) {
    fs::create_directories(root / d / "trainer_state");
    write_file(root / d / "trainer_state/state.json", "{}");
  }
  return root;
}
std::vector<std::string> names(const TrainerState& s) {
  std::vector<std::string> out;
  for (const auto& c : s.checkpoints) out.push_back(c.name);
  return out;
}
}  // namespace

TEST(CheckpointPrune, KeepsTopKAndLast) {
  const std::vector<std::string> dirs = {"step-00000010", "step-00000020", "step-00000030", "step-00000040"};
  const fs::path root = make_root("topk", dirs);
  TrainerState st;
  st.checkpoints = {{dirs[0], 10, 2.0}, {dirs[1], 20, 1.5}, {dirs[2], 30, 1.7}, {dirs[3], 40, 1.9}};
  prune_checkpoints(root, st, 1, true);  // best (step 20) + last (step 40)
  EXPECT_EQ(names(st), (std::vector<std::string>{dirs[1], dirs[3]}));
  EXPECT_FALSE(fs::exists(root / dirs[0]));
  EXPECT_TRUE(fs::exists(root / dirs[1]));
  EXPECT_FALSE(fs::exists(root / dirs[2]));
  EXPECT_TRUE(fs::exists(root / dirs[3]));
}

TEST(CheckpointPrune, TopKZeroKeepsOnlyLastAndNegativeKeepsAll) {
  const std::vector<std::string> dirs = {"step-00000001", "step-00000002", "step-00000003"};
  const fs::path root = make_root("zero", dirs);
  TrainerState st;
  st.checkpoints = {{dirs[0], 1, 0.5}, {dirs[1], 2, std::nan("")}, {dirs[2], 3, 0.9}};
  TrainerState all = st;
  prune_checkpoints(root, all, -1, true);
  EXPECT_EQ(all.checkpoints.size(), 3u);
  prune_checkpoints(root, st, 0, true);
  EXPECT_EQ(names(st), (std::vector<std::string>{dirs[2]}));
  EXPECT_FALSE(fs::exists(root / dirs[0]));
}

TEST(CheckpointPrune, LatestPointerAndFallback) {
  const fs::path root = make_root("latest", {"step-00000005", "step-00000012"});
  fs::create_directories(root / "step-00000013.tmp-4242");  // a crashed write: never chosen
  EXPECT_EQ(find_latest_checkpoint(root)->filename(), "step-00000012");  // no pointer: highest complete step
  write_file(root / "latest", "step-00000005\n");
  EXPECT_EQ(find_latest_checkpoint(root)->filename(), "step-00000005");  // the pointer wins
  write_file(root / "latest", "step-00000099\n");                        // stale pointer: fall back
  EXPECT_EQ(find_latest_checkpoint(root)->filename(), "step-00000012");
  EXPECT_FALSE(find_latest_checkpoint(root / "missing").has_value());
}

// A step directory that `latest` names, or the only ones there are, without trainer state was damaged after
// it was written (checkpoints are written whole): resuming elsewhere or starting over would hide it.
TEST(CheckpointPrune, DamagedCheckpointsAreErrorsNotAFreshStart) {
  const fs::path root = make_root("damaged", {"step-00000004", "step-00000008"});
  write_file(root / "latest", "step-00000008\n");
  fs::remove(root / "step-00000008/trainer_state/state.json");
  try {
    find_latest_checkpoint(root);
    FAIL() << "resumed past a damaged latest checkpoint";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("step-00000008: named by"), std::string::npos) << e.what();
  }
  fs::remove(root / "latest");
  EXPECT_EQ(find_latest_checkpoint(root)->filename(), "step-00000004");  // no pointer: the complete one
  fs::remove(root / "step-00000004/trainer_state/state.json");
  EXPECT_THROW(find_latest_checkpoint(root), Error);  // step directories, none complete
  const fs::path empty = make_root("nothing-yet", {});
  fs::create_directories(empty);
  EXPECT_FALSE(find_latest_checkpoint(empty).has_value());  // killed before the first checkpoint: start over
}

// Pruning removes directories by the names in state.json: only this run's step-<N> names are accepted.
TEST(CheckpointPrune, TrainerStateNamesOnlyStepDirectories) {
  TrainerState st;
  st.step = 4;
  st.checkpoints = {{"step-00000004", 4, 1.0}};
  nlohmann::json j = st.to_json();
  EXPECT_NO_THROW(TrainerState::from_json(j, "state.json"));
  for (const std::string bad : {"../../victim", "/abs/path", "step-1/../..", "latest", ""}) {
    j["checkpoints"][0]["name"] = bad;
    EXPECT_THROW(TrainerState::from_json(j, "state.json"), Error) << bad;
  }
  j = st.to_json();
  j["step"] = -3;
  EXPECT_THROW(TrainerState::from_json(j, "state.json"), Error);
  const fs::path root = make_root("outside", {"step-00000001"});
  const fs::path victim = root.parent_path() / "esm2-prune-victim";
  fs::create_directories(victim);
  TrainerState forged;
  forged.checkpoints = {{"../esm2-prune-victim", 0, 9.0}, {"step-00000001", 1, 1.0}};
  prune_checkpoints(root, forged, 0, true);
  EXPECT_TRUE(fs::exists(victim)) << "pruning removed a directory outside the run";
  EXPECT_TRUE(is_checkpoint_name("step-00000012"));
  EXPECT_FALSE(is_checkpoint_name("step-00000012.tmp-42"));
}

// Pruning the checkpoint `latest` names (no last kept, or no metric to rank) moves the pointer to the newest
// survivor first, or removes it: a resume never finds a pointer to a removed directory.
TEST(CheckpointPrune, LatestNeverNamesAPrunedCheckpoint) {
  const std::vector<std::string> dirs = {"step-00000001", "step-00000002"};
  const fs::path root = make_root("pointer", dirs);
  write_file(root / "latest", "step-00000002\n");
  TrainerState st;
  st.checkpoints = {{dirs[0], 1, 0.5}, {dirs[1], 2, 0.9}};
  prune_checkpoints(root, st, 1, false);  // top-1 keeps step 1; step 2 (latest) goes
  EXPECT_EQ(names(st), std::vector<std::string>{dirs[0]});
  EXPECT_EQ(read_file(root / "latest"), "step-00000001\n");
  EXPECT_EQ(find_latest_checkpoint(root)->filename(), dirs[0]);
  prune_checkpoints(root, st, 0, false);  // nothing kept: no pointer, a resume starts over
  EXPECT_FALSE(fs::exists(root / "latest"));
  EXPECT_FALSE(find_latest_checkpoint(root).has_value());
}
