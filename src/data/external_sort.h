// External merge sort of fixed-width records, the tool that keeps `esm2 prepare` within a memory
// bound whatever the input size: records are collected in a buffer of at most `budget_bytes`, each
// full buffer is sorted and written to a run file, and reading merges the runs. Records are
// trivially copyable structs ordered by their operator<; ties keep no particular order, so every
// record type makes its key unique (the prepare records carry a line or sequence number).
#pragma once
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <queue>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"

namespace esm2 {

template <class Rec>
class ExternalSorter {
  static_assert(std::is_trivially_copyable_v<Rec>);

 public:
  // Run files are `dir/<name>.<k>`; they are removed when the sorter is destroyed.
  ExternalSorter(std::filesystem::path dir, std::string name, size_t budget_bytes)
      : dir_(std::move(dir)), name_(std::move(name)),
        capacity_(std::max<size_t>(budget_bytes / sizeof(Rec), 1024)) {}
  ~ExternalSorter() {
    for (auto& r : readers_) r.close();
    std::error_code ec;
    for (const auto& p : run_paths_) std::filesystem::remove(p, ec);
  }
  ExternalSorter(const ExternalSorter&) = delete;
  ExternalSorter& operator=(const ExternalSorter&) = delete;

  void push(const Rec& r) {
    if (buf_.size() == capacity_) spill();
    // Grow by doubling but never past the budget (push_back's own growth could overshoot it 2x).
    if (buf_.size() == buf_.capacity()) buf_.reserve(std::min(capacity_, std::max<size_t>(2 * buf_.capacity(), 1 << 12)));
    buf_.push_back(r);
    ++count_;
  }
  uint64_t size() const { return count_; }

  // Ends the input; next() then yields every record in order. A sorter that never filled its
  // buffer sorts in memory and writes nothing.
  void finish() {
    std::sort(buf_.begin(), buf_.end());
    if (!run_paths_.empty()) {
      if (!buf_.empty()) spill();
      std::vector<Rec>().swap(buf_);
      // The merge's read buffers share the budget (1 MiB per run at most, 64 KiB at least).
      size_t per_run = std::clamp<size_t>(capacity_ * sizeof(Rec) / run_paths_.size(), 64 << 10, 1 << 20);
      for (const auto& p : run_paths_) readers_.emplace_back(p, std::max<size_t>(per_run / sizeof(Rec), 64));
      for (size_t k = 0; k < readers_.size(); ++k)
        if (readers_[k].advance()) heap_.push({readers_[k].head, k});
    }
    finished_ = true;
  }

  bool next(Rec& out) {
    ESM2_ASSERT(finished_);
    if (run_paths_.empty()) {
      if (pos_ == buf_.size()) return false;
      out = buf_[pos_++];
      return true;
    }
    if (heap_.empty()) return false;
    auto [rec, k] = heap_.top();
    heap_.pop();
    out = rec;
    if (readers_[k].advance()) heap_.push({readers_[k].head, k});
    return true;
  }

 private:
  void spill() {
    std::sort(buf_.begin(), buf_.end());
    std::filesystem::path p = dir_ / (name_ + "." + std::to_string(run_paths_.size()));
    std::FILE* f = std::fopen(p.c_str(), "wb");
    ESM2_CHECK(f != nullptr, "{}: cannot create: {}", p.string(), std::strerror(errno));
    run_paths_.push_back(p);
    size_t n = std::fwrite(buf_.data(), sizeof(Rec), buf_.size(), f);
    bool ok = n == buf_.size();
    ok = (std::fclose(f) == 0) && ok;
    ESM2_CHECK(ok, "{}: write failed (disk full?): {}", p.string(), std::strerror(errno));
    buf_.clear();
  }

  struct Reader {
    std::FILE* f = nullptr;
    std::filesystem::path path;
    std::vector<Rec> buf;
    size_t pos = 0, len = 0;
    Rec head{};
    Reader(const std::filesystem::path& p, size_t records) : path(p), buf(records) {
      f = std::fopen(p.c_str(), "rb");
      ESM2_CHECK(f != nullptr, "{}: cannot open: {}", p.string(), std::strerror(errno));
    }
    Reader(Reader&& o) noexcept : f(o.f), path(std::move(o.path)), buf(std::move(o.buf)), pos(o.pos), len(o.len) {
      o.f = nullptr;
    }
    ~Reader() { close(); }
    void close() {
      if (f) std::fclose(f);
      f = nullptr;
    }
    bool advance() {
      if (pos == len) {
        if (!f) return false;
        len = std::fread(buf.data(), sizeof(Rec), buf.size(), f);
        pos = 0;
        if (len == 0) {
          ESM2_CHECK(!std::ferror(f), "{}: read error", path.string());
          close();
          return false;
        }
      }
      head = buf[pos++];
      return true;
    }
  };
  struct HeapItem {
    Rec rec;
    size_t run;
    bool operator<(const HeapItem& o) const { return o.rec < rec; }  // min-heap
  };

  std::filesystem::path dir_;
  std::string name_;
  size_t capacity_;
  std::vector<Rec> buf_;
  size_t pos_ = 0;
  uint64_t count_ = 0;
  bool finished_ = false;
  std::vector<std::filesystem::path> run_paths_;
  std::vector<Reader> readers_;
  std::priority_queue<HeapItem> heap_;
};

}  // namespace esm2
