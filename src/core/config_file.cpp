#include "core/config_file.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

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

struct Reader {
  const OptionKindFn& kind;
  std::map<std::string, std::string>* origins;
  const std::set<std::string>& skip;  // flags given again on the command line after this --config
  std::vector<std::string> out;

  // One key = value of the file; `where` names the file and the key (or line). bare: the value was a
  // boolean (JSON true/false, or the words true/false on a line).
  void add(const std::string& flag, const std::string& where, bool bare, bool on, const std::string& value) {
    const OptionKind k = kind ? kind(flag) : (bare ? OptionKind::Flag : OptionKind::Value);
    ESM2_CHECK(k != OptionKind::Unknown, "{}: {} is not an option of this command (--help lists them)", where, flag);
    if (!bare && k == OptionKind::Flag && (value == "true" || value == "false")) bare = true, on = value == "true";
    ESM2_CHECK(!(bare && k == OptionKind::Value), "{}: {} takes a value, not {}", where, flag, on ? "true" : "false");
    ESM2_CHECK(bare || k != OptionKind::Flag, "{}: {} is an on/off flag: give true or false, not '{}'", where, flag,
               value);
    if (skip.count(flag)) return;  // the command line sets it again after --config: its value wins
    if (origins) (*origins)[flag] = where;
    if (bare) {
      // With the command's options known, false is passed on (`--x=false`): a flag that defaults to on (a
      // reference name such as --create-tensorboard-logger) must be turned off, not left alone.
      if (on) out.push_back(flag);
      else if (kind) out.push_back(flag + "=false");
      return;
    }
    out.push_back(flag);
    out.push_back(value);
  }

  void add_json(const std::string& flag, const nlohmann::json& v, const std::string& where) {
    if (v.is_boolean()) add(flag, where, true, v.get<bool>(), "");
    else if (v.is_string()) add(flag, where, false, false, v.get<std::string>());
    else if (v.is_number()) add(flag, where, false, false, v.dump());
    else if (v.is_array())
      for (const auto& e : v) add_json(flag, e, where);
    else fail("{}: option {} has an unsupported value {}", where, flag, v.dump());
  }
};

std::vector<std::string> read_config(const std::string& path, const OptionKindFn& kind,
                                     std::map<std::string, std::string>* origins, const std::set<std::string>& skip) {
  ESM2_CHECK(!std::filesystem::is_directory(path), "{}: is a directory, not a config file", path);
  const std::string text = read_file(path);
  Reader r{kind, origins, skip, {}};
  const std::string t = trim(text);
  if (!t.empty() && (t.front() == '{' || t.front() == '[')) {
    nlohmann::json j;
    std::vector<std::set<std::string>> keys;  // per open object: the keys seen, for duplicates
    std::string duplicate;
    const nlohmann::json::parser_callback_t cb = [&](int, nlohmann::json::parse_event_t ev, nlohmann::json& v) {
      if (ev == nlohmann::json::parse_event_t::object_start) keys.emplace_back();
      else if (ev == nlohmann::json::parse_event_t::object_end) keys.pop_back();
      else if (ev == nlohmann::json::parse_event_t::key && !keys.back().insert(v.get<std::string>()).second &&
               duplicate.empty())
        duplicate = v.get<std::string>();
      return true;
    };
    try {
      j = nlohmann::json::parse(text, cb);
    } catch (const nlohmann::json::exception& e) {
      // A line-style file whose first line is a [section] header is not JSON.
      if (t.front() == '{') fail("{}: not valid JSON: {}", path, e.what());
      j = nullptr;
    }
    if (!j.is_null() || t.front() == '{') {
      ESM2_CHECK(j.is_object(), "{}: a JSON {}; a config file is a JSON object or `key = value` lines", path, j.type_name());
      ESM2_CHECK(duplicate.empty(), "{}: key {} is given twice", path, duplicate);
      for (const auto& [k, v] : j.items()) r.add_json(flag_name(k, path), v, path + ": key " + k);
      return r.out;
    }
  }
  size_t line_no = 0, pos = 0;
  std::map<std::string, size_t> seen;  // key → line, for duplicates
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
    const auto [at, fresh] = seen.emplace(flag, line_no);
    ESM2_CHECK(fresh, "{}: {} is given twice (also on line {})", where, flag, at->second);
    std::string value = trim(line.substr(eq + 1));
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') && value.back() == value.front()) {
      r.add(flag, where, false, false, value.substr(1, value.size() - 2));
      continue;
    }
    const auto hash = value.find(" #");
    if (hash != std::string::npos) value = trim(value.substr(0, hash));
    ESM2_CHECK(!value.empty(), "{}: option {} has no value", where, flag);
    if (value == "true" || value == "false") r.add(flag, where, true, value == "true", value);
    else r.add(flag, where, false, false, value);
    if (pos > text.size()) break;
  }
  return r.out;
}

}  // namespace

std::vector<std::string> expand_config_args(const std::vector<std::string>& args, const OptionKindFn& kind,
                                            std::map<std::string, std::string>* origins) {
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
    // Options the command line gives after this --config override the file's, repeatable ones included
    // (appending a file's --fasta list to the command line's would silently mix inputs).
    std::set<std::string> later;
    for (size_t k = i + 1; k < args.size(); ++k)
      if (args[k].rfind("--", 0) == 0 && args[k] != "--config" && args[k].rfind("--config=", 0) != 0)
        later.insert(args[k].substr(0, args[k].find('=')));
    for (auto& a : read_config(path, kind, origins, later)) out.push_back(std::move(a));
  }
  return out;
}

}  // namespace esm2
