// quantd: the front server. Flag parsing and wiring only; behaviour lives in
// the libraries beside this file.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <unistd.h>

// clang-format off
#include <utility>  // Boost 1.74 asio uses std::exchange without including it
#include <boost/asio.hpp>
// clang-format on
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "common/files.h"
#include "common/log.h"
#include "common/sha256.h"
#include "server/auth.h"
#include "server/blob_store.h"
#include "server/job_store.h"
#include "server/metrics.h"
#include "server/server_config.h"
#include "server/services.h"
#include "server/worker_supervisor.h"

namespace {

using quantd::StatusOr;
using quantd::server::ServerConfig;

constexpr const char* kUsage = R"(usage: quantd [flags]
  --listen ADDR            gRPC address (default 127.0.0.1:50051; port 0 picks a free one)
  --data-dir DIR           job store, blobs and artifacts (default ./quantd-data)
  --local-workers N        worker processes to spawn and supervise (default: number of cores)
  --metrics-listen ADDR    Prometheus /metrics address (default 127.0.0.1:9464; "" disables)
  --config FILE            quantd.yaml; flags given here override it
  --log-format text|json   log line format (default text)
  --ready-file FILE        written once serving, with the bound addresses as JSON
  --shutdown-grace-seconds S  how long SIGTERM waits for running jobs (default 30)
  --allow-insecure-remote  listen beyond loopback without authentication (trusted networks only)
  --hash-token TENANT      read a token on stdin, print its quantd.yaml `tokens` entry, exit
  --hash-worker-token      read a token on stdin, print its `worker_token_sha256` entry, exit
  --help
)";

[[noreturn]] void Die(const std::string& message) {
  std::cerr << "quantd: " << message << "\n";
  std::exit(2);
}

