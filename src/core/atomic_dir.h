// Crash-safe outputs: a directory is built under "<final>.tmp-<pid>" and renamed into place only
// after every file in it was written and fsynced. A crash, a full disk or an exception leaves the
// previous version of <final> (if any) untouched and removes the partial temp directory.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace esm2 {

class AtomicDir {
 public:
  // replace = false: commit() fails if <final> exists by then (another process wrote it meanwhile; the
  // command was not told it may replace outputs), instead of replacing it.
  explicit AtomicDir(std::filesystem::path final_path, bool replace = true);
  ~AtomicDir();  // removes the temp dir unless commit() succeeded
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;

  const std::filesystem::path& path() const { return tmp_; }  // write files here
  const std::filesystem::path& final_path() const { return final_; }
  // fsyncs the files and the directory, then renames tmp → final (an existing final is replaced:
  // moved aside, renamed over, then removed).
  void commit();

 private:
  std::filesystem::path final_, tmp_;
  bool committed_ = false, replace_ = true;
};

// Writes bytes to path, checking every write and the close (disk full is an error naming path).
void write_file(const std::filesystem::path& path, std::string_view bytes);
// fsync a file or directory; throws naming the path on failure.
void fsync_path(const std::filesystem::path& path);
// A single output file appears complete or not at all: written to <path>.tmp-<pid>, fsynced, renamed
// (parent directories are created).
void write_file_atomically(const std::filesystem::path& path, std::string_view bytes);
// Several output files of one command: each is written (and fsynced) under a temp name as soon as it is
// ready, and commit() renames them all into place at the end, so that a command failing later (a second
// output's disk full, an error in between) leaves none of them; the destructor removes uncommitted temps.
class StagedFiles {
 public:
  StagedFiles() = default;
  ~StagedFiles();
  StagedFiles(const StagedFiles&) = delete;
  StagedFiles& operator=(const StagedFiles&) = delete;
  void add(const std::filesystem::path& path, std::string_view bytes);
  void commit();

 private:
  struct Staged {
    std::filesystem::path path, tmp;
    bool committed = false;
  };
  std::vector<Staged> files_;
};
// Whether `path` is `dir` or lies inside it (after resolving ".", ".." and symlinks of what exists): an
// output directory replaced with --force must not hold an input.
bool is_same_or_inside(const std::filesystem::path& path, const std::filesystem::path& dir);
// Reads a whole file; throws "<path>: cannot open: <reason>" on failure.
std::string read_file(const std::filesystem::path& path);

}  // namespace esm2
