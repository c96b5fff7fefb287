#include "parallel/parallel_layout.h"

#include "core/error.h"

namespace esm2 {

ParallelGroups make_parallel_groups(Communicator& world, int tp_size, int pp_size) {
  const int W = world.world_size(), r = world.rank();
  ESM2_CHECK(tp_size >= 1 && pp_size >= 1, "parallel layout: --tensor-model-parallel-size ({}) and "
             "--pipeline-model-parallel-size ({}) must be >= 1", tp_size, pp_size);
  ESM2_CHECK(W % (tp_size * pp_size) == 0,
             "parallel layout: {} rank(s) are not a multiple of tensor parallel {} × pipeline parallel {}; start a "
             "multiple of {} ranks (esm2 train --gpus N, mpirun -np N or srun)",
             W, tp_size, pp_size, tp_size * pp_size);
  ParallelGroups g;
  g.tp_size = tp_size;
  g.pp_size = pp_size;
  g.dp_size = W / (tp_size * pp_size);
  g.tp_rank = r % tp_size;
  g.dp_rank = (r / tp_size) % g.dp_size;
  g.pp_rank = r / (tp_size * g.dp_size);
  // Same color = same group; key = world rank keeps the grid order inside each group.
  g.tp = world.split(g.dp_rank + g.dp_size * g.pp_rank, r, "tensor-parallel group split");
  g.dp = world.split(g.tp_rank + tp_size * g.pp_rank, r, "data-parallel group split");
  g.pp = world.split(g.tp_rank + tp_size * g.dp_rank, r, "pipeline group split");
  g.mp = world.split(g.dp_rank, g.tp_rank + tp_size * g.pp_rank, "model-parallel group split");
  return g;
}

}  // namespace esm2
