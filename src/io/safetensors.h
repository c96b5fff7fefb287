// safetensors: the Hugging Face tensor file format, read with full validation and written from fp32.
//
// Byte layout (https://github.com/huggingface/safetensors, version-less; the spec is the format):
//   [0, 8)        uint64 little-endian N = header length in bytes
//   [8, 8+N)      UTF-8 JSON object: { "<name>": {"dtype": "F32", "shape": [d0, d1, ...],
//                                     "data_offsets": [begin, end]}, ...,
//                                     "__metadata__": {"<key>": "<string>", ...} (optional) }
//                 trailing spaces allowed (writers pad N to a multiple of 8 so data stays aligned)
//   [8+N, EOF)    data region; a tensor's bytes are [8+N+begin, 8+N+end), row-major, little-endian
//
// The reader trusts nothing: N against the file size, every JSON type, known dtype, shape product ×
// dtype size == end − begin (overflow-checked), end inside the data region, no two tensors
// overlapping, no duplicate keys at any JSON depth. Every error is one line naming the file and the
// tensor or key.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace esm2 {


// Product of the dims; throws (naming `what`) on a negative dim or int64 overflow.
int64_t shape_numel(std::span<const int64_t> shape, std::string_view what);
std::string shape_str(std::span<const int64_t> shape);  // "[33, 320]"

// A tensor's bytes, dtype and shape, owned (for tensors passed through verbatim).
struct RawTensor {
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::string data;  // dtype_size × numel bytes, little-endian
};

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // offsets into the data region
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps the file read-only and validates the whole header.
  static SafetensorsFile open(const std::filesystem::path& path);
  // Validates an in-memory image; `name` stands for the file in error messages.
  static SafetensorsFile from_bytes(std::string bytes, std::string name);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& name() const;                   // the path (or the from_bytes name)
  const std::vector<TensorInfo>& tensors() const;    // sorted by name
  const std::map<std::string, std::string>& metadata() const;
  bool contains(std::string_view tensor) const;
  const TensorInfo& info(std::string_view tensor) const;  // throws "<file>: no tensor '<name>'"

  std::span<const std::byte> bytes(std::string_view tensor) const;
  RawTensor raw(std::string_view tensor) const;
  // F32/F16/BF16/F64 converted to float; any other dtype is an error naming the tensor.
  std::vector<float> to_f32(std::string_view tensor) const;
  // Same into caller memory (out.size() must equal numel): avoids a copy for large state tensors.
  void read_f32(std::string_view tensor, std::span<float> out) const;
  // Elements [begin, begin + out.size()) of the row-major tensor, converted: a rank of a model-parallel
  // run touches only the pages of its own pieces.
  void read_f32(std::string_view tensor, size_t begin, std::span<float> out) const;

 private:
  struct Impl;
  explicit SafetensorsFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A model stored as one file or as shards: `dir/model.safetensors`, or `dir/<stem>.safetensors.index.json`
// ({"metadata": {...}, "weight_map": {tensor: shard file}}) plus the shards it names. Every tensor in
// the weight map must be in its shard and every tensor of a shard in the weight map; a name in two
// shards is an error.
class SafetensorsSet {
 public:
  // path: a directory (model.safetensors, else model.safetensors.index.json, as transformers looks),
  // an index file, or a single .safetensors file.
  static SafetensorsSet open(const std::filesystem::path& path);

  std::vector<std::string> names() const;  // sorted
  bool contains(std::string_view tensor) const;
  const SafetensorsFile& file_of(std::string_view tensor) const;  // throws naming the tensor
  const TensorInfo& info(std::string_view tensor) const { return file_of(tensor).info(tensor); }
  std::vector<float> to_f32(std::string_view tensor) const { return file_of(tensor).to_f32(tensor); }
  void read_f32(std::string_view tensor, size_t begin, std::span<float> out) const {
    file_of(tensor).read_f32(tensor, begin, out);
  }
  RawTensor raw(std::string_view tensor) const { return file_of(tensor).raw(tensor); }
  const std::vector<SafetensorsFile>& files() const { return files_; }
  const std::string& source() const { return source_; }

 private:
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t, std::less<>> where_;  // tensor → index into files_
  std::string source_;
};

