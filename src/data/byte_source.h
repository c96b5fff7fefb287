// A sequential reader over a plain or gzip-compressed file (gzip detected by its magic bytes, not
// the file name). A gzip stream that ends before its trailer is an error, never a silent EOF:
// a truncated download must not become a silently smaller corpus. A gzip file is inflated by a
// worker thread a few MiB ahead of the reader, so parsing and inflating use two cores; its errors
// reach the reader in stream order.
#pragma once
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace esm2 {

class ByteSource {
 public:
  explicit ByteSource(const std::filesystem::path& path);
  ~ByteSource();
  ByteSource(const ByteSource&) = delete;
  ByteSource& operator=(const ByteSource&) = delete;

  // Next chunk of decompressed bytes; empty at the end of the data.
  std::string_view next();
  bool gzipped() const { return gzip_; }
  const std::filesystem::path& path() const { return path_; }
  // Size and zlib crc32 of the raw (compressed) bytes read so far: of the whole file once next()
  // returned empty, so a reader records its source without a second pass over it.
  uint64_t raw_bytes() const { return raw_bytes_; }
  uint32_t raw_crc32() const { return raw_crc_; }

 private:
  size_t read_raw(uint8_t* dst, size_t n);
  std::string_view inflate_next();  // the worker's side: next inflated chunk, empty at the end

  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
  bool gzip_ = false;
  bool raw_eof_ = false;
  bool stream_done_ = true;  // gzip: between members (no member started or the last one ended)
  struct Inflate;
  std::unique_ptr<Inflate> z_;
  std::vector<uint8_t> in_;   // compressed input buffer
  std::vector<char> out_;     // decompressed output buffer
  size_t in_pos_ = 0, in_len_ = 0;
  uint64_t raw_bytes_ = 0;
  uint32_t raw_crc_ = 0;
  struct Prefetch;
  std::unique_ptr<Prefetch> ahead_;
};

// Reads the source line by line; strips a trailing '\r' so CRLF files parse like LF files.
class LineReader {
 public:
  explicit LineReader(const std::filesystem::path& path) : src_(path) {}
  // False at end of input. The view is valid until the next call.
  bool next(std::string_view& line);
  uint64_t line_number() const { return line_no_; }
  const std::filesystem::path& path() const { return src_.path(); }
  const ByteSource& source() const { return src_; }

 private:
  ByteSource src_;
  std::string_view chunk_;
  std::string carry_;  // a line split across chunks
  uint64_t line_no_ = 0;
  bool done_ = false;
  bool clear_carry_ = false;
};

// zlib crc32 and size of a file (the manifest records both for every source).
struct FileDigest {
  uint64_t bytes = 0;
  uint32_t crc32 = 0;
};
FileDigest digest_file(const std::filesystem::path& path);

}  // namespace esm2
