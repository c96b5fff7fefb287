#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "core/atomic_dir.h"
#include "core/error.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace esm2 {

// The reference implementation refuses headers above 100 MB; so do we (a bound on what a corrupt
// length field can make us allocate).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

int64_t shape_numel(std::span<const int64_t> shape, std::string_view what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    ESM2_CHECK(d >= 0, "{}: negative dimension {} in shape {}", what, d, shape_str(shape));
    ESM2_CHECK(!__builtin_mul_overflow(n, d, &n), "{}: shape {} overflows int64", what, shape_str(shape));
  }
  return n;
}

std::string shape_str(std::span<const int64_t> shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

int64_t TensorInfo::numel() const { return shape_numel(shape, name); }

// ---------------------------------------------------------------------------------------------
// Reader

struct SafetensorsFile::Impl {
  std::string name;
  std::string owned;  // from_bytes image
  void* map = nullptr;
  size_t map_len = 0;
  const std::byte* base = nullptr;
  uint64_t size = 0;
  uint64_t data_start = 0;  // 8 + N
  std::vector<TensorInfo> tensors;
  std::map<std::string, size_t, std::less<>> index;
  std::map<std::string, std::string> metadata;

  ~Impl() {
    if (map) ::munmap(map, map_len);
  }
  void parse();
};

namespace {

// Parses JSON and rejects duplicate object keys at any depth (nlohmann would keep the last one
// silently, and a duplicated tensor name would then hide a second data range).
json parse_json_unique(std::string_view text, const std::string& what) {
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  json::parser_callback_t cb = [&](int, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (ev == json::parse_event_t::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (ev == json::parse_event_t::key && !open_objects.empty() && duplicate.empty()) {
      if (!open_objects.back().insert(parsed.get<std::string>()).second) duplicate = parsed.get<std::string>();
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text.begin(), text.end(), cb);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", what, e.what());
  }
  ESM2_CHECK(duplicate.empty(), "{}: duplicate key '{}'", what, duplicate);
  return j;
}

uint64_t json_u64(const json& v, const std::string& what) {
  ESM2_CHECK(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0),
             "{} must be a non-negative integer (got {})", what, v.dump());
  return v.get<uint64_t>();
}

}  // namespace

void SafetensorsFile::Impl::parse() {
  ESM2_CHECK(size >= 8, "{}: truncated: {} bytes, the 8-byte header length is missing", name, size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(base[i]);
  ESM2_CHECK(n <= size - 8, "{}: header length {} exceeds the {} bytes after the length field", name, n,
             size - 8);
  ESM2_CHECK(n <= kMaxHeaderBytes, "{}: header length {} exceeds the 100 MB limit", name, n);
  data_start = 8 + n;
  const uint64_t data_size = size - data_start;
  const std::string_view text(reinterpret_cast<const char*>(base + 8), n);
  const json header = parse_json_unique(text, name + " header");
  ESM2_CHECK(header.is_object(), "{}: header is not a JSON object", name);

  for (const auto& [key, val] : header.items()) {
    if (key == "__metadata__") {
      ESM2_CHECK(val.is_object(), "{}: __metadata__ is not an object", name);
      for (const auto& [mk, mv] : val.items()) {
        ESM2_CHECK(mv.is_string(), "{}: __metadata__ key '{}' is not a string", name, mk);
        metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    const std::string where = fmt::format("{}: tensor '{}'", name, key);
    ESM2_CHECK(val.is_object(), "{}: entry is not an object", where);
    ESM2_CHECK(val.contains("dtype") && val["dtype"].is_string(), "{}: missing or non-string dtype", where);
    ESM2_CHECK(val.contains("shape") && val["shape"].is_array(), "{}: missing or non-array shape", where);
    ESM2_CHECK(val.contains("data_offsets") && val["data_offsets"].is_array() && val["data_offsets"].size() == 2,
               "{}: data_offsets must be an array [begin, end]", where);
    TensorInfo t;
    t.name = key;
    const std::string dt = val["dtype"].get<std::string>();
    const auto parsed = parse_dtype(dt);
    ESM2_CHECK(parsed.has_value(), "{}: unknown dtype '{}'", where, dt);
    t.dtype = *parsed;
    for (const json& d : val["shape"]) {
      const uint64_t dim = json_u64(d, where + " shape dimension");
      ESM2_CHECK(dim <= static_cast<uint64_t>(INT64_MAX), "{}: shape dimension {} too large", where, dim);
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    t.begin = json_u64(val["data_offsets"][0], where + " data_offsets[0]");
    t.end = json_u64(val["data_offsets"][1], where + " data_offsets[1]");
    ESM2_CHECK(t.begin <= t.end, "{}: data_offsets [{}, {}] are reversed", where, t.begin, t.end);
    ESM2_CHECK(t.end <= data_size, "{}: data_offsets [{}, {}] run past the end of the data region ({} bytes)",
               where, t.begin, t.end, data_size);
    uint64_t nbytes = 0;
    const uint64_t numel = static_cast<uint64_t>(shape_numel(t.shape, where));
    ESM2_CHECK(!__builtin_mul_overflow(numel, dtype_size(t.dtype), &nbytes), "{}: byte size of shape {} overflows",
               where, shape_str(t.shape));
    ESM2_CHECK(nbytes == t.end - t.begin,
               "{}: shape {} of {} needs {} bytes but data_offsets [{}, {}] hold {}", where, shape_str(t.shape),
               dt, nbytes, t.begin, t.end, t.end - t.begin);
    tensors.push_back(std::move(t));
  }

  // Overlap check on the tensors sorted by offset; empty tensors occupy nothing.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : tensors)
    if (t.end > t.begin) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    ESM2_CHECK(by_offset[i - 1]->end <= by_offset[i]->begin,
               "{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap", name, by_offset[i - 1]->name,
               by_offset[i - 1]->begin, by_offset[i - 1]->end, by_offset[i]->name, by_offset[i]->begin,
               by_offset[i]->end);

  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  for (size_t i = 0; i < tensors.size(); ++i) index.emplace(tensors[i].name, i);
}

SafetensorsFile::SafetensorsFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

SafetensorsFile SafetensorsFile::open(const fs::path& path) {
  auto impl = std::make_unique<Impl>();
  impl->name = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ESM2_CHECK(fd >= 0, "{}: cannot open: {}", impl->name, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail("{}: cannot stat: {}", impl->name, std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", impl->name);
  }
  impl->size = static_cast<uint64_t>(st.st_size);
  if (impl->size > 0) {
    void* m = ::mmap(nullptr, impl->size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    ESM2_CHECK(m != MAP_FAILED, "{}: mmap failed: {}", impl->name, std::strerror(err));
    impl->map = m;
    impl->map_len = impl->size;
    impl->base = static_cast<const std::byte*>(m);
  } else {
    ::close(fd);
  }
  impl->parse();
  return SafetensorsFile(std::move(impl));
}

SafetensorsFile SafetensorsFile::from_bytes(std::string bytes, std::string name) {
  auto impl = std::make_unique<Impl>();
  impl->name = std::move(name);
  impl->owned = std::move(bytes);
  impl->base = reinterpret_cast<const std::byte*>(impl->owned.data());
  impl->size = impl->owned.size();
  impl->parse();
  return SafetensorsFile(std::move(impl));
}

const std::string& SafetensorsFile::name() const { return impl_->name; }
const std::vector<TensorInfo>& SafetensorsFile::tensors() const { return impl_->tensors; }
const std::map<std::string, std::string>& SafetensorsFile::metadata() const { return impl_->metadata; }
bool SafetensorsFile::contains(std::string_view tensor) const { return impl_->index.contains(tensor); }

const TensorInfo& SafetensorsFile::info(std::string_view tensor) const {
  auto it = impl_->index.find(tensor);
  ESM2_CHECK(it != impl_->index.end(), "{}: no tensor '{}'", impl_->name, tensor);
  return impl_->tensors[it->second];
}

std::span<const std::byte> SafetensorsFile::bytes(std::string_view tensor) const {
  const TensorInfo& t = info(tensor);
  return {impl_->base + impl_->data_start + t.begin, static_cast<size_t>(t.end - t.begin)};
}

RawTensor SafetensorsFile::raw(std::string_view tensor) const {
  const TensorInfo& t = info(tensor);
  auto b = bytes(tensor);
  return RawTensor{t.dtype, t.shape, std::string(reinterpret_cast<const char*>(b.data()), b.size())};
}

std::vector<float> SafetensorsFile::to_f32(std::string_view tensor) const {
  std::vector<float> out(static_cast<size_t>(info(tensor).numel()));
  read_f32(tensor, out);
  return out;
}

void SafetensorsFile::read_f32(std::string_view tensor, std::span<float> out) const {
  const TensorInfo& t = info(tensor);
  const size_t n = static_cast<size_t>(t.numel());
  ESM2_CHECK(out.size() == n, "{}: tensor '{}' has {} elements, destination holds {}", impl_->name, tensor, n,
             out.size());
  read_f32(tensor, 0, out);
}

void SafetensorsFile::read_f32(std::string_view tensor, size_t begin, std::span<float> out) const {
  const TensorInfo& t = info(tensor);
  const size_t numel = static_cast<size_t>(t.numel());
  ESM2_CHECK(begin <= numel && out.size() <= numel - begin,
             "{}: tensor '{}' has {} elements, cannot read [{}, {})", impl_->name, tensor, numel, begin,
             begin + out.size());
  const size_t n = out.size();
  if (n == 0) return;  // empty tensors may have null data pointers; memcpy must not see them
  const std::byte* src = bytes(tensor).data() + begin * dtype_size(t.dtype);
  // memcpy per element: the data region is only as aligned as the header length makes it.
  switch (t.dtype) {
    case DType::F32:
      if (n > 0) std::memcpy(out.data(), src, n * 4);  // an empty tensor's pointers may be null
      break;
    case DType::F64:
      for (size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, src + 8 * i, 8);
        out[i] = static_cast<float>(d);
      }
      break;
    case DType::BF16:
    case DType::F16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = t.dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
      }
      break;
    default:
      fail("{}: tensor '{}' has dtype {}, not a floating-point type", impl_->name, tensor, dtype_name(t.dtype));
  }
}

// ---------------------------------------------------------------------------------------------
// Sharded sets

namespace {
constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";
}  // namespace

SafetensorsSet SafetensorsSet::open(const fs::path& path) {
  SafetensorsSet set;
  fs::path index_path, single_path;
  if (fs::is_directory(path)) {
    // transformers' from_pretrained order: the single file wins over an index.
    if (fs::exists(path / kSingleName)) single_path = path / kSingleName;
    else if (fs::exists(path / kIndexName)) index_path = path / kIndexName;
    else fail("{}: neither {} nor {} found", path.string(), kSingleName, kIndexName);
  } else if (path.string().ends_with(".index.json")) {
    index_path = path;
  } else {
    single_path = path;
  }

  if (!single_path.empty()) {
    set.source_ = single_path.string();
    set.files_.push_back(SafetensorsFile::open(single_path));
    for (const auto& t : set.files_[0].tensors()) set.where_.emplace(t.name, 0);
    return set;
  }

  set.source_ = index_path.string();
  const json index = parse_json_unique(read_file(index_path), set.source_);
  ESM2_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
             "{}: missing 'weight_map' object", set.source_);
  std::map<std::string, size_t> shard_index;
  std::map<std::string, std::string> owner;  // tensor → shard named by the index
  for (const auto& [tensor, file] : index["weight_map"].items()) {
    ESM2_CHECK(file.is_string(), "{}: weight_map entry '{}' is not a string", set.source_, tensor);
    const std::string shard = file.get<std::string>();
    // Shards must sit next to the index: no directories, no way out of it.
    ESM2_CHECK(!shard.empty() && shard.find('/') == std::string::npos && shard != "." && shard != "..",
               "{}: weight_map entry '{}' names '{}', not a file in the same directory", set.source_, tensor,
               shard);
    owner[tensor] = shard;
    if (!shard_index.contains(shard)) {
      shard_index[shard] = set.files_.size();
      set.files_.push_back(SafetensorsFile::open(index_path.parent_path() / shard));
    }
  }
  for (const auto& [tensor, shard] : owner) {
    const SafetensorsFile& f = set.files_[shard_index[shard]];
    ESM2_CHECK(f.contains(tensor), "{}: tensor '{}' is listed in {} but missing from {}", set.source_, tensor,
               kIndexName, f.name());
    set.where_.emplace(tensor, shard_index[shard]);
  }
  for (const auto& [shard, i] : shard_index)
    for (const auto& t : set.files_[i].tensors()) {
      auto it = owner.find(t.name);
      ESM2_CHECK(it != owner.end(), "{}: tensor '{}' of shard {} is not in the index's weight_map", set.source_,
                 t.name, shard);
      ESM2_CHECK(it->second == shard, "{}: tensor '{}' is in shard {} but the index assigns it to {}", set.source_,
                 t.name, shard, it->second);
    }
  return set;
}

std::vector<std::string> SafetensorsSet::names() const {
  std::vector<std::string> out;
  for (const auto& [name, i] : where_) out.push_back(name);
  return out;
}

bool SafetensorsSet::contains(std::string_view tensor) const { return where_.contains(tensor); }

const SafetensorsFile& SafetensorsSet::file_of(std::string_view tensor) const {
  auto it = where_.find(tensor);
  ESM2_CHECK(it != where_.end(), "{}: no tensor '{}'", source_, tensor);
  return files_[it->second];
}

// ---------------------------------------------------------------------------------------------
// Writer

void SafetensorsWriter::add_f32(std::string name, std::vector<int64_t> shape, std::span<const float> data,
                                DType dtype) {
  ESM2_CHECK(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
             "safetensors writer: tensor '{}': cannot store fp32 data as {}", name, dtype_name(dtype));
  const int64_t n = shape_numel(shape, name);
  ESM2_CHECK(static_cast<uint64_t>(n) == data.size(), "safetensors writer: tensor '{}' has shape {} but {} values",
             name, shape_str(shape), data.size());
  Entry e{std::move(name), dtype, std::move(shape), data, {}, true, static_cast<uint64_t>(n) * dtype_size(dtype)};
  ESM2_CHECK(!e.name.empty() && e.name != "__metadata__", "safetensors writer: invalid tensor name '{}'", e.name);
  ESM2_CHECK(by_name_.emplace(e.name, entries_.size()).second, "safetensors writer: duplicate tensor '{}'", e.name);
  entries_.push_back(std::move(e));
}

void SafetensorsWriter::add_raw(std::string name, RawTensor tensor) {
  const int64_t n = shape_numel(tensor.shape, name);
  ESM2_CHECK(static_cast<uint64_t>(n) * dtype_size(tensor.dtype) == tensor.data.size(),
             "safetensors writer: tensor '{}' has shape {} of {} but {} bytes", name, shape_str(tensor.shape),
             dtype_name(tensor.dtype), tensor.data.size());
  Entry e{std::move(name), tensor.dtype, std::move(tensor.shape), {}, std::move(tensor.data), false, 0};
  e.nbytes = e.raw.size();
  ESM2_CHECK(!e.name.empty() && e.name != "__metadata__", "safetensors writer: invalid tensor name '{}'", e.name);
  ESM2_CHECK(by_name_.emplace(e.name, entries_.size()).second, "safetensors writer: duplicate tensor '{}'", e.name);
  entries_.push_back(std::move(e));
}

void SafetensorsWriter::set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }

uint64_t SafetensorsWriter::data_bytes() const {
  uint64_t n = 0;
  for (const auto& e : entries_) n += e.nbytes;
  return n;
}

std::string SafetensorsWriter::header_for(std::span<const size_t> idx) const {
  nlohmann::ordered_json h;
  h["__metadata__"] = metadata_;
  uint64_t off = 0;
  for (size_t i : idx) {
    const Entry& e = entries_[i];
    h[e.name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {off, off + e.nbytes}}};
    off += e.nbytes;
  }
  std::string text = h.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');  // keeps the data region 8-byte aligned
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((static_cast<uint64_t>(text.size()) >> (8 * i)) & 0xff);
  return out + text;
}

namespace {

// Checked sequential writes to a new file.
class FileOut {
 public:
  explicit FileOut(fs::path p) : path_(std::move(p)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ESM2_CHECK(fd_ >= 0, "{}: cannot create: {}", path_.string(), std::strerror(errno));
  }
  ~FileOut() {
    if (fd_ >= 0) ::close(fd_);
  }
  void put(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      ESM2_CHECK(w > 0, "{}: write failed after {} bytes: {}", path_.string(), written_,
                 w < 0 ? std::strerror(errno) : "no progress");
      p += w;
      n -= static_cast<size_t>(w);
      written_ += static_cast<uint64_t>(w);
    }
  }
  void sync_close() {
    ESM2_CHECK(::fsync(fd_) == 0, "{}: fsync failed: {}", path_.string(), std::strerror(errno));
    const int rc = ::close(fd_);
    fd_ = -1;
    ESM2_CHECK(rc == 0, "{}: close failed: {}", path_.string(), std::strerror(errno));
  }

 private:
  fs::path path_;
  int fd_ = -1;
  uint64_t written_ = 0;
};

// Emits entry data to `sink(ptr, n)`, converting fp32 sources in bounded chunks.
template <class Sink>
void emit_f32_as(std::span<const float> src, DType dtype, Sink&& sink) {
  if (src.empty()) return;
  if (dtype == DType::F32) {
    sink(src.data(), src.size() * 4);
    return;
  }
  constexpr size_t kChunk = 1 << 16;
  std::vector<uint16_t> buf(std::min(kChunk, src.size()));
  for (size_t i = 0; i < src.size(); i += kChunk) {
    const size_t n = std::min(kChunk, src.size() - i);
    for (size_t j = 0; j < n; ++j) buf[j] = dtype == DType::BF16 ? f32_to_bf16(src[i + j]) : f32_to_f16(src[i + j]);
    sink(buf.data(), n * 2);
  }
}

void rename_into_place(const fs::path& tmp, const fs::path& path) {
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();  // before remove() reuses ec
    fs::remove(tmp, ec);
    fail("{}: cannot rename {} into place: {}", path.string(), tmp.filename().string(), why);
  }
  if (path.has_parent_path()) fsync_path(path.parent_path());
}

}  // namespace

