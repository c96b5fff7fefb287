// The backend registry (backend/backend_factory.h) against what CMake compiled in: the generated
// builtin_components.cpp must register exactly the backend libraries of this build
// (ESM2_EXPECTED_BACKENDS, written by CMakeLists.txt from the same configuration), none lost to the
// linker and none twice; and make_backend must choose among them.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include <string>

#include "backend/backend_factory.h"
#include "core/error.h"

using namespace esm2;

namespace {
// The registry's names as CMake writes the expected list: comma-separated, in registration order.
std::string names() { return fmt::format("{}", fmt::join(registered_backends(), ",")); }
}  // namespace

TEST(BackendRegistry, ListsExactlyTheCompiledInBackends) {
  EXPECT_EQ(names(), ESM2_EXPECTED_BACKENDS);
  ASSERT_NE(find_backend("cpu"), nullptr);
  EXPECT_FALSE(find_backend("cpu")->accelerator);
  EXPECT_EQ(find_backend("tpu"), nullptr);
}

TEST(BackendRegistry, SecondRegistrationOfANameIsAnError) {
  EXPECT_THROW(register_backend({.name = "cpu", .accelerator = false, .device_count = [] { return 1; },
                                 .make = nullptr}),
               Error);
  EXPECT_EQ(names(), ESM2_EXPECTED_BACKENDS);
}

TEST(BackendRegistry, MakeBackendChoosesAmongRegisteredBackends) {
  EXPECT_EQ(make_backend(BackendKind::Cpu, Precision::Fp32, 1)->name(), "cpu");
  // auto: the first accelerator with a visible device, else the CPU.
  const BackendRegistration* cuda = find_backend("cuda");
  const bool gpu = cuda && cuda->device_count() > 0;
  if (!gpu) {
    EXPECT_EQ(make_backend(BackendKind::Auto, Precision::Auto, 1)->name(), "cpu");
  }
  if (!cuda) {
    try {
      make_backend(BackendKind::Cuda, Precision::Auto, 1);
      FAIL() << "a build without the CUDA backend made one";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("this build has no CUDA backend"), std::string::npos) << e.what();
    }
  }
  // The CPU's own precision rule travels with its registration.
  EXPECT_THROW(make_backend(BackendKind::Cpu, Precision::Bf16Mixed, 1), Error);
  EXPECT_THROW(make_backend(BackendKind::Cpu, Precision::Fp16Mixed, 1), Error);
  // fp8-mixed anywhere but a Hopper GPU: the one message that says what it needs.
  try {
    make_backend(BackendKind::Cpu, Precision::Fp8Mixed, 1);
    FAIL() << "the CPU backend accepted fp8-mixed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fp8-mixed needs a Hopper-class (sm_90+) CUDA GPU"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(parse_enum(kPrecisionNames, "fp8-mixed"), Precision::Fp8Mixed);
}
