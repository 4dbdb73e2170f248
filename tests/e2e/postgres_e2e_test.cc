// The job store backends end to end: real quantd processes with real worker
// processes on loopback, on SQLite and on a private PostgreSQL server; then
// two quantd replicas sharing one PostgreSQL queue.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>

#include "client/client.h"
#include "common/files.h"
#include "common/ids.h"
#include "tests/e2e/harness.h"
#include "tests/pg/postgres_server.h"

namespace quantd::testing {
namespace {

using client::QuantClient;

enum class Backend { kSqlite, kPostgres };

// Names the parameter in test listings (and so in ctest test names).
void PrintTo(Backend backend, std::ostream* out) { *out << (backend == Backend::kSqlite ? "sqlite" : "postgres"); }

std::string ReadConfig(const std::string& name) {
  auto text = ReadFile(SourceDir() / "configs" / name, 1 << 20);
  if (!text.ok()) throw std::runtime_error(text.status().message());
  return *text;
}

QuantdProcess::Options ServerOptions(int local_workers, const std::string& postgres_dsn) {
  QuantdProcess::Options options;
  options.local_workers = local_workers;
  options.yaml_lines = {"worker_heartbeat_ms: 100", "lease_ttl_seconds: 10"};
  if (!postgres_dsn.empty()) {
    options.yaml_lines.push_back("job_store: postgres");
    options.yaml_lines.push_back("postgres_dsn: \"" + postgres_dsn + "\"");
    options.yaml_lines.push_back("postgres_connections: 4");
  }
  return options;
}

v1::SubmitJobRequest Request(const std::string& model_sha, const std::string& config_text) {
  v1::SubmitJobRequest request;
  request.set_request_id(NewId("req-"));
  request.set_model_sha256(model_sha);
  request.set_config_text(config_text);
  request.set_model_name("model.onnx");
  return request;
}

// The events of a job that ran once and succeeded: numbered 1..n without
// gaps, QUEUED first, exactly one RUNNING, SUCCEEDED last.
void ExpectOneCleanRun(const std::string& job_id, const std::vector<v1::JobEvent>& events) {
  ASSERT_GE(events.size(), 3u) << job_id;
  int running = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq(), static_cast<int64_t>(i + 1)) << job_id;
    if (events[i].has_state() && events[i].state().state() == v1::JOB_STATE_RUNNING) ++running;
  }
  EXPECT_EQ(running, 1) << job_id << " started " << running << " times";
  EXPECT_EQ(events.front().state().state(), v1::JOB_STATE_QUEUED) << job_id;
  EXPECT_EQ(events.back().state().state(), v1::JOB_STATE_SUCCEEDED) << job_id;
}

class BackendTest : public ::testing::TestWithParam<Backend> {};

TEST_P(BackendTest, WeightQuantJobRunsEndToEnd) {
  std::string dsn;
  if (GetParam() == Backend::kPostgres) dsn = SharedPostgresServer().CreateDatabase("e2e_one_job");
  QuantdProcess server(ServerOptions(1, dsn));
  QuantClient client(server.address());
  auto model_sha = client.UploadFile(BundledModel());
  ASSERT_TRUE(model_sha.ok()) << model_sha.status().message();
  auto submitted = client.Submit(Request(*model_sha, ReadConfig("weight_quant_8bit.yaml")));
  ASSERT_TRUE(submitted.ok()) << submitted.status().message();
  const std::string job_id = submitted->job().id();
  std::vector<v1::JobEvent> events;
  auto job = client.Watch(job_id, 0, [&](const v1::JobEvent& event) { events.push_back(event); });
  ASSERT_TRUE(job.ok()) << job.status().message();
  ASSERT_EQ(job->state(), v1::JOB_STATE_SUCCEEDED) << job->failure_reason() << ": " << job->failure_message();
  EXPECT_EQ(job->attempts(), 1);
  ExpectOneCleanRun(job_id, events);
  std::set<std::string> artifact_events;
  for (const auto& event : events) {
    if (event.has_artifact()) artifact_events.insert(event.artifact().name());
  }
  EXPECT_EQ(artifact_events, (std::set<std::string>{"model.onnx", "summary.json"}));

  ScratchDir scratch("quantd-backend-out-");
  const auto& out = scratch.path();
  ASSERT_TRUE(client.DownloadAll(job_id, out).ok());
  std::ifstream summary_file(out / "summary.json");
  auto summary = nlohmann::json::parse(summary_file);
  EXPECT_EQ(summary["quant_type"], "WEIGHT_QUANT");
  auto ort = RunOrt({"eval", "--model", (out / "model.onnx").string(), "--reference", BundledModel().string(),
                     "--count", "1000"});
  EXPECT_GT(ort["top1_agreement"].get<double>(), 0.98);

  // The job lives where the backend says: in the data dir's SQLite file, or
  // only in PostgreSQL.
  bool sqlite_file = std::filesystem::exists(server.data_dir() / "quantd.db");
  EXPECT_EQ(sqlite_file, GetParam() == Backend::kSqlite);
  if (GetParam() == Backend::kPostgres) {
    auto rows = SharedPostgresServer().Query(
        dsn, "SELECT last_seq, (SELECT count(*) FROM quantd_job_events e WHERE e.job_id = j.id)"
             " FROM quantd_jobs j WHERE id = '" + job_id + "'");
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0][0], std::to_string(events.size()));
    EXPECT_EQ(rows[0][1], std::to_string(events.size()));
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendTest, ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return info.param == Backend::kSqlite ? "sqlite" : "postgres";
                         });

