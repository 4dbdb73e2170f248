#include "common/channel.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/client_interceptor.h>

#include <vector>

#include "common/files.h"

namespace quantd {
namespace {

namespace experimental = grpc::experimental;

// Call credentials would do the same over TLS, but gRPC drops them on a
// plaintext channel, and a loopback quantd with tokens is plaintext.
class BearerTokenInterceptor : public experimental::Interceptor {
 public:
  explicit BearerTokenInterceptor(std::string header) : header_(std::move(header)) {}
  void Intercept(experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->emplace("authorization", header_);
    }
    methods->Proceed();
  }

 private:
  std::string header_;
};

class BearerTokenInterceptorFactory : public experimental::ClientInterceptorFactoryInterface {
 public:
  explicit BearerTokenInterceptorFactory(const std::string& token) : header_("Bearer " + token) {}
  experimental::Interceptor* CreateClientInterceptor(experimental::ClientRpcInfo*) override {
    return new BearerTokenInterceptor(header_);
  }

 private:
  std::string header_;
};

}  // namespace

StatusOr<std::string> ReadTokenFile(const std::filesystem::path& file) {
  auto text = ReadFile(file, 64 << 10);
  if (!text.ok()) return text.status().WithContext("token file");
  std::string token = text->substr(0, text->find_first_of("\r\n"));
  if (token.empty()) return InvalidArgument("TOKEN_FILE_EMPTY", "token file " + file.string() + " is empty");
  return token;
}

StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(const ChannelOptions& options,
                                                     const grpc::ChannelArguments& args) {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  bool tls = options.use_tls || !options.ca_cert.empty() || !options.client_cert.empty();
  if (options.client_cert.empty() != options.client_key.empty()) {
    return InvalidArgument("TLS_CLIENT_CERT_INCOMPLETE",
                           "a client certificate needs its key, and the key its certificate");
  }
  if (tls) {
    grpc::SslCredentialsOptions ssl;
    if (!options.ca_cert.empty()) {
      QUANTD_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFile(options.ca_cert, 1 << 20));
    }
    if (!options.client_cert.empty()) {
      QUANTD_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadFile(options.client_cert, 1 << 20));
      QUANTD_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadFile(options.client_key, 1 << 20));
    }
    credentials = grpc::SslCredentials(ssl);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  if (options.bearer_token.empty()) return grpc::CreateCustomChannel(options.address, credentials, args);
  std::vector<std::unique_ptr<experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<BearerTokenInterceptorFactory>(options.bearer_token));
  return experimental::CreateCustomChannelWithInterceptors(options.address, credentials, args, std::move(interceptors));
}

}  // namespace quantd
