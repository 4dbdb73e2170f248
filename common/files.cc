#include "common/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>

namespace quantd {
namespace {

Status IoError(const std::string& what, const std::filesystem::path& path) {
  return Internal("IO_ERROR", what + " " + path.string() + ": " + std::strerror(errno));
}

std::string RandomSuffix() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::to_string(rng());
}

}  // namespace

Status FsyncPath(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return IoError("open for fsync", path);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return IoError("fsync", path);
  return Status::Ok();
}

Status CommitFileAtomic(const std::filesystem::path& temp, const std::filesystem::path& target) {
  QUANTD_RETURN_IF_ERROR(FsyncPath(temp));
  std::error_code ec;
  std::filesystem::rename(temp, target, ec);
  if (ec) return Internal("IO_ERROR", "rename " + temp.string() + " -> " + target.string() + ": " + ec.message());
  auto folder = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
  return FsyncPath(folder);
}

Status WriteFileAtomic(const std::filesystem::path& target, std::string_view content) {
  auto folder = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
  std::error_code ec;
  std::filesystem::create_directories(folder, ec);
  auto temp = folder / ("." + target.filename().string() + ".tmp" + RandomSuffix());
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return IoError("create", temp);
  const char* data = content.data();
  size_t left = content.size();
  while (left > 0) {
    ssize_t n = ::write(fd, data, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      std::filesystem::remove(temp, ec);
      return IoError("write", temp);
    }
    data += n;
    left -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    std::filesystem::remove(temp, ec);
    return IoError("fsync", temp);
  }
  ::close(fd);
  std::filesystem::rename(temp, target, ec);
  if (ec) {
    std::filesystem::remove(temp, ec);
    return Internal("IO_ERROR", "rename to " + target.string() + ": " + ec.message());
  }
  return FsyncPath(folder);
}

StatusOr<std::string> ReadFile(const std::filesystem::path& file, int64_t max_bytes) {
  std::error_code ec;
  auto size = std::filesystem::file_size(file, ec);
  if (ec) return NotFound("FILE_NOT_FOUND", "cannot read " + file.string() + ": " + ec.message());
  if (static_cast<int64_t>(size) > max_bytes) {
    return ResourceExhausted("FILE_TOO_LARGE", file.string() + " is " + std::to_string(size) +
                                                   " bytes; the limit is " + std::to_string(max_bytes));
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) return NotFound("FILE_NOT_FOUND", "cannot open " + file.string());
  std::string content(size, '\0');
  in.read(content.data(), static_cast<std::streamsize>(size));
  if (!in) return Internal("IO_ERROR", "short read on " + file.string());
  return content;
}

}  // namespace quantd
