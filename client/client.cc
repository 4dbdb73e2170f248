#include "client/client.h"

#include <grpcpp/grpcpp.h>

#include <fstream>
#include <thread>

#include "common/files.h"
#include "common/rpc_status.h"
#include "common/sha256.h"

namespace quantd::client {
namespace {

constexpr size_t kChunkBytes = 1 << 20;
constexpr int kMaxReconnects = 30;

// This client never cancels its own calls, so CANCELLED comes from the
// server's side: a server that is shutting down cancels the calls that
// reach it while it stops. Like UNAVAILABLE, it is worth a retry.
bool Retryable(const Status& status) {
  return status.code() == StatusCode::kUnavailable || status.code() == StatusCode::kDeadlineExceeded ||
         status.code() == StatusCode::kCancelled;
}

}  // namespace

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED || state == v1::JOB_STATE_CANCELLED;
}

std::string StateName(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_QUEUED: return "QUEUED";
    case v1::JOB_STATE_RUNNING: return "RUNNING";
    case v1::JOB_STATE_SUCCEEDED: return "SUCCEEDED";
    case v1::JOB_STATE_FAILED: return "FAILED";
    case v1::JOB_STATE_CANCELLED: return "CANCELLED";
    default: return "UNKNOWN";
  }
}

QuantClient::QuantClient(const std::string& server_address) {
  channel_ = grpc::CreateChannel(server_address, grpc::InsecureChannelCredentials());
  stub_ = v1::QuantService::NewStub(channel_);
}

QuantClient::QuantClient(std::shared_ptr<grpc::Channel> channel) : channel_(std::move(channel)) {
  stub_ = v1::QuantService::NewStub(channel_);
}

StatusOr<std::string> QuantClient::UploadFile(const std::filesystem::path& file) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) return NotFound("FILE_NOT_FOUND", file.string() + " is not a file");
  QUANTD_ASSIGN_OR_RETURN(auto sha256, Sha256OfFile(file));
  auto size = static_cast<int64_t>(std::filesystem::file_size(file, ec));
  Status last;
  for (int attempt = 0; attempt < kMaxReconnects; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(std::min(200 * attempt, 2000)));
    v1::GetBlobStatusRequest probe;
    probe.set_sha256(sha256);
    v1::GetBlobStatusResponse progress;
    grpc::ClientContext probe_context;
    last = FromGrpcStatus(stub_->GetBlobStatus(&probe_context, probe, &progress));
    if (!last.ok()) {
      if (Retryable(last)) continue;
      return last;
    }
    if (progress.complete()) return sha256;
    grpc::ClientContext context;
    v1::UploadBlobResponse response;
    auto writer = stub_->UploadBlob(&context, &response);
    v1::UploadBlobRequest header;
    header.mutable_header()->set_sha256(sha256);
    header.mutable_header()->set_size_bytes(size);
    bool open = writer->Write(header);
    std::ifstream in(file, std::ios::binary);
    int64_t offset = progress.committed_bytes();
    in.seekg(offset);
    std::string buffer(kChunkBytes, '\0');
    while (open && in && offset < size) {
      in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
      auto n = in.gcount();
      if (n <= 0) break;
      v1::UploadBlobRequest chunk;
      chunk.mutable_chunk()->set_offset(offset);
      chunk.mutable_chunk()->set_data(buffer.data(), static_cast<size_t>(n));
      open = writer->Write(chunk);
      offset += n;
    }
    writer->WritesDone();
    last = FromGrpcStatus(writer->Finish());
    if (last.ok() && response.complete()) return sha256;
    if (!last.ok() && !Retryable(last) && last.reason() != "BLOB_OFFSET_MISMATCH") return last;
  }
  return last.ok() ? Status(StatusCode::kUnavailable, "UPLOAD_INCOMPLETE", "upload did not complete") : last;
}

StatusOr<v1::SubmitJobResponse> QuantClient::Submit(const v1::SubmitJobRequest& request) {
  // Resubmitting with the same request_id is idempotent, so retrying a
  // submit whose answer was lost cannot create a second job.
  Status last;
  for (int attempt = 0; attempt < kMaxReconnects; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(std::min(200 * attempt, 2000)));
    v1::SubmitJobResponse response;
    grpc::ClientContext context;
    last = FromGrpcStatus(stub_->SubmitJob(&context, request, &response));
    if (last.ok()) return response;
    if (!Retryable(last) || request.request_id().empty()) return last;
  }
  return last;
}

