// Reliability of the service with real processes on loopback: workers and
// the server killed in the middle of a job, a graceful drain, and many
// concurrent clients. Every wait has a deadline, so a stuck job or watch
// fails its test instead of hanging the suite.
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "client/client.h"
#include "common/files.h"
#include "common/ids.h"
#include "common/sha256.h"
#include "tests/e2e/harness.h"

namespace quantd::testing {
namespace {

using client::QuantClient;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Enough weights that quantizing them takes a few seconds on a loaded
// two-core machine, so a kill or a signal reliably lands mid-job.
constexpr int kSlowLayers = 32;
constexpr int kSlowWidth = 1024;

std::string ReadConfig(const std::string& name) {
  auto text = ReadFile(SourceDir() / "configs" / name, 1 << 20);
  if (!text.ok()) throw std::runtime_error(text.status().message());
  return *text;
}

v1::SubmitJobRequest WeightQuantRequest(const std::string& model_sha, v1::DeviceClass device = v1::DEVICE_CLASS_ANY) {
  static const std::string config = ReadConfig("weight_quant_8bit.yaml");
  v1::SubmitJobRequest request;
  request.set_request_id(NewId("req-"));
  request.set_model_sha256(model_sha);
  request.set_config_text(config);
  request.set_model_name("model.onnx");
  request.set_device(device);
  return request;
}

std::string StateText(v1::JobState state) {
  return client::StateName(state);
}

// Polls the job until `done` holds or `timeout` passes; returns the last
// state seen either way, so the caller's assertion names what went wrong.
v1::Job WaitForJob(QuantClient& client, const std::string& job_id, Clock::duration timeout,
                   const std::function<bool(const v1::Job&)>& done) {
  auto deadline = Clock::now() + timeout;
  v1::Job last;
  while (true) {
    auto job = client.Get(job_id);
    if (job.ok()) {
      last = *job;
      if (done(last)) return last;
    }
    if (Clock::now() >= deadline) return last;
    std::this_thread::sleep_for(milliseconds(20));
  }
}

v1::Job WaitForEnd(QuantClient& client, const std::string& job_id, Clock::duration timeout) {
  return WaitForJob(client, job_id, timeout, [](const v1::Job& job) { return client::IsTerminal(job.state()); });
}

// Running on a worker and into the quantize stage: a kill now interrupts
// the quantization itself, not the input download.
v1::Job WaitUntilQuantizing(QuantClient& client, const std::string& job_id) {
  return WaitForJob(client, job_id, seconds(60), [](const v1::Job& job) {
    if (client::IsTerminal(job.state())) return true;
    return job.state() == v1::JOB_STATE_RUNNING && !job.worker().empty() && job.stage() == "quantize";
  });
}

// The stored history of a job without following it: a watch that a short
// deadline ends once the backlog has been sent.
std::vector<v1::JobEvent> History(QuantClient& client, const std::string& job_id) {
  v1::WatchJobRequest request;
  request.set_job_id(job_id);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + seconds(1));
  auto reader = client.stub().WatchJob(&context, request);
  std::vector<v1::JobEvent> events;
  v1::JobEvent event;
  while (reader->Read(&event)) events.push_back(event);
  reader->Finish();
  return events;
}

std::vector<v1::StateChange> StateChanges(const std::vector<v1::JobEvent>& events) {
  std::vector<v1::StateChange> states;
  for (const auto& event : events) {
    if (event.has_state()) states.push_back(event.state());
  }
  return states;
}

std::string Describe(const std::vector<v1::StateChange>& states) {
  std::string text;
  for (const auto& state : states) {
    text += (text.empty() ? "" : " -> ") + StateText(state.state());
    if (!state.reason().empty()) text += "(" + state.reason() + ")";
  }
  return text;
}

std::vector<v1::JobState> Sequence(const std::vector<v1::StateChange>& states) {
  std::vector<v1::JobState> sequence;
  for (const auto& state : states) sequence.push_back(state.state());
  return sequence;
}

void ExpectDenseSeqs(const std::vector<v1::JobEvent>& events, const std::string& what) {
  for (size_t i = 0; i < events.size(); ++i) {
    if (events[i].seq() != static_cast<int64_t>(i + 1)) {
      ADD_FAILURE() << what << ": event " << i << " has seq " << events[i].seq() << ", expected " << i + 1;
      return;
    }
  }
}

// Downloads every artifact and checks each file against its recorded digest.
void ExpectArtifactsDownload(QuantClient& client, const v1::Job& job, const std::filesystem::path& out) {
  ASSERT_GT(job.artifacts_size(), 0) << "job " << job.id() << " has no artifacts";
  auto status = client.DownloadAll(job.id(), out);
  ASSERT_TRUE(status.ok()) << status.message();
  for (const auto& artifact : job.artifacts()) {
    auto sha = Sha256OfFile(out / artifact.name());
    ASSERT_TRUE(sha.ok()) << sha.status().message();
    EXPECT_EQ(*sha, artifact.sha256()) << artifact.name();
  }
}

// Every blob file is named by its digest; a torn or half-renamed write
// would show up as a mismatch.
void ExpectBlobsVerify(const std::filesystem::path& data_dir) {
  int checked = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(data_dir / "blobs" / "sha256")) {
    if (!entry.is_regular_file()) continue;
    auto sha = Sha256OfFile(entry.path());
    ASSERT_TRUE(sha.ok()) << sha.status().message();
    EXPECT_EQ(*sha, entry.path().filename().string()) << "blob " << entry.path() << " does not match its name";
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

// Opens the SQLite job store read-only beside a stopped server and runs
// its own consistency check.
void ExpectStoreIntact(const std::filesystem::path& data_dir) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2((data_dir / "quantd.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  std::unique_ptr<sqlite3, int (*)(sqlite3*)> closer(db, sqlite3_close);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &stmt, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  std::string verdict = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
  sqlite3_finalize(stmt);
  EXPECT_EQ(verdict, "ok");
}

// A Watch running on its own thread and its own client, which outlives
// the test body if the watch hangs (so a hang fails the test instead of
// blocking it forever).
class BackgroundWatch {
 public:
  BackgroundWatch(const std::string& address, const std::string& job_id) : state_(std::make_shared<State>(address)) {
    auto state = state_;
    std::thread([state, job_id] {
      auto result = state->client.Watch(job_id, 0, [&](const v1::JobEvent& event) {
        std::lock_guard lock(state->mutex);
        state->events.push_back(event);
      });
      std::lock_guard lock(state->mutex);
      state->result = std::move(result);
      state->done.notify_all();
    }).detach();
  }
  size_t event_count() {
    std::lock_guard lock(state_->mutex);
    return state_->events.size();
  }
  // The watch's outcome, or nullopt if it has not returned within `timeout`.
  std::optional<StatusOr<v1::Job>> Wait(Clock::duration timeout) {
    std::unique_lock lock(state_->mutex);
    state_->done.wait_for(lock, timeout, [&] { return state_->result.has_value(); });
    return state_->result;
  }
  std::vector<v1::JobEvent> events() {
    std::lock_guard lock(state_->mutex);
    return state_->events;
  }

 private:
  struct State {
    explicit State(const std::string& address) : client(address) {}
    QuantClient client;
    std::mutex mutex;
    std::condition_variable done;
    std::vector<v1::JobEvent> events;
    std::optional<StatusOr<v1::Job>> result;
  };
  std::shared_ptr<State> state_;
};

QuantdProcess::Options FastLeaseOptions(int workers, int max_attempts) {
  QuantdProcess::Options options;
  options.local_workers = workers;
  options.yaml_lines = {"lease_ttl_seconds: 2", "worker_heartbeat_ms: 100",
                        "max_attempts: " + std::to_string(max_attempts)};
  return options;
}

class ReliabilityTest : public ::testing::Test {
 protected:
  std::string UploadOrDie(QuantClient& client, const std::filesystem::path& file) {
    auto sha = client.UploadFile(file);
    if (!sha.ok()) throw std::runtime_error("upload failed: " + sha.status().message());
    return *sha;
  }
  std::string SlowModelSha(QuantClient& client) {
    return UploadOrDie(client, WriteMatMulChainModel(out_, kSlowLayers, kSlowWidth));
  }

  ScratchDir scratch_{"quantd-reliability-"};
  const std::filesystem::path& out_ = scratch_.path();
};

TEST_F(ReliabilityTest, WorkerKilledMidJobIsRetriedElsewhereAndSucceeds) {
  QuantdProcess server(FastLeaseOptions(2, 3));
  QuantClient client(server.address());
  auto submitted = client.Submit(WeightQuantRequest(SlowModelSha(client)));
  ASSERT_TRUE(submitted.ok()) << submitted.status().message();
  const auto job_id = submitted->job().id();

  auto running = WaitUntilQuantizing(client, job_id);
  ASSERT_EQ(running.state(), v1::JOB_STATE_RUNNING) << "the job ended before a worker could be killed";
  pid_t victim = server.WorkerPid(running.worker());
  ASSERT_GT(victim, 0) << "no live worker process named " << running.worker();
  const auto victim_scratch = server.worker_scratch_root() / ("w-" + std::to_string(victim));
  EXPECT_TRUE(std::filesystem::exists(victim_scratch / (job_id + "-1")))
      << "the job's inputs live in " << victim_scratch;
  ASSERT_EQ(::kill(victim, SIGKILL), 0);

  auto job = WaitForEnd(client, job_id, seconds(120));
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.failure_reason() << ": " << job.failure_message();
  EXPECT_EQ(job.attempts(), 2);
  // The worker that replaced the killed one removed what it left behind.
  auto scratch_deadline = Clock::now() + seconds(10);
  while (std::filesystem::exists(victim_scratch) && Clock::now() < scratch_deadline) {
    std::this_thread::sleep_for(milliseconds(50));
  }
  EXPECT_FALSE(std::filesystem::exists(victim_scratch)) << "scratch of the SIGKILLed worker was never cleaned";

  auto events = History(client, job_id);
  ExpectDenseSeqs(events, "history");
  auto states = StateChanges(events);
  ASSERT_EQ(Sequence(states),
            (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_QUEUED,
                                       v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED}))
      << Describe(states);
  EXPECT_NE(states[1].message().find("attempt 1 on " + running.worker()), std::string::npos) << states[1].message();
  EXPECT_NE(states[2].message().find("lease expired"), std::string::npos) << states[2].message();
  EXPECT_NE(states[3].message().find("attempt 2"), std::string::npos) << states[3].message();
  // Artifacts come only from the attempt that finished.
  int64_t second_start = 0;
  for (const auto& event : events) {
    if (event.has_state() && event.state().message().find("attempt 2") != std::string::npos) second_start = event.seq();
    if (event.has_artifact()) {
      EXPECT_GT(event.seq(), second_start) << "artifact event from the killed attempt";
    }
  }

  // The supervisor replaced the killed worker.
  auto deadline = Clock::now() + seconds(10);
  std::vector<pid_t> pids;
  while (Clock::now() < deadline) {
    pids = server.WorkerPids();
    if (pids.size() == 2 && std::find(pids.begin(), pids.end(), victim) == pids.end()) break;
    std::this_thread::sleep_for(milliseconds(50));
  }
  EXPECT_EQ(pids.size(), 2u);
  EXPECT_EQ(std::find(pids.begin(), pids.end(), victim), pids.end());
  ExpectArtifactsDownload(client, job, out_ / "downloaded");
}

// Limits run the pipeline in a child process of the worker; a job over its
// limit fails for good on its first attempt and the worker carries on.
TEST_F(ReliabilityTest, JobOverItsMemoryLimitFailsOnceOthersComplete) {
  auto options = FastLeaseOptions(1, 3);
  options.yaml_lines.push_back("max_job_memory_limit_mb: 4096");
  QuantdProcess server(options);
  QuantClient client(server.address());
  auto slow_sha = SlowModelSha(client);  // 128 MiB of float weights
  auto tiny = WeightQuantRequest(slow_sha);
  tiny.mutable_limits()->set_memory_bytes(32 << 20);
  auto over = client.Submit(tiny);
  ASSERT_TRUE(over.ok()) << over.status().message();
  EXPECT_EQ(over->job().limits().memory_bytes(), 32 << 20);
  auto ample = WeightQuantRequest(UploadOrDie(client, BundledModel()));
  ample.mutable_limits()->set_memory_bytes(int64_t{1} << 50);  // capped at the server's 4096 MiB
  auto within = client.Submit(ample);
  ASSERT_TRUE(within.ok()) << within.status().message();
  EXPECT_EQ(within->job().limits().memory_bytes(), int64_t{4096} << 20);

  auto failed = WaitForEnd(client, over->job().id(), seconds(120));
  ASSERT_EQ(failed.state(), v1::JOB_STATE_FAILED) << failed.failure_reason() << ": " << failed.failure_message();
  EXPECT_EQ(failed.failure_reason(), "MEMORY_LIMIT_EXCEEDED") << failed.failure_message();
  EXPECT_EQ(failed.attempts(), 1) << "a job over its memory limit is not retried";
  EXPECT_NE(failed.failure_message().find("32 MiB"), std::string::npos) << failed.failure_message();

  auto done = WaitForEnd(client, within->job().id(), seconds(180));
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.failure_reason() << ": " << done.failure_message();
  EXPECT_EQ(done.attempts(), 1);
  ExpectArtifactsDownload(client, done, out_ / "within");
  auto ort = RunOrt({"eval", "--model", (out_ / "within" / "model.onnx").string(), "--reference",
                     BundledModel().string(), "--count", "1000"});
  EXPECT_GT(ort["top1_agreement"].get<double>(), 0.98) << ort.dump();
}

TEST_F(ReliabilityTest, JobOverItsTimeLimitFailsOnceOthersComplete) {
  auto options = FastLeaseOptions(1, 3);
  options.yaml_lines.push_back("max_job_time_limit_seconds: 600");
  QuantdProcess server(options);
  QuantClient client(server.address());
  auto request = WeightQuantRequest(SlowModelSha(client));
  request.mutable_limits()->set_time_seconds(1);
  auto slow = client.Submit(request);
  ASSERT_TRUE(slow.ok()) << slow.status().message();
  auto capped_request = WeightQuantRequest(SlowModelSha(client));
  capped_request.mutable_limits()->set_time_seconds(1000000);
  auto capped = client.Submit(capped_request);
  ASSERT_TRUE(capped.ok()) << capped.status().message();
  EXPECT_EQ(capped->job().limits().time_seconds(), 600);
  auto started = Clock::now();
  auto failed = WaitForEnd(client, slow->job().id(), seconds(120));
  ASSERT_EQ(failed.state(), v1::JOB_STATE_FAILED) << failed.failure_reason() << ": " << failed.failure_message();
  EXPECT_EQ(failed.failure_reason(), "TIME_LIMIT_EXCEEDED") << failed.failure_message();
  EXPECT_EQ(failed.attempts(), 1) << "a job over its time limit is not retried";
  EXPECT_LT(Clock::now() - started, seconds(30)) << "the job was stopped at its limit, not when it finished";

  auto done = WaitForEnd(client, capped->job().id(), seconds(180));
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.failure_reason() << ": " << done.failure_message();
  ExpectArtifactsDownload(client, done, out_ / "capped");
}

TEST_F(ReliabilityTest, JobThatKillsEveryWorkerFailsAsWorkerLostAfterMaxAttempts) {
  QuantdProcess server(FastLeaseOptions(2, 2));
  QuantClient client(server.address());
  auto submitted = client.Submit(WeightQuantRequest(SlowModelSha(client)));
  ASSERT_TRUE(submitted.ok()) << submitted.status().message();
  const auto job_id = submitted->job().id();

  int kills = 0;
  v1::Job job;
  auto deadline = Clock::now() + seconds(120);
  while (Clock::now() < deadline) {
    auto current = client.Get(job_id);
    ASSERT_TRUE(current.ok()) << current.status().message();
    job = *current;
    if (client::IsTerminal(job.state())) break;
    if (job.state() == v1::JOB_STATE_RUNNING && job.attempts() > kills && !job.worker().empty()) {
      pid_t pid = server.WorkerPid(job.worker());
      if (pid > 0 && ::kill(pid, SIGKILL) == 0) ++kills;
    }
    std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_EQ(job.state(), v1::JOB_STATE_FAILED) << StateText(job.state()) << " " << job.failure_message();
  EXPECT_EQ(kills, 2);
  EXPECT_EQ(job.attempts(), 2);
  EXPECT_EQ(job.failure_reason(), "WORKER_LOST");
  EXPECT_NE(job.failure_message().find("stopped responding"), std::string::npos) << job.failure_message();
  EXPECT_NE(job.failure_message().find("after 2 attempts"), std::string::npos) << job.failure_message();
  EXPECT_EQ(job.artifacts_size(), 0);

  auto events = History(client, job_id);
  ExpectDenseSeqs(events, "history");
  auto states = StateChanges(events);
  EXPECT_EQ(Sequence(states),
            (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_QUEUED,
                                       v1::JOB_STATE_RUNNING, v1::JOB_STATE_FAILED}))
      << Describe(states);
  ASSERT_FALSE(states.empty());
  EXPECT_EQ(states.back().reason(), "WORKER_LOST");
}

TEST_F(ReliabilityTest, StalledWorkerThatLostItsLeaseCannotFinishTheJob) {
  QuantdProcess server(FastLeaseOptions(2, 3));
  QuantClient client(server.address());
  auto submitted = client.Submit(WeightQuantRequest(SlowModelSha(client)));
  ASSERT_TRUE(submitted.ok()) << submitted.status().message();
  const auto job_id = submitted->job().id();
  auto running = WaitUntilQuantizing(client, job_id);
  ASSERT_EQ(running.state(), v1::JOB_STATE_RUNNING) << "the job ended before its worker could be stalled";
  pid_t stalled = server.WorkerPid(running.worker());
  ASSERT_GT(stalled, 0);
  ASSERT_EQ(::kill(stalled, SIGSTOP), 0);
  // The lease runs out and the other worker takes the job over.
  auto retried = WaitForJob(client, job_id, seconds(60), [](const v1::Job& job) {
    return client::IsTerminal(job.state()) || (job.state() == v1::JOB_STATE_RUNNING && job.attempts() == 2);
  });
  ::kill(stalled, SIGCONT);
  ASSERT_EQ(retried.state(), v1::JOB_STATE_RUNNING) << StateText(retried.state()) << " " << retried.failure_message();
  ASSERT_NE(retried.worker(), running.worker());

  auto job = WaitForEnd(client, job_id, seconds(120));
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.failure_reason() << ": " << job.failure_message();
  EXPECT_EQ(job.attempts(), 2);
  auto events = History(client, job_id);
  ExpectDenseSeqs(events, "history");
  auto states = StateChanges(events);
  EXPECT_EQ(Sequence(states),
            (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_QUEUED,
                                       v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED}))
      << Describe(states);
  // The woken worker dropped its work and went back to serving.
  EXPECT_TRUE(ProcessAlive(stalled));
  auto pids = server.WorkerPids();
  EXPECT_NE(std::find(pids.begin(), pids.end(), stalled), pids.end()) << "the stalled worker was replaced";
  ExpectArtifactsDownload(client, job, out_ / "downloaded");
}

TEST_F(ReliabilityTest, ServerKilledAndRestartedKeepsJobsHistoryArtifactsAndWatchers) {
  QuantdProcess server(FastLeaseOptions(1, 3));
  QuantClient client(server.address());

  // A finished job, a queued one (no GPU worker exists) and a running one.
  auto small_sha = UploadOrDie(client, BundledModel());
  auto finished_submit = client.Submit(WeightQuantRequest(small_sha));
  ASSERT_TRUE(finished_submit.ok());
  auto finished = WaitForEnd(client, finished_submit->job().id(), seconds(60));
  ASSERT_EQ(finished.state(), v1::JOB_STATE_SUCCEEDED) << finished.failure_message();
  ExpectArtifactsDownload(client, finished, out_ / "before");
  auto finished_history = History(client, finished.id());

  auto queued_submit = client.Submit(WeightQuantRequest(small_sha, v1::DEVICE_CLASS_GPU));
  ASSERT_TRUE(queued_submit.ok());
  const auto queued_id = queued_submit->job().id();
  auto queued_history = History(client, queued_id);

  auto running_submit = client.Submit(WeightQuantRequest(SlowModelSha(client)));
  ASSERT_TRUE(running_submit.ok());
  const auto running_id = running_submit->job().id();
  auto running = WaitUntilQuantizing(client, running_id);
  ASSERT_EQ(running.state(), v1::JOB_STATE_RUNNING) << "the job ended before the server could be killed";

  BackgroundWatch watch(server.address(), running_id);
  auto deadline = Clock::now() + seconds(10);
  while (watch.event_count() < 3 && Clock::now() < deadline) std::this_thread::sleep_for(milliseconds(10));
  ASSERT_GE(watch.event_count(), 3u) << "the watch did not catch up before the kill";
  const auto seen_before_kill = watch.event_count();

  EXPECT_EQ(server.Kill(), 128 + SIGKILL);
  // What the next start opens: the database as the kill left it, WAL and all.
  ExpectStoreIntact(server.data_dir());
  ExpectBlobsVerify(server.data_dir());
  server.Restart();

  // The running job's lease runs out on the new server; it is retried and
  // the watch that started before the kill follows it to the end.
  auto watched = watch.Wait(seconds(120));
  ASSERT_TRUE(watched.has_value()) << "the watch never returned after the restart";
  ASSERT_TRUE(watched->ok()) << watched->status().message();
  EXPECT_EQ((*watched)->state(), v1::JOB_STATE_SUCCEEDED) << (*watched)->failure_message();
  EXPECT_EQ((*watched)->attempts(), 2);
  auto watched_events = watch.events();
  EXPECT_GT(watched_events.size(), seen_before_kill);
  ExpectDenseSeqs(watched_events, "watch across the restart");
  auto stored = History(client, running_id);
  ASSERT_EQ(watched_events.size(), stored.size()) << "the watch missed or repeated events";
  for (size_t i = 0; i < stored.size(); ++i) {
    EXPECT_EQ(watched_events[i].SerializeAsString(), stored[i].SerializeAsString()) << "event " << i + 1;
  }
  auto states = StateChanges(stored);
  ASSERT_EQ(Sequence(states),
            (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_QUEUED,
                                       v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED}))
      << Describe(states);
  EXPECT_NE(states[2].message().find("lease expired"), std::string::npos) << states[2].message();
  ExpectArtifactsDownload(client, **watched, out_ / "running");

