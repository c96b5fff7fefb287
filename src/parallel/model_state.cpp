#include "parallel/model_state.h"

#include <algorithm>

#include "backend/backend.h"
#include "core/error.h"
#include "comm/communicator.h"
#include "model/param_table.h"

namespace esm2 {

namespace {

constexpr const char* kWhat = "model-parallel state gather (checkpoint)";

// The whole-model tensor a run lies in (runs never cross tensors); `infos` are in offset order.
const ParamInfo& tensor_of(const std::vector<ParamInfo>& infos, size_t full) {
  const auto it = std::upper_bound(infos.begin(), infos.end(), full,
                                   [](size_t off, const ParamInfo& p) { return off < p.offset; });
  ESM2_ASSERT(it != infos.begin());
  return *std::prev(it);
}

// This rank's runs in local order: consecutive runs tile [0, num_params()).
std::vector<FlatRun> runs_in_local_order(const Esm2Model& model) {
  std::vector<FlatRun> runs = model.full_runs();
  std::sort(runs.begin(), runs.end(), [](const FlatRun& a, const FlatRun& b) { return a.local < b.local; });
  return runs;
}

}  // namespace

FullStateGather::FullStateGather(Communicator* mp, Esm2Model& model, size_t piece)
    : mp_(mp && mp->world_size() > 1 ? mp : nullptr), be_(model.backend()), piece_(piece) {
  ESM2_CHECK(piece_ > 0, "checkpoint state gather: piece size must be positive");
  const ShardCoord& me = model.shard_coord();
  world_ = mp_ ? mp_->world_size() : 1;
  rank_ = mp_ ? mp_->rank() : 0;
  ESM2_CHECK(world_ == me.tp_size * me.pp_size,
             "checkpoint state gather: model-parallel group has {} ranks, model is split {} (TP) × {} (PP)", world_,
             me.tp_size, me.pp_size);
  owned_.resize(static_cast<size_t>(world_));
  for (int r = 0; r < world_; ++r) {
    if (r != rank_ && rank_ != 0) continue;  // only rank 0 needs the others' runs
    const ShardCoord c{r % me.tp_size, me.tp_size, r / me.tp_size, me.pp_size};
    const std::vector<FlatRun> runs = r == rank_ ? model.full_runs() : build_param_table(model.config(), c).runs;
    auto& own = owned_[static_cast<size_t>(r)];
    for (const FlatRun& run : runs)
      if (run.owner && run.length > 0) own.push_back({run.full, run.local, run.length});
    std::sort(own.begin(), own.end(), [](const Owned& a, const Owned& b) { return a.full < b.full; });
  }
  window_.resize(piece_);
  if (mp_) {
    host_.resize(piece_);
    dev_ = static_cast<float*>(be_.alloc(piece_ * 4));
  }
}

FullStateGather::~FullStateGather() {
  if (dev_) be_.free(dev_);
}

bool FullStateGather::is_root() const { return rank_ == 0; }

void FullStateGather::gather(size_t b, size_t n, const LocalStateReader& local, std::span<float> out) {
  ESM2_CHECK(n <= piece_, "checkpoint state gather: {} elements exceed the piece of {}", n, piece_);
  ESM2_CHECK(rank_ != 0 || out.size() == n, "checkpoint state gather: output holds {} elements, range has {}",
             out.size(), n);
  const size_t e = b + n;
  // fn(full start, local start, length) for each owned run's overlap with [b, e), in full order.
  auto overlaps = [&](int r, auto&& fn) {
    const auto& runs = owned_[static_cast<size_t>(r)];
    auto it = std::partition_point(runs.begin(), runs.end(), [&](const Owned& o) { return o.full + o.length <= b; });
    for (; it != runs.end() && it->full < e; ++it) {
      const size_t s = std::max(b, it->full), t = std::min(e, it->full + it->length);
      fn(s, it->local + (s - it->full), t - s);
    }
  };
  // This rank's own elements to dst(full start, length): one read of their local extent when it fits
  // the window (a piece of one tensor is local-contiguous), else one read per run.
  auto read_own = [&](auto&& dst) {
    size_t lo = SIZE_MAX, hi = 0;
    overlaps(rank_, [&](size_t, size_t l, size_t len) {
      lo = std::min(lo, l);
      hi = std::max(hi, l + len);
    });
    if (hi <= lo) return;
    const bool windowed = hi - lo <= piece_;
    if (windowed) local(lo, std::span<float>(window_).first(hi - lo));
    overlaps(rank_, [&](size_t s, size_t l, size_t len) {
      float* d = dst(s, len);
      if (windowed) std::copy_n(window_.data() + (l - lo), len, d);
      else local(l, std::span<float>(d, len));
    });
  };
  if (rank_ == 0) {
    read_own([&](size_t s, size_t) { return out.data() + (s - b); });
    for (int r = 1; r < world_; ++r) {
      size_t count = 0;
      overlaps(r, [&](size_t, size_t, size_t len) { count += len; });
      if (count == 0) continue;
      mp_->recv(dev_, count * 4, r, kWhat);
      be_.copy_to_host(host_.data(), dev_, count * 4);
      const float* src = host_.data();
      overlaps(r, [&](size_t s, size_t, size_t len) {
        std::copy_n(src, len, out.data() + (s - b));
        src += len;
      });
    }
    return;
  }
  size_t at = 0;
  read_own([&](size_t, size_t len) {
    float* d = host_.data() + at;
    at += len;
    return d;
  });
  if (at == 0) return;
  be_.copy_to_device(dev_, host_.data(), at * 4);
  mp_->send(dev_, at * 4, 0, kWhat);
}

void FullStateGather::gather_tensor(const ParamInfo& p, const LocalStateReader& local,
                                    const std::function<void(std::span<const float>)>& put) {
  if (rank_ == 0 && out_.size() < std::min(piece_, p.numel)) out_.resize(std::min(piece_, p.numel));
  for (size_t at = 0; at < p.numel; at += piece_) {
    const size_t n = std::min(piece_, p.numel - at);
    const std::span<float> out = rank_ == 0 ? std::span<float>(out_).first(n) : std::span<float>();
    gather(p.offset + at, n, local, out);
    if (rank_ == 0) put(out);
  }
}

void read_local_state(const Esm2Model& model, const FullTensorReader& read, std::span<float> local) {
  ESM2_CHECK(local.size() == model.num_params(), "read_local_state: {} local values, model part has {}", local.size(),
             model.num_params());
  const auto& infos = model.full_params_info();
  for (const FlatRun& r : model.full_runs()) {
    const ParamInfo& p = tensor_of(infos, r.full);
    read(p, r.full - p.offset, local.subspan(r.local, r.length));
  }
}

LocalStateReader local_reader_from_full(const Esm2Model& model, FullTensorReader read) {
  return [runs = runs_in_local_order(model), &infos = model.full_params_info(), read = std::move(read)](
             size_t b, std::span<float> dst) {
    const size_t e = b + dst.size();
    size_t covered = 0;
    auto it = std::partition_point(runs.begin(), runs.end(), [&](const FlatRun& r) { return r.local + r.length <= b; });
    for (; it != runs.end() && it->local < e; ++it) {
      const size_t lo = std::max(b, it->local), hi = std::min(e, it->local + it->length);
      if (lo >= hi) continue;
      const ParamInfo& p = tensor_of(infos, it->full);
      read(p, it->full - p.offset + (lo - it->local), dst.subspan(lo - b, hi - lo));
      covered += hi - lo;
    }
    ESM2_CHECK(covered == dst.size(), "local state read: runs cover {} of the {} values at local offset {}", covered,
               dst.size(), b);
  };
}

void read_local_params(Esm2Model& model, const FullTensorReader& read, size_t piece) {
  ESM2_CHECK(piece > 0, "read_local_params: piece size must be positive");
  const auto& infos = model.full_params_info();
  Backend& be = model.backend();
  std::vector<float> buf(std::min(piece, model.num_params()));
  size_t base = 0, filled = 0;  // buf holds local elements [base, base + filled)
  auto flush = [&] {
    if (filled > 0) be.copy_to_device(model.param_data() + base, buf.data(), filled * 4);
    base += filled;
    filled = 0;
  };
  for (const FlatRun& r : runs_in_local_order(model)) {
    ESM2_ASSERT(r.local == base + filled);
    const ParamInfo& p = tensor_of(infos, r.full);
    for (size_t at = 0; at < r.length;) {
      if (filled == buf.size()) flush();
      const size_t n = std::min(r.length - at, buf.size() - filled);
      read(p, r.full - p.offset + at, std::span<float>(buf).subspan(filled, n));
      filled += n;
      at += n;
    }
  }
  flush();
  ESM2_CHECK(base == model.num_params(), "read_local_params: runs cover {} of {} local values", base,
             model.num_params());
}

}  // namespace esm2
