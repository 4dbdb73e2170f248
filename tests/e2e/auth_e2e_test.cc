// Authentication, tenants and TLS with real processes: a quantd with bearer
// tokens, its real local workers, remote workers started here, and clients
// over plaintext, TLS and mutual TLS. Certificates are made for each run
// with the openssl command; nothing secret is committed.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "client/client.h"
#include "common/channel.h"
#include "common/files.h"
#include "common/ids.h"
#include "common/rpc_status.h"
#include "common/sha256.h"
#include "tests/e2e/harness.h"

namespace quantd::testing {
namespace {

using client::QuantClient;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

const std::string kAlphaToken = "alpha-token-0123456789abcdef";
const std::string kBetaToken = "beta-token-0123456789abcdef";
const std::string kWorkerToken = "worker-token-0123456789abcdef";

// quantd.yaml lines for tenants alpha and beta and one remote worker
// credential, made the way an operator makes them.
std::vector<std::string> TokenYaml() {
  auto hash_line = [](const std::vector<std::string>& args, const std::string& token) {
    auto file = TempDir("quantd-token-") / "token";
    if (!WriteFileAtomic(file, token + "\n").ok()) throw std::runtime_error("cannot write " + file.string());
    auto result = RunCommand({"/bin/sh", "-c", "\"$0\" \"$@\" < \"" + file.string() + "\"",
                              (BinDir() / "quantd").string(), args[0], args.size() > 1 ? args[1] : ""});
    std::filesystem::remove_all(file.parent_path());
    if (result.exit_code != 0) throw std::runtime_error("quantd --hash-token failed: " + result.err);
    auto line = result.out;
    while (!line.empty() && line.back() == '\n') line.pop_back();
    return line;
  };
  return {"tokens:", hash_line({"--hash-token", "alpha"}, kAlphaToken), hash_line({"--hash-token", "beta"}, kBetaToken),
          "worker_token_sha256:", hash_line({"--hash-worker-token"}, kWorkerToken)};
}

std::shared_ptr<grpc::Channel> Channel(const std::string& address, const std::string& token,
                                       ChannelOptions options = {}) {
  options.address = address;
  options.bearer_token = token;
  auto channel = OpenChannel(options);
  if (!channel.ok()) throw std::runtime_error(channel.status().message());
  return *channel;
}

std::string ReadConfig(const std::string& name) {
  auto text = ReadFile(SourceDir() / "configs" / name, 1 << 20);
  if (!text.ok()) throw std::runtime_error(text.status().message());
  return *text;
}

v1::SubmitJobRequest WeightQuant(const std::string& model_sha, const std::string& request_id) {
  v1::SubmitJobRequest request;
  request.set_request_id(request_id);
  request.set_model_sha256(model_sha);
  request.set_config_text(ReadConfig("weight_quant_8bit.yaml"));
  request.set_model_name("fashion_cnn.onnx");
  return request;
}

v1::Job WaitForEnd(QuantClient& client, const std::string& job_id, Clock::duration timeout) {
  auto deadline = Clock::now() + timeout;
  v1::Job last;
  while (Clock::now() < deadline) {
    auto job = client.Get(job_id);
    if (job.ok()) {
      last = *job;
      if (client::IsTerminal(last.state())) break;
    }
    std::this_thread::sleep_for(milliseconds(50));
  }
  return last;
}

// The accuracy of a downloaded weight-quantized Fashion-MNIST CNN in ONNX
// Runtime, next to the float model's.
void ExpectRunsInOnnxRuntime(const std::filesystem::path& model) {
  auto ort = RunOrt({"eval", "--model", model.string(), "--reference", BundledModel().string(), "--count", "1000"});
  double fp32 = ort["reference_accuracy"], int8 = ort["accuracy"];
  EXPECT_GT(fp32, 0.8);
  EXPECT_LE(std::abs(fp32 - int8), 0.01) << "fp32 " << fp32 << " vs weight-quantized " << int8;
}

// grpc.health.v1.Health/Check for the whole server, without generated
// stubs: the request is an empty message, a SERVING answer is field 1 = 1.
grpc::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel, std::string* answer) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + seconds(10));
  grpc::CompletionQueue queue;
  grpc::ByteBuffer request, response;
  grpc::Slice empty("", 0);
  request = grpc::ByteBuffer(&empty, 1);
  auto call = stub.PrepareUnaryCall(&context, "/grpc.health.v1.Health/Check", request, &queue);
  call->StartCall();
  grpc::Status status;
  call->Finish(&response, &status, reinterpret_cast<void*>(1));
  void* tag;
  bool ok;
  queue.Next(&tag, &ok);
  std::vector<grpc::Slice> slices;
  if (status.ok() && response.Dump(&slices).ok()) {
    for (const auto& slice : slices) answer->append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return status;
}

