#pragma once

#include <grpcpp/channel.h>
#include <grpcpp/support/channel_arguments.h>

#include <filesystem>
#include <memory>
#include <string>

#include "common/status.h"

namespace quantd {

// How a client or worker reaches quantd.
struct ChannelOptions {
  std::string address;
  // Sent as `authorization: Bearer <token>` on every call; empty: none.
  std::string bearer_token;
  // TLS: the CA that signed the server's certificate (empty with use_tls:
  // the system's roots). A client certificate and key make it mutual TLS.
  bool use_tls = false;
  std::filesystem::path ca_cert;
  std::filesystem::path client_cert;
  std::filesystem::path client_key;
};

// Files that are missing or unreadable are errors naming the file.
StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(const ChannelOptions& options,
                                                     const grpc::ChannelArguments& args = grpc::ChannelArguments());

// A token kept in a file (a mounted Secret, a file of mode 0600): the first
// line, without its line end.
StatusOr<std::string> ReadTokenFile(const std::filesystem::path& file);

}  // namespace quantd