void SafetensorsWriter::write_file_of(const fs::path& path, std::span<const size_t> idx) const {
  fs::path tmp = path;
  tmp += ".tmp";
  try {
    FileOut out(tmp);
    const std::string header = header_for(idx);
    out.put(header.data(), header.size());
    for (size_t i : idx) {
      const Entry& e = entries_[i];
      if (e.from_f32) emit_f32_as(e.f32, e.dtype, [&](const void* p, size_t n) { out.put(p, n); });
      else out.put(e.raw.data(), e.raw.size());
    }
    out.sync_close();
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  rename_into_place(tmp, path);
}

std::string SafetensorsWriter::serialize() const {
  std::vector<size_t> all(entries_.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  std::string out = header_for(all);
  for (const Entry& e : entries_) {
    if (e.from_f32) emit_f32_as(e.f32, e.dtype, [&](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); });
    else out += e.raw;
  }
  return out;
}

void SafetensorsWriter::write(const fs::path& path) const {
  std::vector<size_t> all(entries_.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  write_file_of(path, all);
}

std::vector<std::vector<size_t>> SafetensorsWriter::shard_groups(uint64_t max_shard_bytes) const {
  std::vector<std::vector<size_t>> shards(1);
  uint64_t in_shard = 0;
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (max_shard_bytes > 0 && !shards.back().empty() && in_shard + entries_[i].nbytes > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += entries_[i].nbytes;
  }
  return shards;
}

std::vector<std::string> SafetensorsWriter::write_sharded(const fs::path& dir, uint64_t max_shard_bytes) const {
  const std::vector<std::vector<size_t>> shards = shard_groups(max_shard_bytes);
  if (shards.size() == 1) {
    write_file_of(dir / kSingleName, shards[0]);
    std::error_code ec;  // a stale index would describe other files than the ones just written
    fs::remove(dir / kIndexName, ec);
    return {kSingleName};
  }
  std::error_code ec;  // a stale single file would be read instead of the new shards
  fs::remove(dir / kSingleName, ec);
  std::vector<std::string> names;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    names.push_back(fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size()));
    write_file_of(dir / names.back(), shards[s]);
    for (size_t i : shards[s]) weight_map[entries_[i].name] = names.back();
  }
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", data_bytes()}};
  index["weight_map"] = std::move(weight_map);
  const fs::path tmp = dir / (std::string(kIndexName) + ".tmp");
  write_file(tmp, index.dump(2) + "\n");
  fsync_path(tmp);
  rename_into_place(tmp, dir / kIndexName);
  names.push_back(kIndexName);
  return names;
}

