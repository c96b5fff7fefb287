#include "io/csv.h"

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace esm2 {

std::string csv_field(std::string_view s) {
  if (s.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(s);
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + '"';
}

std::string csv_record(const std::vector<std::string>& fields) {
  std::string out;
  for (size_t i = 0; i < fields.size(); ++i) {
    if (i) out += ',';
    out += csv_field(fields[i]);
  }
  return out;
}

namespace {

// Parses one physical line into fields, continuing a quoted field left open by the previous line
// (`quoted` in and out). Returns an error text, or empty.
std::string parse_line(std::string_view line, std::vector<std::string>& fields, bool& quoted) {
  if (fields.empty()) fields.emplace_back();
  bool closed = false;  // just after a field's closing quote: only ',' or the end may follow
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        fields.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
        closed = true;
      } else {
        fields.back() += c;
      }
    } else if (c == ',') {
      fields.emplace_back();
      closed = false;
    } else if (closed) {
      return "text after a closing quote (a quote inside a field must be doubled)";
    } else if (c == '"' && fields.back().empty()) {
      quoted = true;
    } else {
      fields.back() += c;  // a quote inside an unquoted field is kept as it is, as Python's csv module does
    }
  }
  return {};
}

}  // namespace

std::vector<std::string> csv_split(std::string_view text, std::string_view what) {
  std::vector<std::string> fields;
  bool quoted = false;
  const std::string err = parse_line(text, fields, quoted);
  ESM2_CHECK(err.empty(), "{}: {}", what, err);
  ESM2_CHECK(!quoted, "{}: unterminated quote", what);
  return fields;
}

CsvReader::CsvReader(const std::filesystem::path& path) : path_(path), in_(path, std::ios::binary) {
  ESM2_CHECK(in_.good(), "{}: cannot open: {}", path.string(), std::strerror(errno));
  if (in_.peek() == 0xEF) {  // a UTF-8 byte-order mark (spreadsheet exports) is not part of the first field
    char bom[3] = {};
    in_.read(bom, 3);
    if (!(bom[1] == '\xBB' && bom[2] == '\xBF')) {
      in_.clear();
      in_.seekg(0);
    }
  }
}

bool CsvReader::next(std::vector<std::string>& fields) {
  fields.clear();
  std::string line;
  bool quoted = false;
  while (std::getline(in_, line)) {
    ++line_;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (fields.empty()) {
      if (line.empty()) continue;
      record_line_ = line_;
    } else {
      fields.back() += '\n';  // the line break inside a quoted field
    }
    const std::string err = parse_line(line, fields, quoted);
    ESM2_CHECK(err.empty(), "{}: line {}: {}", path_.string(), line_, err);
    if (!quoted) return true;
  }
  ESM2_CHECK(!in_.bad(), "{}: read failed: {}", path_.string(), std::strerror(errno));
  ESM2_CHECK(!quoted, "{}: line {}: a quoted field opened here is never closed", path_.string(), record_line_);
  return false;
}

}  // namespace esm2
