// The ESM-2 network (EsmForMaskedLM numerics) over a packed micro-batch, with explicit forward and
// backward per layer. Arithmetic goes through the Backend interface (src/backend/backend.h); this
// class owns the parameter table, the flat parameter/gradient buffers and the activation buffers.
//
// Conventions (llm.c): parameter gradients accumulate (+=) across micro-batches until zero_grads();
// activation gradients are overwritten (=) except the residual stream, which accumulates.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "data/batch.h"
#include "model/config.h"
#include "model/recompute.h"

namespace esm2 {

class Backend;

struct ParamInfo {
  std::string name;            // Hugging Face name, e.g. "esm.encoder.layer.3.attention.self.query.weight"
  std::vector<int64_t> shape;  // PyTorch order: Linear weights are [out, in]
  size_t offset = 0;           // in elements, into the flat parameter (and gradient) buffer
  size_t numel = 0;
  bool weight_decay = false;   // true for Linear weight matrices only (not biases, LayerNorms, embeddings)
  // Model parallelism: true when this rank's copy is THE copy (checkpoints write it, the gradient norm
  // counts it). Replicated tensors are owned by one rank of the model-parallel group; shards by all.
  bool owner = true;
};

// A contiguous piece of a rank's flat buffer (`local`, in elements) and its offset in the whole
// model's flat layout (`full`). `owner` as ParamInfo::owner.
struct FlatRun {
  size_t local = 0, full = 0, length = 0;
  bool owner = true;
};

class Communicator;

// The model-parallel groups of this rank (src/parallel/parallel_layout.h). Null or single-rank
// communicators mean no tensor / pipeline parallelism.
struct ModelParallel {
  Communicator* tp = nullptr;  // tensor-parallel group: heads and FFN columns split over its ranks
  Communicator* pp = nullptr;  // pipeline group, stage order: layers split over its ranks
  Communicator* mp = nullptr;  // all TP × PP ranks of this data-parallel replica (gradient norm, checkpoints)
};

struct ShardCoord;

struct LossSum {
  double loss_sum = 0;     // sum of cross-entropy over labelled positions (natural log)
  int64_t num_labels = 0;  // number of labelled positions
};

class Esm2Model {
 public:
  Esm2Model(const ModelConfig& cfg, Backend& backend, const ModelParallel& parallel = {});
  ~Esm2Model();
  Esm2Model(const Esm2Model&) = delete;
  Esm2Model& operator=(const Esm2Model&) = delete;

  const ModelConfig& config() const;
  Backend& backend();
  const std::vector<ParamInfo>& params_info() const;  // the fixed order of the (local) flat buffer
  size_t num_params() const;                          // elements of the (local) flat buffer
  // Model parallelism: this rank's part, the whole model's table and how the local buffer maps into it.
  const ModelParallel& parallel() const;
  const ShardCoord& shard_coord() const;
  const std::vector<ParamInfo>& full_params_info() const;
  size_t full_num_params() const;
  const std::vector<FlatRun>& full_runs() const;

  // fp32 flat buffers in backend memory (on CPU, host pointers). The optimizer updates these.
  float* param_data();
  float* grad_data();
  // Host copies in the flat layout.
  void get_params(std::span<float> out) const;
  void set_params(std::span<const float> in);
  void get_grads(std::span<float> out) const;

  // From-scratch initialisation (esm2-model.md): Linear/Embedding N(0, 0.02) from a Philox stream
  // keyed by seed, biases 0, LayerNorm 1/0, embedding row of <pad> zero.
  void init_weights(uint64_t seed);
  void zero_grads();

  // Forward + backward on one micro-batch: grads += grad_scale * d(sum of token CE)/dθ.
  // The trainer passes grad_scale = 1 / (labelled tokens of the whole global batch).
  LossSum forward_backward(const MicroBatch& mb, float grad_scale);
  // Forward only (validation).
  LossSum forward_loss(const MicroBatch& mb);

  // Inference outputs for every position of the micro-batch (host, row-major):
  // logits [T, vocab]; last_hidden [T, hidden] after the final LayerNorm (HF last_hidden_state);
  // if repr_layer >= 0, repr [T, hidden] = hidden state after that many layers (0 = embeddings
  // after token dropout; num_layers = after the final LayerNorm, as fair-esm's repr_layers).
  // Any output pointer may be null.
  void forward_outputs(const MicroBatch& mb, std::vector<float>* logits, std::vector<float>* last_hidden,
                       int repr_layer = -1, std::vector<float>* repr = nullptr);

