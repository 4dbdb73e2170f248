#pragma once

#include <atomic>

#include "quantd/v1/quantd.grpc.pb.h"
#include "server/auth.h"
#include "server/blob_store.h"
#include "server/event_hub.h"
#include "server/job_store.h"
#include "server/metrics.h"
#include "server/server_config.h"

namespace quantd::server {

struct ServerContext {
  const ServerConfig& config;
  JobStore& store;
  BlobStore& blobs;
  EventHub& hub;
  Metrics& metrics;
  const Authenticator& auth;
  // Set during graceful shutdown: no new leases are handed out.
  std::atomic<bool> draining{false};
};

// Client-facing API (quantctl, MLOps platforms).
class QuantServiceImpl final : public v1::QuantService::Service {
 public:
  explicit QuantServiceImpl(ServerContext& ctx) : ctx_(ctx) {}

  grpc::Status UploadBlob(grpc::ServerContext* context, grpc::ServerReader<v1::UploadBlobRequest>* reader,
                          v1::UploadBlobResponse* response) override;
  grpc::Status GetBlobStatus(grpc::ServerContext* context, const v1::GetBlobStatusRequest* request,
                             v1::GetBlobStatusResponse* response) override;
  grpc::Status SubmitJob(grpc::ServerContext* context, const v1::SubmitJobRequest* request,
                         v1::SubmitJobResponse* response) override;
  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request, v1::Job* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context, const v1::CancelJobRequest* request, v1::Job* response) override;
  grpc::Status WatchJob(grpc::ServerContext* context, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::JobEvent>* writer) override;
  grpc::Status DownloadArtifact(grpc::ServerContext* context, const v1::DownloadArtifactRequest* request,
                                grpc::ServerWriter<v1::ArtifactChunk>* writer) override;

 private:
  ServerContext& ctx_;
};

// Internal API spoken by quantd-worker processes.
class WorkerServiceImpl final : public v1::WorkerService::Service {
 public:
  explicit WorkerServiceImpl(ServerContext& ctx) : ctx_(ctx) {}

  grpc::Status LeaseJob(grpc::ServerContext* context, const v1::LeaseJobRequest* request,
                        v1::LeaseJobResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override;
  grpc::Status FetchBlob(grpc::ServerContext* context, const v1::FetchBlobRequest* request,
                         grpc::ServerWriter<v1::BlobChunk>* writer) override;
  grpc::Status UploadArtifact(grpc::ServerContext* context, grpc::ServerReader<v1::UploadArtifactRequest>* reader,
                              v1::UploadArtifactResponse* response) override;
  grpc::Status CompleteJob(grpc::ServerContext* context, const v1::CompleteJobRequest* request,
                           v1::Empty* response) override;
  grpc::Status FailJob(grpc::ServerContext* context, const v1::FailJobRequest* request, v1::Empty* response) override;

 private:
  ServerContext& ctx_;
};

}  // namespace quantd::server
