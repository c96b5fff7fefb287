// CSV against RFC 4180's own examples and the shapes spreadsheet exports take.
#include "io/csv.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "core/error.h"

namespace fs = std::filesystem;

namespace {

fs::path write_tmp(const std::string& name, const std::string& text) {
  const fs::path p = fs::temp_directory_path() / ("esm2-csv-test-" + std::to_string(::getpid()) + "-" + name);
  std::ofstream(p, std::ios::binary) << text;
  return p;
}

std::vector<std::vector<std::string>> read_all(const fs::path& p, std::vector<int64_t>* lines = nullptr) {
  esm2::CsvReader r(p);
  std::vector<std::vector<std::string>> out;
  std::vector<std::string> f;
  while (r.next(f)) {
    out.push_back(f);
    if (lines) lines->push_back(r.line());
  }
  return out;
}

TEST(Csv, FieldsAreQuotedOnlyWhenTheyMustBe) {
  EXPECT_EQ(esm2::csv_field("K2R"), "K2R");
  EXPECT_EQ(esm2::csv_field(""), "");
  EXPECT_EQ(esm2::csv_field("a,b"), "\"a,b\"");
  EXPECT_EQ(esm2::csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
  EXPECT_EQ(esm2::csv_field("two\nlines"), "\"two\nlines\"");
  EXPECT_EQ(esm2::csv_field("cr\r"), "\"cr\r\"");
  EXPECT_EQ(esm2::csv_record({"a", "b,c", ""}), "a,\"b,c\",");
}

TEST(Csv, WhatIsWrittenReadsBackUnchanged) {
  const std::vector<std::vector<std::string>> rows = {
      {"id", "note", ""}, {"x,1", "say \"hi\"", "two\nlines"}, {"", "\"", ","}};
  std::string text;
  for (const auto& r : rows) text += esm2::csv_record(r) + "\r\n";
  EXPECT_EQ(read_all(write_tmp("roundtrip.csv", text)), rows);
}

TEST(Csv, ReaderTakesBomCrlfQuotedBreaksAndBlankLines) {
  std::vector<int64_t> lines;
  const auto rows = read_all(write_tmp("bom.csv", "\xEF\xBB\xBFmutant,y\r\n\r\nK2R,\"a\r\nb\"\r\nM1A,\"\"\"q\"\"\"\n"), &lines);
  const std::vector<std::vector<std::string>> want = {{"mutant", "y"}, {"K2R", "a\nb"}, {"M1A", "\"q\""}};
  EXPECT_EQ(rows, want);
  EXPECT_EQ(lines, (std::vector<int64_t>{1, 3, 5}));
  // A quote inside an unquoted field is kept as it stands (as Python's csv module reads it).
  EXPECT_EQ(read_all(write_tmp("inner.csv", "a\"b,c\n")), (std::vector<std::vector<std::string>>{{"a\"b", "c"}}));
  EXPECT_EQ(esm2::csv_split("K2R,\"A3G:L4P\"", "--mutations"), (std::vector<std::string>{"K2R", "A3G:L4P"}));
}

TEST(Csv, MalformedInputNamesTheFileAndLine) {
  const fs::path open = write_tmp("open.csv", "a,b\nc,\"never\nclosed\n");
  try {
    read_all(open);
    FAIL() << "an unterminated quote was accepted";
  } catch (const esm2::Error& e) {
    EXPECT_EQ(std::string(e.what()), open.string() + ": line 2: a quoted field opened here is never closed");
  }
  const fs::path junk = write_tmp("junk.csv", "a,b\n\"c\"d,e\n");
  try {
    read_all(junk);
    FAIL() << "text after a closing quote was accepted";
  } catch (const esm2::Error& e) {
    EXPECT_NE(std::string(e.what()).find(junk.string() + ": line 2: text after a closing quote"), std::string::npos) << e.what();
  }
  EXPECT_THROW(esm2::csv_split("K2R,\"A3G", "--mutations"), esm2::Error);
  EXPECT_THROW(esm2::CsvReader(fs::temp_directory_path() / "esm2-csv-test-missing.csv"), esm2::Error);
}

}  // namespace
