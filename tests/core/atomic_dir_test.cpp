// Single and staged output files: complete or absent, never a temp file left behind.
#include "core/atomic_dir.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>

#include "core/error.h"

namespace fs = std::filesystem;

namespace {

fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("esm2-atomic-test-" + std::to_string(::getpid()) + "-" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// A file-size limit makes write() fail with EFBIG past `bytes`, as a full disk does.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    std::signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &old_);
    rlimit l = old_;
    l.rlim_cur = bytes;
    setrlimit(RLIMIT_FSIZE, &l);
  }
  ~FileSizeLimit() { setrlimit(RLIMIT_FSIZE, &old_); }

 private:
  rlimit old_{};
};

TEST(AtomicFile, AFailedWriteLeavesThePreviousFileAndNoTemp) {
  const fs::path d = fresh_dir("single");
  esm2::write_file_atomically(d / "out.json", "old");
  {
    FileSizeLimit limit(64);
    try {
      esm2::write_file_atomically(d / "out.json", std::string(1000, 'x'));
      FAIL() << "a write past the file-size limit succeeded";
    } catch (const esm2::Error& e) {
      // The error names the output asked for, not its temp name.
      EXPECT_EQ(std::string(e.what()).rfind((d / "out.json").string() + ": write failed after", 0), 0u) << e.what();
    }
  }
  EXPECT_EQ(names_in(d), std::vector<std::string>{"out.json"});
  EXPECT_EQ(esm2::read_file(d / "out.json"), "old");
}

TEST(AtomicFile, ADirectoryInTheWayIsNamed) {
  const fs::path d = fresh_dir("dir");
  fs::create_directories(d / "out.csv");
  try {
    esm2::write_file_atomically(d / "out.csv", "x");
    FAIL();
  } catch (const esm2::Error& e) {
    EXPECT_EQ(std::string(e.what()), (d / "out.csv").string() + ": is a directory (an output file cannot replace it)");
  }
  EXPECT_EQ(names_in(d), std::vector<std::string>{"out.csv"});
}

// Without leave to replace, a directory that another process wrote meanwhile survives and is named.
TEST(AtomicDir, WithoutReplaceAnOutputThatAppearedMeanwhileIsAnError) {
  const fs::path d = fresh_dir("noreplace");
  {
    esm2::AtomicDir out(d / "corpus/", /*replace=*/false);  // a trailing slash names the same directory
    esm2::write_file(out.path() / "mine", "new");
    fs::create_directories(d / "corpus");
    esm2::write_file(d / "corpus/theirs", "other");
    try {
      out.commit();
      FAIL() << "replaced an output that appeared meanwhile";
    } catch (const esm2::Error& e) {
      EXPECT_NE(std::string(e.what()).find("corpus: appeared while this command ran"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(names_in(d), std::vector<std::string>{"corpus"});
  EXPECT_EQ(names_in(d / "corpus"), std::vector<std::string>{"theirs"});
  {
    esm2::AtomicDir out(d / "fresh/", false);
    esm2::write_file(out.path() / "mine", "new");
    out.commit();
  }
  EXPECT_EQ(names_in(d / "fresh"), std::vector<std::string>{"mine"});
}

// "." names the directory itself (its temp beside it, not "..tmp-<pid>" inside the parent by accident).
TEST(AtomicDir, DotNamesTheDirectoryItself) {
  const fs::path d = fresh_dir("dot");
  fs::create_directories(d / "out");
  const fs::path cwd = fs::current_path();
  fs::current_path(d / "out");
  {
    esm2::AtomicDir out(".", true);
    EXPECT_EQ(out.final_path(), fs::weakly_canonical(d / "out"));
    esm2::write_file(out.path() / "f", "x");
    out.commit();
  }
  fs::current_path(cwd);
  EXPECT_EQ(esm2::read_file(d / "out/f"), "x");
}

TEST(StagedFiles, AllAppearAtCommitAndNoneWithout) {
  const fs::path d = fresh_dir("staged");
  {
    esm2::StagedFiles files;
    files.add(d / "a.csv", "a");
    files.add(d / "sub/b.json", "b");
    EXPECT_FALSE(fs::exists(d / "a.csv"));  // only the temps so far
    files.commit();
  }
  EXPECT_EQ(esm2::read_file(d / "a.csv"), "a");
  EXPECT_EQ(esm2::read_file(d / "sub/b.json"), "b");
  {
    esm2::StagedFiles files;
    files.add(d / "a.csv", "new a");
    FileSizeLimit limit(16);
    EXPECT_THROW(files.add(d / "c.csv", std::string(100, 'c')), esm2::Error);
  }  // not committed: the first temp goes too, and a.csv keeps its old contents
  EXPECT_EQ(names_in(d), (std::vector<std::string>{"a.csv", "sub"}));
  EXPECT_EQ(esm2::read_file(d / "a.csv"), "a");
}

}  // namespace
