// Device memory of one training process, planned from the model shape, micro-batch size, recompute
// mode and precision before anything is allocated: printed at the start of `esm2 train` / `esm2 bench`,
// and used to tell the user which micro-batch fits when a device allocation fails.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "backend/backend.h"
#include "model/config.h"
#include "model/recompute.h"

namespace esm2 {

// One rank, replicated AdamW (ZeRO-1 would divide `adam` by the data-parallel size). The CUDA
// context (~0.5 GiB on an H100) is not in it: it is already gone from the driver's free memory.
struct MemoryPlan {
  int64_t micro_batch_tokens = 0;
  Recompute recompute = Recompute::None;
  DType activation_dtype = DType::F32;
  size_t params = 0;         // fp32 master weights [N]
  size_t grads = 0;          // fp32 [N]
  size_t adam = 0;           // fp32 m and v [2N]
  size_t weight_copies = 0;  // bf16 copies of the GEMM weights (bf16-mixed only; the CUDA weight cache)
  size_t activations = 0;    // the activation arena (Esm2Model::activation_bytes) with every token a head row
  size_t workspaces = 0;     // the backend's scratch and library workspaces (its own answer), token index buffers
  size_t total() const { return params + grads + adam + weight_copies + activations + workspaces; }
};

// The backend's own answer for its scratch and library workspaces (Backend::workspace_bytes) as a
// function of the micro-batch shape, so that the planner needs no backend's internals and plans can be
// made for any shape (largest_micro_batch_tokens) or without a device (tests).
using WorkspaceQuery = std::function<size_t(const WorkspaceShape&)>;
WorkspaceQuery workspace_query(const Backend& backend);  // the backend must outlive the query

MemoryPlan plan_memory(const ModelConfig& cfg, int64_t micro_batch_tokens, Recompute recompute,
                       DType activation_dtype, const WorkspaceQuery& workspace);

// The largest micro-batch (tokens, a multiple of 256) whose plan fits in budget_bytes; 0 if none does.
int64_t largest_micro_batch_tokens(const ModelConfig& cfg, Recompute recompute, DType activation_dtype,
                                   size_t budget_bytes, const WorkspaceQuery& workspace);

// A few lines for the start of a run: each part in MiB and the total.
std::string format_memory_plan(const MemoryPlan& plan);

// The one-line error for a failed device allocation: the backend's report, what the plan needs, and the
// largest --micro-batch-tokens that fits (with this mode, and with --recompute full) in the memory the
// process could use: the device's free memory plus what the backend held at the failure.
std::string out_of_memory_message(const OutOfDeviceMemory& e, const ModelConfig& cfg, int64_t micro_batch_tokens,
                                  Recompute recompute, const WorkspaceQuery& workspace);

}  // namespace esm2
