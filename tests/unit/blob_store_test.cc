#include "server/blob_store.h"

#include <gtest/gtest.h>

#include "common/files.h"
#include "common/ids.h"
#include "common/sha256.h"

namespace quantd::server {
namespace {

class BlobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / NewId("blob-store-test-");
    store_ = std::make_unique<BlobStore>(dir_, 1 << 20);
    ASSERT_TRUE(store_->Init().ok());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::filesystem::path dir_;
  std::unique_ptr<BlobStore> store_;
};

TEST_F(BlobStoreTest, ResumedUploadCommitsOnlyAfterDigestMatches) {
  std::string content(300000, 'x');
  for (size_t i = 0; i < content.size(); ++i) content[i] = static_cast<char>(i * 7919 % 251);
  auto sha = Sha256Hex(content);
  ASSERT_TRUE(store_->Begin(sha, static_cast<int64_t>(content.size())).ok());
  ASSERT_TRUE(store_->Append(sha, 0, std::string_view(content).substr(0, 100000)).ok());
  // A client that lost the connection asks how much is committed.
  EXPECT_EQ(store_->Progress(sha).committed_bytes, 100000);
  EXPECT_FALSE(store_->Progress(sha).complete);
  EXPECT_EQ(store_->Append(sha, 50000, "abc").reason(), "BLOB_OFFSET_MISMATCH");
  ASSERT_TRUE(store_->Begin(sha, static_cast<int64_t>(content.size())).ok());
  ASSERT_TRUE(store_->Append(sha, 100000, std::string_view(content).substr(100000)).ok());
  ASSERT_TRUE(store_->Finish(sha).ok());
  EXPECT_TRUE(store_->Exists(sha));
  auto stored = ReadFile(store_->PathOf(sha), 1 << 20);
  EXPECT_EQ(*stored, content);
}

// A digest proves nothing: a tenant sees a blob only after uploading every
// byte of it, and each tenant resumes its own upload.
TEST_F(BlobStoreTest, TenantsSeeOnlyBlobsTheyUploadedThemselves) {
  std::string content(200000, 'q');
  for (size_t i = 0; i < content.size(); ++i) content[i] = static_cast<char>(i * 31 % 253);
  auto sha = Sha256Hex(content);
  auto size = static_cast<int64_t>(content.size());
  ASSERT_TRUE(store_->Begin(sha, size, "alpha").ok());
  ASSERT_TRUE(store_->Append(sha, 0, std::string_view(content).substr(0, 50000), "alpha").ok());
  EXPECT_EQ(store_->Progress(sha, "beta").committed_bytes, 0) << "beta must not see alpha's partial upload";
  ASSERT_TRUE(store_->Append(sha, 50000, std::string_view(content).substr(50000), "alpha").ok());
  ASSERT_TRUE(store_->Finish(sha, "alpha").ok());
  EXPECT_TRUE(store_->VisibleTo(sha, "alpha"));
  EXPECT_TRUE(store_->VisibleTo(sha, "")) << "without tenants every stored blob is visible";
  EXPECT_FALSE(store_->VisibleTo(sha, "beta"));
  EXPECT_FALSE(store_->Progress(sha, "beta").complete);
  EXPECT_EQ(store_->Progress(sha, "beta").committed_bytes, 0);

  // beta resumes its own upload and ends up owning the same stored bytes.
  ASSERT_TRUE(store_->Begin(sha, size, "beta").ok());
  ASSERT_TRUE(store_->Append(sha, 0, std::string_view(content).substr(0, 1000), "beta").ok());
  EXPECT_EQ(store_->Progress(sha, "beta").committed_bytes, 1000);
  ASSERT_TRUE(store_->Append(sha, 1000, std::string_view(content).substr(1000), "beta").ok());
  ASSERT_TRUE(store_->Finish(sha, "beta").ok());
  EXPECT_TRUE(store_->VisibleTo(sha, "beta"));
  EXPECT_EQ(*ReadFile(store_->PathOf(sha), 1 << 20), content);

  // Claiming a stored digest with other bytes gets nothing.
  ASSERT_TRUE(store_->Begin(sha, size, "gamma").ok());
  ASSERT_TRUE(store_->Append(sha, 0, std::string(content.size(), 'z'), "gamma").ok());
  EXPECT_EQ(store_->Finish(sha, "gamma").reason(), "BLOB_DIGEST_MISMATCH");
  EXPECT_FALSE(store_->VisibleTo(sha, "gamma"));
  EXPECT_EQ(*ReadFile(store_->PathOf(sha), 1 << 20), content) << "the stored blob is untouched";
}

TEST_F(BlobStoreTest, WrongContentIsDiscardedNotStored) {
  std::string content = "the real content";
  auto sha = Sha256Hex("different content");
  ASSERT_TRUE(store_->Begin(sha, static_cast<int64_t>(content.size())).ok());
  ASSERT_TRUE(store_->Append(sha, 0, content).ok());
  auto finished = store_->Finish(sha);
  EXPECT_EQ(finished.reason(), "BLOB_DIGEST_MISMATCH");
  EXPECT_FALSE(store_->Exists(sha));
  EXPECT_EQ(store_->Progress(sha).committed_bytes, 0);
}

TEST_F(BlobStoreTest, RejectsBadDigestsOversizeAndOverrun) {
  EXPECT_EQ(store_->Begin("../../etc/passwd", 10).reason(), "BLOB_BAD_DIGEST");
  EXPECT_EQ(store_->Begin(std::string(64, 'A'), 10).reason(), "BLOB_BAD_DIGEST");
  auto sha = Sha256Hex("abc");
  EXPECT_EQ(store_->Begin(sha, 2 << 20).reason(), "BLOB_TOO_LARGE");
  ASSERT_TRUE(store_->Begin(sha, 3).ok());
  EXPECT_EQ(store_->Append(sha, 0, "abcd").reason(), "BLOB_SIZE_EXCEEDED");
  EXPECT_EQ(store_->Begin(sha, 4).reason(), "BLOB_SIZE_MISMATCH");
}

TEST_F(BlobStoreTest, WriterCommitsVerifiedContentAtomically) {
  std::string content = "artifact bytes";
  auto sha = Sha256Hex(content);
  {
    auto writer = NewBlobWriter(*store_, sha, static_cast<int64_t>(content.size()));
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE((*writer)->Write(0, "artifact ").ok());
    // Abandoned before commit: nothing becomes visible.
  }
  EXPECT_FALSE(store_->Exists(sha));
  auto writer = NewBlobWriter(*store_, sha, static_cast<int64_t>(content.size()));
  ASSERT_TRUE((*writer)->Write(0, content).ok());
  ASSERT_TRUE((*writer)->Commit().ok());
  EXPECT_TRUE(store_->Exists(sha));
  auto bad = NewBlobWriter(*store_, Sha256Hex("other"), static_cast<int64_t>(content.size()));
  ASSERT_TRUE((*bad)->Write(0, content).ok());
  EXPECT_EQ((*bad)->Commit().reason(), "BLOB_DIGEST_MISMATCH");
}

}  // namespace
}  // namespace quantd::server