StatusOr<v1::Job> QuantClient::Get(const std::string& job_id) {
  v1::GetJobRequest request;
  request.set_job_id(job_id);
  v1::Job job;
  grpc::ClientContext context;
  QUANTD_RETURN_IF_ERROR(FromGrpcStatus(stub_->GetJob(&context, request, &job)));
  return job;
}

StatusOr<v1::ListJobsResponse> QuantClient::List(const v1::ListJobsRequest& request) {
  v1::ListJobsResponse response;
  grpc::ClientContext context;
  QUANTD_RETURN_IF_ERROR(FromGrpcStatus(stub_->ListJobs(&context, request, &response)));
  return response;
}

StatusOr<v1::Job> QuantClient::Cancel(const std::string& job_id) {
  v1::CancelJobRequest request;
  request.set_job_id(job_id);
  v1::Job job;
  grpc::ClientContext context;
  QUANTD_RETURN_IF_ERROR(FromGrpcStatus(stub_->CancelJob(&context, request, &job)));
  return job;
}

StatusOr<v1::Job> QuantClient::Watch(const std::string& job_id, int64_t after_seq,
                                     const std::function<void(const v1::JobEvent&)>& on_event) {
  int failures = 0;
  while (true) {
    v1::WatchJobRequest request;
    request.set_job_id(job_id);
    request.set_after_seq(after_seq);
    grpc::ClientContext context;
    auto reader = stub_->WatchJob(&context, request);
    v1::JobEvent event;
    while (reader->Read(&event)) {
      if (event.seq() <= after_seq) continue;
      after_seq = event.seq();
      failures = 0;
      on_event(event);
    }
    auto status = FromGrpcStatus(reader->Finish());
    if (status.ok()) {
      // The stream ended because the job did; a server going away before
      // it can confirm that is one more reconnect, not a failed watch.
      auto job = Get(job_id);
      if (job.ok() && IsTerminal(job->state())) return job;
      if (job.ok()) continue;
      status = job.status();
    }
    if (!Retryable(status) || ++failures > kMaxReconnects) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(200 * failures, 2000)));
  }
}

Status QuantClient::Download(const std::string& job_id, const v1::Artifact& artifact,
                             const std::filesystem::path& out_dir) {
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  auto target = out_dir / artifact.name();
  auto part = out_dir / (artifact.name() + ".part");
  Status last;
  for (int attempt = 0; attempt < kMaxReconnects; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(std::min(200 * attempt, 2000)));
    int64_t offset = std::filesystem::exists(part, ec) ? static_cast<int64_t>(std::filesystem::file_size(part, ec)) : 0;
    if (offset > artifact.size_bytes()) {
      std::filesystem::remove(part, ec);
      offset = 0;
    }
    if (offset < artifact.size_bytes() || artifact.size_bytes() == 0) {
      v1::DownloadArtifactRequest request;
      request.set_job_id(job_id);
      request.set_name(artifact.name());
      request.set_offset(offset);
      grpc::ClientContext context;
      auto reader = stub_->DownloadArtifact(&context, request);
      std::ofstream out(part, std::ios::binary | std::ios::app);
      v1::ArtifactChunk chunk;
      while (reader->Read(&chunk)) {
        if (chunk.offset() != offset) break;
        out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
        offset += static_cast<int64_t>(chunk.data().size());
      }
      out.close();
      last = FromGrpcStatus(reader->Finish());
      if (!last.ok()) {
        if (Retryable(last)) continue;
        return last;
      }
    }
    QUANTD_ASSIGN_OR_RETURN(auto sha256, Sha256OfFile(part));
    if (sha256 != artifact.sha256()) {
      std::filesystem::remove(part, ec);
      last = DataLoss("ARTIFACT_DIGEST_MISMATCH", "downloaded " + artifact.name() + " does not match its digest");
      continue;
    }
    return CommitFileAtomic(part, target);
  }
  return last;
}

Status QuantClient::DownloadAll(const std::string& job_id, const std::filesystem::path& out_dir) {
  QUANTD_ASSIGN_OR_RETURN(auto job, Get(job_id));
  if (job.artifacts_size() == 0) {
    return FailedPrecondition("NO_ARTIFACTS", "job " + job_id + " (" + StateName(job.state()) + ") has no artifacts");
  }
  for (const auto& artifact : job.artifacts()) QUANTD_RETURN_IF_ERROR(Download(job_id, artifact, out_dir));
  return Status::Ok();
}

}  // namespace quantd::client
