#pragma once

#include <grpcpp/server_context.h>

#include <map>
#include <set>
#include <string>

#include "common/status.h"
#include "server/server_config.h"

namespace quantd::server {

// Who a call comes from, decided from its `authorization: Bearer <token>`
// metadata. Tokens are compared by their SHA-256 only, so the server never
// holds a configured token itself.
class Authenticator {
 public:
  // `local_worker_token` is the credential quantd hands its own worker
  // processes; it is made fresh at every start and never written anywhere.
  Authenticator(const ServerConfig& config, const std::string& local_worker_token);

  bool enabled() const { return enabled_; }
  // The tenant a QuantService call acts for: "" when
  // authentication is off (every job is visible), the token's tenant
  // otherwise. UNAUTHENTICATED without a known token, PERMISSION_DENIED for
  // a worker's token.
  StatusOr<std::string> TenantOf(const grpc::ServerContext& context) const;
  // OK for a worker's credential (or when authentication is off);
  // UNAUTHENTICATED or PERMISSION_DENIED (a tenant's token) otherwise.
  Status CheckWorker(const grpc::ServerContext& context) const;

 private:
  // The token's SHA-256, or an UNAUTHENTICATED status.
  StatusOr<std::string> TokenHash(const grpc::ServerContext& context) const;

  bool enabled_ = false;
  std::map<std::string, std::string> tenant_by_hash_;
  std::set<std::string> worker_hashes_;
};

// A random token for quantd's own workers (256 bits, hex).
std::string NewLocalWorkerToken();

}  // namespace quantd::server
