#include "server/server_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "common/files.h"
#include "common/sha256.h"

namespace quantd::server {
namespace {

Status WrongType(const std::string& key, const std::string& expected) {
  return InvalidArgument("SERVER_CONFIG_WRONG_TYPE", "quantd.yaml: " + key + " must be " + expected);
}

Status BadDigest(const std::string& key, const std::string& value) {
  return InvalidArgument(
      "SERVER_CONFIG_BAD_TOKEN_HASH",
      "quantd.yaml: " + key + " '" + value.substr(0, 80) +
          "' is not a lowercase hex SHA-256 (make one with: quantd --hash-token TENANT < token-file)");
}

Status ParseTenantTokens(const YAML::Node& node, std::vector<TenantToken>& tokens) {
  if (!node.IsSequence()) return WrongType("tokens", "a list of {tenant: NAME, sha256: HEX}");
  tokens.clear();
  for (const auto& entry : node) {
    if (!entry.IsMap()) return WrongType("tokens", "a list of {tenant: NAME, sha256: HEX}");
    TenantToken token;
    for (const auto& field : entry) {
      auto key = field.first.as<std::string>();
      if (!field.second.IsScalar()) return WrongType("tokens[]." + key, "a string");
      if (key == "tenant") {
        token.tenant = field.second.as<std::string>();
      } else if (key == "sha256") {
        token.sha256 = field.second.as<std::string>();
      } else {
        return InvalidArgument("SERVER_CONFIG_UNKNOWN_KEY",
                               "quantd.yaml: unknown key 'tokens[]." + key + "'; known: sha256, tenant");
      }
    }
    if (!IsTenantName(token.tenant)) {
      return InvalidArgument("SERVER_CONFIG_BAD_TENANT", "quantd.yaml: tokens[].tenant '" + token.tenant.substr(0, 80) +
                                                             "' must be 1-63 letters, digits, '-', '_' or '.'");
    }
    if (!IsSha256Hex(token.sha256)) return BadDigest("tokens[].sha256", token.sha256);
    tokens.push_back(std::move(token));
  }
  return Status::Ok();
}

Status ParseWorkerTokens(const YAML::Node& node, std::vector<std::string>& hashes) {
  hashes.clear();
  if (node.IsScalar()) {
    hashes.push_back(node.as<std::string>());
  } else if (node.IsSequence()) {
    for (const auto& entry : node) {
      if (!entry.IsScalar()) return WrongType("worker_token_sha256", "a hex digest or a list of them");
      hashes.push_back(entry.as<std::string>());
    }
  } else {
    return WrongType("worker_token_sha256", "a hex digest or a list of them");
  }
  for (const auto& hash : hashes) {
    if (!IsSha256Hex(hash)) return BadDigest("worker_token_sha256", hash);
  }
  return Status::Ok();
}

}  // namespace

bool IsTenantName(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) {
                       return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                              c == '_' || c == '.';
                     }) &&
         name.front() != '.';
}

