// quantd-worker: leases jobs from a quantd server and runs them.
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <iostream>

#include "common/log.h"
#include "worker/agent/agent.h"
#include "worker/agent/pipeline_process.h"

namespace {

quantd::worker::WorkerAgent* g_agent = nullptr;

void OnStopSignal(int) {
  if (g_agent) g_agent->RequestStop();
}

constexpr const char* kUsage = R"(usage: quantd-worker --server ADDR [flags]
  --server ADDR        quantd address (host:port)
  --device cpu|gpu     device class this worker leases jobs for (default cpu)
  --worker-id ID       name shown in job records (default: host-pid)
  --work-dir DIR       scratch folder for job inputs and outputs (default: $TMPDIR/quantd-worker)
  --heartbeat-ms MS    how often progress is sent and cancellation checked (default 1000)
  --exit-when-idle     run whatever is queued, then exit
  --token-file PATH    worker token for a server with authentication (default: $QUANTD_WORKER_TOKEN)
  --tls                connect with TLS, trusting the system's CAs
  --ca-cert PEM        connect with TLS, trusting this CA
  --client-cert PEM --client-key PEM   client certificate for mutual TLS
  --log-format text|json
)";

[[noreturn]] void Die(const std::string& message) {
  std::cerr << "quantd-worker: " << message << "\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  // oneDNN's OpenMP threads spin while idle and starve the executor's own
  // thread pool on small machines; passive waiting keeps them out of the
  // way. The OpenMP runtime reads the setting when it loads, before main(),
  // so the process re-executes itself once with it set.
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    ::setenv("OMP_WAIT_POLICY", "passive", /*overwrite=*/0);
    ::execv("/proc/self/exe", argv);  // on failure, carry on as we are
  }
  if (argc > 1 && std::string(argv[1]) == "--run-pipeline") {
    quantd::SetLogComponent("quantd-worker");
    return quantd::worker::PipelineProcessMain(argc, argv);
  }
  std::signal(SIGPIPE, SIG_IGN);
  quantd::worker::AgentOptions options;
  char host[256] = "worker";
  ::gethostname(host, sizeof(host) - 1);
  options.worker_id = std::string(host) + "-" + std::to_string(::getpid());
  const char* tmp = std::getenv("TMPDIR");
  options.work_root = std::filesystem::path(tmp ? tmp : "/tmp") / "quantd-worker";
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Die(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") {
      std::cout << kUsage;
      return 0;
    } else if (flag == "--server") {
      options.channel.address = value();
    } else if (flag == "--token-file") {
      auto token = quantd::ReadTokenFile(value());
      if (!token.ok()) Die("--token-file: " + token.status().message());
      options.channel.bearer_token = *token;
    } else if (flag == "--tls") {
      options.channel.use_tls = true;
    } else if (flag == "--ca-cert") {
      options.channel.ca_cert = value();
    } else if (flag == "--client-cert") {
      options.channel.client_cert = value();
    } else if (flag == "--client-key") {
      options.channel.client_key = value();
    } else if (flag == "--device") {
      auto device = value();
      if (device == "cpu") {
        options.device = quantd::v1::DEVICE_CLASS_CPU;
      } else if (device == "gpu") {
        options.device = quantd::v1::DEVICE_CLASS_GPU;
      } else {
        Die("--device must be cpu or gpu, got '" + device + "'");
      }
    } else if (flag == "--worker-id") {
      options.worker_id = value();
    } else if (flag == "--work-dir") {
      options.work_root = value();
    } else if (flag == "--heartbeat-ms") {
      auto text = value();
      try {
        options.heartbeat_ms = std::stoi(text);
      } catch (const std::exception&) {
        Die("--heartbeat-ms must be an integer, got '" + text + "'");
      }
      if (options.heartbeat_ms < 50 || options.heartbeat_ms > 60000) Die("--heartbeat-ms must be in 50..60000");
    } else if (flag == "--exit-when-idle") {
      options.exit_when_idle = true;
    } else if (flag == "--log-format") {
      auto format = value();
      if (format != "text" && format != "json") Die("--log-format must be text or json");
      quantd::SetLogJson(format == "json");
    } else {
      Die("unknown flag '" + flag + "' (see --help)");
    }
  }
  if (options.channel.address.empty()) Die("--server is required (see --help)");
  if (const char* token = std::getenv("QUANTD_WORKER_TOKEN"); token != nullptr) {
    if (options.channel.bearer_token.empty()) options.channel.bearer_token = token;
    // Nothing this process starts needs the credential.
    ::unsetenv("QUANTD_WORKER_TOKEN");
  }
  quantd::SetLogComponent("quantd-worker");
  quantd::worker::WorkerAgent agent(options);
  g_agent = &agent;
  std::signal(SIGTERM, OnStopSignal);
  std::signal(SIGINT, OnStopSignal);
  return agent.Run();
}
