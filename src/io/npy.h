// NumPy .npy writer (format version 1.0, little-endian, C order) for the arrays `esm2 embed` writes:
//   "\x93NUMPY" 0x01 0x00, uint16 LE header length, the header dict
//   "{'descr': '<f4', 'fortran_order': False, 'shape': (N, H), }" padded with spaces and a final '\n'
//   so that the data starts at a multiple of 64 bytes, then the raw little-endian data.
#pragma once
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace esm2 {

// The whole file image; numel(shape) must equal the data size.
std::string npy_bytes(std::span<const float> data, std::span<const int64_t> shape);
std::string npy_bytes(std::span<const int64_t> data, std::span<const int64_t> shape);

// Reads a float32 or int64 .npy written as above (tests and tools): shape and values as double.
struct NpyArray {
  std::string descr;  // "<f4" or "<i8"
  std::vector<int64_t> shape;
  std::vector<double> values;
};
NpyArray read_npy(const std::filesystem::path& path);

}  // namespace esm2
