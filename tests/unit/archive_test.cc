#include "common/archive.h"

#include <archive.h>
#include <archive_entry.h>
#include <gtest/gtest.h>

#include <fstream>
#include <vector>

#include "common/files.h"
#include "common/ids.h"

namespace quantd {
namespace {

struct CraftedEntry {
  CraftedEntry(std::string name, std::string content, unsigned type = AE_IFREG, std::string link = "")
      : name(std::move(name)), content(std::move(content)), type(type), link(std::move(link)) {}
  std::string name;
  std::string content;
  unsigned type;
  std::string link;  // symlink target or hardlink source
};

// Writes an archive with exactly the entries given, however hostile.
void WriteArchive(const std::filesystem::path& path, const std::vector<CraftedEntry>& entries, bool gzip = false) {
  struct archive* writer = archive_write_new();
  archive_write_set_format_pax_restricted(writer);
  if (gzip) archive_write_add_filter_gzip(writer);
  ASSERT_EQ(archive_write_open_filename(writer, path.c_str()), ARCHIVE_OK);
  for (const auto& crafted : entries) {
    struct archive_entry* entry = archive_entry_new();
    archive_entry_set_pathname(entry, crafted.name.c_str());
    archive_entry_set_filetype(entry, crafted.type);
    archive_entry_set_perm(entry, 0644);
    if (crafted.type == AE_IFLNK) archive_entry_set_symlink(entry, crafted.link.c_str());
    if (crafted.type == AE_IFREG && !crafted.link.empty()) archive_entry_set_hardlink(entry, crafted.link.c_str());
    archive_entry_set_size(entry, crafted.type == AE_IFREG ? static_cast<la_int64_t>(crafted.content.size()) : 0);
    archive_write_header(writer, entry);
    if (crafted.type == AE_IFREG && !crafted.content.empty()) {
      archive_write_data(writer, crafted.content.data(), crafted.content.size());
    }
    archive_entry_free(entry);
  }
  archive_write_close(writer);
  archive_write_free(writer);
}

class ArchiveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / NewId("archive-test-");
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  Status Extract(const std::vector<CraftedEntry>& entries, ArchiveLimits limits = {}, bool gzip = false) {
    auto archive = dir_ / NewId("a-");
    WriteArchive(archive, entries, gzip);
    auto out = dir_ / NewId("out-");
    auto result = ExtractArchive(archive, out, limits);
    last_out_ = out;
    return result.ok() ? Status::Ok() : result.status();
  }

  std::filesystem::path dir_, last_out_;
};

TEST_F(ArchiveTest, RoundTripKeepsEveryFileAndIsReproducible) {
  auto source = dir_ / "calib";
  std::filesystem::create_directories(source / "sub");
  ASSERT_TRUE(WriteFileAtomic(source / "b.bin", std::string(1000, 'b')).ok());
  ASSERT_TRUE(WriteFileAtomic(source / "a.bin", "alpha").ok());
  ASSERT_TRUE(WriteFileAtomic(source / "sub" / "c.bin", "gamma").ok());
  ASSERT_TRUE(CreateTarArchive(source, dir_ / "one.tar").ok());
  ASSERT_TRUE(CreateTarArchive(source, dir_ / "two.tar").ok());
  EXPECT_EQ(*ReadFile(dir_ / "one.tar", 1 << 20), *ReadFile(dir_ / "two.tar", 1 << 20));
  auto extracted = ExtractArchive(dir_ / "one.tar", dir_ / "out", {});
  ASSERT_TRUE(extracted.ok()) << extracted.status().message();
  EXPECT_EQ(extracted->files, 3);
  EXPECT_EQ(extracted->bytes, 1010);
  EXPECT_EQ(*ReadFile(dir_ / "out" / "a.bin", 100), "alpha");
  EXPECT_EQ(*ReadFile(dir_ / "out" / "sub" / "c.bin", 100), "gamma");
}

TEST_F(ArchiveTest, RefusesPathsThatEscape) {
  auto absolute = Extract({{"/etc/evil", "x"}});
  EXPECT_EQ(absolute.reason(), "ARCHIVE_UNSAFE");
  EXPECT_NE(absolute.message().find("absolute"), std::string::npos) << absolute.message();
  auto climbing = Extract({{"ok/../../evil", "x"}});
  EXPECT_EQ(climbing.reason(), "ARCHIVE_UNSAFE");
  EXPECT_NE(climbing.message().find(".."), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "evil"));
  EXPECT_FALSE(std::filesystem::exists(last_out_)) << "a refused archive leaves nothing behind";
}

TEST_F(ArchiveTest, RefusesLinksDevicesAndDuplicates) {
  EXPECT_EQ(Extract({{"link", "", AE_IFLNK, "/etc/passwd"}}).reason(), "ARCHIVE_UNSAFE");
  EXPECT_EQ(Extract({{"a", "x"}, {"b", "", AE_IFREG, "a"}}).reason(), "ARCHIVE_UNSAFE");
  EXPECT_EQ(Extract({{"fifo", "", AE_IFIFO}}).reason(), "ARCHIVE_UNSAFE");
  auto duplicate = Extract({{"a", "x"}, {"./a", "y"}});
  EXPECT_EQ(duplicate.reason(), "ARCHIVE_UNSAFE");
  EXPECT_NE(duplicate.message().find("twice"), std::string::npos);
}

TEST_F(ArchiveTest, EnforcesEntryCountSizeAndCompressionRatio) {
  ArchiveLimits few;
  few.max_entries = 3;
  std::vector<CraftedEntry> many;
  for (int i = 0; i < 5; ++i) many.push_back({"f" + std::to_string(i), "x"});
  EXPECT_EQ(Extract(many, few).reason(), "ARCHIVE_LIMIT_EXCEEDED");

  ArchiveLimits small;
  small.max_entry_bytes = 100;
  EXPECT_EQ(Extract({{"big", std::string(101, 'x')}}, small).reason(), "ARCHIVE_LIMIT_EXCEEDED");

  // Eight MiB of zeros gzip to a few KiB: a ratio far past the limit.
  auto bomb = Extract({{"zeros", std::string(8 << 20, '\0')}}, {}, /*gzip=*/true);
  EXPECT_EQ(bomb.reason(), "ARCHIVE_LIMIT_EXCEEDED");
  EXPECT_NE(bomb.message().find("bomb"), std::string::npos) << bomb.message();
}

TEST_F(ArchiveTest, GarbageIsInvalidNotACrash) {
  ASSERT_TRUE(WriteFileAtomic(dir_ / "garbage.tar", std::string(5000, '\x7f')).ok());
  auto result = ExtractArchive(dir_ / "garbage.tar", dir_ / "out", {});
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().reason(), "ARCHIVE_INVALID");
}

}  // namespace
}  // namespace quantd
