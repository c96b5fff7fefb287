#include "io/jsonl.h"

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace esm2 {

JsonlWriter::JsonlWriter(const std::filesystem::path& path, bool append)
    : file_(path, append ? AppendFile::Mode::Append : AppendFile::Mode::Truncate) {}

void JsonlWriter::write(const nlohmann::json& object) {
  ESM2_CHECK(object.is_object(), "{}: a metrics record must be a JSON object, got {}", path().string(),
             object.type_name());
  // replace: invalid UTF-8 in a string (e.g. a tag from user input) must not abort a training run.
  file_.append(object.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
}

}  // namespace esm2