  // Rotary inverse frequencies [head_dim/2], shared by all layers. Default: fp32
  // 1 / base^(2i/head_dim) as torch computes it; published checkpoints store them rounded to fp16,
  // and a loader must install the stored buffer here.
  void set_inv_freq(std::span<const float> inv_freq);
  std::vector<float> inv_freq() const;

  // Bytes of the activation arena, sized for the largest micro-batch seen so far (0 before the first);
  // activation_arena_bytes() of that size for the whole model. A pipeline stage: the sum over its
  // activation slots, each sized for the stage's layers.
  size_t activation_bytes() const;
  // Which activations the forward keeps per layer for the backward (model/recompute.h; default none).
  // Every mode gives bitwise the same loss and gradients on a deterministic backend. Changing the mode
  // frees the arena; the next micro-batch carves it again.
  Recompute recompute() const;
  void set_recompute(Recompute recompute);

  // Overlapped gradient reduction: during every backward until reset, hook(ready_from) is called on
  // the host each time the gradients [ready_from, num_params()) of the local flat buffer have all been
  // enqueued for this micro-batch (after the LM head and final LayerNorm, then after each layer, with
  // decreasing ready_from). The embedding's gradient (offset 0) is complete only when the backward
  // returns. Null (the default): no calls.
  void set_grad_ready_hook(std::function<void(size_t ready_from)> hook);

  // ---- pipeline stage (driven by src/parallel/pipeline_schedule.h) ----
  // With ModelParallel::pp of P ranks this rank holds layers [first_layer, end_layer) (param_table.h:
  // pipeline_stage_layers); the first stage also the embedding (+ token dropout), the last the final
  // LayerNorm, the LM head and a replica of the word embedding as the tied decoder. P = 1: everything.
  // forward_backward / forward_loss / forward_outputs need the whole model; a stage runs the calls below.
  int first_layer() const;
  int end_layer() const;
  bool has_embedding() const;
  bool has_head() const;
  // Micro-batches in flight each keep their activations in a slot (1F1B keeps up to P − stage of them).
  // Makes slots 0..slots-1 exist (more may) with room for micro-batches of up to max_tokens tokens and
  // max_rows labelled positions, so that no later stage_input of those sizes reallocates: buffers
  // handed out below (possibly still being sent) stay where they are.
  void reserve_slots(int slots, int64_t max_tokens, int64_t max_rows);
  // Starts `mb` in `slot` (validates and uploads ids, offsets, labels). Returns where a non-first stage
  // must put the previous stage's output [T, C] (activation dtype, backend memory) before
  // stage_forward; nullptr on the first stage.
  void* stage_input(int slot, const MicroBatch& mb);
  // This stage's forward of the slot's micro-batch. The last stage returns the loss sum; others zero.
  LossSum stage_forward(int slot);
  // Non-last stage: the slot's output [T, C] for the next stage; nullptr on the last stage.
  const void* stage_output(int slot);
  // Non-last stage: where the gradient of the output [T, C] (from the next stage) goes before
  // stage_backward; nullptr on the last stage.
  void* stage_output_grad(int slot);
  // grads += grad_scale · d(loss sum)/dθ of this stage's tensors (the word-embedding replica of the
  // last stage included). Non-first stage: returns the gradient of the stage input [T, C] for the
  // previous stage (valid until the slot's next stage_input); nullptr on the first stage.
  const void* stage_backward(int slot, float grad_scale);
  // Bytes of one [T, C] activation of the slot's micro-batch: what travels between stages.
  size_t stage_boundary_bytes(int slot);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Bytes of the activation arena an (unsplit) Esm2Model with this mode allocates for a micro-batch of `tokens`
// tokens of which `head_rows` reach the LM head (labelled positions; all tokens for forward_outputs).
size_t activation_arena_bytes(const ModelConfig& cfg, int64_t tokens, int64_t head_rows, Recompute recompute,
                              DType activation_dtype);

}  // namespace esm2