// The quantd process whose local worker ran a job. Local workers carry
// their supervisor's pid at the end of their id; a worker named after its
// own pid (host-pid) is traced to its parent instead.
pid_t ReplicaOfWorker(const std::string& worker_id, const std::set<pid_t>& replicas) {
  auto dash = worker_id.rfind('-');
  if (dash == std::string::npos) return -1;
  pid_t pid = -1;
  try {
    pid = std::stoi(worker_id.substr(dash + 1));
  } catch (const std::exception&) {
    return -1;
  }
  if (replicas.count(pid)) return pid;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  // pid (comm) state ppid ...; comm may hold spaces, so read after ')'.
  auto close = text.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(text.substr(close + 1));
  std::string state;
  pid_t parent = -1;
  rest >> state >> parent;
  return parent;
}

TEST(SharedQueueTest, TwoReplicasOnOnePostgresRunEveryJobExactlyOnce) {
  auto& postgres = SharedPostgresServer();
  auto dsn = postgres.CreateDatabase("e2e_shared_queue");
  QuantdProcess first(ServerOptions(3, dsn));
  QuantdProcess second(ServerOptions(3, dsn));
  // Replicas need one blob store, as a deployment gives them with one shared
  // volume for data_dir. The harness gives each its own data dir, so the
  // second replica's blob folder becomes the first's before anything is
  // stored in it.
  std::filesystem::remove_all(second.data_dir() / "blobs");
  std::filesystem::create_directory_symlink(first.data_dir() / "blobs", second.data_dir() / "blobs");

  std::vector<std::unique_ptr<QuantClient>> clients;
  clients.push_back(std::make_unique<QuantClient>(first.address()));
  clients.push_back(std::make_unique<QuantClient>(second.address()));
  auto model_sha = clients[0]->UploadFile(BundledModel());
  ASSERT_TRUE(model_sha.ok()) << model_sha.status().message();
  auto config_text = ReadConfig("weight_quant_8bit.yaml");

  constexpr int kJobs = 40;
  std::vector<std::string> job_ids;
  for (int i = 0; i < kJobs; ++i) {
    auto submitted = clients[i % 2]->Submit(Request(*model_sha, config_text));
    ASSERT_TRUE(submitted.ok()) << submitted.status().message();
    job_ids.push_back(submitted->job().id());
  }
  // A job submitted through one replica is visible, and cancellable, through
  // the other.
  auto gpu_request = Request(*model_sha, config_text);
  gpu_request.set_device(v1::DEVICE_CLASS_GPU);  // no GPU workers: it waits
  auto gpu_job = clients[0]->Submit(gpu_request);
  ASSERT_TRUE(gpu_job.ok());
  auto cancelled = clients[1]->Cancel(gpu_job->job().id());
  ASSERT_TRUE(cancelled.ok()) << cancelled.status().message();
  EXPECT_EQ(clients[0]->Get(gpu_job->job().id())->state(), v1::JOB_STATE_CANCELLED);

  // Each job is watched through the replica it was not submitted to, so
  // the events reach the watcher from the other process's writes.
  std::map<pid_t, int> jobs_by_replica;
  std::set<std::string> workers;
  for (int i = 0; i < kJobs; ++i) {
    const auto& job_id = job_ids[static_cast<size_t>(i)];
    std::vector<v1::JobEvent> events;
    auto job = clients[(i + 1) % 2]->Watch(job_id, 0, [&](const v1::JobEvent& event) { events.push_back(event); });
    ASSERT_TRUE(job.ok()) << job.status().message();
    EXPECT_EQ(job->state(), v1::JOB_STATE_SUCCEEDED) << job_id << ": " << job->failure_message();
    EXPECT_EQ(job->attempts(), 1) << job_id;
    ExpectOneCleanRun(job_id, events);
    workers.insert(job->worker());
    ++jobs_by_replica[ReplicaOfWorker(job->worker(), {first.pid(), second.pid()})];
  }
  // Both replicas' workers took part: they all lease from one queue.
  EXPECT_GT(jobs_by_replica[first.pid()], 0);
  EXPECT_GT(jobs_by_replica[second.pid()], 0);
  EXPECT_EQ(jobs_by_replica[first.pid()] + jobs_by_replica[second.pid()], kJobs)
      << "every job ran on a worker of one of the two replicas";
  EXPECT_GE(workers.size(), 3u);

  // The table agrees: every job succeeded once, its counter matches its
  // event rows, and no job is left running or queued.
  auto states = postgres.Query(dsn, "SELECT state, count(*) FROM quantd_jobs GROUP BY state ORDER BY state");
  std::map<std::string, std::string> by_state;
  for (const auto& row : states) by_state[row[0]] = row[1];
  EXPECT_EQ(by_state["3"], std::to_string(kJobs));
  EXPECT_EQ(by_state["5"], "1");
  EXPECT_EQ(by_state.count("1") + by_state.count("2"), 0u);
  auto mismatched = postgres.Query(dsn,
                                   "SELECT id FROM quantd_jobs j WHERE last_seq <>"
                                   " (SELECT count(*) FROM quantd_job_events e WHERE e.job_id = j.id)");
  EXPECT_TRUE(mismatched.empty()) << mismatched.size() << " jobs have gaps in their events";

  // Both replicas export the same shared queue depth for autoscaling.
  for (const auto* server : {&first, &second}) {
    auto metrics = HttpGet(server->metrics_address(), "/metrics");
    EXPECT_NE(metrics.find("quantd_queue_depth"), std::string::npos);
  }
}

}  // namespace
}  // namespace quantd::testing