// Collects tensors and writes them. fp32 tensors are NOT copied: the span must stay valid until
// write()/write_sharded() returns (a 15B model's weights are never held twice). Conversion to BF16/F16
// happens in chunks while writing. Tensors are written in insertion order.
class SafetensorsWriter {
 public:
  // Stores `data` (numel(shape) floats) as `dtype` (F32, BF16 or F16).
  void add_f32(std::string name, std::vector<int64_t> shape, std::span<const float> data,
               DType dtype = DType::F32);
  // Stores bytes verbatim (any dtype); the writer keeps its own copy.
  void add_raw(std::string name, RawTensor tensor);
  void set_metadata(std::string key, std::string value);  // "format": "pt" is always present

  size_t size() const { return entries_.size(); }
  uint64_t data_bytes() const;

  // The whole file image (tests, small files).
  std::string serialize() const;
  // Writes `<path>.tmp`, fsyncs it and renames it to path.
  void write(const std::filesystem::path& path) const;
  // Writes model.safetensors if everything fits in max_shard_bytes (0 = no limit), else
  // model-0000k-of-0000n.safetensors shards (greedy in insertion order; a tensor larger than the
  // limit gets a shard of its own) plus model.safetensors.index.json, written last. The other
  // layout's entry file (index or single file) is removed so readers see the new one. Returns the
  // file names written (relative to dir).
  std::vector<std::string> write_sharded(const std::filesystem::path& dir, uint64_t max_shard_bytes) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::span<const float> f32;  // source when converting from fp32
    std::string raw;             // source otherwise
    bool from_f32 = false;
    uint64_t nbytes = 0;
  };
  std::string header_for(std::span<const size_t> idx) const;
  void write_file_of(const std::filesystem::path& path, std::span<const size_t> idx) const;
  // Entries per file as write_sharded groups them (one group when max_shard_bytes is 0 or all fit).
  std::vector<std::vector<size_t>> shard_groups(uint64_t max_shard_bytes) const;
  friend class SafetensorsStreamWriter;

  std::vector<Entry> entries_;
  std::map<std::string, size_t, std::less<>> by_name_;
  std::map<std::string, std::string> metadata_{{"format", "pt"}};
};

// One tensor of a SafetensorsStreamWriter's plan.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
};

// Writes the same file(s) as SafetensorsWriter, byte for byte, without holding any tensor: the tensor
// list is known up front (so is the header), then the data arrive in order, in pieces of any size.
// Memory: one conversion chunk. Each file is written as `<file>.tmp`, fsynced and renamed when its last
// byte arrives; a writer destroyed before finish() removes its open temp file (files already renamed
// stay: callers write into an AtomicDir).
class SafetensorsStreamWriter {
 public:
  // As SafetensorsWriter::write(path).
  static SafetensorsStreamWriter to_file(const std::filesystem::path& path, std::vector<SafetensorsEntry> entries,
                                         const std::map<std::string, std::string>& metadata = {});
  // As SafetensorsWriter::write_sharded(dir, max_shard_bytes): same shard boundaries, names and index.
  static SafetensorsStreamWriter to_dir(const std::filesystem::path& dir, std::vector<SafetensorsEntry> entries,
                                        uint64_t max_shard_bytes,
                                        const std::map<std::string, std::string>& metadata = {});
  SafetensorsStreamWriter(SafetensorsStreamWriter&&) noexcept;
  SafetensorsStreamWriter& operator=(SafetensorsStreamWriter&&) = delete;
  ~SafetensorsStreamWriter();

  // The next values of the current tensor (F32, BF16 or F16; converted as SafetensorsWriter::add_f32).
  void put_f32(std::span<const float> values);
  // The next bytes of the current tensor, verbatim (any dtype).
  void put_raw(std::span<const char> bytes);
  // Checks every tensor is complete, writes the index of a sharded set; returns the file names written.
  std::vector<std::string> finish();

 private:
  struct Impl;
  static std::unique_ptr<Impl> plan(std::vector<SafetensorsEntry> entries,
                                    const std::map<std::string, std::string>& metadata);
  explicit SafetensorsStreamWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace esm2
