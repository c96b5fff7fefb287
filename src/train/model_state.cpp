#include "train/model_state.h"

#include <algorithm>

#include "backend/backend.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "model/param_table.h"

namespace esm2 {

namespace {

size_t owned_elements(const std::vector<FlatRun>& runs) {
  size_t n = 0;
  for (const FlatRun& r : runs)
    if (r.owner) n += r.length;
  return n;
}

}  // namespace

std::vector<float> gather_full_flat(Communicator& mp, Esm2Model& model, std::span<const float> local) {
  ESM2_CHECK(local.size() == model.num_params(), "gather_full_flat: {} local values, model part has {}", local.size(),
             model.num_params());
  const ShardCoord& me = model.shard_coord();
  ESM2_CHECK(mp.world_size() == me.tp_size * me.pp_size,
             "gather_full_flat: model-parallel group has {} ranks, model is split {} (TP) × {} (PP)", mp.world_size(),
             me.tp_size, me.pp_size);
  const size_t full_n = model.full_num_params();
  if (mp.world_size() == 1) {
    std::vector<float> full(full_n, 0.0f);
    for (const FlatRun& r : model.full_runs()) std::copy_n(local.data() + r.local, r.length, full.data() + r.full);
    return full;
  }
  // Every rank's owned runs, packed in run order, as equal shards (padded to the largest) so that
  // the backend's gather moves them; rank 0 knows each rank's runs from its coordinates.
  const ModelConfig& cfg = model.config();
  std::vector<std::vector<FlatRun>> runs_of(static_cast<size_t>(mp.world_size()));
  size_t shard = 0;
  for (int r = 0; r < mp.world_size(); ++r) {
    const ShardCoord c{r % me.tp_size, me.tp_size, r / me.tp_size, me.pp_size};
    runs_of[r] = r == mp.rank() ? model.full_runs() : build_param_table(cfg, c).runs;
    shard = std::max(shard, owned_elements(runs_of[r]));
  }
  std::vector<float> packed(shard, 0.0f);
  size_t at = 0;
  for (const FlatRun& r : model.full_runs())
    if (r.owner) {
      std::copy_n(local.data() + r.local, r.length, packed.data() + at);
      at += r.length;
    }
  Backend& be = model.backend();
  const bool root = mp.is_root();
  const size_t world = static_cast<size_t>(mp.world_size());
  float* dev_in = static_cast<float*>(be.alloc(std::max<size_t>(shard, 1) * 4));
  float* dev_out = root ? static_cast<float*>(be.alloc(std::max<size_t>(shard * world, 1) * 4)) : nullptr;
  be.copy_to_device(dev_in, packed.data(), shard * 4);
  mp.gather(dev_in, dev_out, shard, 0, "model-parallel state gather (checkpoint)");
  std::vector<float> full;
  if (root) {
    std::vector<float> all(shard * world);
    be.copy_to_host(all.data(), dev_out, all.size() * 4);
    full.assign(full_n, 0.0f);
    for (size_t r = 0; r < world; ++r) {
      const float* src = all.data() + r * shard;
      for (const FlatRun& run : runs_of[r])
        if (run.owner) {
          std::copy_n(src, run.length, full.data() + run.full);
          src += run.length;
        }
    }
    be.free(dev_out);
  }
  be.free(dev_in);
  return full;
}

void slice_local_flat(const Esm2Model& model, std::span<const float> full, std::span<float> local) {
  ESM2_CHECK(full.size() == model.full_num_params() && local.size() == model.num_params(),
             "slice_local_flat: {} full / {} local values for a model of {} / {}", full.size(), local.size(),
             model.full_num_params(), model.num_params());
  for (const FlatRun& r : model.full_runs()) std::copy_n(full.data() + r.full, r.length, local.data() + r.local);
}

}  // namespace esm2