  // The finished job: same record, same history, same artifact bytes.
  auto finished_after = client.Get(finished.id());
  ASSERT_TRUE(finished_after.ok());
  EXPECT_EQ(finished_after->SerializeAsString(), finished.SerializeAsString());
  auto finished_history_after = History(client, finished.id());
  ASSERT_EQ(finished_history_after.size(), finished_history.size());
  for (size_t i = 0; i < finished_history.size(); ++i) {
    EXPECT_EQ(finished_history_after[i].SerializeAsString(), finished_history[i].SerializeAsString());
  }
  ExpectArtifactsDownload(client, *finished_after, out_ / "after");
  for (const auto& artifact : finished.artifacts()) {
    EXPECT_EQ(ReadFile(out_ / "after" / artifact.name(), 64 << 20).value(),
              ReadFile(out_ / "before" / artifact.name(), 64 << 20).value());
  }

  // The queued job is still waiting, with its history intact.
  auto queued_after = client.Get(queued_id);
  ASSERT_TRUE(queued_after.ok());
  EXPECT_EQ(queued_after->state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(queued_after->attempts(), 0);
  auto queued_history_after = History(client, queued_id);
  ASSERT_EQ(queued_history_after.size(), queued_history.size());
  for (size_t i = 0; i < queued_history.size(); ++i) {
    EXPECT_EQ(queued_history_after[i].SerializeAsString(), queued_history[i].SerializeAsString());
  }
  EXPECT_TRUE(client.Cancel(queued_id).ok());
}

TEST_F(ReliabilityTest, SigtermDrainsWithinTheGracePeriodAndTheJobResumesAfterRestart) {
  // One attempt allowed: handing a job back during a drain is not a failure
  // of the job, so it must not use up the attempt.
  auto options = FastLeaseOptions(2, 1);
  constexpr int kGraceSeconds = 20;
  options.extra_flags = {"--shutdown-grace-seconds", std::to_string(kGraceSeconds)};
  QuantdProcess server(options);
  QuantClient client(server.address());
  auto submitted = client.Submit(WeightQuantRequest(SlowModelSha(client)));
  ASSERT_TRUE(submitted.ok());
  const auto job_id = submitted->job().id();
  auto running = WaitUntilQuantizing(client, job_id);
  ASSERT_EQ(running.state(), v1::JOB_STATE_RUNNING) << "the job ended before the server could be stopped";
  BackgroundWatch watch(server.address(), job_id);

  auto workers = server.WorkerPids();
  ASSERT_EQ(workers.size(), 2u);
  auto started = Clock::now();
  auto exit_code = server.SignalAndWait(SIGTERM, seconds(kGraceSeconds + 10));
  auto took = std::chrono::duration<double>(Clock::now() - started).count();
  ASSERT_TRUE(exit_code.has_value()) << "quantd did not exit after SIGTERM";
  EXPECT_EQ(*exit_code, 0);
  EXPECT_LT(took, kGraceSeconds) << "the drain used up the whole grace period";
  std::cout << "[ reliability ] SIGTERM to exit: " << took << " s\n";
  for (pid_t worker : workers) EXPECT_FALSE(ProcessAlive(worker)) << "worker " << worker << " outlived quantd";
  ExpectStoreIntact(server.data_dir());
  ExpectBlobsVerify(server.data_dir());

  server.Restart();
  auto job = WaitForEnd(client, job_id, seconds(120));
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.failure_reason() << ": " << job.failure_message();
  auto events = History(client, job_id);
  ExpectDenseSeqs(events, "history");
  auto states = StateChanges(events);
  ASSERT_EQ(Sequence(states),
            (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_QUEUED,
                                       v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED}))
      << Describe(states);
  EXPECT_EQ(states[2].reason(), "WORKER_SHUTDOWN") << "the drain hands the job back instead of losing its lease";
  ExpectArtifactsDownload(client, job, out_ / "downloaded");

