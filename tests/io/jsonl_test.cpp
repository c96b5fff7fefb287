#include "io/jsonl.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/atomic_dir.h"
#include "core/error.h"

using namespace esm2;
namespace fs = std::filesystem;
using nlohmann::json;

TEST(Jsonl, OneObjectPerLineFlushedAndAppendable) {
  const fs::path p = fs::temp_directory_path() / fmt::format("esm2-jsonl-{}.jsonl", ::getpid());
  {
    JsonlWriter w(p);
    w.write({{"step", 1}, {"loss", 2.5}, {"tag", "a\nb"}});
    EXPECT_EQ(read_file(p), "{\"loss\":2.5,\"step\":1,\"tag\":\"a\\nb\"}\n");  // visible before close
    w.write({{"step", 2}, {"loss", std::nan("")}});
    EXPECT_THROW(w.write(json::array({1, 2})), Error);
  }
  {
    JsonlWriter resumed(p, /*append=*/true);
    resumed.write({{"step", 3}});
  }
  const std::string text = read_file(p);
  EXPECT_EQ(text, "{\"loss\":2.5,\"step\":1,\"tag\":\"a\\nb\"}\n{\"loss\":null,\"step\":2}\n{\"step\":3}\n");
  JsonlWriter fresh(p);  // not appending: starts over
  EXPECT_EQ(read_file(p), "");
  fs::remove(p);
}

TEST(Jsonl, WriteFailureNamesTheFile) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  JsonlWriter w("/dev/full", true);
  try {
    w.write({{"step", 1}});
    ADD_FAILURE() << "write to /dev/full succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/dev/full: write failed"), std::string::npos) << e.what();
  }
  EXPECT_THROW(JsonlWriter("/proc/esm2-no-such-dir/m.jsonl"), Error);
}
