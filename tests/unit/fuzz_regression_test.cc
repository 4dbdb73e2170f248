// Inputs that once crashed or hung a fuzzer, replayed on every test run
// (and under ASan/UBSan in CI). Each must come back as an error, quickly.
#include <gtest/gtest.h>

#include <filesystem>

#include "common/archive.h"
#include "common/config/quant_config.h"
#include "common/files.h"
#include "common/ids.h"
#include "worker/onnx/model_io.h"

namespace quantd {
namespace {

std::vector<std::filesystem::path> Regressions(const std::string& target) {
  std::vector<std::filesystem::path> files;
  auto dir = std::filesystem::path(QUANTD_SOURCE_DIR) / "fuzz" / "regressions" / target;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.is_regular_file() && entry.path().filename().string().front() != '.') files.push_back(entry.path());
  }
  return files;
}

TEST(FuzzRegressionTest, ConfigParser) {
  auto files = Regressions("config_parser");
  ASSERT_FALSE(files.empty());
  for (const auto& file : files) {
    auto text = ReadFile(file, 1 << 20);
    ASSERT_TRUE(text.ok());
    auto parsed = config::ParseQuantConfig(*text);
    EXPECT_FALSE(parsed.ok()) << file.filename();
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument) << file.filename();
  }
}

TEST(FuzzRegressionTest, ModelLoader) {
  for (const auto& file : Regressions("model_loader")) {
    auto bytes = ReadFile(file, 1 << 20);
    ASSERT_TRUE(bytes.ok());
    EXPECT_FALSE(ParseModelBytes(*bytes, ModelLimits{}).ok()) << file.filename();
  }
}

TEST(FuzzRegressionTest, ArchiveReader) {
  auto out = std::filesystem::temp_directory_path() / NewId("fuzz-regression-");
  for (const auto& file : Regressions("archive_reader")) {
    EXPECT_FALSE(ExtractArchive(file, out / file.filename(), ArchiveLimits{}).ok()) << file.filename();
  }
  std::filesystem::remove_all(out);
}

}  // namespace
}  // namespace quantd