bool IsLoopbackListen(const std::string& listen) {
  if (listen.rfind("unix:", 0) == 0) return true;
  auto colon = listen.rfind(':');
  std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

Status ValidateServerConfig(const ServerConfig& config) {
  std::set<std::string> hashes;
  for (const auto& token : config.tenant_tokens) {
    if (!hashes.insert(token.sha256).second) {
      return InvalidArgument("SERVER_CONFIG_DUPLICATE_TOKEN",
                             "quantd.yaml: the token of tenant '" + token.tenant + "' is listed twice");
    }
  }
  for (const auto& hash : config.worker_token_sha256) {
    if (!hashes.insert(hash).second) {
      return InvalidArgument("SERVER_CONFIG_DUPLICATE_TOKEN",
                             "quantd.yaml: a worker token is also listed as another token; "
                             "workers and tenants need distinct tokens");
    }
  }
  if (!config.worker_token_sha256.empty() && !config.auth_enabled()) {
    return InvalidArgument("SERVER_CONFIG_MISSING_KEY",
                           "quantd.yaml: worker_token_sha256 takes effect only with tenant tokens; add 'tokens'");
  }
  if (config.tls_cert.empty() != config.tls_key.empty()) {
    return InvalidArgument("SERVER_CONFIG_MISSING_KEY", "quantd.yaml: tls_cert and tls_key go together");
  }
  if (!config.tls_client_ca.empty() && config.tls_cert.empty()) {
    return InvalidArgument("SERVER_CONFIG_MISSING_KEY", "quantd.yaml: tls_client_ca needs tls_cert and tls_key");
  }
  auto check_limit = [](const char* key, int64_t value, const char* max_key, int64_t max) {
    if (max > 0 && value > max) {
      return InvalidArgument("SERVER_CONFIG_OUT_OF_RANGE", std::string("quantd.yaml: ") + key + " is above " + max_key);
    }
    return Status::Ok();
  };
  QUANTD_RETURN_IF_ERROR(check_limit("job_memory_limit_mb", config.job_memory_limit_bytes, "max_job_memory_limit_mb",
                                     config.max_job_memory_limit_bytes));
  QUANTD_RETURN_IF_ERROR(check_limit("job_time_limit_seconds", config.job_time_limit_seconds,
                                     "max_job_time_limit_seconds", config.max_job_time_limit_seconds));
  if (!IsLoopbackListen(config.listen) && !config.auth_enabled() && !config.allow_insecure_remote) {
    return Status(StatusCode::kFailedPrecondition, "INSECURE_REMOTE_LISTEN",
                  "refusing to listen on " + config.listen +
                      " without authentication: add tenant 'tokens' to quantd.yaml (hashes from "
                      "quantd --hash-token TENANT), or set allow_insecure_remote: true "
                      "(flag --allow-insecure-remote) if every client on that network is trusted");
  }
  return Status::Ok();
}

Status LoadServerConfigFile(const std::filesystem::path& file, ServerConfig& config) {
  QUANTD_ASSIGN_OR_RETURN(auto text, ReadFile(file, 1 << 20));
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return InvalidArgument("SERVER_CONFIG_SYNTAX", file.string() + ": " + e.what());
  }
  if (root.IsNull()) return Status::Ok();
  if (!root.IsMap()) return InvalidArgument("SERVER_CONFIG_SYNTAX", file.string() + ": top level must be a mapping");

  using Setter = std::function<Status(const YAML::Node&, const std::string&)>;
  auto string_setter = [](std::string& field) -> Setter {
    return [&field](const YAML::Node& node, const std::string& key) {
      if (!node.IsScalar()) return WrongType(key, "a string");
      field = node.as<std::string>();
      return Status::Ok();
    };
  };
  auto path_setter = [](std::filesystem::path& field) -> Setter {
    return [&field](const YAML::Node& node, const std::string& key) {
      if (!node.IsScalar()) return WrongType(key, "a path");
      field = node.as<std::string>();
      return Status::Ok();
    };
  };
  auto int_setter = [](auto& field, int64_t min, int64_t max) -> Setter {
    return [&field, min, max](const YAML::Node& node, const std::string& key) {
      int64_t value;
      try {
        value = node.as<int64_t>();
      } catch (const YAML::Exception&) {
        return WrongType(key, "an integer");
      }
      if (value < min || value > max) {
        return InvalidArgument("SERVER_CONFIG_OUT_OF_RANGE", "quantd.yaml: " + key + " = " + std::to_string(value) +
                                                                 " is outside " + std::to_string(min) + ".." +
                                                                 std::to_string(max));
      }
      field = static_cast<std::remove_reference_t<decltype(field)>>(value);
      return Status::Ok();
    };
  };
  auto bool_setter = [](bool& field) -> Setter {
    return [&field](const YAML::Node& node, const std::string& key) {
      try {
        field = node.as<bool>();
      } catch (const YAML::Exception&) {
        return WrongType(key, "true or false");
      }
      return Status::Ok();
    };
  };
  auto ratio_setter = [](double& field, double min, double max) -> Setter {
    return [&field, min, max](const YAML::Node& node, const std::string& key) {
      double value;
      try {
        value = node.as<double>();
      } catch (const YAML::Exception&) {
        return WrongType(key, "a number");
      }
      if (!(value >= min && value <= max)) {
        return InvalidArgument("SERVER_CONFIG_OUT_OF_RANGE", "quantd.yaml: " + key + " = " + node.as<std::string>() +
                                                                 " is outside " + std::to_string(min) + ".." +
                                                                 std::to_string(max));
      }
      field = value;
      return Status::Ok();
    };
  };
  auto apply = [](const YAML::Node& map, const std::map<std::string, Setter>& setters,
                  const std::string& prefix) -> Status {
    for (const auto& entry : map) {
      auto key = prefix + entry.first.as<std::string>();
      auto setter = setters.find(entry.first.as<std::string>());
      if (setter == setters.end()) {
        std::string known;
        for (const auto& [name, unused] : setters) known += (known.empty() ? "" : ", ") + prefix + name;
        return InvalidArgument("SERVER_CONFIG_UNKNOWN_KEY", "quantd.yaml: unknown key '" + key + "'; known: " + known);
      }
      QUANTD_RETURN_IF_ERROR(setter->second(entry.second, key));
    }
    return Status::Ok();
  };
  constexpr int64_t kTebibyte = int64_t{1} << 40;
  auto& input = config.input_limits;
  const std::map<std::string, Setter> limit_setters = {
      {"max_model_bytes", int_setter(input.model.max_model_bytes, 1, kTebibyte)},
      {"max_graph_nodes", int_setter(input.model.max_nodes, 1, int64_t{1} << 31)},
      {"max_graph_depth", int_setter(input.model.max_graph_depth, 1, 64)},
      {"max_tensor_elements", int_setter(input.model.max_tensor_elements, 1, kTebibyte)},
      {"max_archive_bytes", int_setter(input.archive.max_archive_bytes, 1, kTebibyte)},
      {"max_archive_entries", int_setter(input.archive.max_entries, 1, int64_t{1} << 31)},
      {"max_archive_entry_bytes", int_setter(input.archive.max_entry_bytes, 1, kTebibyte)},
      {"max_archive_total_bytes", int_setter(input.archive.max_total_bytes, 1, kTebibyte)},
      {"max_compression_ratio", ratio_setter(input.archive.max_compression_ratio, 1.0, 1e6)},
      {"max_archive_path_depth", int_setter(input.archive.max_path_depth, 1, 64)},
      {"max_image_pixels", int_setter(input.image.max_pixels, 1, kTebibyte)},
  };
  int64_t lease_ttl_seconds = config.lease_ttl_ms / 1000;
  int64_t job_memory_limit_mb = config.job_memory_limit_bytes >> 20;
  int64_t max_job_memory_limit_mb = config.max_job_memory_limit_bytes >> 20;
  std::string log_format = config.log_json ? "json" : "text";
  std::string job_store = config.job_store == JobStoreBackend::kPostgres ? "postgres" : "sqlite";
  const std::map<std::string, Setter> setters = {
      {"listen", string_setter(config.listen)},
      {"data_dir", path_setter(config.data_dir)},
      {"local_workers", int_setter(config.local_workers, 0, 256)},
      {"metrics_listen", string_setter(config.metrics_listen)},
      {"lease_ttl_seconds", int_setter(lease_ttl_seconds, 1, 3600)},
      {"max_attempts", int_setter(config.max_attempts, 1, 100)},
      {"worker_heartbeat_ms", int_setter(config.worker_heartbeat_ms, 50, 60000)},
      {"calibration_root", path_setter(config.calibration_root)},
      {"max_upload_bytes", int_setter(config.max_upload_bytes, 1, int64_t{1} << 40)},
      {"worker_binary", path_setter(config.worker_binary)},
      {"log_format", string_setter(log_format)},
      {"job_store", string_setter(job_store)},
      {"postgres_dsn", string_setter(config.postgres_dsn)},
      {"postgres_connections", int_setter(config.postgres_connections, 1, 256)},
      {"tokens",
       [&config](const YAML::Node& node, const std::string&) { return ParseTenantTokens(node, config.tenant_tokens); }},
      {"worker_token_sha256",
       [&config](const YAML::Node& node, const std::string&) {
         return ParseWorkerTokens(node, config.worker_token_sha256);
       }},
      {"allow_insecure_remote", bool_setter(config.allow_insecure_remote)},
      {"tls_cert", path_setter(config.tls_cert)},
      {"tls_key", path_setter(config.tls_key)},
      {"tls_client_ca", path_setter(config.tls_client_ca)},
      {"job_memory_limit_mb", int_setter(job_memory_limit_mb, 0, int64_t{1} << 24)},
      {"max_job_memory_limit_mb", int_setter(max_job_memory_limit_mb, 0, int64_t{1} << 24)},
      {"job_time_limit_seconds", int_setter(config.job_time_limit_seconds, 0, 7 * 86400)},
      {"max_job_time_limit_seconds", int_setter(config.max_job_time_limit_seconds, 0, 7 * 86400)},
      {"limits",
       [&](const YAML::Node& node, const std::string& key) {
         if (node.IsNull()) return Status::Ok();
         if (!node.IsMap()) return WrongType(key, "a mapping of limit names to values");
         return apply(node, limit_setters, key + ".");
       }},
  };
  QUANTD_RETURN_IF_ERROR(apply(root, setters, ""));
  if (log_format != "json" && log_format != "text") {
    return InvalidArgument("SERVER_CONFIG_OUT_OF_RANGE", "quantd.yaml: log_format must be text or json");
  }
  config.log_json = log_format == "json";
  if (job_store != "sqlite" && job_store != "postgres") {
    return InvalidArgument("SERVER_CONFIG_OUT_OF_RANGE",
                           "quantd.yaml: job_store must be sqlite or postgres, got '" + job_store + "'");
  }
  config.job_store = job_store == "postgres" ? JobStoreBackend::kPostgres : JobStoreBackend::kSqlite;
  if (config.job_store == JobStoreBackend::kPostgres && config.postgres_dsn.empty()) {
    return InvalidArgument("SERVER_CONFIG_MISSING_KEY", "quantd.yaml: job_store: postgres needs postgres_dsn");
  }
  config.lease_ttl_ms = lease_ttl_seconds * 1000;
  config.job_memory_limit_bytes = job_memory_limit_mb << 20;
  config.max_job_memory_limit_bytes = max_job_memory_limit_mb << 20;
  return Status::Ok();
}

}  // namespace quantd::server
