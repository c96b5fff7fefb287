#include "io/append_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace esm2 {

AppendFile::AppendFile(std::filesystem::path path, Mode mode) : path_(std::move(path)) {
  int flags = O_WRONLY | O_CREAT | O_CLOEXEC;
  if (mode == Mode::Truncate) flags |= O_TRUNC;
  if (mode == Mode::Append) flags |= O_APPEND;
  if (mode == Mode::CreateNew) flags |= O_EXCL;
  fd_ = ::open(path_.c_str(), flags, 0644);
  ESM2_CHECK(fd_ >= 0, "{}: cannot open for writing: {}", path_.string(), std::strerror(errno));
}

AppendFile::~AppendFile() {
  if (fd_ >= 0) ::close(fd_);
}

void AppendFile::append(std::string_view bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ESM2_CHECK(n > 0, "{}: write failed: {}", path_.string(), n < 0 ? std::strerror(errno) : "no progress");
    done += static_cast<size_t>(n);
  }
}

}  // namespace esm2
