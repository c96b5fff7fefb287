#include "train/checkpoint.h"

#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <string>

#include "core/atomic_dir.h"
#include "core/error.h"
#include "io/hf_checkpoint.h"
#include "io/hf_config.h"
#include "io/safetensors.h"
#include "backend/backend.h"
#include "parallel/model_state.h"
#include "optim/optimizer.h"

namespace fs = std::filesystem;

namespace esm2 {

nlohmann::json BudgetPlan::to_json() const {
  return {{"budget_s", budget_s}, {"num_steps", num_steps}, {"warmup_steps", warmup_steps}, {"step_s", step_s},
          {"eval_s", eval_s}};
}

BudgetPlan BudgetPlan::from_json(const nlohmann::json& j) {
  BudgetPlan b;
  b.budget_s = j.at("budget_s").get<double>();
  b.num_steps = j.at("num_steps").get<int64_t>();
  b.warmup_steps = j.at("warmup_steps").get<int64_t>();
  b.step_s = j.at("step_s").get<double>();
  b.eval_s = j.at("eval_s").get<double>();
  return b;
}

nlohmann::json TrainerState::to_json() const {
  nlohmann::json ckpts = nlohmann::json::array();
  for (const auto& c : checkpoints)
    ckpts.push_back({{"name", c.name}, {"step", c.step}, {"metric", std::isnan(c.metric) ? nlohmann::json() : nlohmann::json(c.metric)}});
  nlohmann::json j = {{"step", step},
                      {"data_position", data.to_json()},
                      {"skipped_steps", skipped_steps},
                      {"consumed_tokens", consumed_tokens},
                      {"history", history},
                      {"checkpoints", ckpts}};
  if (budget) j["time_budget"] = budget->to_json();
  return j;
}

TrainerState TrainerState::from_json(const nlohmann::json& j, const std::string& where) {
  try {
    TrainerState s;
    s.step = j.at("step").get<int64_t>();
    s.data = DataPosition::from_json(j.at("data_position"));
    s.skipped_steps = j.at("skipped_steps").get<int64_t>();
    s.consumed_tokens = j.at("consumed_tokens").get<int64_t>();
    s.history = j.at("history");
    ESM2_CHECK(s.step >= 0 && s.skipped_steps >= 0 && s.skipped_steps <= s.step && s.consumed_tokens >= 0,
               "{}: malformed trainer state: step {}, skipped_steps {}, consumed_tokens {}", where, s.step,
               s.skipped_steps, s.consumed_tokens);
    for (const auto& c : j.at("checkpoints")) {
      s.checkpoints.push_back({c.at("name").get<std::string>(), c.at("step").get<int64_t>(),
                               c.at("metric").is_null() ? std::nan("") : c.at("metric").get<double>()});
      // Pruning removes these directories: only names of this run's own checkpoints, never a path.
      ESM2_CHECK(is_checkpoint_name(s.checkpoints.back().name) && s.checkpoints.back().step >= 0,
                 "{}: malformed trainer state: checkpoint name '{}' is not a step-<N> directory", where,
                 s.checkpoints.back().name);
    }
    if (j.contains("time_budget")) {
      s.budget = BudgetPlan::from_json(j.at("time_budget"));
      ESM2_CHECK(s.budget->num_steps >= 1 && s.budget->warmup_steps >= 0 && s.budget->warmup_steps < s.budget->num_steps,
                 "{}: malformed trainer state: time_budget warmup_steps {} and num_steps {} are not a schedule", where,
                 s.budget->warmup_steps, s.budget->num_steps);
    }
    return s;
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed trainer state: {}", where, e.what());
  }
}

std::string checkpoint_dir_name(int64_t step) { return fmt::format("step-{:08}", step); }

namespace {

// checkpoints/latest: the name of the newest complete checkpoint, replaced atomically; "" when absent.
std::string read_latest(const fs::path& ckpt_root) {
  std::error_code ec;
  if (!fs::exists(ckpt_root / "latest", ec)) return {};
  std::string name = read_file(ckpt_root / "latest");
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
  return name;
}

void write_latest(const fs::path& ckpt_root, const std::string& name) {
  const fs::path tmp = ckpt_root / "latest.tmp";
  write_file(tmp, name + "\n");
  fsync_path(tmp);
  fs::rename(tmp, ckpt_root / "latest");
  fsync_path(ckpt_root);
}

}  // namespace

namespace {

const char* kStateFile = "trainer_state/state.json";
const char* kOptimFile = "trainer_state/optimizer.safetensors";

// The moment tensors of the optimizer file, in file order.
std::vector<SafetensorsEntry> optimizer_entries(const Esm2Model& model) {
  std::vector<SafetensorsEntry> out;
  for (const auto& p : model.full_params_info()) {
    out.push_back({"exp_avg." + p.name, DType::F32, p.shape});
    out.push_back({"exp_avg_sq." + p.name, DType::F32, p.shape});
  }
  return out;
}

}  // namespace

void save_checkpoint(const fs::path& ckpt_root, const std::string& name, Esm2Model& model, Optimizer& optim,
                     bool dp_root, const TrainerState& state, const TrainConfig& cfg,
                     const std::map<std::string, RawTensor>& extra) {
  // The other dp ranks answer the writers' moment reads (ZeRO-1: they own parts of the moments).
  if (!dp_root) {
    optim.end_moment_reads();
    return;
  }
  FullStateGather gather(model.parallel().mp, model);
  Backend& be = model.backend();
  const LocalStateReader params = [&](size_t begin, std::span<float> dst) {
    be.copy_to_host(dst.data(), model.param_data() + begin, dst.size() * 4);
  };
  // Moments a window at a time (at most a piece: FullStateGather's reads), never at local size.
  const auto moment = [&](Moment which) -> LocalStateReader {
    return [&optim, which](size_t begin, std::span<float> dst) { optim.read_moments(which, begin, dst); };
  };
  const LocalStateReader m = moment(Moment::ExpAvg), v = moment(Moment::ExpAvgSq);
  std::map<std::string, const ParamInfo*> info_of;
  for (const auto& p : model.full_params_info()) info_of.emplace(p.name, &p);
  // Every model-parallel rank runs the same sequence of gathers as rank 0's writers below: the
  // parameters in file (hf_parameter_table) order, then the moments per tensor, exp_avg first.
  if (!gather.is_root()) {
    for (const HfParam& p : hf_parameter_table(model.config())) gather.gather_tensor(*info_of.at(p.name), params, {});
    for (const auto& p : model.full_params_info()) {
      gather.gather_tensor(p, m, {});
      gather.gather_tensor(p, v, {});
    }
    optim.end_moment_reads();
    return;
  }
  AtomicDir dir(ckpt_root / name);
  const std::vector<float> inv_freq = model.inv_freq();
  stream_hf_checkpoint_files(
      dir.path(), model.config(),
      [&](const HfParam& p, const HfPut& put) { gather.gather_tensor(*info_of.at(p.name), params, put); }, inv_freq,
      extra, HfSaveOptions{});
  fs::create_directories(dir.path() / "trainer_state");
  SafetensorsStreamWriter w =
      SafetensorsStreamWriter::to_file(dir.path() / kOptimFile, optimizer_entries(model), {{"optimizer", "adamw"}});
  const auto put = [&](std::span<const float> values) { w.put_f32(values); };
  for (const auto& p : model.full_params_info()) {
    gather.gather_tensor(p, m, put);
    gather.gather_tensor(p, v, put);
  }
  optim.end_moment_reads();
  w.finish();
  nlohmann::json st = state.to_json();
  st["format"] = "esm2cpp-trainer-state";
  st["version"] = kTrainerStateVersion;
  st["optimizer_steps"] = optim.steps_taken();
  st["model_shape"] = {{"num_layers", model.config().num_layers},
                       {"hidden_size", model.config().hidden_size},
                       {"num_attention_heads", model.config().num_attention_heads},
                       {"ffn_hidden_size", model.config().ffn_hidden_size}};
  st["seed"] = cfg.data.seed;
  write_file(dir.path() / kStateFile, st.dump(1) + "\n");
  dir.commit();
  // The pointer is replaced after the directory exists in full.
  write_latest(ckpt_root, name);
}

bool is_training_checkpoint(const fs::path& dir) { return fs::exists(dir / kStateFile); }

bool is_checkpoint_name(std::string_view n) {
  if (n.size() < 6 || n.substr(0, 5) != "step-") return false;
  return n.substr(5).find_first_not_of("0123456789") == std::string_view::npos;
}

namespace {

// "<name>.<kind>-<pid>" → {name, pid}; pid 0 when `n` is not such an entry.
std::pair<std::string, long> split_writer_suffix(const std::string& n, const std::string& kind) {
  const size_t at = n.rfind("." + kind + "-");
  if (at == std::string::npos || at == 0) return {"", 0};
  const std::string digits = n.substr(at + kind.size() + 2);
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 9) return {"", 0};
  return {n.substr(0, at), std::stol(digits)};
}

bool process_alive(long pid) { return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM; }

// Every rank of a resumed job recovers the same directory at start: an entry another rank has just
// renamed or removed is done, not an error.
bool vanished(const std::error_code& ec) { return ec == std::errc::no_such_file_or_directory; }

}  // namespace

