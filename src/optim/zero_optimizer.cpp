#include "optim/zero_optimizer.h"

#include <algorithm>
#include <cmath>

#include "backend/backend.h"
#include "core/error.h"

namespace esm2 {

ZeroAdamW::ZeroAdamW(Esm2Model& model, const OptimizerConfig& cfg, Communicator& comm,
                     const GradReduceOptions& reduce)
    : model_(model), backend_(model.backend()), cfg_(cfg), comm_(comm), reduce_(reduce) {
  ESM2_CHECK(reduce_.wire == DType::F32 || reduce_.wire == DType::BF16,
             "ZeRO-1: gradients can travel as F32 or BF16, not {}", dtype_name(reduce_.wire));
  const size_t w = static_cast<size_t>(comm_.world_size()), r = static_cast<size_t>(comm_.rank());
  n_ = model_.num_params();
  // Buckets counted from the end, each a multiple of W long so that it reduce-scatters straight from
  // the gradient buffer; only the first (the embedding's, reduced last anyway) may need padding.
  const size_t len = std::max<size_t>(w, (std::max<size_t>(reduce_.bucket_elements, 1) + w - 1) / w * w);
  bucket_len_ = len;
  std::vector<std::pair<size_t, size_t>> spans;
  for (size_t e = n_; e > 0;) {
    const size_t b = e > len ? e - len : 0;
    spans.push_back({b, e});
    e = b;
  }
  std::reverse(spans.begin(), spans.end());
  size_t stage = 0;
  for (const auto& [b, e] : spans) {
    Bucket k;
    k.begin = b;
    k.end = e;
    k.s = (e - b + w - 1) / w;
    k.shard_off = shard_;
    k.stage_off = stage;
    k.own_begin = std::min(e, b + r * k.s);
    k.own_end = std::min(e, k.own_begin + k.s);
    shard_ += k.s;
    stage += w * k.s;
    // This rank's pieces of each tensor: from the start of its piece (the AdamW launch of this bucket)
    // and as offsets into the shard buffers (the gradient norm).
    for (const auto& p : model_.params_info()) {
      const size_t lo = std::max(k.own_begin, p.offset), hi = std::min(k.own_end, p.offset + p.numel);
      if (lo >= hi) continue;
      k.ranges.push_back({lo - k.own_begin, hi - lo, decays(p, cfg_)});
      if (p.owner) owned_ranges_.push_back({k.shard_off + (lo - k.own_begin), hi - lo, false});
    }
    buckets_.push_back(k);
  }
  next_launch_ = buckets_.size();
  // alloc() zero-initialises: moments start at zero, the padding stays zero.
  m_ = static_cast<float*>(backend_.alloc(shard_ * sizeof(float)));
  v_ = static_cast<float*>(backend_.alloc(shard_ * sizeof(float)));
  grad_shard_ = static_cast<float*>(backend_.alloc(shard_ * sizeof(float)));
  staging_ = static_cast<float*>(backend_.alloc(stage * sizeof(float)));
}

ZeroAdamW::~ZeroAdamW() {
  backend_.free(m_);
  backend_.free(v_);
  backend_.free(grad_shard_);
  backend_.free(staging_);
}

void ZeroAdamW::launch(const Bucket& b) {
  const size_t w = static_cast<size_t>(comm_.world_size());
  const float* in = model_.grad_data() + b.begin;
  if (b.end - b.begin != w * b.s) {  // padded: the copy leaves staging's zero tail in place
    backend_.copy(staging_ + b.stage_off, in, (b.end - b.begin) * sizeof(float));
    in = staging_ + b.stage_off;
  }
  comm_.reduce_scatter_sum_async(in, grad_shard_ + b.shard_off, b.s, reduce_.wire, "gradient reduce-scatter (ZeRO-1)");
}

std::function<void(size_t)> ZeroAdamW::grad_ready_hook() {
  if (!reduce_.overlap || buckets_.size() < 2) return nullptr;
  // Buckets finish from the back; every rank runs the same backward, so all issue the same order.
  return [this](size_t ready_from) {
    while (next_launch_ > 0 && buckets_[next_launch_ - 1].begin >= ready_from) launch(buckets_[--next_launch_]);
  };
}

void ZeroAdamW::reduce_gradients() {
  while (next_launch_ > 0) launch(buckets_[--next_launch_]);
  comm_.wait_async();
  next_launch_ = buckets_.size();
}

double ZeroAdamW::grad_norm() {
  double ss = backend_.sum_squares_ranges(grad_shard_, owned_ranges_.data(), owned_ranges_.size());
  comm_.allreduce_sum(&ss, 1, "gradient norm all-reduce (ZeRO-1)");
  if (Communicator* mp = model_.parallel().mp; mp && mp->world_size() > 1)
    mp->allreduce_sum(&ss, 1, "gradient norm all-reduce (model parallel)");
  return std::sqrt(ss);
}

OptimizerStepStats ZeroAdamW::step_with_norm(double lr, double norm) {
  const OptimizerStepStats st = clip_stats(cfg_, norm);
  ++t_;
  float* p = model_.param_data();
  const AdamWStep args = adamw_step_args(cfg_, lr, st.clip_coef, t_);
  const size_t r = static_cast<size_t>(comm_.rank());
  for (const auto& b : buckets_) {
    // The own piece is updated in place, then all-gathered in place in staging_ (its slot r·s is the
    // gather's input). The gathered bucket reaches the parameters through Backend::copy, so a backend
    // that caches converted weights (CUDA's bf16 copies) sees the write; a collective writing into the
    // parameters directly would bypass it.
    backend_.adamw_update_ranges(p + b.own_begin, grad_shard_ + b.shard_off, m_ + b.shard_off, v_ + b.shard_off,
                                 b.ranges.data(), b.ranges.size(), args);
    float* slot = staging_ + b.stage_off + r * b.s;
    backend_.copy(slot, p + b.own_begin, (b.own_end - b.own_begin) * sizeof(float));
    comm_.allgather(slot, staging_ + b.stage_off, b.s, "parameter all-gather (ZeRO-1)");
    backend_.copy(p + b.begin, staging_ + b.stage_off, (b.end - b.begin) * sizeof(float));
  }
  return st;
}

template <class Fn>
void ZeroAdamW::for_each_owned(size_t r, size_t b, size_t e, Fn&& fn) const {
  // Buckets are in flat order and tile [0, N): skip those ending before b.
  auto it = std::partition_point(buckets_.begin(), buckets_.end(), [&](const Bucket& k) { return k.end <= b; });
  for (; it != buckets_.end() && it->begin < e; ++it) {
    const size_t own_lo = std::min(it->end, it->begin + r * it->s), own_hi = std::min(it->end, own_lo + it->s);
    const size_t lo = std::max(b, own_lo), hi = std::min(e, own_hi);
    if (lo < hi) fn(*it, lo, hi);
  }
}

namespace {

// What dp rank 0 broadcasts per read; kEnd releases the others from end_moment_reads().
struct MomentRequest {
  uint64_t which, begin, n;
};
constexpr uint64_t kEnd = 2;
constexpr const char* kRequestWhat = "optimizer state request (checkpoint)";
constexpr const char* kPartWhat = "optimizer state gather (checkpoint)";

}  // namespace

void ZeroAdamW::serve_read(Moment which, size_t b, size_t n, std::span<float> dst) {
  // staging_ is free between steps and holds at least N ≥ n elements.
  const float* src = which == Moment::ExpAvg ? m_ : v_;
  const size_t w = static_cast<size_t>(comm_.world_size()), me = static_cast<size_t>(comm_.rank()), e = b + n;
  const auto own = [&](const Bucket& k, size_t lo) { return src + k.shard_off + (lo - k.own_begin); };
  if (me != 0) {
    size_t at = 0;
    for_each_owned(me, b, e, [&](const Bucket& k, size_t lo, size_t hi) {
      backend_.copy(staging_ + at, own(k, lo), (hi - lo) * sizeof(float));
      at += hi - lo;
    });
    if (at > 0) comm_.send(staging_, at * sizeof(float), 0, kPartWhat);
    return;
  }
  for_each_owned(0, b, e, [&](const Bucket& k, size_t lo, size_t hi) {
    backend_.copy_to_host(dst.data() + (lo - b), own(k, lo), (hi - lo) * sizeof(float));
  });
  for (size_t r = 1; r < w; ++r) {
    size_t count = 0;
    for_each_owned(r, b, e, [&](const Bucket&, size_t lo, size_t hi) { count += hi - lo; });
    if (count == 0) continue;
    comm_.recv(staging_, count * sizeof(float), static_cast<int>(r), kPartWhat);
    size_t at = 0;
    for_each_owned(r, b, e, [&](const Bucket&, size_t lo, size_t hi) {
      backend_.copy_to_host(dst.data() + (lo - b), staging_ + at, (hi - lo) * sizeof(float));
      at += hi - lo;
    });
  }
}

void ZeroAdamW::read_moments(Moment which, size_t local_begin, std::span<float> dst) {
  ESM2_CHECK(comm_.is_root(), "ZeRO-1 optimizer: moments requested on dp rank {}; only dp rank 0 reads them",
             comm_.rank());
  ESM2_CHECK(local_begin <= n_ && dst.size() <= n_ - local_begin,
             "ZeRO-1 optimizer: moment range [{}, {}) outside the {} local values", local_begin,
             local_begin + dst.size(), n_);
  if (dst.empty()) return;
  MomentRequest req{which == Moment::ExpAvg ? 0u : 1u, local_begin, dst.size()};
  comm_.broadcast(&req, sizeof(req), 0, kRequestWhat);
  serve_read(which, local_begin, dst.size(), dst);
}

void ZeroAdamW::end_moment_reads() {
  if (comm_.is_root()) {
    MomentRequest req{kEnd, 0, 0};
    comm_.broadcast(&req, sizeof(req), 0, kRequestWhat);
    return;
  }
  for (;;) {
    MomentRequest req{};
    comm_.broadcast(&req, sizeof(req), 0, kRequestWhat);
    if (req.which == kEnd) return;
    ESM2_CHECK(req.which < kEnd && req.begin <= n_ && req.n <= n_ - req.begin,
               "ZeRO-1 optimizer: dp rank {} got a malformed moment request ({}, {}, {})", comm_.rank(), req.which,
               req.begin, req.n);
    serve_read(req.which == 0 ? Moment::ExpAvg : Moment::ExpAvgSq, req.begin, req.n, {});
  }
}

void ZeroAdamW::load_moments(const LocalStateReader& exp_avg, const LocalStateReader& exp_avg_sq, size_t piece) {
  ESM2_CHECK(piece > 0, "ZeRO-1 optimizer: moment piece size must be positive");
  backend_.memset_zero(m_, shard_ * sizeof(float));
  backend_.memset_zero(v_, shard_ * sizeof(float));
  std::vector<float> buf(std::min(piece, n_));  // [piece] host staging
  for (float* dst : {m_, v_}) {
    const LocalStateReader& read = dst == m_ ? exp_avg : exp_avg_sq;
    for (const auto& b : buckets_)
      for (size_t at = b.own_begin; at < b.own_end; at += buf.size()) {
        const std::span<float> part = std::span<float>(buf).first(std::min(buf.size(), b.own_end - at));
        read(at, part);
        backend_.copy_to_device(dst + b.shard_off + (at - b.own_begin), part.data(), part.size() * sizeof(float));
      }
  }
}

void ZeroAdamW::reset() {
  backend_.memset_zero(m_, shard_ * sizeof(float));
  backend_.memset_zero(v_, shard_ * sizeof(float));
  t_ = 0;
}

std::unique_ptr<Optimizer> make_optimizer(Esm2Model& model, const OptimizerConfig& cfg, Communicator& comm,
                                          bool distributed, const GradReduceOptions& reduce) {
  // Both optimizers pass backend buffers to the communicator; make_communicator pairs MPI with the
  // cpu backend and NCCL with the cuda backend.
  if (distributed && comm.world_size() > 1) return std::make_unique<ZeroAdamW>(model, cfg, comm, reduce);
  ESM2_CHECK(reduce.wire == DType::F32 || comm.world_size() == 1,
             "train: bf16 gradient reduction needs the distributed optimizer (drop --no-distributed-optimizer, "
             "or reduce in fp32 with --grad-reduce-dtype fp32)");
  return std::make_unique<AdamW>(model, cfg, &comm);
}

}  // namespace esm2