// ---------------------------------------------------------------------------------------------
// Streaming writer

struct SafetensorsStreamWriter::Impl {
  SafetensorsWriter plan;  // the entries without data: header text, shard grouping and index come from it
  fs::path dir;            // to_dir: where the files go; to_file: the file's directory
  bool to_dir = false;
  std::vector<std::vector<size_t>> shards;  // entry indices per file
  std::vector<std::string> names;           // file name per shard
  std::vector<fs::path> paths;
  size_t shard = 0, pos = 0;  // current file, and index into shards[shard] of the current tensor
  uint64_t done = 0;          // bytes of the current tensor written
  std::unique_ptr<FileOut> out;
  fs::path tmp;
  bool finished = false;

  // An unfinished file (an error, or a writer dropped early — also inside to_file/to_dir, before the
  // writer object exists) leaves no temporary behind.
  ~Impl() {
    if (!out) return;
    out.reset();
    std::error_code ec;
    fs::remove(tmp, ec);
  }
  bool complete() const { return shard >= shards.size(); }
  const SafetensorsWriter::Entry& entry() const { return plan.entries_[shards[shard][pos]]; }
  void open_shard() {
    tmp = paths[shard];
    tmp += ".tmp";
    out = std::make_unique<FileOut>(tmp);
    const std::string header = plan.header_for(shards[shard]);
    out->put(header.data(), header.size());
  }
  // Past complete (and empty) tensors; closes each file after its last tensor and opens the next.
  void advance() {
    while (!complete()) {
      while (pos < shards[shard].size() && done == entry().nbytes) {
        ++pos;
        done = 0;
      }
      if (pos < shards[shard].size()) return;
      out->sync_close();
      out.reset();
      rename_into_place(tmp, paths[shard]);
      ++shard;
      pos = 0;
      if (!complete()) open_shard();
    }
  }
  void check_room(uint64_t bytes) const {
    ESM2_CHECK(!complete(), "{}: safetensors stream: {} bytes after the last tensor", paths.back().string(), bytes);
    ESM2_CHECK(bytes <= entry().nbytes - done, "{}: safetensors stream: {} bytes for tensor '{}', which has {} left",
               paths[shard].string(), bytes, entry().name, entry().nbytes - done);
  }
};

