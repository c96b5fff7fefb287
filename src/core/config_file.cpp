#include "core/config_file.h"

#include <nlohmann/json.hpp>

#include "core/atomic_dir.h"
#include "core/error.h"

namespace esm2 {
namespace {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

std::string flag_name(std::string key, const std::string& where) {
  while (!key.empty() && key.front() == '-') key.erase(key.begin());
  ESM2_CHECK(!key.empty(), "{}: empty option name", where);
  for (char& c : key) {
    ESM2_CHECK(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_', "{}: bad option name '{}'", where, key);
    if (c == '_') c = '-';
  }
  return "--" + key;
}

void append_value(std::vector<std::string>& out, const std::string& flag, const nlohmann::json& v,
                  const std::string& where) {
  if (v.is_boolean()) {
    if (v.get<bool>()) out.push_back(flag);
  } else if (v.is_string()) {
    out.push_back(flag);
    out.push_back(v.get<std::string>());
  } else if (v.is_number()) {
    out.push_back(flag);
    out.push_back(v.dump());
  } else if (v.is_array()) {
    for (const auto& e : v) append_value(out, flag, e, where);
  } else {
    fail("{}: option {} has an unsupported value {}", where, flag, v.dump());
  }
}

std::vector<std::string> read_config(const std::string& path) {
  const std::string text = read_file(path);
  std::vector<std::string> out;
  const std::string t = trim(text);
  if (!t.empty() && t.front() == '{') {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not valid JSON: {}", path, e.what());
    }
    for (const auto& [k, v] : j.items()) append_value(out, flag_name(k, path), v, path + ": key " + k);
    return out;
  }
  size_t line_no = 0, pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = trim(text.substr(pos, end - pos));
    pos = end + 1;
    ++line_no;
    if (line.empty() || line[0] == '#' || line[0] == ';' || line[0] == '[') continue;
    const auto eq = line.find('=');
    const std::string where = fmt::format("{}:{}", path, line_no);
    ESM2_CHECK(eq != std::string::npos, "{}: expected 'key = value', got '{}'", where, line);
    const std::string flag = flag_name(trim(line.substr(0, eq)), where);
    std::string value = trim(line.substr(eq + 1));
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') && value.back() == value.front()) {
      out.push_back(flag);
      out.push_back(value.substr(1, value.size() - 2));
      continue;
    }
    const auto hash = value.find(" #");
    if (hash != std::string::npos) value = trim(value.substr(0, hash));
    ESM2_CHECK(!value.empty(), "{}: option {} has no value", where, flag);
    if (value == "true") {
      out.push_back(flag);
    } else if (value != "false") {
      out.push_back(flag);
      out.push_back(value);
    }
    if (pos > text.size()) break;
  }
  return out;
}

}  // namespace

std::vector<std::string> expand_config_args(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string path;
    if (args[i] == "--config") {
      ESM2_CHECK(i + 1 < args.size(), "--config needs a file name");
      path = args[++i];
    } else if (args[i].rfind("--config=", 0) == 0) {
      path = args[i].substr(9);
    } else {
      out.push_back(args[i]);
      continue;
    }
    for (auto& a : read_config(path)) out.push_back(std::move(a));
  }
  return out;
}

}  // namespace esm2
