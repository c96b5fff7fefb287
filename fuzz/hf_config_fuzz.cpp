// Hugging Face config.json parser (and the ModelConfig validation it ends with).
#include "fuzz_util.h"
#include "io/hf_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  esm2::fuzz::expect_result_or_error([&] {
    (void)esm2::parse_hf_config(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz/config.json");
  });
  return 0;
}