// The token on stdin, without the line end a file or `echo` adds.
std::string ReadTokenFromStdin() {
  std::string token((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r')) token.pop_back();
  if (token.size() < 16)
    Die("a token needs at least 16 characters (e.g. openssl rand -hex 32); got " + std::to_string(token.size()));
  if (token.find_first_of(" \t\r\n") != std::string::npos) Die("a token cannot contain whitespace");
  return token;
}

StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(const ServerConfig& config) {
  if (!config.tls_enabled()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(config.tls_client_ca.empty()
                                                ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                                : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  QUANTD_ASSIGN_OR_RETURN(pair.cert_chain, quantd::ReadFile(config.tls_cert, 1 << 20));
  QUANTD_ASSIGN_OR_RETURN(pair.private_key, quantd::ReadFile(config.tls_key, 1 << 20));
  options.pem_key_cert_pairs.push_back(std::move(pair));
  if (!config.tls_client_ca.empty()) {
    QUANTD_ASSIGN_OR_RETURN(options.pem_root_certs, quantd::ReadFile(config.tls_client_ca, 1 << 20));
  }
  return grpc::SslServerCredentials(options);
}

std::string LocalAddressFor(const std::string& listen, int port) {
  auto host = listen.substr(0, listen.rfind(':'));
  if (host == "0.0.0.0" || host == "[::]" || host.empty()) host = "127.0.0.1";
  return host + ":" + std::to_string(port);
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  ServerConfig config;
  int shutdown_grace_seconds = 30;
  std::vector<std::pair<std::string, std::string>> overrides;
  std::string config_file;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (flag == "--hash-worker-token") {
      std::cout << "  - " << quantd::Sha256Hex(ReadTokenFromStdin()) << "\n";
      return 0;
    }
    if (flag == "--allow-insecure-remote") {
      overrides.emplace_back(flag, "true");
      continue;
    }
    if (flag.rfind("--", 0) != 0) Die("unexpected argument '" + flag + "' (see --help)");
    std::string value;
    auto eq = flag.find('=');
    if (eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    } else {
      if (i + 1 >= argc) Die(flag + " needs a value");
      value = argv[++i];
    }
    if (flag == "--config") {
      config_file = value;
    } else if (flag == "--hash-token") {
      // Checked against the same rule as quantd.yaml, so the line pastes as is.
      if (!quantd::server::IsTenantName(value)) {
        Die("--hash-token: tenant '" + value + "' must be 1-63 letters, digits, '-', '_' or '.'");
      }
      auto token = ReadTokenFromStdin();
      std::cout << "  - {tenant: " << value << ", sha256: " << quantd::Sha256Hex(token) << "}\n";
      return 0;
    } else {
      overrides.emplace_back(flag, value);
    }
  }
  if (!config_file.empty()) {
    if (auto status = quantd::server::LoadServerConfigFile(config_file, config); !status.ok()) Die(status.message());
  }
  auto parse_int = [](const std::string& flag, const std::string& value, int min, int max) {
    try {
      size_t used = 0;
      int parsed = std::stoi(value, &used);
      if (used == value.size() && parsed >= min && parsed <= max) return parsed;
    } catch (const std::exception&) {
    }
    Die(flag + " must be an integer in " + std::to_string(min) + ".." + std::to_string(max) + ", got '" + value + "'");
  };
  for (const auto& [flag, value] : overrides) {
    if (flag == "--listen") {
      config.listen = value;
    } else if (flag == "--data-dir") {
      config.data_dir = value;
    } else if (flag == "--local-workers") {
      config.local_workers = parse_int(flag, value, 0, 256);
    } else if (flag == "--metrics-listen") {
      config.metrics_listen = value;
    } else if (flag == "--log-format") {
      if (value != "text" && value != "json") Die("--log-format must be text or json");
      config.log_json = value == "json";
    } else if (flag == "--ready-file") {
      config.ready_file = value;
    } else if (flag == "--allow-insecure-remote") {
      config.allow_insecure_remote = true;
    } else if (flag == "--shutdown-grace-seconds") {
      shutdown_grace_seconds = parse_int(flag, value, 0, 86400);
    } else {
      Die("unknown flag " + flag + " (see --help)");
    }
  }
  if (auto status = quantd::server::ValidateServerConfig(config); !status.ok()) Die(status.message());
  quantd::SetLogJson(config.log_json);
  quantd::SetLogComponent("quantd");
  if (config.local_workers < 0)
    config.local_workers = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (config.worker_binary.empty()) {
    config.worker_binary = std::filesystem::read_symlink("/proc/self/exe").parent_path() / "quantd-worker";
  }

  std::error_code ec;
  std::filesystem::create_directories(config.data_dir, ec);
  if (ec) Die("cannot create data dir " + config.data_dir.string() + ": " + ec.message());
  auto store = quantd::server::OpenJobStore(config);
  if (!store.ok()) Die(store.status().message());
  quantd::server::BlobStore blobs(config.data_dir / "blobs", config.max_upload_bytes);
  if (auto status = blobs.Init(); !status.ok()) Die(status.message());
  quantd::server::EventHub hub;
  quantd::server::Metrics metrics;
  // Local workers prove themselves with a credential made for this run only;
  // it reaches them through their environment, never their command line.
  const std::string local_worker_token = config.auth_enabled() ? quantd::server::NewLocalWorkerToken() : "";
  if (config.auth_enabled() && local_worker_token.empty()) Die("cannot make a credential for the local workers");
  quantd::server::Authenticator auth(config, local_worker_token);
  quantd::server::ServerContext context{config, **store, blobs, hub, metrics, auth};
  quantd::server::QuantServiceImpl quant_service(context);
  quantd::server::WorkerServiceImpl worker_service(context);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  auto credentials = ServerCredentialsFor(config);
  if (!credentials.ok()) Die("TLS: " + credentials.status().message());
  builder.AddListeningPort(config.listen, *credentials, &port);
  // With TLS, local workers would need certificates of their own; they use
  // a private Unix socket instead, in a folder only this user can enter.
  std::string local_worker_address;
  std::filesystem::path local_socket_dir;
  if (config.tls_enabled() && config.local_workers > 0) {
    std::string pattern = (std::filesystem::temp_directory_path() / "quantd-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) Die("cannot create a folder for the local worker socket");
    local_socket_dir = pattern;
    local_worker_address = "unix:" + (local_socket_dir / "worker.sock").string();
    builder.AddListeningPort(local_worker_address, grpc::InsecureServerCredentials());
  }
  builder.RegisterService(&quant_service);
  builder.RegisterService(&worker_service);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) Die("cannot listen on " + config.listen);
  server->GetHealthCheckService()->SetServingStatus("quantd.v1.QuantService", true);
  server->GetHealthCheckService()->SetServingStatus("quantd.v1.WorkerService", true);
  std::string bound = LocalAddressFor(config.listen, port);
  if (local_worker_address.empty()) local_worker_address = bound;
  std::string metrics_bound;
  if (!config.metrics_listen.empty()) {
    auto served = metrics.Serve(config.metrics_listen);
    if (!served.ok()) Die(served.status().message());
    metrics_bound = *served;
  }
  quantd::LogInfo("listening on " + bound + (metrics_bound.empty() ? "" : ", metrics on " + metrics_bound) +
                  ", data in " + config.data_dir.string());

  boost::asio::io_context io;
  std::vector<std::string> worker_env;
  if (!local_worker_token.empty()) worker_env.push_back("QUANTD_WORKER_TOKEN=" + local_worker_token);
  quantd::server::WorkerSupervisor supervisor(
      io, config.worker_binary, local_worker_address, config.local_workers,
      {"--heartbeat-ms", std::to_string(config.worker_heartbeat_ms), "--log-format", config.log_json ? "json" : "text"},
      worker_env);
  supervisor.Start();

  // Lease expiry and metric refresh run on the same timer.
  boost::asio::steady_timer tick(io);
  std::function<void()> schedule_tick = [&] {
    tick.expires_after(std::chrono::milliseconds(500));
    tick.async_wait([&](const boost::system::error_code& error) {
      if (error) return;
      auto expired = context.store.ExpireLeases(config.max_attempts);
      if (expired.ok() && !expired->empty()) {
        for (const auto& lease : *expired) {
          quantd::LogWarning("lease of job " + lease.job_id + " expired");
          if (lease.new_state != quantd::v1::JOB_STATE_QUEUED) {
            if (auto job = context.store.GetJob(lease.job_id); job.ok()) metrics.JobFinished(*job);
          }
        }
        hub.Notify();
      }
      metrics.Refresh(context.store);
      schedule_tick();
    });
  };
  schedule_tick();

  boost::asio::signal_set stop_signals(io, SIGINT, SIGTERM);
  stop_signals.async_wait([&](const boost::system::error_code& error, int signal_number) {
    if (error) return;
    quantd::LogInfo("signal " + std::to_string(signal_number) + ": draining");
    context.draining = true;
    // Readiness drops first so load balancers stop sending new work here.
    server->GetHealthCheckService()->SetServingStatus(false);
    // Closing the hub first wakes long-polling workers so they see the stop
    // at once; the server keeps answering while running jobs are handed back.
    hub.Close();
    supervisor.Stop(std::chrono::seconds(shutdown_grace_seconds));
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    io.stop();
  });

  if (!config.ready_file.empty()) {
    std::string ready = "{\"listen\":\"" + bound + "\",\"metrics\":\"" + metrics_bound +
                        "\",\"pid\":" + std::to_string(::getpid()) + "}\n";
    if (auto status = quantd::WriteFileAtomic(config.ready_file, ready); !status.ok()) Die(status.message());
  }
  io.run();
  server->Wait();
  if (!local_socket_dir.empty()) std::filesystem::remove_all(local_socket_dir, ec);
  quantd::LogInfo("stopped");
  return 0;
}