  // The watch from before the drain rode through the restart.
  auto watched = watch.Wait(seconds(30));
  ASSERT_TRUE(watched.has_value()) << "the watch never returned after the restart";
  ASSERT_TRUE(watched->ok()) << watched->status().message();
  EXPECT_EQ((*watched)->state(), v1::JOB_STATE_SUCCEEDED);
  auto watched_events = watch.events();
  ASSERT_EQ(watched_events.size(), events.size());
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(watched_events[i].SerializeAsString(), events[i].SerializeAsString()) << "event " << i + 1;
  }

  EXPECT_EQ(server.Stop(), 0);
  ExpectStoreIntact(server.data_dir());
  ExpectBlobsVerify(server.data_dir());
}

double Percentile(std::vector<double> values, double fraction) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  auto index = static_cast<size_t>(fraction * static_cast<double>(values.size() - 1) + 0.5);
  return values[std::min(index, values.size() - 1)];
}

TEST_F(ReliabilityTest, ManyConcurrentClientsEachJobRunsExactlyOnce) {
  constexpr int kClients = 20;
  constexpr int kJobsPerClient = 10;
  // quantd holds no model or artifact in memory: blobs stream through 1 MiB
  // buffers per call, so its footprint is gRPC threads, SQLite's page cache
  // and those buffers (about 22 MB idle and 46 MB at the peak of this run,
  // measured on two cores). 200 MB leaves room for more malloc arenas on a
  // bigger machine, while keeping one stream buffer per job (200 MB over
  // this run) would cross it.
  constexpr int64_t kRssLimitKib = 200 * 1024;
  QuantdProcess::Options options;
  options.local_workers = 2;
  options.yaml_lines = {"worker_heartbeat_ms: 100", "lease_ttl_seconds: 10"};
  QuantdProcess server(options);
  const int64_t idle_rss = ResidentKib(server.pid());
  {
    QuantClient client(server.address());
    UploadOrDie(client, BundledModel());
  }

  struct Record {
    std::string job_id;
    double first_event_ms = -1, running_ms = -1, done_ms = -1;
    std::optional<StatusOr<v1::Job>> result;
    std::vector<v1::JobEvent> events;
    std::string error;
  };
  std::vector<Record> records(kClients * kJobsPerClient);
  std::vector<std::atomic<int>> finished_jobs(kClients);
  std::atomic<bool> finished{false};
  std::atomic<int64_t> peak_rss{idle_rss};
  std::thread sampler([&] {
    while (!finished.load()) {
      auto rss = ResidentKib(server.pid());
      if (rss > peak_rss.load()) peak_rss.store(rss);
      std::this_thread::sleep_for(milliseconds(50));
    }
  });

  auto started = Clock::now();
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      QuantClient client(server.address());
      auto sha = client.UploadFile(BundledModel());  // already there: one status probe
      for (int j = 0; j < kJobsPerClient; ++j) {
        auto& record = records[static_cast<size_t>(c * kJobsPerClient + j)];
        if (!sha.ok()) {
          record.error = sha.status().message();
          continue;
        }
        auto submit_time = Clock::now();
        auto since = [&] { return std::chrono::duration<double, std::milli>(Clock::now() - submit_time).count(); };
        auto submitted = client.Submit(WeightQuantRequest(*sha));
        if (!submitted.ok()) {
          record.error = submitted.status().message();
          continue;
        }
        record.job_id = submitted->job().id();
        record.result = client.Watch(record.job_id, 0, [&](const v1::JobEvent& event) {
          if (record.first_event_ms < 0) record.first_event_ms = since();
          if (event.has_state() && event.state().state() == v1::JOB_STATE_RUNNING && record.running_ms < 0) {
            record.running_ms = since();
          }
          record.events.push_back(event);
        });
        record.done_ms = since();
        ++finished_jobs[static_cast<size_t>(c)];
      }
    });
  }
  // The clients' watches have no deadline of their own. A run past the
  // bound reports how far each client got and ends the test binary (taking
  // quantd down with it) rather than hanging the suite.
  std::atomic<int> clients_done{0};
  std::thread watchdog([&] {
    auto bound = Clock::now() + seconds(240);
    while (clients_done.load() < kClients) {
      if (Clock::now() > bound) {
        for (int c = 0; c < kClients; ++c) {
          std::cerr << "client " << c << " finished " << finished_jobs[static_cast<size_t>(c)].load() << " of "
                    << kJobsPerClient << " jobs\n";
        }
        std::cerr << "load run exceeded its time bound\n";
        ::kill(server.pid(), SIGKILL);
        std::abort();
      }
      std::this_thread::sleep_for(milliseconds(100));
    }
  });
  for (auto& thread : clients) {
    thread.join();
    ++clients_done;
  }
  watchdog.join();
  double wall_s = std::chrono::duration<double>(Clock::now() - started).count();
  finished.store(true);
  sampler.join();

  std::vector<double> first_event, running, done;
  int succeeded = 0;
  for (const auto& record : records) {
    ASSERT_TRUE(record.error.empty()) << record.error;
    ASSERT_TRUE(record.result.has_value() && record.result->ok())
        << record.job_id << ": " << (record.result ? record.result->status().message() : "no result");
    const auto& job = **record.result;
    EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.id() << ": " << job.failure_message();
    EXPECT_EQ(job.attempts(), 1) << job.id();
    auto states = StateChanges(record.events);
    EXPECT_EQ(Sequence(states),
              (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED}))
        << job.id() << ": " << Describe(states);
    ExpectDenseSeqs(record.events, job.id());
    succeeded += job.state() == v1::JOB_STATE_SUCCEEDED;
    first_event.push_back(record.first_event_ms);
    running.push_back(record.running_ms);
    done.push_back(record.done_ms);
  }
  EXPECT_EQ(succeeded, kClients * kJobsPerClient);

  // The store agrees: every job once, no job left over in another state.
  QuantClient client(server.address());
  v1::ListJobsRequest list;
  list.set_page_size(500);
  auto listed = client.List(list);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->jobs_size(), kClients * kJobsPerClient);
  for (const auto& job : listed->jobs()) {
    EXPECT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED) << job.id();
    EXPECT_EQ(job.attempts(), 1) << job.id();
  }

  std::cout << "[ reliability ] " << kClients * kJobsPerClient << " jobs from " << kClients << " clients in " << wall_s
            << " s: " << kClients * kJobsPerClient / wall_s << " jobs/s\n"
            << "[ reliability ] submit -> first event ms: p50 " << Percentile(first_event, 0.5) << ", p99 "
            << Percentile(first_event, 0.99) << "\n"
            << "[ reliability ] submit -> running ms: p50 " << Percentile(running, 0.5) << ", p99 "
            << Percentile(running, 0.99) << "\n"
            << "[ reliability ] submit -> succeeded ms: p50 " << Percentile(done, 0.5) << ", p99 "
            << Percentile(done, 0.99) << "\n"
            << "[ reliability ] quantd RSS: idle " << idle_rss / 1024 << " MB, peak " << peak_rss.load() / 1024
            << " MB\n";
  EXPECT_LT(peak_rss.load(), kRssLimitKib) << "quantd grew to " << peak_rss.load() / 1024 << " MB under load";
}

}  // namespace
}  // namespace quantd::testing
