// quantd.yaml's `limits` section: read strictly, defaults kept where a key
// is absent, and carried to workers without loss.
#include <gtest/gtest.h>

#include <fstream>

#include "common/ids.h"
#include "common/input_limits_proto.h"
#include "server/server_config.h"

namespace quantd::server {
namespace {

class ServerConfigLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override { file_ = std::filesystem::temp_directory_path() / NewId("quantd-yaml-"); }
  void TearDown() override { std::filesystem::remove(file_); }
  Status Load(const std::string& text, ServerConfig& config) {
    std::ofstream(file_) << text;
    return LoadServerConfigFile(file_, config);
  }
  std::filesystem::path file_;
};

TEST_F(ServerConfigLimitsTest, AbsentSectionKeepsTheBuiltInLimits) {
  ServerConfig config;
  ASSERT_TRUE(Load("listen: 127.0.0.1:1\n", config).ok());
  const InputLimits defaults;
  EXPECT_EQ(config.input_limits.model.max_model_bytes, defaults.model.max_model_bytes);
  EXPECT_EQ(config.input_limits.model.max_model_bytes, int64_t{2} << 30);
  EXPECT_EQ(config.input_limits.model.max_nodes, 1'000'000);
  EXPECT_EQ(config.input_limits.archive.max_entries, 200000);
  EXPECT_EQ(config.input_limits.archive.max_compression_ratio, 100.0);
  EXPECT_EQ(config.input_limits.image.max_pixels, int64_t{64} << 20);
  ServerConfig empty;
  ASSERT_TRUE(Load("limits:\n", empty).ok());
  EXPECT_EQ(empty.input_limits.archive.max_total_bytes, defaults.archive.max_total_bytes);
}

TEST_F(ServerConfigLimitsTest, EveryKeyReachesItsLimit) {
  ServerConfig config;
  auto status = Load(
      "limits:\n"
      "  max_model_bytes: 1000\n"
      "  max_graph_nodes: 20\n"
      "  max_graph_depth: 2\n"
      "  max_tensor_elements: 4096\n"
      "  max_archive_bytes: 3000\n"
      "  max_archive_entries: 40\n"
      "  max_archive_entry_bytes: 500\n"
      "  max_archive_total_bytes: 6000\n"
      "  max_compression_ratio: 12.5\n"
      "  max_archive_path_depth: 3\n"
      "  max_image_pixels: 1000\n"
      "max_upload_bytes: 5000\n",
      config);
  ASSERT_TRUE(status.ok()) << status.message();
  const auto& limits = config.input_limits;
  EXPECT_EQ(limits.model.max_model_bytes, 1000);
  EXPECT_EQ(limits.model.max_nodes, 20);
  EXPECT_EQ(limits.model.max_graph_depth, 2);
  EXPECT_EQ(limits.model.max_tensor_elements, 4096);
  EXPECT_EQ(limits.archive.max_archive_bytes, 3000);
  EXPECT_EQ(limits.archive.max_entries, 40);
  EXPECT_EQ(limits.archive.max_entry_bytes, 500);
  EXPECT_EQ(limits.archive.max_total_bytes, 6000);
  EXPECT_EQ(limits.archive.max_compression_ratio, 12.5);
  EXPECT_EQ(limits.archive.max_path_depth, 3);
  EXPECT_EQ(limits.image.max_pixels, 1000);
  EXPECT_EQ(config.max_upload_bytes, 5000);

  // What the worker gets back from the lease is what was configured.
  const auto carried = InputLimitsFromProto(InputLimitsToProto(limits));
  EXPECT_EQ(carried.model.max_model_bytes, 1000);
  EXPECT_EQ(carried.model.max_nodes, 20);
  EXPECT_EQ(carried.model.max_graph_depth, 2);
  EXPECT_EQ(carried.model.max_tensor_elements, 4096);
  EXPECT_EQ(carried.archive.max_archive_bytes, 3000);
  EXPECT_EQ(carried.archive.max_entries, 40);
  EXPECT_EQ(carried.archive.max_entry_bytes, 500);
  EXPECT_EQ(carried.archive.max_total_bytes, 6000);
  EXPECT_EQ(carried.archive.max_compression_ratio, 12.5);
  EXPECT_EQ(carried.archive.max_path_depth, 3);
  EXPECT_EQ(carried.image.max_pixels, 1000);
}

TEST_F(ServerConfigLimitsTest, ALeaseWithoutLimitsMeansTheBuiltInOnes) {
  const InputLimits defaults;
  const auto from_old_server = InputLimitsFromProto(v1::InputLimits{});
  EXPECT_EQ(from_old_server.model.max_model_bytes, defaults.model.max_model_bytes);
  EXPECT_EQ(from_old_server.archive.max_entries, defaults.archive.max_entries);
  EXPECT_EQ(from_old_server.archive.max_compression_ratio, defaults.archive.max_compression_ratio);
  EXPECT_EQ(from_old_server.image.max_pixels, defaults.image.max_pixels);
}

TEST_F(ServerConfigLimitsTest, MistakesAreRefusedNamingTheKey) {
  struct Case {
    std::string yaml;
    std::string reason;
    std::string names;
  };
  const std::vector<Case> cases = {
      {"limits:\n  max_nodes: 10\n", "SERVER_CONFIG_UNKNOWN_KEY", "limits.max_nodes"},
      {"limits:\n  max_graph_nodes: many\n", "SERVER_CONFIG_WRONG_TYPE", "limits.max_graph_nodes"},
      {"limits:\n  max_model_bytes: 0\n", "SERVER_CONFIG_OUT_OF_RANGE", "limits.max_model_bytes"},
      {"limits:\n  max_image_pixels: -5\n", "SERVER_CONFIG_OUT_OF_RANGE", "limits.max_image_pixels"},
      {"limits:\n  max_graph_depth: 1000\n", "SERVER_CONFIG_OUT_OF_RANGE", "limits.max_graph_depth"},
      {"limits:\n  max_archive_entries: 2.5\n", "SERVER_CONFIG_WRONG_TYPE", "limits.max_archive_entries"},
      {"limits:\n  max_compression_ratio: 0.5\n", "SERVER_CONFIG_OUT_OF_RANGE", "limits.max_compression_ratio"},
      {"limits:\n  max_compression_ratio: .nan\n", "SERVER_CONFIG_OUT_OF_RANGE", "limits.max_compression_ratio"},
      {"limits:\n  max_compression_ratio: high\n", "SERVER_CONFIG_WRONG_TYPE", "limits.max_compression_ratio"},
      {"limits:\n  max_archive_bytes: [1, 2]\n", "SERVER_CONFIG_WRONG_TYPE", "limits.max_archive_bytes"},
      {"limits: 100\n", "SERVER_CONFIG_WRONG_TYPE", "limits"},
      {"limits:\n  - max_model_bytes: 10\n", "SERVER_CONFIG_WRONG_TYPE", "limits"},
  };
  for (const auto& c : cases) {
    ServerConfig config;
    auto status = Load(c.yaml, config);
    EXPECT_EQ(status.reason(), c.reason) << c.yaml << status.message();
    EXPECT_NE(status.message().find(c.names), std::string::npos) << c.yaml << status.message();
  }
  ServerConfig unknown;
  auto status = Load("limits:\n  max_pixels: 10\n", unknown);
  EXPECT_NE(status.message().find("limits.max_image_pixels"), std::string::npos)
      << "the known keys are listed with their section: " << status.message();
}

}  // namespace
}  // namespace quantd::server
