// Engine-wide error type. Every layer below the RPC boundary returns Status /
// StatusOr; the server converts to grpc::Status in exactly one place
// (server/grpc_status.h) and tools print message() and exit non-zero.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace quantd {

// Values match grpc::StatusCode so the RPC boundary converts by number.
enum class StatusCode {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

// A failure has a code (what kind), a reason (stable, machine-readable,
// UPPER_SNAKE, e.g. "CONFIG_VALUE_OUT_OF_RANGE") and a message for people.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string reason, std::string message)
      : code_(code), reason_(std::move(reason)), message_(std::move(message)) {}

  static Status Ok() { return {}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& reason() const { return reason_; }
  const std::string& message() const { return message_; }

  // Prefixes context to the message, keeping code and reason.
  Status WithContext(const std::string& context) const {
    if (ok()) return *this;
    return Status(code_, reason_, context + ": " + message_);
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string reason_;
  std::string message_;
};

inline Status InvalidArgument(std::string reason, std::string message) {
  return {StatusCode::kInvalidArgument, std::move(reason), std::move(message)};
}
inline Status NotFound(std::string reason, std::string message) {
  return {StatusCode::kNotFound, std::move(reason), std::move(message)};
}
inline Status FailedPrecondition(std::string reason, std::string message) {
  return {StatusCode::kFailedPrecondition, std::move(reason), std::move(message)};
}
inline Status ResourceExhausted(std::string reason, std::string message) {
  return {StatusCode::kResourceExhausted, std::move(reason), std::move(message)};
}
inline Status Unimplemented(std::string reason, std::string message) {
  return {StatusCode::kUnimplemented, std::move(reason), std::move(message)};
}
inline Status Internal(std::string reason, std::string message) {
  return {StatusCode::kInternal, std::move(reason), std::move(message)};
}
inline Status Cancelled(std::string message) {
  return {StatusCode::kCancelled, "CANCELLED", std::move(message)};
}
inline Status DataLoss(std::string reason, std::string message) {
  return {StatusCode::kDataLoss, std::move(reason), std::move(message)};
}

template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status status) : status_(std::move(status)) {}  // NOLINT: implicit by design
  StatusOr(T value) : value_(std::move(value)) {}          // NOLINT: implicit by design

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace quantd

#define QUANTD_RETURN_IF_ERROR(expr)            \
  do {                                          \
    ::quantd::Status quantd_status_ = (expr);   \
    if (!quantd_status_.ok()) return quantd_status_; \
  } while (0)

#define QUANTD_CONCAT_INNER(a, b) a##b
#define QUANTD_CONCAT(a, b) QUANTD_CONCAT_INNER(a, b)
#define QUANTD_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
#define QUANTD_ASSIGN_OR_RETURN(lhs, expr) \
  QUANTD_ASSIGN_OR_RETURN_IMPL(QUANTD_CONCAT(quantd_statusor_, __LINE__), lhs, expr)
