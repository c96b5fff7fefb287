// Element types shared by the backends (activation dtype) and the file formats (safetensors).
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace esm2 {

enum class DType : uint8_t { F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);  // safetensors spelling: "F32", "BF16", ...
std::optional<DType> parse_dtype(std::string_view name);

// fp32 ↔ 16-bit conversions. to_*: round to nearest, ties to even; NaN stays NaN (quiet), overflow
// of F16 gives ±inf, F16 subnormals are produced exactly.
uint16_t f32_to_bf16(float x);
float bf16_to_f32(uint16_t x);
uint16_t f32_to_f16(float x);
float f16_to_f32(uint16_t x);

}  // namespace esm2
