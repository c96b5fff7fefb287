#include "io/npy.h"

#include <cstring>

#include "core/atomic_dir.h"
#include "core/error.h"

namespace esm2 {

namespace {

std::string header_for(const char* descr, std::span<const int64_t> shape) {
  std::string dims;  // "N," for 1-D (a Python tuple), "N, H" otherwise
  for (size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) dims += ",";
  std::string dict = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict.push_back('\n');
  std::string out("\x93NUMPY\x01\x00", 8);
  const auto len = static_cast<uint16_t>(dict.size());
  out.push_back(static_cast<char>(len & 0xff));
  out.push_back(static_cast<char>(len >> 8));
  return out + dict;
}

template <class T>
std::string image(const char* descr, std::span<const T> data, std::span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  ESM2_CHECK(n == static_cast<int64_t>(data.size()), "npy: shape has {} elements but the data {}", n, data.size());
  std::string out = header_for(descr, shape);
  const size_t h = out.size();
  out.resize(h + data.size_bytes());
  if (!data.empty()) std::memcpy(out.data() + h, data.data(), data.size_bytes());
  return out;
}

}  // namespace

std::string npy_bytes(std::span<const float> data, std::span<const int64_t> shape) { return image("<f4", data, shape); }
std::string npy_bytes(std::span<const int64_t> data, std::span<const int64_t> shape) {
  return image("<i8", data, shape);
}

NpyArray read_npy(const std::filesystem::path& path) {
  const std::string b = read_file(path);
  const std::string name = path.string();
  ESM2_CHECK(b.size() >= 10 && b.compare(0, 6, "\x93NUMPY") == 0 && b[6] == 1, "{}: not a version 1 .npy file", name);
  const size_t hlen = static_cast<uint8_t>(b[8]) | (static_cast<size_t>(static_cast<uint8_t>(b[9])) << 8);
  ESM2_CHECK(b.size() >= 10 + hlen, "{}: truncated header", name);
  const std::string dict = b.substr(10, hlen);
  NpyArray a;
  const size_t d = dict.find("'descr': '");
  ESM2_CHECK(d != std::string::npos, "{}: header without descr", name);
  a.descr = dict.substr(d + 10, 3);
  ESM2_CHECK(a.descr == "<f4" || a.descr == "<i8", "{}: dtype {} (expected <f4 or <i8)", name, a.descr);
  const size_t s = dict.find("'shape': (");
  ESM2_CHECK(s != std::string::npos, "{}: header without shape", name);
  const size_t e = dict.find(')', s);
  std::string dims = dict.substr(s + 10, e - s - 10);
  int64_t n = 1;
  size_t p = 0;
  while (p < dims.size()) {
    while (p < dims.size() && (dims[p] == ' ' || dims[p] == ',')) ++p;
    if (p >= dims.size()) break;
    size_t q = p;
    while (q < dims.size() && dims[q] >= '0' && dims[q] <= '9') ++q;
    ESM2_CHECK(q > p, "{}: bad shape '{}'", name, dims);
    a.shape.push_back(std::stoll(dims.substr(p, q - p)));
    n *= a.shape.back();
    p = q;
  }
  const size_t esize = 4 + 4 * (a.descr == "<i8");
  ESM2_CHECK(b.size() == 10 + hlen + static_cast<size_t>(n) * esize, "{}: {} data bytes for shape of {} elements", name,
             b.size() - 10 - hlen, n);
  a.values.resize(static_cast<size_t>(n));
  const char* src = b.data() + 10 + hlen;
  for (int64_t i = 0; i < n; ++i) {
    if (a.descr == "<f4") {
      float f;
      std::memcpy(&f, src + i * 4, 4);
      a.values[static_cast<size_t>(i)] = f;
    } else {
      int64_t v;
      std::memcpy(&v, src + i * 8, 8);
      a.values[static_cast<size_t>(i)] = static_cast<double>(v);
    }
  }
  return a;
}

}  // namespace esm2
