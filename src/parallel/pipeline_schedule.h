// Pipeline parallelism: the 1F1B schedule (PipeDream-Flush, Megatron's non-interleaved schedule) over
// the micro-batches of one optimizer step, and forward-only passes for validation.
//
// Stage s of P runs min(P − s − 1, M) warm-up forwards, then alternates one forward and one backward
// (steady state), then runs the remaining backwards (cool-down). At most P − s micro-batches are in
// flight on stage s, each in its own activation slot (Esm2Model::reserve_slots). Only [T, C]
// activations and their gradients travel: every stage of a data-parallel replica builds the same
// StepBatch, so each knows the tokens, offsets and labels of every micro-batch.
//
// Communication follows from the order: a forward receives its input from stage s − 1 and sends its
// output to s + 1; a backward receives the output gradient from s + 1 and sends the input gradient to
// s − 1. A send and the next operation's receive with the same peer (forward → backward, backward →
// forward: the steady state) form one sendrecv, so two neighbours never both block in send.
#pragma once
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "data/batch.h"
#include "model/esm2.h"

namespace esm2 {

class Communicator;

enum class PipeOp : char { Forward = 'F', Backward = 'B' };

struct PipeStep {
  PipeOp op;
  int micro;  // index into the step's micro-batches
  bool operator==(const PipeStep&) const = default;
};

// The order in which stage `stage` of `stages` runs forward and backward passes of `micro_batches`
// micro-batches under 1F1B. Any micro_batches >= 0 (fewer than stages included).
std::vector<PipeStep> one_f_one_b_order(int stages, int stage, int micro_batches);
// "F0 F1 B0 …": the order as text (tests, diagnostics).
std::string pipe_order_text(const std::vector<PipeStep>& order);

// A message between neighbouring stages: the activation (kind Forward) or the gradient (Backward) of
// one micro-batch. peer < 0: no message.
struct PipeMessage {
  int peer = -1;
  PipeOp kind = PipeOp::Forward;
  int micro = -1;
  bool operator==(const PipeMessage&) const = default;
};

// One instruction of a stage's program: a forward/backward pass (`compute`), or an exchange of a send
// and/or a receive (one sendrecv when both: the same peer). A send always carries the result of the
// compute just before it.
struct PipeInstr {
  bool compute = false;
  PipeStep step{PipeOp::Forward, -1};
  PipeMessage send, recv;
};

// The program PipelineSchedule::train_step runs on stage `stage`: one_f_one_b_order with the
// communication each pass needs (see the file comment for the pairing).
std::vector<PipeInstr> pipeline_program(int stages, int stage, int micro_batches);

class PipelineSchedule {
 public:
  // Collective over the model's pipeline group (ModelParallel::pp, every stage must construct it):
  // splits off the first + last stage pair that sums the tied word-embedding gradient.
  explicit PipelineSchedule(Esm2Model& model);
  ~PipelineSchedule();
  PipelineSchedule(const PipelineSchedule&) = delete;
  PipelineSchedule& operator=(const PipelineSchedule&) = delete;

  // Forward and backward of this replica's micro-batches (1F1B): grads += grad_scale · d(loss)/dθ of
  // this stage's tensors; then the word-embedding gradient of the first stage and that of the last
  // stage's tied decoder are summed on both (Megatron's embedding group), so both copies stay equal.
  // Micro-batches without labelled positions are skipped (their loss and gradient are zero) on every
  // stage alike. Returns the loss sum and label count over the micro-batches on EVERY stage
  // (all-reduced over the pipeline group). Collective over the pipeline group.
  LossSum train_step(std::span<const MicroBatch> micro, float grad_scale);
  // Forward-only passes (validation); the loss on every stage as above. Collective likewise.
  LossSum forward_loss(std::span<const MicroBatch> micro);

 private:
  void connect_links();  // every pipeline link connected before the first step (see the definition)
  Esm2Model& model_;
  Communicator& pp_;
  std::unique_ptr<Communicator> embedding_group_;  // stage 0 and stage P − 1 (P > 1), else null
  size_t wte_offset_ = 0, wte_numel_ = 0;          // the word embedding in this stage's gradient buffer
};

}  // namespace esm2