std::unique_ptr<SafetensorsStreamWriter::Impl> SafetensorsStreamWriter::plan(
    std::vector<SafetensorsEntry> entries, const std::map<std::string, std::string>& metadata) {
  auto impl = std::make_unique<Impl>();
  SafetensorsWriter& w = impl->plan;
  for (const auto& [k, v] : metadata) w.set_metadata(k, v);
  for (SafetensorsEntry& e : entries) {
    const uint64_t nbytes = static_cast<uint64_t>(shape_numel(e.shape, e.name)) * dtype_size(e.dtype);
    ESM2_CHECK(!e.name.empty() && e.name != "__metadata__", "safetensors writer: invalid tensor name '{}'", e.name);
    ESM2_CHECK(w.by_name_.emplace(e.name, w.entries_.size()).second, "safetensors writer: duplicate tensor '{}'", e.name);
    w.entries_.push_back({std::move(e.name), e.dtype, std::move(e.shape), {}, {}, false, nbytes});
  }
  return impl;
}

SafetensorsStreamWriter::SafetensorsStreamWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SafetensorsStreamWriter::SafetensorsStreamWriter(SafetensorsStreamWriter&&) noexcept = default;

SafetensorsStreamWriter::~SafetensorsStreamWriter() = default;  // Impl removes an unfinished temporary

