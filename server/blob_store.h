#pragma once

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <string_view>

#include "common/status.h"

namespace quantd::server {

struct BlobProgress {
  int64_t committed_bytes = 0;
  bool complete = false;
};

// Content-addressed files under <root>/sha256/<aa>/<digest>. Uploads append
// to <root>/uploads/<digest>.part at exactly the committed offset, so a
// client that lost its connection asks Status() and resumes; Finish()
// verifies the digest before the atomic rename makes the blob visible.
//
// With tenants, `owner` names the uploading tenant ("" when authentication
// is off: everything is shared). Each tenant uploads into its own part file
// and sees a blob only once it has uploaded every byte of it itself, so a
// digest alone neither reveals nor grants another tenant's data; the bytes
// are still stored once. Ownership is a marker file
// <root>/owners/<digest>/<tenant>, so replicas sharing the folder agree.
class BlobStore {
 public:
  BlobStore(std::filesystem::path root, int64_t max_blob_bytes);
  Status Init();

  BlobProgress Progress(const std::string& sha256, const std::string& owner = "");
  // Starts or resumes an upload; declared size must match across resumes.
  Status Begin(const std::string& sha256, int64_t size_bytes, const std::string& owner = "");
  Status Append(const std::string& sha256, int64_t offset, std::string_view data, const std::string& owner = "");
  Status Finish(const std::string& sha256, const std::string& owner = "");

  // Whether `owner` may use the blob as an input ("" : whether it exists).
  bool VisibleTo(const std::string& sha256, const std::string& owner) const;
  bool Exists(const std::string& sha256) const;
  std::filesystem::path PathOf(const std::string& sha256) const;
  int64_t max_blob_bytes() const { return max_blob_bytes_; }
  std::filesystem::path UploadsDir() const { return root_ / "uploads"; }

 private:
  std::filesystem::path PartPath(const std::string& sha256, const std::string& owner) const;
  std::filesystem::path MetaPath(const std::string& sha256, const std::string& owner) const;
  std::filesystem::path OwnerMarker(const std::string& sha256, const std::string& owner) const;

  std::filesystem::path root_;
  int64_t max_blob_bytes_;
  // Serialises appends so two streams uploading the same digest cannot
  // interleave their bytes.
  std::mutex mutex_;
};

// Writes one blob in a single pass (artifacts from workers): a private temp
// file, digest checked on Commit(), then an atomic rename into the store.
class BlobWriter {
 public:
  BlobWriter(std::filesystem::path temp, std::filesystem::path target, std::string sha256, int64_t size_bytes);
  ~BlobWriter();
  BlobWriter(const BlobWriter&) = delete;
  BlobWriter& operator=(const BlobWriter&) = delete;

  Status Write(int64_t offset, std::string_view data);
  Status Commit();

 private:
  std::filesystem::path temp_, target_;
  std::string sha256_;
  int64_t size_bytes_;
  int64_t written_ = 0;
  int fd_ = -1;
  bool committed_ = false;
};

StatusOr<std::unique_ptr<BlobWriter>> NewBlobWriter(BlobStore& store, const std::string& sha256, int64_t size_bytes);

}  // namespace quantd::server
