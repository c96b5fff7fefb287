// Activation recomputation levels (`--recompute`): what the forward keeps per layer for the backward,
// and what the backward recomputes from the kept tensors just before a layer's backward.
//
//   none       every intermediate of every layer is kept (only GELU is recomputed, as always).
//   selective  kept per layer: input residual, qkv, attention output + log-sum-exp, FFN pre-GELU —
//              the outputs of GEMMs and of attention. LayerNorm outputs/statistics and the attention
//              residual sum (one C×C GEMM + add) are recomputed. Megatron's "selective" recomputes
//              core attention because it stores the O(s²) score matrix; our flash attention never
//              stores scores, so here "selective" drops the cheap-to-recompute tensors instead.
//   full       kept per layer: the input residual only; the backward re-runs the layer forward up to
//              the FFN pre-GELU (not the FFN output GEMM: the layer's output is the next input,
//              already kept) into one layer's scratch.
#pragma once
#include <string>

#include "core/enum_names.h"
#include "core/error.h"

namespace esm2 {

enum class Recompute { None, Selective, Full };

inline constexpr EnumName<Recompute> kRecomputeNames[] = {
    {"none", Recompute::None}, {"selective", Recompute::Selective}, {"full", Recompute::Full}};

inline const char* recompute_name(Recompute r) { return enum_name(kRecomputeNames, r); }

inline Recompute parse_recompute(const std::string& s) {
  if (const auto r = parse_enum(kRecomputeNames, s)) return *r;
  fail("--recompute must be none, selective or full (got '{}')", s);
}

}  // namespace esm2
