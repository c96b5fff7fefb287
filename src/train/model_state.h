// The whole model's flat state (parameters, Adam moments) from the pieces that model-parallel ranks
// hold, and back. Checkpoints are always written in the whole model's layout (HF names and shapes),
// so a run saved at any tensor/pipeline-parallel size loads at any other.
#pragma once
#include <span>
#include <vector>

#include "model/esm2.h"

namespace esm2 {

class Communicator;

// Collective over `mp`, the tensor × pipeline ranks of one data-parallel replica (mp rank =
// tp_rank + TP · pp_rank, src/dist/parallel_layout.h). `local` is this rank's flat host vector in its
// own layout; mp rank 0 receives the whole model's flat vector (full_num_params() elements), built from
// each rank's owned runs; other ranks receive an empty vector.
std::vector<float> gather_full_flat(Communicator& mp, Esm2Model& model, std::span<const float> local);

// This rank's part of a whole-model flat vector (no communication).
void slice_local_flat(const Esm2Model& model, std::span<const float> full, std::span<float> local);

}  // namespace esm2
