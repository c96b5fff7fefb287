// CSV as RFC 4180 writes it (and as Excel, pandas and ProteinGym files use it): fields separated by commas,
// a field holding a comma, a quote or a line break quoted with its quotes doubled, records ended by LF or
// CRLF. The reader takes quoted line breaks and a leading UTF-8 byte-order mark; malformed input (an
// unterminated quote, text after a closing quote) is an error naming the file and the line.
#pragma once
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace esm2 {

// A field as it must appear in a CSV record: unchanged unless it holds a comma, quote, CR or LF.
std::string csv_field(std::string_view s);
// Fields joined into one record (no line ending).
std::string csv_record(const std::vector<std::string>& fields);
// One record given as a single string (a flag's value); `what` names it in errors.
std::vector<std::string> csv_split(std::string_view text, std::string_view what);

class CsvReader {
 public:
  explicit CsvReader(const std::filesystem::path& path);  // throws "<path>: cannot open: <reason>"
  // The next record into fields; false at the end of the file. Blank lines are skipped.
  bool next(std::vector<std::string>& fields);
  // The line on which the record last returned by next() starts (1-based).
  int64_t line() const { return record_line_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::ifstream in_;
  int64_t line_ = 0, record_line_ = 0;
};

}  // namespace esm2
