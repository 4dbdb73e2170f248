// quantd.yaml's `limits` section: read strictly, defaults kept where a key
// is absent, and carried to workers without loss.
#include <gtest/gtest.h>

#include <fstream>

#include "common/ids.h"
#include "common/input_limits_proto.h"
#include "server/server_config.h"

namespace quantd::server {
namespace {

class ServerConfigFileTest : public ::testing::Test {
 protected:
  void SetUp() override { file_ = std::filesystem::temp_directory_path() / NewId("quantd-yaml-"); }
  void TearDown() override { std::filesystem::remove(file_); }
  Status Load(const std::string& text, ServerConfig& config) {
    std::ofstream(file_) << text;
    return LoadServerConfigFile(file_, config);
  }
  std::filesystem::path file_;
};

TEST_F(ServerConfigFileTest, AbsentSectionKeepsTheBuiltInLimits) {
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

TEST_F(ServerConfigFileTest, EveryKeyReachesItsLimit) {
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

TEST_F(ServerConfigFileTest, ALeaseWithoutLimitsMeansTheBuiltInOnes) {
  const InputLimits defaults;
  const auto from_old_server = InputLimitsFromProto(v1::InputLimits{});
  EXPECT_EQ(from_old_server.model.max_model_bytes, defaults.model.max_model_bytes);
  EXPECT_EQ(from_old_server.archive.max_entries, defaults.archive.max_entries);
  EXPECT_EQ(from_old_server.archive.max_compression_ratio, defaults.archive.max_compression_ratio);
  EXPECT_EQ(from_old_server.image.max_pixels, defaults.image.max_pixels);
}

TEST_F(ServerConfigFileTest, MistakesAreRefusedNamingTheKey) {
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

// quantd.yaml selects the job store backend.
TEST_F(ServerConfigFileTest, SqliteIsTheDefaultAndPostgresNeedsADsn) {
  ServerConfig config;
  ASSERT_TRUE(Load("listen: 127.0.0.1:1\n", config).ok());
  EXPECT_EQ(config.job_store, JobStoreBackend::kSqlite);
  ServerConfig postgres;
  ASSERT_TRUE(
      Load("job_store: postgres\npostgres_dsn: \"host=db dbname=quantd\"\npostgres_connections: 3\n", postgres).ok());
  EXPECT_EQ(postgres.job_store, JobStoreBackend::kPostgres);
  EXPECT_EQ(postgres.postgres_dsn, "host=db dbname=quantd");
  EXPECT_EQ(postgres.postgres_connections, 3);
  ServerConfig missing;
  EXPECT_EQ(Load("job_store: postgres\n", missing).reason(), "SERVER_CONFIG_MISSING_KEY");
  ServerConfig unknown;
  EXPECT_EQ(Load("job_store: mysql\n", unknown).reason(), "SERVER_CONFIG_OUT_OF_RANGE");
  ServerConfig zero;
  EXPECT_EQ(Load("postgres_connections: 0\n", zero).reason(), "SERVER_CONFIG_OUT_OF_RANGE");
}

TEST_F(ServerConfigFileTest, TokensAreReadAsHashesAndCheckedForMistakes) {
  const std::string alpha(64, 'a'), beta(64, 'b'), worker(64, 'c');
  ServerConfig config;
  auto status = Load("listen: 0.0.0.0:50051\ntokens:\n  - {tenant: alpha, sha256: " + alpha +
                         "}\n  - {tenant: beta, sha256: " + beta + "}\nworker_token_sha256: [" + worker +
                         "]\njob_memory_limit_mb: 512\nmax_job_memory_limit_mb: 1024\n",
                     config);
  ASSERT_TRUE(status.ok()) << status.message();
  ASSERT_EQ(config.tenant_tokens.size(), 2u);
  EXPECT_EQ(config.tenant_tokens[1].tenant, "beta");
  EXPECT_EQ(config.tenant_tokens[1].sha256, beta);
  EXPECT_EQ(config.worker_token_sha256, std::vector<std::string>{worker});
  EXPECT_EQ(config.job_memory_limit_bytes, int64_t{512} << 20);
  EXPECT_TRUE(ValidateServerConfig(config).ok()) << "with tokens, quantd may listen on every interface";

  ServerConfig plain_token;
  EXPECT_EQ(Load("tokens:\n  - {tenant: alpha, sha256: my-secret-token}\n", plain_token).reason(),
            "SERVER_CONFIG_BAD_TOKEN_HASH")
      << "a token pasted instead of its hash is refused";
  ServerConfig bad_tenant;
  EXPECT_EQ(Load("tokens:\n  - {tenant: ../etc, sha256: " + alpha + "}\n", bad_tenant).reason(),
            "SERVER_CONFIG_BAD_TENANT");
  ServerConfig shared;
  ASSERT_TRUE(
      Load("tokens:\n  - {tenant: alpha, sha256: " + alpha + "}\nworker_token_sha256: " + alpha + "\n", shared).ok());
  EXPECT_EQ(ValidateServerConfig(shared).reason(), "SERVER_CONFIG_DUPLICATE_TOKEN")
      << "a worker and a tenant must not share a token";
  ServerConfig limits;
  ASSERT_TRUE(Load("job_time_limit_seconds: 100\nmax_job_time_limit_seconds: 10\n", limits).ok());
  EXPECT_EQ(ValidateServerConfig(limits).reason(), "SERVER_CONFIG_OUT_OF_RANGE");
  ServerConfig half_tls;
  ASSERT_TRUE(Load("tls_cert: /x/cert.pem\n", half_tls).ok());
  EXPECT_EQ(ValidateServerConfig(half_tls).reason(), "SERVER_CONFIG_MISSING_KEY");
}

TEST_F(ServerConfigFileTest, WithoutTokensOnlyLoopbackUnlessExplicitlyAllowed) {
  for (const char* loopback : {"127.0.0.1:1", "localhost:50051", "[::1]:50051", "unix:/tmp/q.sock"}) {
    EXPECT_TRUE(IsLoopbackListen(loopback)) << loopback;
  }
  for (const char* remote : {"0.0.0.0:50051", "[::]:50051", "10.0.0.5:50051", ":50051", "quantd:50051"}) {
    EXPECT_FALSE(IsLoopbackListen(remote)) << remote;
  }
  ServerConfig open;
  ASSERT_TRUE(Load("listen: 0.0.0.0:50051\n", open).ok());
  auto refused = ValidateServerConfig(open);
  EXPECT_EQ(refused.reason(), "INSECURE_REMOTE_LISTEN");
  EXPECT_NE(refused.message().find("allow_insecure_remote"), std::string::npos) << refused.message();
  ServerConfig allowed;
  ASSERT_TRUE(Load("listen: 0.0.0.0:50051\nallow_insecure_remote: true\n", allowed).ok());
  EXPECT_TRUE(ValidateServerConfig(allowed).ok());
}

}  // namespace
}  // namespace quantd::server