int recover_checkpoint_root(const fs::path& ckpt_root) {
  std::error_code ec;
  std::vector<fs::path> entries;
  for (const auto& e : fs::directory_iterator(ckpt_root, ec)) entries.push_back(e.path());
  int repaired = 0;
  // Temp dirs first: a dead writer's temp is partial whatever state it reached.
  for (const auto& p : entries) {
    const auto [name, pid] = split_writer_suffix(p.filename().string(), "tmp");
    if (pid == 0 || process_alive(pid)) continue;
    fs::remove_all(p, ec);
    if (vanished(ec)) continue;
    ESM2_CHECK(!ec, "{}: cannot remove stale temporary checkpoint: {}", p.string(), ec.message());
    ++repaired;
  }
  for (const auto& p : entries) {
    const auto [name, pid] = split_writer_suffix(p.filename().string(), "old");
    if (pid == 0 || process_alive(pid)) continue;
    const fs::path final_path = ckpt_root / name;
    if (fs::exists(final_path)) {
      fs::remove_all(p, ec);
    } else {
      fs::rename(p, final_path, ec);  // killed between "move aside" and "rename into place"
    }
    if (vanished(ec)) continue;
    ESM2_CHECK(!ec, "{}: cannot recover checkpoint: {}", p.string(), ec.message());
    ++repaired;
  }
  if (repaired > 0) fsync_path(ckpt_root);
  return repaired;
}

