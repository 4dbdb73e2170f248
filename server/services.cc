#include "server/services.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <limits>

#include "common/config/quant_config.h"
#include "common/ids.h"
#include "common/input_limits_proto.h"
#include "common/log.h"
#include "common/rpc_status.h"
#include "common/sha256.h"

namespace quantd::server {
namespace {

constexpr int64_t kMaxChunkBytes = 1 << 20;
constexpr int kMaxLeaseWaitMs = 30000;

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED || state == v1::JOB_STATE_CANCELLED;
}

grpc::Status Fail(const Status& status) {
  return ToGrpcStatus(status);
}

bool IsSafeArtifactName(const std::string& name) {
  if (name.empty() || name.size() > 128 || name.find("..") != std::string::npos) return false;
  if (!std::isalnum(static_cast<unsigned char>(name.front()))) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

Status ValidateServerPath(const ServerConfig& config, const std::string& path) {
  if (config.calibration_root.empty()) {
    return Status(StatusCode::kPermissionDenied, "CALIBRATION_PATH_NOT_ALLOWED",
                  "this server has no calibration_root configured; upload the calibration set as an archive instead");
  }
  std::error_code ec;
  auto root = std::filesystem::weakly_canonical(config.calibration_root, ec);
  auto target = std::filesystem::weakly_canonical(config.calibration_root / path, ec);
  auto [root_end, unused] = std::mismatch(root.begin(), root.end(), target.begin(), target.end());
  if (ec || root_end != root.end()) {
    return Status(StatusCode::kPermissionDenied, "CALIBRATION_PATH_NOT_ALLOWED",
                  "calibration path '" + path + "' is outside the server's calibration_root");
  }
  if (!std::filesystem::is_directory(target, ec)) {
    return InvalidArgument("CALIBRATION_PATH_MISSING", "calibration path '" + path + "' is not a folder on the server");
  }
  return Status::Ok();
}

// Another tenant's job answers exactly like a missing one, so a job id
// never reveals that the job exists.
StatusOr<v1::Job> LoadOwnJob(JobStore& store, const std::string& tenant, const std::string& job_id) {
  QUANTD_ASSIGN_OR_RETURN(auto job, store.GetJob(job_id));
  if (!tenant.empty() && job_rules::TenantOf(job) != tenant) return job_rules::JobNotFound(job_id);
  return job;
}

// A job's limit: what it asked for (0: the server's default), never above
// the server's maximum (0: none).
template <typename T>
T EffectiveLimit(T requested, T default_value, T max_value) {
  T value = requested > 0 ? requested : default_value;
  if (max_value > 0 && (value <= 0 || value > max_value)) value = max_value;
  return value;
}

}  // namespace

// ---------------------------------------------------------------------------
// QuantService

#define QUANTD_CALLER_TENANT(var)                     \
  auto var##_or = ctx_.auth.TenantOf(*context);       \
  if (!var##_or.ok()) return Fail(var##_or.status()); \
  const std::string var = std::move(*var##_or)

grpc::Status QuantServiceImpl::UploadBlob(grpc::ServerContext* context,
                                          grpc::ServerReader<v1::UploadBlobRequest>* reader,
                                          v1::UploadBlobResponse* response) {
  QUANTD_CALLER_TENANT(tenant);
  v1::UploadBlobRequest message;
  if (!reader->Read(&message) || !message.has_header()) {
    return Fail(InvalidArgument("UPLOAD_MISSING_HEADER", "the first UploadBlob message must carry the blob header"));
  }
  const v1::BlobRef header = message.header();
  const std::string& sha = header.sha256();
  if (header.size_bytes() > ctx_.config.max_upload_bytes) {
    return Fail(ResourceExhausted("BLOB_TOO_LARGE", "blob of " + std::to_string(header.size_bytes()) +
                                                        " bytes exceeds max_upload_bytes " +
                                                        std::to_string(ctx_.config.max_upload_bytes)));
  }
  if (auto status = ctx_.blobs.Begin(sha, header.size_bytes(), tenant); !status.ok()) return Fail(status);
  bool already_complete = ctx_.blobs.Progress(sha, tenant).complete;
  while (reader->Read(&message)) {
    if (!message.has_chunk()) {
      return Fail(InvalidArgument("UPLOAD_UNEXPECTED_HEADER", "only the first message may carry a header"));
    }
    const auto& chunk = message.chunk();
    if (static_cast<int64_t>(chunk.data().size()) > kMaxChunkBytes) {
      return Fail(InvalidArgument("CHUNK_TOO_LARGE", "chunks are limited to 1 MiB"));
    }
    if (already_complete) continue;
    if (auto status = ctx_.blobs.Append(sha, chunk.offset(), chunk.data(), tenant); !status.ok()) {
      return Fail(status);
    }
    ctx_.metrics.BytesUploaded(static_cast<int64_t>(chunk.data().size()));
  }
  auto progress = ctx_.blobs.Progress(sha, tenant);
  if (!progress.complete && progress.committed_bytes == header.size_bytes()) {
    if (auto status = ctx_.blobs.Finish(sha, tenant); !status.ok()) return Fail(status);
    progress = ctx_.blobs.Progress(sha, tenant);
  }
  response->mutable_blob()->set_sha256(sha);
  response->mutable_blob()->set_size_bytes(header.size_bytes());
  response->set_committed_bytes(progress.committed_bytes);
  response->set_complete(progress.complete);
  return grpc::Status::OK;
}

grpc::Status QuantServiceImpl::GetBlobStatus(grpc::ServerContext* context, const v1::GetBlobStatusRequest* request,
                                             v1::GetBlobStatusResponse* response) {
  QUANTD_CALLER_TENANT(tenant);
  if (!IsSha256Hex(request->sha256())) {
    return Fail(InvalidArgument("BLOB_BAD_DIGEST", "sha256 must be 64 lowercase hex digits"));
  }
  auto progress = ctx_.blobs.Progress(request->sha256(), tenant);
  response->mutable_blob()->set_sha256(request->sha256());
  response->mutable_blob()->set_size_bytes(progress.complete ? progress.committed_bytes : 0);
  response->set_committed_bytes(progress.committed_bytes);
  response->set_complete(progress.complete);
  return grpc::Status::OK;
}

grpc::Status QuantServiceImpl::SubmitJob(grpc::ServerContext* context, const v1::SubmitJobRequest* request,
                                         v1::SubmitJobResponse* response) {
  QUANTD_CALLER_TENANT(tenant);
  if (request->request_id().size() > 128) {
    return Fail(InvalidArgument("REQUEST_ID_TOO_LONG", "request_id is limited to 128 characters"));
  }
  // Another tenant's blob answers like a missing one: the caller must
  // upload the bytes itself.
  if (!ctx_.blobs.VisibleTo(request->model_sha256(), tenant)) {
    return Fail(NotFound("MODEL_BLOB_MISSING", "model blob '" + request->model_sha256().substr(0, 80) +
                                                   "' has not been uploaded (or not completely)"));
  }
  const auto& input_limits = ctx_.config.input_limits;
  if (auto model_bytes = ctx_.blobs.Progress(request->model_sha256(), tenant).committed_bytes;
      model_bytes > input_limits.model.max_model_bytes) {
    return Fail(ResourceExhausted("MODEL_TOO_LARGE", "model blob is " + std::to_string(model_bytes) +
                                                         " bytes; the limit is " +
                                                         std::to_string(input_limits.model.max_model_bytes) +
                                                         " (quantd.yaml limits.max_model_bytes)"));
  }
  config::ValidationContext validation;
  validation.calibration_supplied_separately = request->calibration_size() > 0;
  auto parsed = config::ParseQuantConfig(request->config_text(), validation);
  if (!parsed.ok()) return Fail(parsed.status());

  v1::Job job;
  for (const auto& calibration : request->calibration()) {
    if (calibration.input_name().empty()) {
      return Fail(InvalidArgument("CALIBRATION_INPUT_NAME_MISSING", "every calibration entry needs an input_name"));
    }
    if (calibration.has_archive_sha256()) {
      if (!ctx_.blobs.VisibleTo(calibration.archive_sha256(), tenant)) {
        return Fail(NotFound("CALIBRATION_BLOB_MISSING",
                             "calibration archive for input '" + calibration.input_name() + "' has not been uploaded"));
      }
      auto archive_bytes = ctx_.blobs.Progress(calibration.archive_sha256(), tenant).committed_bytes;
      if (archive_bytes > input_limits.archive.max_archive_bytes) {
        return Fail(ResourceExhausted("ARCHIVE_LIMIT_EXCEEDED",
                                      "calibration archive for input '" + calibration.input_name() + "' is " +
                                          std::to_string(archive_bytes) + " bytes; the limit is " +
                                          std::to_string(input_limits.archive.max_archive_bytes) +
                                          " (quantd.yaml limits.max_archive_bytes)"));
      }
    } else if (calibration.has_server_path()) {
      if (auto status = ValidateServerPath(ctx_.config, calibration.server_path()); !status.ok()) return Fail(status);
    } else {
      return Fail(InvalidArgument("CALIBRATION_SOURCE_MISSING",
                                  "calibration for input '" + calibration.input_name() + "' names no archive or path"));
    }
    *job.add_calibration() = calibration;
  }
  if (request->calibration_size() == 0) {
    // calibrate_path in the config names folders on the server itself.
    for (const auto& source : parsed->preprocess.calibrate_path) {
      if (auto status = ValidateServerPath(ctx_.config, source.dir); !status.ok()) return Fail(status);
      auto* calibration = job.add_calibration();
      calibration->set_input_name(source.input_name);
      calibration->set_server_path(source.dir);
    }
  }
  for (const auto& [key, value] : request->labels()) {
    if (key.size() > 63 || value.size() > 256) {
      return Fail(InvalidArgument("LABEL_TOO_LONG", "label keys are limited to 63 and values to 256 characters"));
    }
  }
  if (request->limits().memory_bytes() < 0 || request->limits().time_seconds() < 0) {
    return Fail(InvalidArgument("JOB_LIMIT_NEGATIVE", "job limits must be positive (0: the server's default)"));
  }
  job.mutable_limits()->set_memory_bytes(EffectiveLimit<int64_t>(
      request->limits().memory_bytes(), ctx_.config.job_memory_limit_bytes, ctx_.config.max_job_memory_limit_bytes));
  job.mutable_limits()->set_time_seconds(EffectiveLimit<int32_t>(
      request->limits().time_seconds(), ctx_.config.job_time_limit_seconds, ctx_.config.max_job_time_limit_seconds));
  job.set_id(NewId("job-"));
  job.set_tenant(tenant.empty() ? kDefaultTenant : tenant);
  job.set_request_id(request->request_id());
  job.set_model_sha256(request->model_sha256());
  job.set_model_name(request->model_name().substr(0, 256));
  job.set_config_text(request->config_text());
  job.set_priority(request->priority());
  job.set_device(request->device() == v1::DEVICE_CLASS_UNSPECIFIED ? v1::DEVICE_CLASS_ANY : request->device());
  *job.mutable_labels() = request->labels();
  job.set_quant_type(config::ToString(parsed->common.quant_type));
  auto created = ctx_.store.CreateJob(std::move(job));
  if (!created.ok()) return Fail(created.status());
  if (!created->second) {
    ctx_.metrics.JobSubmitted();
    LogInfo("job " + created->first.id() + " queued (" + created->first.quant_type() + ", model " +
            created->first.model_sha256().substr(0, 12) + ")");
  }
  ctx_.hub.Notify();
  *response->mutable_job() = created->first;
  response->set_deduplicated(created->second);
  return grpc::Status::OK;
}

grpc::Status QuantServiceImpl::GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                                      v1::Job* response) {
  QUANTD_CALLER_TENANT(tenant);
  auto job = LoadOwnJob(ctx_.store, tenant, request->job_id());
  if (!job.ok()) return Fail(job.status());
  *response = std::move(*job);
  return grpc::Status::OK;
}

grpc::Status QuantServiceImpl::ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                                        v1::ListJobsResponse* response) {
  QUANTD_CALLER_TENANT(tenant);
  std::vector<v1::JobState> typed;
  for (int state : request->states()) typed.push_back(static_cast<v1::JobState>(state));
  auto page = ctx_.store.ListJobs(tenant, typed, request->page_size(), request->page_token());
  if (!page.ok()) return Fail(page.status());
  for (auto& job : page->jobs) *response->add_jobs() = std::move(job);
  response->set_next_page_token(page->next_page_token);
  return grpc::Status::OK;
}

grpc::Status QuantServiceImpl::CancelJob(grpc::ServerContext* context, const v1::CancelJobRequest* request,
                                         v1::Job* response) {
  QUANTD_CALLER_TENANT(tenant);
  // A job never changes owner, so checking first and cancelling next is safe.
  if (auto owned = LoadOwnJob(ctx_.store, tenant, request->job_id()); !owned.ok()) return Fail(owned.status());
  auto job = ctx_.store.RequestCancel(request->job_id());
  if (!job.ok()) return Fail(job.status());
  if (job->state() == v1::JOB_STATE_CANCELLED) ctx_.metrics.JobFinished(*job);
  ctx_.hub.Notify();
  *response = std::move(*job);
  return grpc::Status::OK;
}

grpc::Status QuantServiceImpl::WatchJob(grpc::ServerContext* context, const v1::WatchJobRequest* request,
                                        grpc::ServerWriter<v1::JobEvent>* writer) {
  QUANTD_CALLER_TENANT(tenant);
  auto initial = LoadOwnJob(ctx_.store, tenant, request->job_id());
  if (!initial.ok()) return Fail(initial.status());
  int64_t after = request->after_seq();
  while (!context->IsCancelled()) {
    uint64_t seen = ctx_.hub.version();
    auto events = ctx_.store.EventsAfter(request->job_id(), after, 256);
    if (!events.ok()) return Fail(events.status());
    for (const auto& event : *events) {
      if (!writer->Write(event)) return grpc::Status::CANCELLED;
      after = event.seq();
    }
    if (events->size() == 256) continue;
    auto job = ctx_.store.GetJob(request->job_id());
    if (!job.ok()) return Fail(job.status());
    if (IsTerminal(job->state())) {
      // The terminal state event is written in the same transaction as the
      // state, so one more read drains anything that raced with it.
      auto rest = ctx_.store.EventsAfter(request->job_id(), after, 1 << 20);
      if (rest.ok()) {
        for (const auto& event : *rest) {
          if (!writer->Write(event)) return grpc::Status::CANCELLED;
        }
      }
      return grpc::Status::OK;
    }
    if (ctx_.hub.closed()) {
      return Fail(Status(StatusCode::kUnavailable, "SERVER_SHUTTING_DOWN", "server is shutting down; watch again"));
    }
    ctx_.hub.WaitPast(seen, std::chrono::milliseconds(1000));
  }
  return grpc::Status::CANCELLED;
}

grpc::Status QuantServiceImpl::DownloadArtifact(grpc::ServerContext* context,
                                                const v1::DownloadArtifactRequest* request,
                                                grpc::ServerWriter<v1::ArtifactChunk>* writer) {
  QUANTD_CALLER_TENANT(tenant);
  auto job = LoadOwnJob(ctx_.store, tenant, request->job_id());
  if (!job.ok()) return Fail(job.status());
  const v1::Artifact* found = nullptr;
  for (const auto& artifact : job->artifacts()) {
    if (artifact.name() == request->name()) found = &artifact;
  }
  if (!found) {
    std::string names;
    for (const auto& artifact : job->artifacts()) names += (names.empty() ? "" : ", ") + artifact.name();
    return Fail(NotFound("ARTIFACT_NOT_FOUND", "job " + request->job_id() + " has no artifact '" + request->name() +
                                                   "'" + (names.empty() ? "" : "; it has: " + names)));
  }
  if (request->offset() < 0 || request->offset() > found->size_bytes()) {
    return Fail(Status(StatusCode::kOutOfRange, "OFFSET_OUT_OF_RANGE",
                       "offset " + std::to_string(request->offset()) + " is beyond the artifact's " +
                           std::to_string(found->size_bytes()) + " bytes"));
  }
  std::ifstream in(ctx_.blobs.PathOf(found->sha256()), std::ios::binary);
  if (!in) return Fail(DataLoss("ARTIFACT_MISSING", "artifact file for '" + found->name() + "' is missing"));
  in.seekg(request->offset());
  int64_t offset = request->offset();
  std::string buffer(kMaxChunkBytes, '\0');
  do {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    auto n = in.gcount();
    v1::ArtifactChunk chunk;
    chunk.set_offset(offset);
    chunk.set_data(buffer.data(), static_cast<size_t>(n));
    chunk.set_total_size(found->size_bytes());
    chunk.set_sha256(found->sha256());
    if (!writer->Write(chunk)) return grpc::Status::CANCELLED;
    offset += n;
  } while (in && offset < found->size_bytes() && !context->IsCancelled());
  return grpc::Status::OK;
}

#undef QUANTD_CALLER_TENANT

// ---------------------------------------------------------------------------
// WorkerService

#define QUANTD_REQUIRE_WORKER() \
  if (auto auth = ctx_.auth.CheckWorker(*context); !auth.ok()) return Fail(auth)

grpc::Status WorkerServiceImpl::LeaseJob(grpc::ServerContext* context, const v1::LeaseJobRequest* request,
                                         v1::LeaseJobResponse* response) {
  QUANTD_REQUIRE_WORKER();
  if (request->device() != v1::DEVICE_CLASS_CPU && request->device() != v1::DEVICE_CLASS_GPU) {
    return Fail(InvalidArgument("WORKER_DEVICE_INVALID", "a worker leases as CPU or GPU"));
  }
  auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(std::clamp(request->wait_ms(), 0, kMaxLeaseWaitMs));
  while (true) {
    uint64_t seen = ctx_.hub.version();
    if (!ctx_.draining.load()) {
      auto leased = ctx_.store.LeaseNext(request->device(), request->worker_id(), ctx_.config.lease_ttl_ms);
      if (!leased.ok()) return Fail(leased.status());
      if (leased->has_value()) {
        *response->mutable_job() = (*leased)->job;
        response->set_lease_id((*leased)->lease_id);
        response->set_lease_ttl_ms(ctx_.config.lease_ttl_ms);
        *response->mutable_input_limits() = InputLimitsToProto(ctx_.config.input_limits);
        ctx_.hub.Notify();
        LogInfo("job " + (*leased)->job.id() + " leased to " + request->worker_id());
        return grpc::Status::OK;
      }
    }
    auto now = std::chrono::steady_clock::now();
    if (now >= deadline || context->IsCancelled() || ctx_.hub.closed()) break;
    ctx_.hub.WaitPast(seen, std::min(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now),
                                     std::chrono::milliseconds(500)));
  }
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                                          v1::HeartbeatResponse* response) {
  QUANTD_REQUIRE_WORKER();
  // Renewal, progress and events are one transaction: a worker that lost
  // its lease cannot slip events into the job's log, and a failed store
  // leaves nothing half-written.
  std::vector<v1::JobEvent> events(request->events().begin(), request->events().end());
  auto job = ctx_.store.Heartbeat(request->job_id(), request->lease_id(), ctx_.config.lease_ttl_ms, events);
  if (!job.ok()) {
    if (job.status().reason() == "LEASE_LOST") {
      response->set_lease_lost(true);
      return grpc::Status::OK;
    }
    return Fail(job.status());
  }
  if (request->events_size() > 0) ctx_.hub.Notify();
  response->set_cancel_requested(job->cancel_requested());
  response->set_lease_ttl_ms(ctx_.config.lease_ttl_ms);
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::FetchBlob(grpc::ServerContext* context, const v1::FetchBlobRequest* request,
                                          grpc::ServerWriter<v1::BlobChunk>* writer) {
  QUANTD_REQUIRE_WORKER();
  auto job = ctx_.store.RenewLease(request->job_id(), request->lease_id(), ctx_.config.lease_ttl_ms);
  if (!job.ok()) return Fail(job.status());
  bool belongs = request->sha256() == job->model_sha256();
  for (const auto& calibration : job->calibration()) {
    belongs = belongs || (calibration.has_archive_sha256() && calibration.archive_sha256() == request->sha256());
  }
  if (!belongs) {
    return Fail(Status(StatusCode::kPermissionDenied, "BLOB_NOT_IN_JOB", "the blob is not an input of this job"));
  }
  std::ifstream in(ctx_.blobs.PathOf(request->sha256()), std::ios::binary);
  if (!in) return Fail(DataLoss("BLOB_MISSING", "blob " + request->sha256() + " is missing from the store"));
  in.seekg(request->offset());
  int64_t offset = request->offset();
  std::string buffer(kMaxChunkBytes, '\0');
  while (in && !context->IsCancelled()) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    auto n = in.gcount();
    if (n <= 0) break;
    v1::BlobChunk chunk;
    chunk.set_offset(offset);
    chunk.set_data(buffer.data(), static_cast<size_t>(n));
    if (!writer->Write(chunk)) return grpc::Status::CANCELLED;
    offset += n;
  }
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::UploadArtifact(grpc::ServerContext* context,
                                               grpc::ServerReader<v1::UploadArtifactRequest>* reader,
                                               v1::UploadArtifactResponse* response) {
  QUANTD_REQUIRE_WORKER();
  v1::UploadArtifactRequest message;
  if (!reader->Read(&message) || !message.has_header()) {
    return Fail(InvalidArgument("UPLOAD_MISSING_HEADER", "the first message must carry the artifact header"));
  }
  const auto header = message.header();
  if (!IsSafeArtifactName(header.name())) {
    return Fail(InvalidArgument("ARTIFACT_BAD_NAME", "artifact names are plain file names"));
  }
  auto lease = ctx_.store.RenewLease(header.job_id(), header.lease_id(), ctx_.config.lease_ttl_ms);
  if (!lease.ok()) return Fail(lease.status());
  auto writer = NewBlobWriter(ctx_.blobs, header.sha256(), header.size_bytes());
  if (!writer.ok()) return Fail(writer.status());
  while (reader->Read(&message)) {
    if (!message.has_chunk()) return Fail(InvalidArgument("UPLOAD_UNEXPECTED_HEADER", "one header per stream"));
    if (static_cast<int64_t>(message.chunk().data().size()) > kMaxChunkBytes) {
      return Fail(InvalidArgument("CHUNK_TOO_LARGE", "chunks are limited to 1 MiB"));
    }
    if (auto status = (*writer)->Write(message.chunk().offset(), message.chunk().data()); !status.ok()) {
      return Fail(status);
    }
  }
  if (auto status = (*writer)->Commit(); !status.ok()) return Fail(status);
  v1::Artifact artifact;
  artifact.set_name(header.name());
  artifact.set_sha256(header.sha256());
  artifact.set_size_bytes(header.size_bytes());
  if (auto status = ctx_.store.AddArtifact(header.job_id(), header.lease_id(), artifact); !status.ok()) {
    return Fail(status);
  }
  ctx_.hub.Notify();
  *response->mutable_artifact() = artifact;
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::CompleteJob(grpc::ServerContext* context, const v1::CompleteJobRequest* request,
                                            v1::Empty* response) {
  QUANTD_REQUIRE_WORKER();
  auto job = ctx_.store.Complete(request->job_id(), request->lease_id());
  if (!job.ok()) return Fail(job.status());
  ctx_.metrics.JobFinished(*job);
  ctx_.hub.Notify();
  LogInfo("job " + job->id() + " succeeded");
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::FailJob(grpc::ServerContext* context, const v1::FailJobRequest* request,
                                        v1::Empty* response) {
  QUANTD_REQUIRE_WORKER();
  // A worker that is being stopped (a drain, a rolling restart) hands its
  // job back. That says nothing about the job, so it must not spend the
  // job's last attempt and fail it with "goes back to the queue".
  bool handed_back = request->retryable() && request->reason() == "WORKER_SHUTDOWN";
  auto job =
      ctx_.store.Fail(request->job_id(), request->lease_id(), request->reason(), request->message(),
                      request->retryable(), handed_back ? std::numeric_limits<int>::max() : ctx_.config.max_attempts);
  if (!job.ok()) return Fail(job.status());
  if (IsTerminal(job->state())) ctx_.metrics.JobFinished(*job);
  ctx_.hub.Notify();
  LogInfo("job " + job->id() + " " + (job->state() == v1::JOB_STATE_QUEUED ? "requeued" : "ended") + ": " +
          request->reason() + ": " + request->message());
  return grpc::Status::OK;
}

#undef QUANTD_REQUIRE_WORKER

}  // namespace quantd::server
