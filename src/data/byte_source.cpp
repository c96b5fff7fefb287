#include "data/byte_source.h"

#include <zlib.h>

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "core/error.h"

namespace esm2 {

namespace {
constexpr size_t kChunk = 1 << 20;
}

struct ByteSource::Inflate {
  z_stream s{};
  bool init = false;
  ~Inflate() {
    if (init) inflateEnd(&s);
  }
};

// Inflated chunks handed from the worker to the reader: at most kAhead waiting, buffers recycled.
struct ByteSource::Prefetch {
  static constexpr size_t kAhead = 4;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::vector<char>> ready;
  std::vector<std::vector<char>> spare;
  std::vector<char> current;  // the chunk the reader's last view points into
  bool done = false, stop = false;
  std::exception_ptr error;
  std::thread worker;
};

ByteSource::ByteSource(const std::filesystem::path& path) : path_(path) {
  file_ = std::fopen(path.c_str(), "rb");
  ESM2_CHECK(file_ != nullptr, "{}: cannot open: {}", path.string(), std::strerror(errno));
  // Buffers sized to the file, so that opening a small file (a fuzz input, one FASTA record) does not
  // allocate and zero 2 MiB: under ASan that made the FASTA and cluster fuzzers 50x slower than the rest.
  struct stat st {};
  const bool regular = ::fstat(::fileno(file_), &st) == 0 && S_ISREG(st.st_mode);
  const size_t size = regular ? static_cast<size_t>(st.st_size) : kChunk;
  in_.resize(std::clamp<size_t>(size + 1, 2, kChunk));
  in_len_ = read_raw(in_.data(), in_.size());
  gzip_ = in_len_ >= 2 && in_[0] == 0x1f && in_[1] == 0x8b;
  if (gzip_) {
    // The decompressed chunk may be any size: a small one only means more calls to next().
    out_.resize(std::clamp<size_t>(16 * size, size_t{64} << 10, kChunk));
    z_ = std::make_unique<Inflate>();
    // 15 + 16: zlib window 2^15, gzip header and trailer (CRC and length are checked by zlib).
    ESM2_CHECK(inflateInit2(&z_->s, 15 + 16) == Z_OK, "{}: inflateInit2 failed", path.string());
    z_->init = true;
    stream_done_ = false;
    ahead_ = std::make_unique<Prefetch>();
    ahead_->worker = std::thread([this] {
      Prefetch& a = *ahead_;
      for (;;) {
        std::vector<char> buf;
        {
          std::unique_lock<std::mutex> lock(a.mu);
          a.cv.wait(lock, [&] { return a.stop || a.ready.size() < Prefetch::kAhead; });
          if (a.stop) return;
          if (!a.spare.empty()) {
            buf = std::move(a.spare.back());
            a.spare.pop_back();
          }
        }
        std::string_view chunk;
        std::exception_ptr error;
        try {
          chunk = inflate_next();
        } catch (...) {
          error = std::current_exception();
        }
        buf.assign(chunk.begin(), chunk.end());
        std::lock_guard<std::mutex> lock(a.mu);
        if (error || chunk.empty()) {
          a.error = error;
          a.done = true;
          a.cv.notify_all();
          return;
        }
        a.ready.push_back(std::move(buf));
        a.cv.notify_all();
      }
    });
  }
}

ByteSource::~ByteSource() {
  if (ahead_) {
    {
      std::lock_guard<std::mutex> lock(ahead_->mu);
      ahead_->stop = true;
    }
    ahead_->cv.notify_all();
    ahead_->worker.join();
  }
  if (file_) std::fclose(file_);
}

size_t ByteSource::read_raw(uint8_t* dst, size_t n) {
  if (raw_eof_) return 0;
  size_t got = std::fread(dst, 1, n, file_);
  raw_crc_ = static_cast<uint32_t>(crc32(raw_crc_, dst, static_cast<uInt>(got)));
  raw_bytes_ += got;
  if (got < n) {
    ESM2_CHECK(!std::ferror(file_), "{}: read error: {}", path_.string(), std::strerror(errno));
    raw_eof_ = true;
  }
  return got;
}

std::string_view ByteSource::next() {
  if (ahead_) {
    Prefetch& a = *ahead_;
    std::unique_lock<std::mutex> lock(a.mu);
    if (a.current.capacity() > 0) a.spare.push_back(std::move(a.current));
    a.current = {};
    a.cv.wait(lock, [&] { return !a.ready.empty() || a.done; });
    if (!a.ready.empty()) {
      a.current = std::move(a.ready.front());
      a.ready.pop_front();
      a.cv.notify_all();
      return {a.current.data(), a.current.size()};
    }
    if (a.error) std::rethrow_exception(a.error);
    return {};
  }
  return inflate_next();
}

std::string_view ByteSource::inflate_next() {
  if (!gzip_) {
    // The first raw chunk was read by the constructor to sniff the magic.
    if (in_len_ > in_pos_) {
      std::string_view v(reinterpret_cast<const char*>(in_.data()) + in_pos_, in_len_ - in_pos_);
      in_pos_ = in_len_;
      return v;
    }
    in_len_ = read_raw(in_.data(), in_.size());
    in_pos_ = in_len_;
    return {reinterpret_cast<const char*>(in_.data()), in_len_};
  }
  z_stream& s = z_->s;
  for (;;) {
    if (in_pos_ == in_len_) {
      in_len_ = read_raw(in_.data(), in_.size());
      in_pos_ = 0;
      if (in_len_ == 0) {
        ESM2_CHECK(stream_done_, "{}: truncated gzip stream (compressed data ends before the gzip trailer)",
                   path_.string());
        return {};
      }
    }
    if (stream_done_) {
      // Concatenated gzip members (bgzip, `cat a.gz b.gz`) are one logical stream.
      ESM2_CHECK(inflateReset(&s) == Z_OK, "{}: inflateReset failed", path_.string());
      stream_done_ = false;
    }
    s.next_in = in_.data() + in_pos_;
    s.avail_in = static_cast<uInt>(in_len_ - in_pos_);
    s.next_out = reinterpret_cast<Bytef*>(out_.data());
    s.avail_out = static_cast<uInt>(out_.size());
    int rc = inflate(&s, Z_NO_FLUSH);
    in_pos_ = in_len_ - s.avail_in;
    size_t produced = out_.size() - s.avail_out;
    if (rc == Z_STREAM_END) {
      stream_done_ = true;
    } else if (rc != Z_OK && !(rc == Z_BUF_ERROR && produced == 0 && s.avail_in == 0)) {
      fail("{}: corrupt gzip data: {}", path_.string(), s.msg ? s.msg : zError(rc));
    }
    if (produced > 0) return {out_.data(), produced};
  }
}

bool LineReader::next(std::string_view& line) {
  // The previous line may have been a view into carry_; only now is it safe to reuse.
  if (clear_carry_) {
    carry_.clear();
    clear_carry_ = false;
  }
  if (done_) return false;
  for (;;) {
    size_t nl = chunk_.find('\n');
    if (nl != std::string_view::npos) {
      if (carry_.empty()) {
        line = chunk_.substr(0, nl);
      } else {
        carry_.append(chunk_.substr(0, nl));
        line = carry_;
        clear_carry_ = true;
      }
      chunk_.remove_prefix(nl + 1);
      break;
    }
    carry_.append(chunk_);
    chunk_ = src_.next();
    if (chunk_.empty()) {
      done_ = true;
      if (carry_.empty()) return false;
      line = carry_;
      clear_carry_ = true;
      break;
    }
  }
  ++line_no_;
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return true;
}

FileDigest digest_file(const std::filesystem::path& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  ESM2_CHECK(f != nullptr, "{}: cannot open: {}", path.string(), std::strerror(errno));
  std::vector<uint8_t> buf(kChunk);
  FileDigest d;
  uLong crc = crc32(0L, Z_NULL, 0);
  for (;;) {
    size_t n = std::fread(buf.data(), 1, buf.size(), f);
    crc = crc32(crc, buf.data(), static_cast<uInt>(n));
    d.bytes += n;
    if (n < buf.size()) break;
  }
  bool err = std::ferror(f);
  std::fclose(f);
  ESM2_CHECK(!err, "{}: read error", path.string());
  d.crc32 = static_cast<uint32_t>(crc);
  return d;
}

}  // namespace esm2