// Checkpoints are written whole (AtomicDir) before `latest` names them, so a named step directory without
// its trainer state was damaged after the fact (a deleted file): resuming elsewhere, or starting over and
// overwriting the run, would hide that; it is an error. A pointer to a directory that is gone falls back
// to the highest complete one, with a warning.
std::optional<fs::path> find_latest_checkpoint(const fs::path& ckpt_root) {
  if (!fs::is_directory(ckpt_root)) return std::nullopt;
  recover_checkpoint_root(ckpt_root);
  std::error_code ec;
  std::string pointed;
  if (const std::string name = read_latest(ckpt_root); !name.empty()) {
    if (is_checkpoint_name(name)) {
      const fs::path p = ckpt_root / name;
      if (is_training_checkpoint(p)) return p;
      ESM2_CHECK(!fs::exists(p, ec), "{}: named by {} but not a complete training checkpoint ({} is missing): restore "
                 "it, or start the run over with --force", p.string(), (ckpt_root / "latest").string(), kStateFile);
      pointed = name;
    }
  }
  // Fallback: highest complete step directory (temp dirs "*.tmp-<pid>" are never complete).
  std::optional<fs::path> best;
  std::vector<std::string> incomplete;
  for (const auto& e : fs::directory_iterator(ckpt_root, ec)) {
    const std::string n = e.path().filename().string();
    if (!is_checkpoint_name(n)) continue;
    if (!is_training_checkpoint(e.path())) {
      incomplete.push_back(n);
      continue;
    }
    if (!best || n > best->filename().string()) best = e.path();
  }
  ESM2_CHECK(best || (pointed.empty() && incomplete.empty()),
             "{}: holds no complete training checkpoint ({}): restore it, or start the run over with --force",
             ckpt_root.string(),
             pointed.empty() ? fmt::format("{} lacks {}", incomplete.front(), kStateFile)
                             : fmt::format("latest names {}, which is gone", pointed));
  if (best && !pointed.empty())
    std::fprintf(stderr, "esm2: warning: %s names %s, which is gone; resuming from %s\n",
                 (ckpt_root / "latest").c_str(), pointed.c_str(), best->filename().c_str());
  return best;
}

