#pragma once

#include <grpcpp/grpcpp.h>

#include "common/status.h"

namespace quantd {

// The single place where engine Status becomes grpc::Status and back. The
// machine-readable reason travels as a serialized quantd.v1.ErrorDetail in
// the status details.
grpc::Status ToGrpcStatus(const Status& status);
Status FromGrpcStatus(const grpc::Status& status);

}  // namespace quantd
