// An unbuffered output file for logs that must survive a crash line by line: each append() is one
// write(2) loop, so a record is in the kernel when append() returns and a failure (disk full,
// I/O error) surfaces at that record as an esm2::Error naming the file.
#pragma once
#include <filesystem>
#include <string_view>

namespace esm2 {

class AppendFile {
 public:
  enum class Mode { Truncate, Append, CreateNew };  // CreateNew fails if the file exists (EEXIST)
  AppendFile(std::filesystem::path path, Mode mode);
  ~AppendFile();
  AppendFile(const AppendFile&) = delete;
  AppendFile& operator=(const AppendFile&) = delete;

  void append(std::string_view bytes);
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

}  // namespace esm2