SafetensorsStreamWriter SafetensorsStreamWriter::to_file(const fs::path& path, std::vector<SafetensorsEntry> entries,
                                                         const std::map<std::string, std::string>& metadata) {
  auto impl = plan(std::move(entries), metadata);
  impl->dir = path.parent_path();
  impl->shards = impl->plan.shard_groups(0);
  impl->names = {path.filename().string()};
  impl->paths = {path};
  impl->open_shard();
  impl->advance();
  return SafetensorsStreamWriter(std::move(impl));
}

SafetensorsStreamWriter SafetensorsStreamWriter::to_dir(const fs::path& dir, std::vector<SafetensorsEntry> entries,
                                                        uint64_t max_shard_bytes,
                                                        const std::map<std::string, std::string>& metadata) {
  auto impl = plan(std::move(entries), metadata);
  impl->dir = dir;
  impl->to_dir = true;
  impl->shards = impl->plan.shard_groups(max_shard_bytes);
  const size_t k = impl->shards.size();
  for (size_t s = 0; s < k; ++s) {
    impl->names.push_back(k == 1 ? std::string(kSingleName) : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, k));
    impl->paths.push_back(dir / impl->names.back());
  }
  if (k > 1) {
    std::error_code ec;  // a stale single file would be read instead of the new shards
    fs::remove(dir / kSingleName, ec);
  }
  impl->open_shard();
  impl->advance();
  return SafetensorsStreamWriter(std::move(impl));
}