void load_checkpoint(const fs::path& dir, Esm2Model& model, Optimizer* optim, TrainerState* state,
                     std::map<std::string, RawTensor>* extra) {
  ESM2_CHECK(fs::is_directory(dir), "{}: checkpoint directory not found", dir.string());
  const HfCheckpointReader ck(dir);
  const ModelConfig& have = model.config();
  const ModelConfig& got = ck.config();
  ESM2_CHECK(got.num_layers == have.num_layers && got.hidden_size == have.hidden_size &&
                 got.num_attention_heads == have.num_attention_heads && got.ffn_hidden_size == have.ffn_hidden_size,
             "{}: checkpoint model shape (layers {}, hidden {}, heads {}, ffn {}) differs from the configured shape "
             "(layers {}, hidden {}, heads {}, ffn {})",
             dir.string(), got.num_layers, got.hidden_size, got.num_attention_heads, got.ffn_hidden_size,
             have.num_layers, have.hidden_size, have.num_attention_heads, have.ffn_hidden_size);
  for (const auto& p : model.full_params_info()) {
    auto it = ck.shapes().find(p.name);
    ESM2_CHECK(it != ck.shapes().end(), "{}: missing tensor {}", dir.string(), p.name);
    const size_t numel = static_cast<size_t>(shape_numel(it->second, p.name));
    ESM2_CHECK(numel == p.numel, "{}: tensor {} has {} elements, expected {}", dir.string(), p.name, numel, p.numel);
  }
  // Only this rank's pieces, straight from the mapped files into the parameters (any TP/PP split
  // loads any checkpoint).
  read_local_params(model, [&](const ParamInfo& p, size_t begin, std::span<float> dst) { ck.read_f32(p.name, begin, dst); });
  if (!ck.inv_freq().empty()) model.set_inv_freq(ck.inv_freq());
  if (extra) *extra = ck.extra();
  if (!optim || !state || !is_training_checkpoint(dir)) {
    if (optim) optim->reset();
    return;
  }
  const std::string state_path = (dir / kStateFile).string();
  nlohmann::json st;
  try {
    st = nlohmann::json::parse(read_file(dir / kStateFile));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", state_path, e.what());
  }
  ESM2_CHECK(st.is_object() && st.value("format", "") == "esm2cpp-trainer-state", "{}: not an esm2.cpp trainer state",
             state_path);
  ESM2_CHECK(st.value("version", -1) == kTrainerStateVersion, "{}: trainer state version {} is not supported (this build reads {})",
             state_path, st.value("version", -1), kTrainerStateVersion);
  *state = TrainerState::from_json(st, state_path);
  const SafetensorsFile opt = SafetensorsFile::open(dir / kOptimFile);
  for (const auto& p : model.full_params_info())
    for (const std::string& t : {"exp_avg." + p.name, "exp_avg_sq." + p.name}) {
      const size_t n = static_cast<size_t>(opt.info(t).numel());
      ESM2_CHECK(n == p.numel, "{}: tensor '{}' has {} elements, destination holds {}", opt.name(), t, n, p.numel);
    }
  // Each rank reads only the moments it keeps, a piece at a time (ZeRO-1: its shard).
  const auto tensor_reader = [&opt](const char* prefix) {
    return [&opt, prefix](const ParamInfo& p, size_t begin, std::span<float> dst) {
      opt.read_f32(prefix + p.name, begin, dst);
    };
  };
  optim->load_moments(local_reader_from_full(model, tensor_reader("exp_avg.")),
                      local_reader_from_full(model, tensor_reader("exp_avg_sq.")));
  int64_t optimizer_steps = state->step;
  try {
    optimizer_steps = st.value("optimizer_steps", state->step);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed trainer state: optimizer_steps: {}", state_path, e.what());
  }
  ESM2_CHECK(optimizer_steps >= 0 && optimizer_steps <= state->step,
             "{}: malformed trainer state: optimizer_steps {} is not within 0..step {}", state_path, optimizer_steps,
             state->step);
  optim->set_steps_taken(optimizer_steps);
}

void prune_checkpoints(const fs::path& ckpt_root, TrainerState& state, int top_k, bool keep_last) {
  if (state.checkpoints.empty() || top_k < 0) return;
  std::vector<CheckpointRecord> ranked;
  for (const auto& c : state.checkpoints)
    if (!std::isnan(c.metric)) ranked.push_back(c);
  std::stable_sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) { return a.metric < b.metric; });
  std::vector<std::string> keep;
  for (size_t i = 0; i < ranked.size() && static_cast<int>(i) < top_k; ++i) keep.push_back(ranked[i].name);
  if (keep_last) keep.push_back(state.checkpoints.back().name);
  std::vector<CheckpointRecord> kept;
  const std::string pointed = read_latest(ckpt_root);  // if pruned, it must name a survivor (or nothing)
  bool pointed_removed = false;
  for (const auto& c : state.checkpoints) {
    if (std::find(keep.begin(), keep.end(), c.name) != keep.end()) {
      kept.push_back(c);
    } else if (is_checkpoint_name(c.name)) {
      // The pointer moves first, so that a kill in between never leaves it naming a removed directory.
      if (c.name == pointed && !pointed_removed) {
        pointed_removed = true;
        std::string survivor;
        for (const auto& k : state.checkpoints)
          if (k.name != c.name && std::find(keep.begin(), keep.end(), k.name) != keep.end()) survivor = k.name;
        if (survivor.empty()) {
          std::error_code ec;
          fs::remove(ckpt_root / "latest", ec);
          fsync_path(ckpt_root);
        } else {
          write_latest(ckpt_root, survivor);
        }
      }
      std::error_code ec;
      fs::remove_all(ckpt_root / c.name, ec);
    }
  }
  state.checkpoints = std::move(kept);
}

}  // namespace esm2
