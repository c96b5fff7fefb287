// safetensors: header validation through the in-memory API, then every tensor converted to fp32
// (exercises the offsets the header validation accepted).
#include "fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  esm2::fuzz::expect_result_or_error([&] {
    const auto f = esm2::SafetensorsFile::from_bytes(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    for (const auto& t : f.tensors()) {
      esm2::fuzz::expect_result_or_error([&] { (void)f.to_f32(t.name); });
      esm2::fuzz::expect_result_or_error([&] { (void)f.raw(t.name); });
    }
    (void)f.metadata();
  });
  return 0;
}
