// JSON Lines metrics file: one JSON object per line, each line handed to the kernel before write()
// returns (a crash loses no logged step), write failures thrown as esm2::Error naming the file.
// Non-finite numbers are written as null (JSON has no NaN/inf).
#pragma once
#include <filesystem>
#include <nlohmann/json_fwd.hpp>

#include "io/append_file.h"

namespace esm2 {

class JsonlWriter {
 public:
  // append = true continues an existing file (a resumed run); false starts it afresh.
  explicit JsonlWriter(const std::filesystem::path& path, bool append = false);
  void write(const nlohmann::json& object);  // throws unless `object` is a JSON object
  const std::filesystem::path& path() const { return file_.path(); }

 private:
  AppendFile file_;
};

}  // namespace esm2
