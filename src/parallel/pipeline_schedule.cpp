#include "parallel/pipeline_schedule.h"

#include <algorithm>

#include "backend/backend.h"
#include "core/error.h"
#include "comm/communicator.h"

namespace esm2 {

std::vector<PipeStep> one_f_one_b_order(int stages, int stage, int micro_batches) {
  ESM2_CHECK(stages >= 1 && stage >= 0 && stage < stages && micro_batches >= 0,
             "pipeline: stage {} of {} with {} micro-batches", stage, stages, micro_batches);
  const int warmup = std::min(stages - stage - 1, micro_batches);
  const int steady = micro_batches - warmup;
  std::vector<PipeStep> order;
  order.reserve(2 * static_cast<size_t>(micro_batches));
  for (int i = 0; i < warmup; ++i) order.push_back({PipeOp::Forward, i});
  for (int j = 0; j < steady; ++j) {
    order.push_back({PipeOp::Forward, warmup + j});
    order.push_back({PipeOp::Backward, j});
  }
  for (int j = steady; j < micro_batches; ++j) order.push_back({PipeOp::Backward, j});
  return order;
}

std::string pipe_order_text(const std::vector<PipeStep>& order) {
  std::string s;
  for (const PipeStep& p : order) {
    if (!s.empty()) s += ' ';
    s += static_cast<char>(p.op);
    s += std::to_string(p.micro);
  }
  return s;
}

std::vector<PipeInstr> pipeline_program(int stages, int stage, int micro_batches) {
  const bool first = stage == 0, last = stage == stages - 1;
  std::vector<PipeInstr> prog;
  PipeMessage pending;  // the last compute's result, not yet sent
  auto exchange = [&prog](const PipeMessage& send, const PipeMessage& recv) {
    PipeInstr x;
    x.send = send;
    x.recv = recv;
    prog.push_back(x);
  };
  for (const PipeStep& step : one_f_one_b_order(stages, stage, micro_batches)) {
    const bool fwd = step.op == PipeOp::Forward;
    PipeMessage recv;  // the input (forward) or output gradient (backward) this pass needs
    if (fwd && !first) recv = {stage - 1, PipeOp::Forward, step.micro};
    if (!fwd && !last) recv = {stage + 1, PipeOp::Backward, step.micro};
    if (pending.peer >= 0 && recv.peer >= 0 && pending.peer == recv.peer) {
      exchange(pending, recv);
    } else {
      if (pending.peer >= 0) exchange(pending, {});
      if (recv.peer >= 0) exchange({}, recv);
    }
    PipeInstr c;
    c.compute = true;
    c.step = step;
    prog.push_back(c);
    pending = {};
    if (fwd && !last) pending = {stage + 1, PipeOp::Forward, step.micro};
    if (!fwd && !first) pending = {stage - 1, PipeOp::Backward, step.micro};
  }
  if (pending.peer >= 0) exchange(pending, {});
  return prog;
}

namespace {

const char* kWordEmbedding = "esm.embeddings.word_embeddings.weight";

Communicator& pipeline_group(Esm2Model& model) {
  Communicator* pp = model.parallel().pp;
  ESM2_CHECK(pp != nullptr, "pipeline: the model was built without a pipeline group (ModelParallel::pp)");
  return *pp;
}

// The micro-batches that reach the loss. Every stage holds the same labels, so all skip the same ones.
std::vector<const MicroBatch*> labelled(std::span<const MicroBatch> micro) {
  std::vector<const MicroBatch*> out;
  for (const MicroBatch& mb : micro)
    if (mb.num_tokens() > 0 && mb.num_labels() > 0) out.push_back(&mb);
  return out;
}

}  // namespace

PipelineSchedule::PipelineSchedule(Esm2Model& model) : model_(model), pp_(pipeline_group(model)) {
  const int P = pp_.world_size(), s = pp_.rank();
  if (P > 1) {
    const bool ends = s == 0 || s == P - 1;
    embedding_group_ = pp_.split(ends ? 0 : 1, s, "pipeline embedding group split");
    if (!ends) embedding_group_.reset();
  }
  if (P > 1) connect_links();
  for (const ParamInfo& p : model_.params_info())
    if (p.name == kWordEmbedding) {
      wte_offset_ = p.offset;
      wte_numel_ = p.numel;
    }
  ESM2_CHECK(!(model_.has_embedding() || model_.has_head()) || wte_numel_ > 0,
             "pipeline: stage {} has no {}", s, kWordEmbedding);
}

PipelineSchedule::~PipelineSchedule() = default;

// NCCL connects a pair of ranks lazily, on the host, inside the first grouped call that needs the
// link, and waits there for the peer to connect too. With one micro-batch per step, stage s first meets
// stage s+1 in a grouped send-activation/receive-gradient while s+1 only receives (its gradient send
// comes after a host synchronisation that waits for that receive): both hosts would wait for ever. A
// word exchanged both ways with each neighbour here, in two phases of disjoint pairs ((0,1), (2,3), …
// then (1,2), (3,4), …), connects every link up front; the words also check the stage order.
void PipelineSchedule::connect_links() {
  const int P = pp_.world_size(), s = pp_.rank();
  Backend& be = model_.backend();
  auto* buf = static_cast<int32_t*>(be.alloc(2 * sizeof(int32_t)));  // [send, recv], backend memory
  be.copy_to_device(buf, &s, sizeof s);
  for (int phase = 0; phase < 2; ++phase) {
    const int peer = (s % 2 == 0) == (phase == 0) ? s + 1 : s - 1;
    if (peer < 0 || peer >= P) continue;
    pp_.sendrecv(buf, sizeof(int32_t), peer, buf + 1, sizeof(int32_t), peer, "pipeline link setup");
    int32_t got = -1;
    be.copy_to_host(&got, buf + 1, sizeof got);
    ESM2_CHECK(got == peer, "pipeline: stage {} expected stage {} as its neighbour, heard from stage {}", s, peer, got);
  }
  be.free(buf);
}

LossSum PipelineSchedule::train_step(std::span<const MicroBatch> micro, float grad_scale) {
  const int P = pp_.world_size(), s = pp_.rank();
  const bool last = s == P - 1;
  const std::vector<const MicroBatch*> mbs = labelled(micro);
  const int M = static_cast<int>(mbs.size());
  const size_t act = model_.backend().act_bytes(static_cast<size_t>(model_.config().hidden_size));
  double acc[2] = {0, 0};  // loss sum, labelled positions
  if (M > 0) {
    const int slots = std::min(P - s, M);
    int64_t max_t = 0, max_r = 0;
    for (const MicroBatch* mb : mbs) {
      max_t = std::max(max_t, mb->num_tokens());
      max_r = std::max(max_r, mb->num_labels());
    }
    model_.reserve_slots(slots, max_t, max_r);
    auto mb_of = [&](int i) -> const MicroBatch& { return *mbs[static_cast<size_t>(i)]; };
    auto bytes_of = [&](int i) { return static_cast<size_t>(mb_of(i).num_tokens()) * act; };
    int staged = -1;                // micro-batch whose input stage_input has already placed
    const void* produced = nullptr;  // the last pass's result for the next send
    for (const PipeInstr& in : pipeline_program(P, s, M)) {
      if (in.compute) {
        const int i = in.step.micro, slot = i % slots;
        if (in.step.op == PipeOp::Forward) {
          if (staged != i) model_.stage_input(slot, mb_of(i));  // first stage: nothing to receive
          staged = -1;
          const LossSum l = model_.stage_forward(slot);
          acc[0] += l.loss_sum;
          acc[1] += static_cast<double>(l.num_labels);
          produced = last ? nullptr : model_.stage_output(slot);
        } else {
          produced = model_.stage_backward(slot, grad_scale);
        }
        continue;
      }
      void* rbuf = nullptr;
      if (in.recv.peer >= 0) {
        const int slot = in.recv.micro % slots;
        if (in.recv.kind == PipeOp::Forward) {
          // Stages the micro-batch in its slot (no reallocation: reserved above, so `produced`,
          // possibly the same slot's input gradient, stays where it is).
          rbuf = model_.stage_input(slot, mb_of(in.recv.micro));
          staged = in.recv.micro;
        } else {
          rbuf = model_.stage_output_grad(slot);
        }
      }
      if (in.send.peer >= 0 && in.recv.peer >= 0) {
        pp_.sendrecv(produced, bytes_of(in.send.micro), in.send.peer, rbuf, bytes_of(in.recv.micro), in.recv.peer,
                     in.recv.kind == PipeOp::Forward ? "pipeline send input gradient / receive activation"
                                                     : "pipeline send activation / receive output gradient");
      } else if (in.send.peer >= 0) {
        pp_.send(produced, bytes_of(in.send.micro), in.send.peer,
                 in.send.kind == PipeOp::Forward ? "pipeline send activation" : "pipeline send input gradient");
      } else {
        pp_.recv(rbuf, bytes_of(in.recv.micro), in.recv.peer,
                 in.recv.kind == PipeOp::Forward ? "pipeline receive activation" : "pipeline receive output gradient");
      }
    }
  }
  // The tied decoder: both copies of the word embedding take the sum of the two gradients (added in
  // stage order on both ranks, so the copies stay bitwise equal after the optimizer step).
  if (embedding_group_)
    embedding_group_->allreduce_sum(model_.grad_data() + wte_offset_, wte_numel_,
                                    "tied word-embedding gradient all-reduce (first + last pipeline stage)");
  if (P > 1) pp_.allreduce_sum(acc, 2, "pipeline loss all-reduce");
  return {acc[0], static_cast<int64_t>(acc[1])};
}

LossSum PipelineSchedule::forward_loss(std::span<const MicroBatch> micro) {
  const int P = pp_.world_size(), s = pp_.rank();
  const bool first = s == 0, last = s == P - 1;
  const std::vector<const MicroBatch*> mbs = labelled(micro);
  const size_t act = model_.backend().act_bytes(static_cast<size_t>(model_.config().hidden_size));
  double acc[2] = {0, 0};
  int64_t max_t = 0, max_r = 0;
  for (const MicroBatch* mb : mbs) {
    max_t = std::max(max_t, mb->num_tokens());
    max_r = std::max(max_r, mb->num_labels());
  }
  // The previous micro-batch's output may still be in flight (stream-ordered sends): no reallocation.
  if (!mbs.empty()) model_.reserve_slots(1, max_t, max_r);
  for (const MicroBatch* mb : mbs) {
    // One slot: a forward-only stage finishes each micro-batch before the next arrives.
    const size_t bytes = static_cast<size_t>(mb->num_tokens()) * act;
    void* in = model_.stage_input(0, *mb);
    if (!first) pp_.recv(in, bytes, s - 1, "pipeline receive activation (validation)");
    const LossSum l = model_.stage_forward(0);
    acc[0] += l.loss_sum;
    acc[1] += static_cast<double>(l.num_labels);
    if (!last) pp_.send(model_.stage_output(0), bytes, s + 1, "pipeline send activation (validation)");
  }
  if (P > 1) pp_.allreduce_sum(acc, 2, "pipeline validation loss all-reduce");
  return {acc[0], static_cast<int64_t>(acc[1])};
}

}  // namespace esm2
