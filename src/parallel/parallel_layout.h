// The DP × TP × PP grid of ranks (Megatron's order): tensor-parallel ranks are adjacent (they exchange
// activations every layer, so they should share a node's NVLink), then data parallel, then pipeline
// stages outermost:
//   world rank = tp_rank + TP · (dp_rank + DP · pp_rank),   DP = world / (TP · PP).
// Each group is a sub-communicator of the world communicator (Communicator::split).
#pragma once
#include <memory>

#include "comm/communicator.h"

namespace esm2 {

struct ParallelGroups {
  int tp_size = 1, pp_size = 1, dp_size = 1;
  int tp_rank = 0, pp_rank = 0, dp_rank = 0;
  std::unique_ptr<Communicator> tp;  // the TP ranks of this (dp, pp) cell
  std::unique_ptr<Communicator> dp;  // the DP replicas of this (tp, pp) position: gradient reduction, ZeRO-1
  std::unique_ptr<Communicator> pp;  // the stages of this (tp, dp) pipeline, stage order
  std::unique_ptr<Communicator> mp;  // all TP × PP ranks of this DP replica; rank = tp_rank + TP · pp_rank
  bool first_stage() const { return pp_rank == 0; }
  bool last_stage() const { return pp_rank == pp_size - 1; }
};

// Collective over `world`. Throws esm2::Error when world size is not a multiple of tp × pp.
ParallelGroups make_parallel_groups(Communicator& world, int tp_size, int pp_size);

}  // namespace esm2
