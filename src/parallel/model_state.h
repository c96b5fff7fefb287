// The whole model's flat state (parameters, Adam moments) from the pieces that model-parallel ranks
// hold, and back, a bounded piece at a time. Checkpoints are always written in the whole model's layout
// (HF names and shapes), so a run saved at any tensor/pipeline-parallel size loads at any other; no
// rank ever holds the whole model for it (a 15B model is 60 GB per fp32 copy).
#pragma once
#include <cstddef>
#include <functional>
#include <span>
#include <vector>

#include "model/esm2.h"

namespace esm2 {

class Communicator;

// Elements per piece that checkpoint save and load move at once (4 MiB of fp32): the bound on their
// staging buffers, whatever the model size.
constexpr size_t kStatePieceElems = size_t{1} << 20;

// Reads this rank's local flat elements [local_begin, local_begin + dst.size()) of some state (the
// parameters in backend memory, moments in a host vector) into host memory.
using LocalStateReader = std::function<void(size_t local_begin, std::span<float> dst)>;

// Gathers ranges of the whole model's flat layout from the model-parallel ranks that own them
// (ParamInfo/FlatRun::owner), to mp rank 0. `mp`: the tensor × pipeline ranks of one data-parallel
// replica (mp rank = tp_rank + TP · pp_rank, src/parallel/parallel_layout.h); null: a whole model on one rank.
// Memory: staging of at most `piece` elements (host and backend); rank 0 receives from each owner in
// rank order by point-to-point messages of only the owned elements.
class FullStateGather {
 public:
  FullStateGather(Communicator* mp, Esm2Model& model, size_t piece = kStatePieceElems);
  ~FullStateGather();
  FullStateGather(const FullStateGather&) = delete;
  FullStateGather& operator=(const FullStateGather&) = delete;

  bool is_root() const;
  size_t piece() const { return piece_; }
  // Collective over mp: every rank calls it with the same range, in the same order. Elements
  // [full_begin, full_begin + n) (n <= piece()) of the whole model's layout into `out` (n elements) on
  // rank 0; `out` is ignored elsewhere. `local` reads this rank's state.
  void gather(size_t full_begin, size_t n, const LocalStateReader& local, std::span<float> out);
  // The same for a whole tensor of the full table, piece after piece: put(values) on rank 0 (in order,
  // numel values in all); `put` is not called elsewhere.
  void gather_tensor(const ParamInfo& p, const LocalStateReader& local,
                     const std::function<void(std::span<const float>)>& put);

 private:
  struct Owned {  // one owned run, sorted by full offset
    size_t full, local, length;
  };
  Communicator* mp_;
  Backend& be_;
  size_t piece_;
  int world_ = 1, rank_ = 0;
  std::vector<std::vector<Owned>> owned_;  // per mp rank (only this rank's on non-roots)
  std::vector<float> host_, window_, out_;  // [piece] each: packing, local window, gather_tensor's output
  float* dev_ = nullptr;                    // [piece] backend staging for the messages
};

// Fills all of this rank's local elements (owned or replicated) from a whole-model source:
// read(p, begin, dst) gives elements [begin, begin + dst.size()) of whole-model tensor p.
// Into a host vector of num_params() elements:
using FullTensorReader = std::function<void(const ParamInfo& p, size_t begin, std::span<float> dst)>;
void read_local_state(const Esm2Model& model, const FullTensorReader& read, std::span<float> local);
// As a reader of arbitrary local ranges (the optimizer's moment loads): each range is read run by run
// from the whole-model tensors it covers, straight into the destination.
LocalStateReader local_reader_from_full(const Esm2Model& model, FullTensorReader read);
// Into the model's parameters in backend memory, through a host piece of at most `piece` elements.
void read_local_params(Esm2Model& model, const FullTensorReader& read, size_t piece = kStatePieceElems);

}  // namespace esm2
