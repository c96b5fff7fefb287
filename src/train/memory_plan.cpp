#include "train/memory_plan.h"

#include <algorithm>

#include "model/esm2.h"

namespace esm2 {
namespace {

constexpr int64_t kTokenStep = 256;

double mib(size_t b) { return static_cast<double>(b) / 1048576.0; }

// Parameters read as GEMM operands, which the CUDA backend keeps a bf16 copy of in bf16-mixed mode:
// q/k/v, out, fc, proj of every layer, the LM head dense and the tied decoder (the embedding).
size_t gemm_weight_elements(const ModelConfig& c) {
  const size_t d = c.hidden_size, f = c.ffn_hidden_size, v = c.vocab_size;
  return c.num_layers * (4 * d * d + 2 * d * f) + d * d + v * d;
}

}  // namespace

WorkspaceQuery workspace_query(const Backend& backend) {
  return [&backend](const WorkspaceShape& shape) { return backend.workspace_bytes(shape); };
}

MemoryPlan plan_memory(const ModelConfig& cfg, int64_t micro_batch_tokens, Recompute recompute,
                       DType activation_dtype, const WorkspaceQuery& workspace) {
  MemoryPlan p;
  p.micro_batch_tokens = micro_batch_tokens;
  p.recompute = recompute;
  p.activation_dtype = activation_dtype;
  const size_t n = static_cast<size_t>(cfg.num_parameters());
  const size_t T = static_cast<size_t>(std::max<int64_t>(micro_batch_tokens, 0));
  p.params = 4 * n;
  p.grads = 4 * n;
  p.adam = 8 * n;
  p.weight_copies = activation_dtype == DType::BF16 ? 2 * gemm_weight_elements(cfg) : 0;
  p.activations = activation_arena_bytes(cfg, micro_batch_tokens, micro_batch_tokens, recompute, activation_dtype);
  const WorkspaceShape shape{.tokens = static_cast<int64_t>(T),
                             .hidden = cfg.hidden_size,
                             .ffn = cfg.ffn_hidden_size,
                             .vocab = cfg.vocab_size,
                             .heads = cfg.num_attention_heads};
  p.workspaces = workspace(shape) + 4 * (4 * T + 1);  // + ids, cu_seqlens, head rows, labels (int32)
  return p;
}

int64_t largest_micro_batch_tokens(const ModelConfig& cfg, Recompute recompute, DType activation_dtype,
                                   size_t budget_bytes, const WorkspaceQuery& workspace) {
  auto fits = [&](int64_t t) {
    return plan_memory(cfg, t, recompute, activation_dtype, workspace).total() <= budget_bytes;
  };
  if (!fits(kTokenStep)) return 0;
  // the plan grows with the tokens: find the first step that does not fit by doubling, then bisect
  int64_t lo = 1, hi = 2;  // in steps: lo fits, hi does not
  while (fits(hi * kTokenStep)) {
    lo = hi;
    hi *= 2;
    if (hi > (int64_t{1} << 30) / kTokenStep) return lo * kTokenStep;  // a billion tokens: no limit in practice
  }
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid * kTokenStep) ? lo : hi) = mid;
  }
  return lo * kTokenStep;
}

std::string format_memory_plan(const MemoryPlan& p) {
  return fmt::format(
      "memory plan ({} activations, --recompute {}, {} tokens per micro-batch): {:.0f} MiB = params {:.0f} + "
      "grads {:.0f} + Adam m,v {:.0f} + bf16 weight copies {:.0f} + activations {:.0f} + workspaces {:.0f}\n",
      dtype_name(p.activation_dtype), recompute_name(p.recompute), p.micro_batch_tokens, mib(p.total()),
      mib(p.params), mib(p.grads), mib(p.adam), mib(p.weight_copies), mib(p.activations), mib(p.workspaces));
}

std::string out_of_memory_message(const OutOfDeviceMemory& e, const ModelConfig& cfg, int64_t micro_batch_tokens,
                                  Recompute recompute, const WorkspaceQuery& workspace) {
  const DType activation_dtype = e.activation_dtype;
  const size_t budget = e.free + e.held;
  const MemoryPlan plan = plan_memory(cfg, micro_batch_tokens, recompute, activation_dtype, workspace);
  std::string msg = fmt::format("{}: the plan for --micro-batch-tokens {} with --recompute {} needs {:.0f} MiB of the "
                                "{:.0f} MiB this process can use",
                                e.what(), micro_batch_tokens, recompute_name(recompute), mib(plan.total()), mib(budget));
  const int64_t n = largest_micro_batch_tokens(cfg, recompute, activation_dtype, budget, workspace);
  if (n > 0)
    msg += fmt::format("; the largest --micro-batch-tokens that fits with --recompute {} is {}", recompute_name(recompute), n);
  else
    msg += fmt::format("; no --micro-batch-tokens fits with --recompute {}", recompute_name(recompute));
  if (recompute != Recompute::Full) {
    const int64_t nf = largest_micro_batch_tokens(cfg, Recompute::Full, activation_dtype, budget, workspace);
    if (nf > n) msg += fmt::format(" (with --recompute full: {})", nf);
  }
  if (n == 0 && recompute == Recompute::Full)
    msg += fmt::format(": parameters, gradients and optimizer state alone need {:.0f} MiB",
                       mib(plan.params + plan.grads + plan.adam + plan.weight_copies));
  return msg;
}

}  // namespace esm2