void SafetensorsStreamWriter::put_f32(std::span<const float> values) {
  Impl& m = *impl_;
  if (values.empty()) return;
  m.check_room(0);
  const DType dt = m.entry().dtype;
  ESM2_CHECK(dt == DType::F32 || dt == DType::BF16 || dt == DType::F16,
             "safetensors writer: tensor '{}': cannot store fp32 data as {}", m.entry().name, dtype_name(dt));
  m.check_room(values.size() * dtype_size(dt));
  emit_f32_as(values, dt, [&](const void* p, size_t n) { m.out->put(p, n); });
  m.done += values.size() * dtype_size(dt);
  m.advance();
}

void SafetensorsStreamWriter::put_raw(std::span<const char> bytes) {
  Impl& m = *impl_;
  if (bytes.empty()) return;
  m.check_room(bytes.size());
  m.out->put(bytes.data(), bytes.size());
  m.done += bytes.size();
  m.advance();
}

std::vector<std::string> SafetensorsStreamWriter::finish() {
  Impl& m = *impl_;
  ESM2_CHECK(!m.finished, "safetensors stream: finish() called twice");
  ESM2_CHECK(m.complete(), "{}: safetensors stream ended with tensor '{}' at {} of {} bytes", m.paths[m.shard].string(),
             m.entry().name, m.done, m.entry().nbytes);
  m.finished = true;
  std::vector<std::string> names = m.names;
  if (!m.to_dir) return names;
  std::error_code ec;
  if (m.shards.size() == 1) {
    fs::remove(m.dir / kIndexName, ec);  // a stale index would describe other files than the one just written
    return names;
  }
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t s = 0; s < m.shards.size(); ++s)
    for (size_t i : m.shards[s]) weight_map[m.plan.entries_[i].name] = m.names[s];
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", m.plan.data_bytes()}};
  index["weight_map"] = std::move(weight_map);
  const fs::path tmp = m.dir / (std::string(kIndexName) + ".tmp");
  write_file(tmp, index.dump(2) + "\n");
  fsync_path(tmp);
  rename_into_place(tmp, m.dir / kIndexName);
  names.push_back(kIndexName);
  return names;
}

}  // namespace esm2
