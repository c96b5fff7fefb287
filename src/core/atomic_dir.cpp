#include "core/atomic_dir.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace fs = std::filesystem;

namespace esm2 {

AtomicDir::AtomicDir(fs::path final_path) : final_(std::move(final_path)) {
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

void write_file(const fs::path& path, std::string_view bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ESM2_CHECK(fd >= 0, "{}: cannot create: {}", path.string(), std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      fail("{}: write failed after {} of {} bytes: {}", path.string(), done, bytes.size(),
           n < 0 ? std::strerror(err) : "no progress");
    }
    done += static_cast<size_t>(n);
  }
  ESM2_CHECK(::close(fd) == 0, "{}: close failed: {}", path.string(), std::strerror(errno));
}

void fsync_path(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ESM2_CHECK(fd >= 0, "{}: cannot open for fsync: {}", path.string(), std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  ESM2_CHECK(rc == 0, "{}: fsync failed: {}", path.string(), std::strerror(err));
}

void write_file_atomically(const fs::path& path, std::string_view bytes) {
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  const fs::path tmp = path.string() + ".tmp-" + std::to_string(::getpid());
  write_file(tmp, bytes);
  fsync_path(tmp);
  fs::rename(tmp, path);
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
