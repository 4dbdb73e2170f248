#include "server/blob_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "common/files.h"
#include "common/ids.h"
#include "common/sha256.h"

namespace quantd::server {
namespace {

Status BadDigest(const std::string& sha256) {
  return InvalidArgument("BLOB_BAD_DIGEST", "'" + sha256.substr(0, 80) + "' is not a lowercase hex sha256 digest");
}

}  // namespace

BlobStore::BlobStore(std::filesystem::path root, int64_t max_blob_bytes)
    : root_(std::move(root)), max_blob_bytes_(max_blob_bytes) {}

Status BlobStore::Init() {
  std::error_code ec;
  std::filesystem::create_directories(root_ / "sha256", ec);
  std::filesystem::create_directories(root_ / "uploads", ec);
  if (ec) return Internal("IO_ERROR", "cannot create blob store at " + root_.string() + ": " + ec.message());
  return Status::Ok();
}

std::filesystem::path BlobStore::PathOf(const std::string& sha256) const {
  return root_ / "sha256" / sha256.substr(0, 2) / sha256;
}

// Tenant names are plain file names (letters, digits, '-', '_', '.', never
// leading '.'), checked when the configuration is read.
std::filesystem::path BlobStore::PartPath(const std::string& sha256, const std::string& owner) const {
  return root_ / "uploads" / ((owner.empty() ? "" : owner + "~") + sha256 + ".part");
}

std::filesystem::path BlobStore::MetaPath(const std::string& sha256, const std::string& owner) const {
  return root_ / "uploads" / ((owner.empty() ? "" : owner + "~") + sha256 + ".size");
}

std::filesystem::path BlobStore::OwnerMarker(const std::string& sha256, const std::string& owner) const {
  return root_ / "owners" / sha256 / owner;
}

bool BlobStore::Exists(const std::string& sha256) const {
  std::error_code ec;
  return IsSha256Hex(sha256) && std::filesystem::is_regular_file(PathOf(sha256), ec);
}

bool BlobStore::VisibleTo(const std::string& sha256, const std::string& owner) const {
  if (!Exists(sha256)) return false;
  std::error_code ec;
  return owner.empty() || std::filesystem::exists(OwnerMarker(sha256, owner), ec);
}

BlobProgress BlobStore::Progress(const std::string& sha256, const std::string& owner) {
  BlobProgress progress;
  if (!IsSha256Hex(sha256)) return progress;
  std::error_code ec;
  auto final_path = PathOf(sha256);
  if (VisibleTo(sha256, owner)) {
    progress.complete = true;
    progress.committed_bytes = static_cast<int64_t>(std::filesystem::file_size(final_path, ec));
    return progress;
  }
  auto part = PartPath(sha256, owner);
  if (std::filesystem::is_regular_file(part, ec)) {
    progress.committed_bytes = static_cast<int64_t>(std::filesystem::file_size(part, ec));
  }
  return progress;
}

Status BlobStore::Begin(const std::string& sha256, int64_t size_bytes, const std::string& owner) {
  if (!IsSha256Hex(sha256)) return BadDigest(sha256);
  if (size_bytes < 0 || size_bytes > max_blob_bytes_) {
    return ResourceExhausted("BLOB_TOO_LARGE", "blob of " + std::to_string(size_bytes) +
                                                   " bytes exceeds the server limit of " +
                                                   std::to_string(max_blob_bytes_) + " bytes");
  }
  if (VisibleTo(sha256, owner)) return Status::Ok();
  auto meta = MetaPath(sha256, owner);
  auto existing = ReadFile(meta, 64);
  if (existing.ok()) {
    if (*existing != std::to_string(size_bytes)) {
      return InvalidArgument("BLOB_SIZE_MISMATCH", "an upload of " + sha256 + " with size " + *existing +
                                                       " is in progress; this one declares " +
                                                       std::to_string(size_bytes));
    }
    return Status::Ok();
  }
  return WriteFileAtomic(meta, std::to_string(size_bytes));
}

Status BlobStore::Append(const std::string& sha256, int64_t offset, std::string_view data, const std::string& owner) {
  if (!IsSha256Hex(sha256)) return BadDigest(sha256);
  std::lock_guard lock(mutex_);
  auto declared = ReadFile(MetaPath(sha256, owner), 64);
  if (!declared.ok()) return FailedPrecondition("BLOB_NOT_STARTED", "upload of " + sha256 + " was not started");
  int64_t size = std::stoll(*declared);
  auto part = PartPath(sha256, owner);
  std::error_code ec;
  int64_t committed =
      std::filesystem::exists(part, ec) ? static_cast<int64_t>(std::filesystem::file_size(part, ec)) : 0;
  if (offset != committed) {
    return FailedPrecondition("BLOB_OFFSET_MISMATCH", "chunk offset " + std::to_string(offset) +
                                                          " but the server has committed " + std::to_string(committed) +
                                                          " bytes; resume from there");
  }
  if (offset + static_cast<int64_t>(data.size()) > size) {
    return InvalidArgument("BLOB_SIZE_EXCEEDED", "chunk runs past the declared size " + std::to_string(size));
  }
  int fd = ::open(part.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return Internal("IO_ERROR", "open " + part.string() + ": " + std::strerror(errno));
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      int saved = errno;
      ::close(fd);
      // A partial write would leave the file longer than committed; cut it back.
      (void)::truncate(part.c_str(), committed);
      return Internal("IO_ERROR", "write " + part.string() + ": " + std::strerror(saved));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  ::close(fd);
  return Status::Ok();
}

Status BlobStore::Finish(const std::string& sha256, const std::string& owner) {
  if (!IsSha256Hex(sha256)) return BadDigest(sha256);
  std::lock_guard lock(mutex_);
  if (VisibleTo(sha256, owner)) return Status::Ok();
  auto declared = ReadFile(MetaPath(sha256, owner), 64);
  if (!declared.ok()) return FailedPrecondition("BLOB_NOT_STARTED", "upload of " + sha256 + " was not started");
  auto part = PartPath(sha256, owner);
  std::error_code ec;
  int64_t committed =
      std::filesystem::exists(part, ec) ? static_cast<int64_t>(std::filesystem::file_size(part, ec)) : 0;
  if (committed != std::stoll(*declared)) {
    return FailedPrecondition(
        "BLOB_INCOMPLETE", "upload of " + sha256 + " has " + std::to_string(committed) + " of " + *declared + " bytes");
  }
  if (committed == 0) {
    std::ofstream touch(part, std::ios::binary);
  }
  QUANTD_ASSIGN_OR_RETURN(auto actual, Sha256OfFile(part));
  if (actual != sha256) {
    std::filesystem::remove(part, ec);
    std::filesystem::remove(MetaPath(sha256, owner), ec);
    return DataLoss("BLOB_DIGEST_MISMATCH", "uploaded bytes hash to " + actual + ", not " + sha256 +
                                                "; the partial upload was discarded, upload again");
  }
  if (!owner.empty()) {
    // The marker goes first: a blob must never be visible to a tenant whose
    // ownership a crash could lose.
    auto marker = OwnerMarker(sha256, owner);
    std::filesystem::create_directories(marker.parent_path(), ec);
    QUANTD_RETURN_IF_ERROR(WriteFileAtomic(marker, ""));
  }
  auto target = PathOf(sha256);
  if (Exists(sha256)) {
    // Another tenant stored these bytes already; this upload only proved
    // that its tenant has them too.
    std::filesystem::remove(part, ec);
  } else {
    std::filesystem::create_directories(target.parent_path(), ec);
    QUANTD_RETURN_IF_ERROR(CommitFileAtomic(part, target));
  }
  std::filesystem::remove(MetaPath(sha256, owner), ec);
  return Status::Ok();
}

BlobWriter::BlobWriter(std::filesystem::path temp, std::filesystem::path target, std::string sha256, int64_t size_bytes)
    : temp_(std::move(temp)), target_(std::move(target)), sha256_(std::move(sha256)), size_bytes_(size_bytes) {
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
}

BlobWriter::~BlobWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) {
    std::error_code ec;
    std::filesystem::remove(temp_, ec);
  }
}

