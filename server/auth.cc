#include "server/auth.h"

#include <openssl/rand.h>

#include "common/sha256.h"

namespace quantd::server {
namespace {

constexpr std::string_view kBearer = "Bearer ";

Status Unauthenticated(std::string reason, std::string message) {
  return Status(StatusCode::kUnauthenticated, std::move(reason), std::move(message));
}

}  // namespace

Authenticator::Authenticator(const ServerConfig& config, const std::string& local_worker_token)
    : enabled_(config.auth_enabled()) {
  for (const auto& token : config.tenant_tokens) tenant_by_hash_[token.sha256] = token.tenant;
  worker_hashes_.insert(config.worker_token_sha256.begin(), config.worker_token_sha256.end());
  if (!local_worker_token.empty()) worker_hashes_.insert(Sha256Hex(local_worker_token));
}

StatusOr<std::string> Authenticator::TokenHash(const grpc::ServerContext& context) const {
  const auto& metadata = context.client_metadata();
  auto found = metadata.find("authorization");
  if (found == metadata.end()) {
    return Unauthenticated("AUTH_TOKEN_MISSING",
                           "this server requires a bearer token: send 'authorization: Bearer <token>' metadata "
                           "(quantctl: --token-file PATH or QUANTD_TOKEN)");
  }
  std::string_view value(found->second.data(), found->second.size());
  if (value.substr(0, kBearer.size()) != kBearer || value.size() == kBearer.size()) {
    return Unauthenticated("AUTH_TOKEN_MALFORMED", "the authorization metadata must be 'Bearer <token>'");
  }
  return Sha256Hex(value.substr(kBearer.size()));
}

StatusOr<std::string> Authenticator::TenantOf(const grpc::ServerContext& context) const {
  if (!enabled_) return std::string();
  QUANTD_ASSIGN_OR_RETURN(auto hash, TokenHash(context));
  auto tenant = tenant_by_hash_.find(hash);
  if (tenant != tenant_by_hash_.end()) return tenant->second;
  if (worker_hashes_.count(hash) > 0) {
    return Status(StatusCode::kPermissionDenied, "AUTH_WRONG_CREDENTIAL",
                  "a worker credential cannot call the client API; use a tenant token");
  }
  return Unauthenticated("AUTH_TOKEN_UNKNOWN", "the bearer token is not one this server accepts");
}

Status Authenticator::CheckWorker(const grpc::ServerContext& context) const {
  if (!enabled_) return Status::Ok();
  QUANTD_ASSIGN_OR_RETURN(auto hash, TokenHash(context));
  if (worker_hashes_.count(hash) > 0) return Status::Ok();
  if (tenant_by_hash_.count(hash) > 0) {
    return Status(StatusCode::kPermissionDenied, "AUTH_WRONG_CREDENTIAL",
                  "a tenant token cannot call the worker API; workers need a worker token");
  }
  return Unauthenticated("AUTH_TOKEN_UNKNOWN", "the bearer token is not one this server accepts");
}

std::string NewLocalWorkerToken() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) return {};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string token;
  for (unsigned char byte : bytes) {
    token += kHex[byte >> 4];
    token += kHex[byte & 15];
  }
  return token;
}

}  // namespace quantd::server
