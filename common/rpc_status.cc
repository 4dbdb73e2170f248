#include "common/rpc_status.h"

#include "quantd/v1/quantd.pb.h"

namespace quantd {

grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  v1::ErrorDetail detail;
  detail.set_reason(status.reason());
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(status.code())), status.message(),
                      detail.SerializeAsString());
}

Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return Status::Ok();
  v1::ErrorDetail detail;
  std::string reason;
  if (!status.error_details().empty() && detail.ParseFromString(status.error_details())) reason = detail.reason();
  if (reason.empty()) {
    reason = status.error_code() == grpc::StatusCode::UNAVAILABLE ? "SERVER_UNAVAILABLE"
             : status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ? "DEADLINE_EXCEEDED"
                                                                           : "RPC_ERROR";
  }
  return Status(static_cast<StatusCode>(static_cast<int>(status.error_code())), reason, status.error_message());
}

}  // namespace quantd
