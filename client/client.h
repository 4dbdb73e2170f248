#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "common/status.h"
#include "quantd/v1/quantd.grpc.pb.h"

namespace quantd::client {

// Client-side helpers over QuantService: resumable upload and download,
// watch with reconnect. Shared by quantctl and the tests.
class QuantClient {
 public:
  explicit QuantClient(const std::string& server_address);
  // A channel from OpenChannel: TLS, a bearer token.
  explicit QuantClient(std::shared_ptr<grpc::Channel> channel);

  // Uploads a file unless the server already has it; resumes a partial
  // upload from the committed offset. Returns the sha256.
  StatusOr<std::string> UploadFile(const std::filesystem::path& file);
  StatusOr<v1::SubmitJobResponse> Submit(const v1::SubmitJobRequest& request);
  StatusOr<v1::Job> Get(const std::string& job_id);
  StatusOr<v1::ListJobsResponse> List(const v1::ListJobsRequest& request);
  StatusOr<v1::Job> Cancel(const std::string& job_id);
  // Streams events after `after_seq` until the job ends, reconnecting when
  // the server goes away; on_event sees every event once, in order.
  StatusOr<v1::Job> Watch(const std::string& job_id, int64_t after_seq,
                          const std::function<void(const v1::JobEvent&)>& on_event);
  // Downloads one artifact to out_dir/name, resuming from a .part file.
  Status Download(const std::string& job_id, const v1::Artifact& artifact, const std::filesystem::path& out_dir);
  Status DownloadAll(const std::string& job_id, const std::filesystem::path& out_dir);

  v1::QuantService::Stub& stub() { return *stub_; }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::QuantService::Stub> stub_;
};

bool IsTerminal(v1::JobState state);
std::string StateName(v1::JobState state);

}  // namespace quantd::client