Status BlobWriter::Write(int64_t offset, std::string_view data) {
  if (fd_ < 0) return Internal("IO_ERROR", "cannot create " + temp_.string());
  if (offset != written_) {
    return InvalidArgument("BLOB_OFFSET_MISMATCH",
                           "chunk offset " + std::to_string(offset) + ", expected " + std::to_string(written_));
  }
  if (written_ + static_cast<int64_t>(data.size()) > size_bytes_) {
    return InvalidArgument("BLOB_SIZE_EXCEEDED", "data runs past the declared size " + std::to_string(size_bytes_));
  }
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Internal("IO_ERROR", "write " + temp_.string() + ": " + std::strerror(errno));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  written_ += static_cast<int64_t>(data.size());
  return Status::Ok();
}

Status BlobWriter::Commit() {
  if (written_ != size_bytes_) {
    return FailedPrecondition("BLOB_INCOMPLETE",
                              "received " + std::to_string(written_) + " of " + std::to_string(size_bytes_) + " bytes");
  }
  ::close(fd_);
  fd_ = -1;
  QUANTD_ASSIGN_OR_RETURN(auto actual, Sha256OfFile(temp_));
  if (actual != sha256_) {
    return DataLoss("BLOB_DIGEST_MISMATCH", "received bytes hash to " + actual + ", not " + sha256_);
  }
  std::error_code ec;
  std::filesystem::create_directories(target_.parent_path(), ec);
  QUANTD_RETURN_IF_ERROR(CommitFileAtomic(temp_, target_));
  committed_ = true;
  return Status::Ok();
}

StatusOr<std::unique_ptr<BlobWriter>> NewBlobWriter(BlobStore& store, const std::string& sha256, int64_t size_bytes) {
  if (!IsSha256Hex(sha256)) return BadDigest(sha256);
  if (size_bytes < 0 || size_bytes > store.max_blob_bytes()) {
    return ResourceExhausted("BLOB_TOO_LARGE", "blob of " + std::to_string(size_bytes) + " bytes exceeds the limit");
  }
  auto temp = store.UploadsDir() / (sha256 + "." + NewId("w") + ".tmp");
  return std::make_unique<BlobWriter>(temp, store.PathOf(sha256), sha256, size_bytes);
}

}  // namespace quantd::server
