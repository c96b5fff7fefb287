#include "core/atomic_dir.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace fs = std::filesystem;

namespace esm2 {

namespace {
constexpr unsigned kRenameNoReplace = 1;  // RENAME_NOREPLACE of <linux/fs.h>, a kernel ABI constant
}  // namespace

AtomicDir::AtomicDir(fs::path final_path, bool replace) : final_(std::move(final_path)), replace_(replace) {
  // "out/" names the directory out: without this its temp would be created inside it.
  if (!final_.has_filename() && final_.has_parent_path()) final_ = final_.parent_path();
  // "." or "..": the directory's own name, or its temp would be "..tmp-<pid>" and the rename would fail
  // only after all the work.
  if (final_.filename() == "." || final_.filename() == "..") {
    std::error_code ec;
    final_ = fs::weakly_canonical(fs::absolute(final_, ec), ec);
  }
  tmp_ = final_;
  tmp_ += fmt::format(".tmp-{}", ::getpid());
  std::error_code ec;
  fs::remove_all(tmp_, ec);
  if (final_.has_parent_path()) {
    fs::create_directories(final_.parent_path(), ec);
    ESM2_CHECK(!ec, "{}: cannot create directory: {}", final_.parent_path().string(), ec.message());
  }
  fs::create_directory(tmp_, ec);
  ESM2_CHECK(!ec, "{}: cannot create directory: {}", tmp_.string(), ec.message());
}

AtomicDir::~AtomicDir() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
}

void AtomicDir::commit() {
  for (const auto& e : fs::recursive_directory_iterator(tmp_))
    if (e.is_regular_file()) fsync_path(e.path());
  fsync_path(tmp_);
  std::error_code ec;
  fs::path old;
  if (!replace_) {
    // Atomic against a writer that appeared meanwhile: the kernel refuses to rename onto an existing name.
    // The system call itself: glibc has a wrapper only from 2.28 (older HPC systems lack it).
    int rc = static_cast<int>(::syscall(SYS_renameat2, AT_FDCWD, tmp_.c_str(), AT_FDCWD, final_.c_str(), kRenameNoReplace));
    int err = errno;
    if (rc != 0 && err != EEXIST && err != ENOTEMPTY && err != ENOENT && err != ENOSPC && err != EROFS) {
      // A filesystem without the no-replace rename (some network filesystems): check, then rename. A
      // non-empty directory in the way still makes rename() fail; only an empty one could be replaced.
      err = fs::exists(final_, ec) ? EEXIST : 0;
      rc = err ? -1 : ::rename(tmp_.c_str(), final_.c_str());
      if (rc != 0 && !err) err = errno == ENOTEMPTY ? EEXIST : errno;
    }
    if (rc != 0) {
      ESM2_CHECK(err != EEXIST, "{}: appeared while this command ran (written by another process?); pass --force to "
                 "replace it", final_.string());
      fail("{}: cannot rename into place: {}", final_.string(), std::strerror(err));
    }
    committed_ = true;
    if (final_.has_parent_path()) fsync_path(final_.parent_path());
    return;
  }
  if (fs::exists(final_)) {
    old = final_;
    old += fmt::format(".old-{}", ::getpid());
    fs::remove_all(old, ec);
    fs::rename(final_, old, ec);
    ESM2_CHECK(!ec, "{}: cannot move aside: {}", final_.string(), ec.message());
  }
  fs::rename(tmp_, final_, ec);
  if (ec) {
    if (!old.empty()) fs::rename(old, final_);
    fail("{}: cannot rename into place: {}", final_.string(), ec.message());
  }
  committed_ = true;
  if (final_.has_parent_path()) fsync_path(final_.parent_path());
  if (!old.empty()) fs::remove_all(old, ec);
}

namespace {

// Writes bytes to `path`; errors name `shown` (the output the user asked for, not its temp name).
void write_bytes(const fs::path& path, const fs::path& shown, std::string_view bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ESM2_CHECK(fd >= 0, "{}: cannot create: {}", shown.string(), std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      fail("{}: write failed after {} of {} bytes: {}", shown.string(), done, bytes.size(),
           n < 0 ? std::strerror(err) : "no progress");
    }
    done += static_cast<size_t>(n);
  }
  ESM2_CHECK(::close(fd) == 0, "{}: close failed: {}", shown.string(), std::strerror(errno));
}

}  // namespace

void write_file(const fs::path& path, std::string_view bytes) { write_bytes(path, path, bytes); }

void fsync_path(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ESM2_CHECK(fd >= 0, "{}: cannot open for fsync: {}", path.string(), std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  ESM2_CHECK(rc == 0, "{}: fsync failed: {}", path.string(), std::strerror(err));
}

namespace {

// Where a single output file is written before it is renamed into place; the destination is checked first,
// so that a directory in its way is one clear error instead of a rename's.
fs::path temp_for(const fs::path& path) {
  std::error_code ec;
  ESM2_CHECK(!fs::is_directory(path, ec), "{}: is a directory (an output file cannot replace it)", path.string());
  if (path.has_parent_path()) {
    fs::create_directories(path.parent_path(), ec);
    ESM2_CHECK(!ec, "{}: cannot create directory: {}", path.parent_path().string(), ec.message());
  }
  return path.string() + ".tmp-" + std::to_string(::getpid());
}

void write_temp(const fs::path& tmp, const fs::path& path, std::string_view bytes) {
  try {
    write_bytes(tmp, path, bytes);
    fsync_path(tmp);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
}

void rename_temp(const fs::path& tmp, const fs::path& path) {
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    fs::remove(tmp, ec);
    fail("{}: cannot rename {} into place: {}", path.string(), tmp.filename().string(), why);
  }
}

void fsync_parent(const fs::path& path) {
  fsync_path(path.has_parent_path() ? path.parent_path() : fs::path("."));
}

}  // namespace

void write_file_atomically(const fs::path& path, std::string_view bytes) {
  const fs::path tmp = temp_for(path);
  write_temp(tmp, path, bytes);
  rename_temp(tmp, path);
  fsync_parent(path);
}

StagedFiles::~StagedFiles() {
  std::error_code ec;
  for (const auto& f : files_)
    if (!f.committed) fs::remove(f.tmp, ec);
}

void StagedFiles::add(const fs::path& path, std::string_view bytes) {
  Staged f{path, temp_for(path)};
  write_temp(f.tmp, path, bytes);
  files_.push_back(std::move(f));
}

void StagedFiles::commit() {
  for (auto& f : files_) {
    rename_temp(f.tmp, f.path);
    f.committed = true;
  }
  for (const auto& f : files_) fsync_parent(f.path);
}

bool is_same_or_inside(const fs::path& path, const fs::path& dir) {
  std::error_code ec;
  fs::path d = fs::weakly_canonical(fs::absolute(dir, ec), ec);
  if (!d.has_filename()) d = d.parent_path();
  const fs::path p = fs::weakly_canonical(fs::absolute(path, ec), ec);
  const fs::path rel = p.lexically_relative(d);
  return !rel.empty() && *rel.begin() != "..";
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  ESM2_CHECK(in.good(), "{}: cannot open: {}", path.string(), std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  ESM2_CHECK(!in.bad(), "{}: read failed", path.string());
  return ss.str();
}

}  // namespace esm2