class AuthTest : public ::testing::Test {
 protected:
  ScratchDir scratch_{"quantd-auth-"};
  const std::filesystem::path& out_ = scratch_.path();
};

TEST_F(AuthTest, CallsWithoutAKnownTokenAreUnauthenticatedHealthStaysOpen) {
  QuantdProcess::Options options;
  options.local_workers = 0;
  options.yaml_lines = TokenYaml();
  QuantdProcess server(options);

  QuantClient anonymous(Channel(server.address(), ""));
  auto listed = anonymous.List(v1::ListJobsRequest());
  ASSERT_FALSE(listed.ok());
  EXPECT_EQ(listed.status().code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(listed.status().reason(), "AUTH_TOKEN_MISSING");
  EXPECT_NE(listed.status().message().find("Bearer"), std::string::npos) << listed.status().message();
  EXPECT_EQ(anonymous.UploadFile(BundledModel()).status().code(), StatusCode::kUnauthenticated);

  QuantClient wrong(Channel(server.address(), "not-a-configured-token-at-all"));
  auto denied = wrong.Get("job-anything");
  EXPECT_EQ(denied.status().code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(denied.status().reason(), "AUTH_TOKEN_UNKNOWN");

  QuantClient worker_as_client(Channel(server.address(), kWorkerToken));
  EXPECT_EQ(worker_as_client.List(v1::ListJobsRequest()).status().code(), StatusCode::kPermissionDenied)
      << "a worker credential must not reach the client API";

  QuantClient alpha(Channel(server.address(), kAlphaToken));
  EXPECT_TRUE(alpha.List(v1::ListJobsRequest()).ok());

  std::string answer;
  auto health = HealthCheck(Channel(server.address(), ""), &answer);
  ASSERT_TRUE(health.ok()) << health.error_message();
  EXPECT_EQ(answer, std::string("\x08\x01", 2)) << "health answers SERVING without a token";

  // quantctl takes the token from a file or the environment.
  auto token_file = out_ / "alpha.token";
  ASSERT_TRUE(WriteFileAtomic(token_file, kAlphaToken + "\n").ok());
  auto with_file = RunCommand(
      {(BinDir() / "quantctl").string(), "--server", server.address(), "--token-file", token_file.string(), "list"});
  EXPECT_EQ(with_file.exit_code, 0) << with_file.err;
  auto without = RunCommand(
      {"/usr/bin/env", "-u", "QUANTD_TOKEN", (BinDir() / "quantctl").string(), "--server", server.address(), "list"});
  EXPECT_EQ(without.exit_code, 2);
  EXPECT_NE(without.err.find("AUTH_TOKEN_MISSING"), std::string::npos) << without.err;
  auto from_env = RunCommand({"/usr/bin/env", "QUANTD_TOKEN=" + kBetaToken, (BinDir() / "quantctl").string(),
                              "--server", server.address(), "list"});
  EXPECT_EQ(from_env.exit_code, 0) << from_env.err;
}

TEST_F(AuthTest, TenantsSeeOnlyTheirOwnJobsAndBlobs) {
  QuantdProcess::Options options;
  options.local_workers = 1;
  options.yaml_lines = TokenYaml();
  QuantdProcess server(options);
  QuantClient alpha(Channel(server.address(), kAlphaToken));
  QuantClient beta(Channel(server.address(), kBetaToken));

  auto model_sha = alpha.UploadFile(BundledModel());
  ASSERT_TRUE(model_sha.ok()) << model_sha.status().message();
  auto submitted = alpha.Submit(WeightQuant(*model_sha, "shared-request-id"));
  ASSERT_TRUE(submitted.ok()) << submitted.status().message();
  const auto job_id = submitted->job().id();
  EXPECT_EQ(submitted->job().tenant(), "alpha");
  // The local worker authenticates with the credential quantd gave it.
  auto job = WaitForEnd(alpha, job_id, seconds(120));
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.failure_reason() << ": " << job.failure_message();
  ASSERT_TRUE(alpha.DownloadAll(job_id, out_ / "alpha").ok());
  ExpectRunsInOnnxRuntime(out_ / "alpha" / "model.onnx");

  // Every way beta could reach alpha's job answers as if it did not exist.
  auto expect_not_found = [&](const Status& status, const std::string& what) {
    EXPECT_EQ(status.code(), StatusCode::kNotFound) << what << ": " << status.message();
    EXPECT_EQ(status.reason(), "JOB_NOT_FOUND") << what;
    EXPECT_EQ(status.message(), "no job " + job_id) << what << " must read like a missing job";
  };
  expect_not_found(beta.Get(job_id).status(), "GetJob");
  expect_not_found(beta.Cancel(job_id).status(), "CancelJob");
  expect_not_found(beta.Watch(job_id, 0, [](const v1::JobEvent&) {}).status(), "WatchJob");
  expect_not_found(beta.Download(job_id, job.artifacts(0), out_ / "beta"), "DownloadArtifact");
  EXPECT_FALSE(std::filesystem::exists(out_ / "beta" / job.artifacts(0).name()));
  auto missing = beta.Get("job-that-never-was");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);

  auto beta_list = beta.List(v1::ListJobsRequest());
  ASSERT_TRUE(beta_list.ok());
  EXPECT_EQ(beta_list->jobs_size(), 0) << "beta lists none of alpha's jobs";

  // alpha's blob: invisible to beta by digest, and not usable as an input.
  v1::GetBlobStatusRequest probe;
  probe.set_sha256(*model_sha);
  v1::GetBlobStatusResponse blob_status;
  grpc::ClientContext probe_context;
  ASSERT_TRUE(beta.stub().GetBlobStatus(&probe_context, probe, &blob_status).ok());
  EXPECT_FALSE(blob_status.complete());
  EXPECT_EQ(blob_status.committed_bytes(), 0);
  auto reused = beta.Submit(WeightQuant(*model_sha, "beta-request"));
  ASSERT_FALSE(reused.ok());
  EXPECT_EQ(reused.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(reused.status().reason(), "MODEL_BLOB_MISSING");

  // Once beta uploads the same bytes itself, it has its own job, and the
  // request id alpha used means nothing to it.
  auto beta_sha = beta.UploadFile(BundledModel());
  ASSERT_TRUE(beta_sha.ok()) << beta_sha.status().message();
  EXPECT_EQ(*beta_sha, *model_sha);
  auto beta_job = beta.Submit(WeightQuant(*beta_sha, "shared-request-id"));
  ASSERT_TRUE(beta_job.ok()) << beta_job.status().message();
  EXPECT_FALSE(beta_job->deduplicated());
  EXPECT_NE(beta_job->job().id(), job_id);
  auto beta_done = WaitForEnd(beta, beta_job->job().id(), seconds(120));
  EXPECT_EQ(beta_done.state(), v1::JOB_STATE_SUCCEEDED) << beta_done.failure_message();

  auto alpha_list = alpha.List(v1::ListJobsRequest());
  ASSERT_TRUE(alpha_list.ok());
  ASSERT_EQ(alpha_list->jobs_size(), 1);
  EXPECT_EQ(alpha_list->jobs(0).id(), job_id);
  beta_list = beta.List(v1::ListJobsRequest());
  ASSERT_EQ(beta_list->jobs_size(), 1);
  EXPECT_EQ(beta_list->jobs(0).id(), beta_job->job().id());
}

TEST_F(AuthTest, WorkersNeedAWorkerCredential) {
  QuantdProcess::Options options;
  options.local_workers = 0;
  options.yaml_lines = TokenYaml();
  QuantdProcess server(options);

  auto tenant_stub = v1::WorkerService::NewStub(Channel(server.address(), kAlphaToken));
  v1::LeaseJobRequest lease;
  lease.set_worker_id("impostor");
  lease.set_device(v1::DEVICE_CLASS_CPU);
  v1::LeaseJobResponse leased;
  grpc::ClientContext context;
  auto refused = FromGrpcStatus(tenant_stub->LeaseJob(&context, lease, &leased));
  EXPECT_EQ(refused.code(), StatusCode::kPermissionDenied) << refused.message();
  EXPECT_EQ(refused.reason(), "AUTH_WRONG_CREDENTIAL");

  // A worker process given a tenant's token gives up with a clear message.
  auto token_file = out_ / "tenant.token";
  ASSERT_TRUE(WriteFileAtomic(token_file, kAlphaToken).ok());
  auto impostor = RunCommand({(BinDir() / "quantd-worker").string(), "--server", server.address(), "--token-file",
                              token_file.string(), "--work-dir", (out_ / "impostor").string(), "--exit-when-idle"});
  EXPECT_EQ(impostor.exit_code, 3);
  EXPECT_NE(impostor.err.find("a tenant token cannot call the worker API"), std::string::npos) << impostor.err;

  // A remote worker with the configured worker token runs alpha's job.
  QuantClient alpha(Channel(server.address(), kAlphaToken));
  auto model_sha = alpha.UploadFile(BundledModel());
  ASSERT_TRUE(model_sha.ok());
  auto submitted = alpha.Submit(WeightQuant(*model_sha, NewId("req-")));
  ASSERT_TRUE(submitted.ok()) << submitted.status().message();
  auto worker_token = out_ / "worker.token";
  ASSERT_TRUE(WriteFileAtomic(worker_token, kWorkerToken + "\n").ok());
  auto worker = RunCommand({(BinDir() / "quantd-worker").string(), "--server", server.address(), "--token-file",
                            worker_token.string(), "--work-dir", (out_ / "worker").string(), "--exit-when-idle"});
  EXPECT_EQ(worker.exit_code, 0) << worker.err;
  auto job = WaitForEnd(alpha, submitted->job().id(), seconds(30));
  EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.failure_reason() << ": " << job.failure_message();
}

TEST_F(AuthTest, WithoutAuthenticationOnlyLoopbackIsServed) {
  auto data = out_ / "data";
  auto refused = RunCommand({(BinDir() / "quantd").string(), "--listen", "0.0.0.0:0", "--data-dir", data.string(),
                             "--local-workers", "0", "--metrics-listen", ""});
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_NE(refused.err.find("allow_insecure_remote"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("tokens"), std::string::npos) << refused.err;

  // Either an explicit opt-in or authentication lets it listen everywhere.
  QuantdProcess::Options insecure;
  insecure.local_workers = 0;
  insecure.listen_host = "0.0.0.0";
  insecure.extra_flags = {"--allow-insecure-remote"};
  QuantdProcess open_server(insecure);
  EXPECT_TRUE(QuantClient(open_server.address()).List(v1::ListJobsRequest()).ok());

  QuantdProcess::Options authenticated;
  authenticated.local_workers = 0;
  authenticated.listen_host = "0.0.0.0";
  authenticated.yaml_lines = TokenYaml();
  QuantdProcess auth_server(authenticated);
  EXPECT_TRUE(QuantClient(Channel(auth_server.address(), kAlphaToken)).List(v1::ListJobsRequest()).ok());
}

// A private CA, a server certificate for 127.0.0.1 and a client
// certificate, made with the openssl command.
struct TestPki {
  std::filesystem::path ca_cert, server_cert, server_key, client_cert, client_key;
};

TestPki MakePki(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  auto path = [&](const std::string& name) { return (dir / name).string(); };
  auto openssl = [](std::vector<std::string> args) {
    args.insert(args.begin(), "openssl");
    auto result = RunCommand(args);
    if (result.exit_code != 0) throw std::runtime_error("openssl " + args[1] + " failed: " + result.err);
  };
  const std::vector<std::string> new_key = {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"};
  auto request = [&](const std::string& name, const std::string& subject) {
    std::vector<std::string> args = {
        "req", "-new", "-subj", subject, "-keyout", path(name + ".key"), "-out", path(name + ".csr")};
    args.insert(args.end(), new_key.begin(), new_key.end());
    openssl(args);
  };
  auto sign = [&](const std::string& name, const std::string& extensions) {
    std::ofstream(dir / (name + ".ext")) << extensions << "\n";
    openssl({"x509", "-req", "-in", path(name + ".csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
             "-CAcreateserial", "-days", "2", "-out", path(name + ".pem"), "-extfile", path(name + ".ext")});
  };
  std::vector<std::string> ca = {"req",     "-x509",        "-subj", "/CN=quantd test CA", "-days", "2",
                                 "-keyout", path("ca.key"), "-out",  path("ca.pem")};
  ca.insert(ca.end(), new_key.begin(), new_key.end());
  openssl(ca);
  request("server", "/CN=localhost");
  sign("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth");
  request("client", "/CN=quantd test client");
  sign("client", "extendedKeyUsage=clientAuth");
  return {dir / "ca.pem", dir / "server.pem", dir / "server.key", dir / "client.pem", dir / "client.key"};
}

// quantd with the test tokens, serving TLS with the PKI's server certificate.
QuantdProcess::Options TlsServerOptions(const TestPki& pki, int local_workers) {
  QuantdProcess::Options options;
  options.local_workers = local_workers;
  options.yaml_lines = TokenYaml();
  options.yaml_lines.push_back("tls_cert: " + pki.server_cert.string());
  options.yaml_lines.push_back("tls_key: " + pki.server_key.string());
  return options;
}

// ListJobs straight on the stub with a deadline: a connection the server
// refuses fails within it instead of being retried.
grpc::Status ListJobsWithin(QuantClient& client, std::chrono::seconds deadline) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + deadline);
  v1::ListJobsResponse listed;
  return client.stub().ListJobs(&context, v1::ListJobsRequest(), &listed);
}

TEST_F(AuthTest, TlsServesEncryptedClientsOnlyAndLocalWorkersStillRun) {
  auto pki = MakePki(out_ / "pki");
  QuantdProcess server(TlsServerOptions(pki, 1));

  ChannelOptions tls;
  tls.ca_cert = pki.ca_cert;
  QuantClient secure(Channel(server.address(), kAlphaToken, tls));
  auto model_sha = secure.UploadFile(BundledModel());
  ASSERT_TRUE(model_sha.ok()) << model_sha.status().message();
  auto submitted = secure.Submit(WeightQuant(*model_sha, NewId("req-")));
  ASSERT_TRUE(submitted.ok()) << submitted.status().message();
  auto job = WaitForEnd(secure, submitted->job().id(), seconds(120));
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.failure_reason() << ": " << job.failure_message();
  ASSERT_TRUE(secure.DownloadAll(job.id(), out_ / "tls").ok());
  ExpectRunsInOnnxRuntime(out_ / "tls" / "model.onnx");

  QuantClient plaintext(Channel(server.address(), kAlphaToken));
  EXPECT_FALSE(ListJobsWithin(plaintext, seconds(5)).ok()) << "a plaintext client must not get through to a TLS server";

  auto token_file = out_ / "alpha.token";
  ASSERT_TRUE(WriteFileAtomic(token_file, kAlphaToken).ok());
  auto quantctl = RunCommand({(BinDir() / "quantctl").string(), "--server", server.address(), "--ca-cert",
                              pki.ca_cert.string(), "--token-file", token_file.string(), "get", job.id()});
  EXPECT_EQ(quantctl.exit_code, 0) << quantctl.err;
  EXPECT_NE(quantctl.out.find("JOB_STATE_SUCCEEDED"), std::string::npos) << quantctl.out;
}

TEST_F(AuthTest, MutualTlsRefusesClientsWithoutACertificate) {
  auto pki = MakePki(out_ / "pki");
  auto options = TlsServerOptions(pki, 0);
  options.yaml_lines.push_back("tls_client_ca: " + pki.ca_cert.string());
  QuantdProcess server(options);

  ChannelOptions server_only;
  server_only.ca_cert = pki.ca_cert;
  QuantClient anonymous_tls(Channel(server.address(), kAlphaToken, server_only));
  auto refused = ListJobsWithin(anonymous_tls, seconds(5));
  EXPECT_FALSE(refused.ok()) << "mutual TLS must refuse a client without a certificate";

  ChannelOptions mutual = server_only;
  mutual.client_cert = pki.client_cert;
  mutual.client_key = pki.client_key;
  QuantClient with_cert(Channel(server.address(), kAlphaToken, mutual));
  auto ok = with_cert.List(v1::ListJobsRequest());
  EXPECT_TRUE(ok.ok()) << ok.status().message();
  QuantClient cert_without_token(Channel(server.address(), "", mutual));
  EXPECT_EQ(cert_without_token.List(v1::ListJobsRequest()).status().code(), StatusCode::kUnauthenticated)
      << "a certificate does not replace the tenant's token";
}

}  // namespace
}  // namespace quantd::testing
