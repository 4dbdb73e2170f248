// The JobStore contract, checked on every backend. This file builds twice:
// as job_store_test (SQLite, a plain unit test) and, with
// QUANTD_JOB_STORE_TEST_POSTGRES, as job_store_postgres_test against a
// private PostgreSQL server.
#include "server/job_store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "common/ids.h"
#include "server/server_config.h"

#ifdef QUANTD_JOB_STORE_TEST_POSTGRES
#include <libpq-fe.h>

#include "tests/pg/postgres_server.h"
#endif

namespace quantd::server {
namespace {

enum class Backend { kSqlite, kPostgres };

// Names the parameter in test listings (and so in ctest test names).
void PrintTo(Backend backend, std::ostream* out) {
  *out << (backend == Backend::kSqlite ? "sqlite" : "postgres");
}

class JobStoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / NewId("job-store-test-");
    std::filesystem::create_directories(dir_);
    config_.data_dir = dir_;
    if (GetParam() == Backend::kPostgres) {
#ifdef QUANTD_JOB_STORE_TEST_POSTGRES
      config_.job_store = JobStoreBackend::kPostgres;
      config_.postgres_dsn = quantd::testing::SharedPostgresServer().CreateDatabase("job_store");
      config_.postgres_connections = 4;
#else
      GTEST_SKIP() << "built without the PostgreSQL fixture";
#endif
    }
    Reopen();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  // Another handle on the same store: what a second quantd replica sees.
  std::unique_ptr<JobStore> OpenAnother() {
    auto opened = OpenJobStore(config_);
    EXPECT_TRUE(opened.ok()) << opened.status().message();
    return opened.ok() ? std::move(*opened) : nullptr;
  }
  void Reopen() {
    store_.reset();
    store_ = OpenAnother();
    ASSERT_NE(store_, nullptr);
  }
  v1::Job NewJob(const std::string& request_id, int priority, v1::DeviceClass device, int64_t created) {
    v1::Job job;
    job.set_id(NewId("job-"));
    job.set_request_id(request_id);
    job.set_priority(priority);
    job.set_device(device);
    job.set_created_unix_ms(created);
    return job;
  }
  v1::Job Create(v1::Job job) {
    auto created = store_->CreateJob(std::move(job));
    EXPECT_TRUE(created.ok()) << created.status().message();
    return created.ok() ? created->first : v1::Job();
  }
  std::vector<v1::JobEvent> Events(const std::string& job_id) {
    auto events = store_->EventsAfter(job_id, 0, 100000);
    EXPECT_TRUE(events.ok()) << events.status().message();
    return events.ok() ? *events : std::vector<v1::JobEvent>();
  }

  std::filesystem::path dir_;
  ServerConfig config_;
  std::unique_ptr<JobStore> store_;
};

TEST_P(JobStoreTest, SameRequestIdReturnsTheExistingJob) {
  auto first = store_->CreateJob(NewJob("req-1", 0, v1::DEVICE_CLASS_ANY, 1000));
  ASSERT_TRUE(first.ok()) << first.status().message();
  EXPECT_FALSE(first->second);
  auto second = store_->CreateJob(NewJob("req-1", 5, v1::DEVICE_CLASS_CPU, 2000));
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(second->second);
  EXPECT_EQ(second->first.id(), first->first.id());
  auto other = store_->CreateJob(NewJob("req-2", 0, v1::DEVICE_CLASS_ANY, 3000));
  EXPECT_NE(other->first.id(), first->first.id());
  EXPECT_EQ(Events(first->first.id()).size(), 1u) << "a deduplicated submit must not add events";
}

TEST_P(JobStoreTest, LeaseOrderIsPriorityThenAgeAndRespectsDeviceClass) {
  auto old_low = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  auto new_high = Create(NewJob("", 9, v1::DEVICE_CLASS_ANY, 3000));
  auto old_high = Create(NewJob("", 9, v1::DEVICE_CLASS_ANY, 2000));
  auto gpu_only = Create(NewJob("", 100, v1::DEVICE_CLASS_GPU, 500));
  std::vector<std::string> order;
  for (int i = 0; i < 3; ++i) {
    auto leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 10000);
    ASSERT_TRUE(leased.ok()) << leased.status().message();
    ASSERT_TRUE(leased->has_value());
    order.push_back((*leased)->job.id());
  }
  EXPECT_EQ(order, (std::vector<std::string>{old_high.id(), new_high.id(), old_low.id()}));
  auto none = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 10000);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value()) << "a CPU worker must not take a GPU-only job";
  auto gpu = store_->LeaseNext(v1::DEVICE_CLASS_GPU, "g", 10000);
  ASSERT_TRUE(gpu->has_value());
  EXPECT_EQ((*gpu)->job.id(), gpu_only.id());
  EXPECT_EQ((*gpu)->job.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ((*gpu)->job.worker(), "g");
  EXPECT_EQ((*gpu)->job.attempts(), 1);
}

TEST_P(JobStoreTest, EventsHaveDenseSequenceNumbersAndSurviveReopen) {
  auto job = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  for (int i = 0; i < 5; ++i) {
    v1::JobEvent event;
    event.mutable_log()->set_text("line " + std::to_string(i));
    auto stored = store_->AppendEvent(job.id(), event);
    ASSERT_TRUE(stored.ok()) << stored.status().message();
    EXPECT_EQ(stored->seq(), i + 2);
    EXPECT_GT(stored->unix_ms(), 0);
  }
  Reopen();
  auto events = store_->EventsAfter(job.id(), 0, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 6u);  // queued state + 5 logs
  for (size_t i = 0; i < events->size(); ++i) EXPECT_EQ((*events)[i].seq(), static_cast<int64_t>(i + 1));
  EXPECT_EQ((*events)[0].state().state(), v1::JOB_STATE_QUEUED);
  auto tail = store_->EventsAfter(job.id(), 4, 100);
  ASSERT_EQ(tail->size(), 2u);
  EXPECT_EQ((*tail)[0].log().text(), "line 3");
  auto limited = store_->EventsAfter(job.id(), 0, 2);
  ASSERT_EQ(limited->size(), 2u);
  EXPECT_EQ((*limited)[1].seq(), 2);
}

TEST_P(JobStoreTest, ExpiredLeaseRequeuesThenFailsAfterMaxAttempts) {
  auto job = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  for (int attempt = 1; attempt <= 2; ++attempt) {
    auto leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 1);
    ASSERT_TRUE(leased->has_value());
    EXPECT_EQ((*leased)->job.attempts(), attempt);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    auto expired = store_->ExpireLeases(2);
    ASSERT_TRUE(expired.ok()) << expired.status().message();
    ASSERT_EQ(expired->size(), 1u);
    EXPECT_EQ((*expired)[0].job_id, job.id());
    EXPECT_EQ((*expired)[0].new_state, attempt < 2 ? v1::JOB_STATE_QUEUED : v1::JOB_STATE_FAILED);
  }
  auto final_job = store_->GetJob(job.id());
  EXPECT_EQ(final_job->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(final_job->failure_reason(), "WORKER_LOST");
  EXPECT_TRUE(store_->ExpireLeases(2)->empty());
}

TEST_P(JobStoreTest, ExpiredLeaseOfACancelRequestedJobEndsCancelled) {
  auto job = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  auto leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 1);
  ASSERT_TRUE(leased->has_value());
  ASSERT_TRUE(store_->RequestCancel(job.id()).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto expired = store_->ExpireLeases(3);
  ASSERT_EQ(expired->size(), 1u);
  EXPECT_EQ((*expired)[0].new_state, v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(store_->GetJob(job.id())->state(), v1::JOB_STATE_CANCELLED);
}

TEST_P(JobStoreTest, RenewedLeaseDoesNotExpireAndOnlyItsHolderMayRenew) {
  auto job = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  auto leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 150);
  ASSERT_TRUE(leased->has_value());
  auto renewed = store_->RenewLease(job.id(), (*leased)->lease_id, 60000);
  ASSERT_TRUE(renewed.ok()) << renewed.status().message();
  EXPECT_EQ(renewed->state(), v1::JOB_STATE_RUNNING);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE(store_->ExpireLeases(3)->empty());
  EXPECT_EQ(store_->RenewLease(job.id(), "lease-someone-else", 1000).status().reason(), "LEASE_LOST");
  EXPECT_EQ(store_->RenewLease("job-missing", (*leased)->lease_id, 1000).status().reason(), "JOB_NOT_FOUND");
  EXPECT_EQ(store_->GetJob("job-missing").status().reason(), "JOB_NOT_FOUND");
}

TEST_P(JobStoreTest, StaleLeaseCannotCompleteAJob) {
  auto job = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  auto first = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w1", 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(store_->ExpireLeases(3).ok());
  auto second = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w2", 10000);
  ASSERT_TRUE(second->has_value());
  auto stale = store_->Complete(job.id(), (*first)->lease_id);
  EXPECT_EQ(stale.status().reason(), "LEASE_LOST");
  v1::Artifact artifact;
  artifact.set_name("model.onnx");
  EXPECT_EQ(store_->AddArtifact(job.id(), (*first)->lease_id, artifact).reason(), "LEASE_LOST");
  auto fresh = store_->Complete(job.id(), (*second)->lease_id);
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(fresh->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(fresh->attempts(), 2);
  EXPECT_EQ(store_->Complete(job.id(), (*second)->lease_id).status().reason(), "LEASE_LOST")
      << "a finished job cannot be completed twice";
}

TEST_P(JobStoreTest, CancelQueuedEndsAtOnceCancelRunningWaitsForWorker) {
  auto queued = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  auto running = Create(NewJob("", 5, v1::DEVICE_CLASS_ANY, 1000));
  auto leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 10000);
  ASSERT_EQ((*leased)->job.id(), running.id());
  EXPECT_EQ(store_->RequestCancel(queued.id())->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(store_->RequestCancel(queued.id())->state(), v1::JOB_STATE_CANCELLED) << "cancelling twice is harmless";
  auto flagged = store_->RequestCancel(running.id());
  EXPECT_EQ(flagged->state(), v1::JOB_STATE_RUNNING);
  EXPECT_TRUE(flagged->cancel_requested());
  EXPECT_TRUE(store_->RenewLease(running.id(), (*leased)->lease_id, 10000)->cancel_requested())
      << "the worker learns about the cancellation from its heartbeat";
  auto ended = store_->Fail(running.id(), (*leased)->lease_id, "CANCELLED", "stopped", true, 3);
  EXPECT_EQ(ended->state(), v1::JOB_STATE_CANCELLED) << "a cancelled job must not be retried";
  EXPECT_EQ(store_->RequestCancel("job-missing").status().reason(), "JOB_NOT_FOUND");
}

TEST_P(JobStoreTest, NonRetryableFailureIsFinalRetryableIsRequeued) {
  auto job = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  auto leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 10000);
  auto requeued = store_->Fail(job.id(), (*leased)->lease_id, "IO_ERROR", "disk", true, 3);
  EXPECT_EQ(requeued->state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(requeued->worker(), "");
  leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 10000);
  auto failed = store_->Fail(job.id(), (*leased)->lease_id, "MODEL_INVALID", "garbage", false, 3);
  EXPECT_EQ(failed->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed->failure_reason(), "MODEL_INVALID");
  EXPECT_EQ(failed->attempts(), 2);
  auto events = Events(job.id());
  std::vector<v1::JobState> states;
  for (const auto& event : events) states.push_back(event.state().state());
  EXPECT_EQ(states, (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING, v1::JOB_STATE_QUEUED,
                                               v1::JOB_STATE_RUNNING, v1::JOB_STATE_FAILED}));
}

TEST_P(JobStoreTest, ArtifactsReplaceByNameAndProgressAppliesOnlyWhileRunning) {
  auto job = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  EXPECT_TRUE(store_->UpdateProgress(job.id(), "load", 0.5).ok());
  EXPECT_EQ(store_->GetJob(job.id())->stage(), "") << "a queued job has no progress";
  auto leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 10000);
  ASSERT_TRUE(store_->UpdateProgress(job.id(), "quantize", 0.25).ok());
  auto running = store_->GetJob(job.id());
  EXPECT_EQ(running->stage(), "quantize");
  EXPECT_DOUBLE_EQ(running->progress(), 0.25);
  v1::Artifact artifact;
  artifact.set_name("model.onnx");
  artifact.set_size_bytes(10);
  ASSERT_TRUE(store_->AddArtifact(job.id(), (*leased)->lease_id, artifact).ok());
  artifact.set_size_bytes(20);
  ASSERT_TRUE(store_->AddArtifact(job.id(), (*leased)->lease_id, artifact).ok());
  artifact.set_name("summary.json");
  ASSERT_TRUE(store_->AddArtifact(job.id(), (*leased)->lease_id, artifact).ok());
  auto done = store_->Complete(job.id(), (*leased)->lease_id);
  ASSERT_EQ(done->artifacts_size(), 2);
  EXPECT_EQ(done->artifacts(0).size_bytes(), 20);
  EXPECT_DOUBLE_EQ(done->progress(), 1.0);
  EXPECT_TRUE(store_->UpdateProgress(job.id(), "late", 0.1).ok());
  EXPECT_EQ(store_->GetJob(job.id())->stage(), "quantize");
  EXPECT_EQ(store_->UpdateProgress("job-missing", "x", 0).reason(), "JOB_NOT_FOUND");
  int artifact_events = 0;
  for (const auto& event : Events(job.id())) artifact_events += event.has_artifact();
  EXPECT_EQ(artifact_events, 3);
}

TEST_P(JobStoreTest, ListPagesThroughEveryJobOnceAndFiltersByState) {
  std::set<std::string> ids;
  for (int i = 0; i < 7; ++i) ids.insert(Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000 + i % 3)).id());
  std::set<std::string> seen;
  std::string token;
  int pages = 0;
  int64_t last_created = INT64_MAX;
  do {
    auto page = store_->ListJobs("", {}, 3, token);
    ASSERT_TRUE(page.ok()) << page.status().message();
    for (const auto& job : page->jobs) {
      EXPECT_TRUE(seen.insert(job.id()).second) << "listed twice: " << job.id();
      EXPECT_LE(job.created_unix_ms(), last_created) << "newest first";
      last_created = job.created_unix_ms();
    }
    token = page->next_page_token;
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(seen, ids);
  EXPECT_EQ(pages, 3);
  auto leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 10000);
  auto running = store_->ListJobs("", {v1::JOB_STATE_RUNNING}, 50, "");
  ASSERT_EQ(running->jobs.size(), 1u);
  EXPECT_EQ(running->jobs[0].id(), (*leased)->job.id());
  EXPECT_EQ(store_->ListJobs("", {v1::JOB_STATE_QUEUED, v1::JOB_STATE_RUNNING}, 50, "")->jobs.size(), 7u);
  EXPECT_TRUE(store_->ListJobs("", {static_cast<v1::JobState>(40)}, 50, "")->jobs.empty());
  EXPECT_EQ(store_->ListJobs("", {}, 10, "garbage").status().reason(), "BAD_PAGE_TOKEN");
}

TEST_P(JobStoreTest, CountsByStateAndQueueDepthByDevice) {
  Create(NewJob("", 0, v1::DEVICE_CLASS_CPU, 1000));
  Create(NewJob("", 0, v1::DEVICE_CLASS_GPU, 1000));
  Create(NewJob("", 0, v1::DEVICE_CLASS_GPU, 1000));
  Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  ASSERT_TRUE(store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 10000)->has_value());
  auto counts = store_->CountByState();
  ASSERT_TRUE(counts.ok());
  std::map<v1::JobState, int64_t> by_state(counts->begin(), counts->end());
  EXPECT_EQ(by_state[v1::JOB_STATE_QUEUED], 3);
  EXPECT_EQ(by_state[v1::JOB_STATE_RUNNING], 1);
  auto depth = store_->QueueDepthByDevice();
  ASSERT_TRUE(depth.ok());
  std::map<v1::DeviceClass, int64_t> by_device(depth->begin(), depth->end());
  EXPECT_EQ(by_device[v1::DEVICE_CLASS_GPU], 2);
  EXPECT_EQ(by_device[v1::DEVICE_CLASS_CPU] + by_device[v1::DEVICE_CLASS_ANY], 1);
}

// Several replicas and several workers each: every job is leased exactly
// once and ends with exactly one attempt.
TEST_P(JobStoreTest, ConcurrentLeasersOnSeveralHandlesNeverShareAJob) {
  constexpr int kJobs = 60;
  std::set<std::string> ids;
  for (int i = 0; i < kJobs; ++i) ids.insert(Create(NewJob("", i % 4, v1::DEVICE_CLASS_ANY, 1000 + i)).id());
  std::vector<std::unique_ptr<JobStore>> replicas;
  replicas.push_back(OpenAnother());
  replicas.push_back(OpenAnother());
  ASSERT_TRUE(replicas[0] && replicas[1]);
  std::mutex mutex;
  std::map<std::string, int> leases;
  std::vector<std::string> errors;
  std::vector<std::thread> workers;
  for (int w = 0; w < 6; ++w) {
    workers.emplace_back([&, w] {
      JobStore& store = *replicas[static_cast<size_t>(w % 2)];
      std::string worker = "worker-" + std::to_string(w);
      while (true) {
        auto leased = store.LeaseNext(v1::DEVICE_CLASS_CPU, worker, 60000);
        if (!leased.ok()) {
          std::lock_guard lock(mutex);
          errors.push_back(leased.status().message());
          return;
        }
        if (!leased->has_value()) return;
        {
          std::lock_guard lock(mutex);
          ++leases[(*leased)->job.id()];
        }
        auto done = store.Complete((*leased)->job.id(), (*leased)->lease_id);
        if (!done.ok()) {
          std::lock_guard lock(mutex);
          errors.push_back(done.status().message());
        }
      }
    });
  }
  for (auto& worker : workers) worker.join();
  EXPECT_TRUE(errors.empty()) << errors.front();
  ASSERT_EQ(leases.size(), static_cast<size_t>(kJobs));
  for (const auto& [id, count] : leases) {
    EXPECT_TRUE(ids.count(id));
    EXPECT_EQ(count, 1) << id << " was leased " << count << " times";
    auto job = store_->GetJob(id);
    EXPECT_EQ(job->state(), v1::JOB_STATE_SUCCEEDED);
    EXPECT_EQ(job->attempts(), 1);
    auto events = Events(id);
    ASSERT_EQ(events.size(), 3u);
    for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].seq(), static_cast<int64_t>(i + 1));
  }
}

TEST_P(JobStoreTest, ConcurrentAppendersOnSeveralHandlesKeepSequenceDense) {
  auto job = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  std::vector<std::unique_ptr<JobStore>> replicas;
  replicas.push_back(OpenAnother());
  replicas.push_back(OpenAnother());
  ASSERT_TRUE(replicas[0] && replicas[1]);
  constexpr int kThreads = 4, kEach = 25;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        v1::JobEvent event;
        event.mutable_log()->set_text(std::to_string(t) + ":" + std::to_string(i));
        if (!replicas[static_cast<size_t>(t % 2)]->AppendEvent(job.id(), event).ok()) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  auto events = Events(job.id());
  ASSERT_EQ(events.size(), static_cast<size_t>(1 + kThreads * kEach));
  std::set<std::string> texts;
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq(), static_cast<int64_t>(i + 1));
    if (events[i].has_log()) texts.insert(events[i].log().text());
  }
  EXPECT_EQ(texts.size(), static_cast<size_t>(kThreads * kEach));
}

TEST_P(JobStoreTest, TenantsListOnlyTheirOwnJobsAndShareNoRequestIds) {
  auto for_tenant = [&](const std::string& tenant, const std::string& request_id, int64_t created) {
    auto job = NewJob(request_id, 0, v1::DEVICE_CLASS_ANY, created);
    job.set_tenant(tenant);
    return job;
  };
  auto a1 = Create(for_tenant("alpha", "req-1", 1000));
  auto a2 = Create(for_tenant("alpha", "", 1001));
  auto b1 = store_->CreateJob(for_tenant("beta", "req-1", 1002));
  ASSERT_TRUE(b1.ok()) << b1.status().message();
  EXPECT_FALSE(b1->second) << "another tenant's request id must not deduplicate onto its job";
  EXPECT_NE(b1->first.id(), a1.id());
  auto again = store_->CreateJob(for_tenant("alpha", "req-1", 1003));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->second);
  EXPECT_EQ(again->first.id(), a1.id());
  auto unowned = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1004));
  EXPECT_EQ(unowned.tenant(), kDefaultTenant);

  auto ids = [&](const std::string& tenant) {
    std::set<std::string> found;
    auto page = store_->ListJobs(tenant, {}, 50, "");
    EXPECT_TRUE(page.ok()) << page.status().message();
    if (page.ok()) {
      for (const auto& job : page->jobs) found.insert(job.id());
    }
    return found;
  };
  EXPECT_EQ(ids("alpha"), (std::set<std::string>{a1.id(), a2.id()}));
  EXPECT_EQ(ids("beta"), (std::set<std::string>{b1->first.id()}));
  EXPECT_EQ(ids("gamma"), (std::set<std::string>{}));
  EXPECT_EQ(ids("").size(), 4u) << "an empty tenant lists every job";
  auto page = store_->ListJobs("alpha", {}, 1, "");
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->jobs.size(), 1u);
  auto rest = store_->ListJobs("alpha", {}, 10, page->next_page_token);
  ASSERT_TRUE(rest.ok());
  ASSERT_EQ(rest->jobs.size(), 1u) << "paging stays inside the tenant";
  EXPECT_EQ(rest->jobs[0].id(), a1.id());
  EXPECT_EQ(job_rules::TenantOf(*store_->GetJob(b1->first.id())), "beta");
}

TEST_P(JobStoreTest, HeartbeatRenewsAppendsAndAppliesProgressTogether) {
  auto job = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  auto leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 150);
  ASSERT_TRUE(leased->has_value());
  std::vector<v1::JobEvent> beat(3);
  beat[0].mutable_progress()->set_stage("quantize");
  beat[0].mutable_progress()->set_fraction(0.5);
  beat[1].mutable_log()->set_text("halfway");
  beat[2].mutable_state()->set_state(v1::JOB_STATE_SUCCEEDED);  // not the worker's to write
  auto renewed = store_->Heartbeat(job.id(), (*leased)->lease_id, 60000, beat);
  ASSERT_TRUE(renewed.ok()) << renewed.status().message();
  EXPECT_EQ(renewed->stage(), "quantize");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE(store_->ExpireLeases(3)->empty()) << "the heartbeat extended the lease";
  auto stored = store_->GetJob(job.id());
  EXPECT_EQ(stored->state(), v1::JOB_STATE_RUNNING);
  EXPECT_DOUBLE_EQ(stored->progress(), 0.5);
  auto events = Events(job.id());
  ASSERT_EQ(events.size(), 4u) << "queued, running, progress, log; the state event is dropped";
  EXPECT_TRUE(events[2].has_progress());
  EXPECT_EQ(events[3].log().text(), "halfway");

  auto lost = store_->Heartbeat(job.id(), "lease-someone-else", 60000, beat);
  EXPECT_EQ(lost.status().reason(), "LEASE_LOST");
  EXPECT_EQ(Events(job.id()).size(), 4u) << "a heartbeat of a lost lease stores nothing";
  EXPECT_EQ(store_->Heartbeat("job-missing", "x", 1000, beat).status().reason(), "JOB_NOT_FOUND");
}

TEST_P(JobStoreTest, AFreshAttemptStartsWithoutTheLostAttemptsArtifacts) {
  auto job = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  auto first = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w1", 1);
  v1::Artifact artifact;
  artifact.set_name("model.onnx");
  artifact.set_size_bytes(10);
  ASSERT_TRUE(store_->AddArtifact(job.id(), (*first)->lease_id, artifact).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto expired = store_->ExpireLeases(3);
  ASSERT_EQ(expired->size(), 1u);
  EXPECT_EQ(store_->GetJob(job.id())->artifacts_size(), 0) << "a requeued job shows no artifacts of the lost lease";
  auto second = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w2", 10000);
  EXPECT_EQ((*second)->job.artifacts_size(), 0);
  ASSERT_TRUE(store_->AddArtifact(job.id(), (*second)->lease_id, artifact).ok());
  auto requeued = store_->Fail(job.id(), (*second)->lease_id, "IO_ERROR", "disk", true, 3);
  EXPECT_EQ(requeued->state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(requeued->artifacts_size(), 0) << "a failed attempt leaves no artifacts behind";
}

std::string BackendName(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::kSqlite ? "sqlite" : "postgres";
}

// A store holding "job-old" (request id "req-old") written before jobs had
// tenants, opened twice: the migration runs once and is then a no-op.
void ExpectOldJobBelongsToTheDefaultTenant(const ServerConfig& config) {
  for (int open = 0; open < 2; ++open) {
    auto store = OpenJobStore(config);
    ASSERT_TRUE(store.ok()) << store.status().message();
    auto listed = (*store)->ListJobs(kDefaultTenant, {}, 50, "");
    ASSERT_TRUE(listed.ok()) << listed.status().message();
    ASSERT_EQ(listed->jobs.size(), 1u);
    EXPECT_EQ(listed->jobs[0].id(), "job-old");
    EXPECT_EQ(job_rules::TenantOf(listed->jobs[0]), kDefaultTenant);
    EXPECT_EQ((*store)->ListJobs("alpha", {}, 50, "")->jobs.size(), static_cast<size_t>(open))
        << "the old job is not alpha's";
    v1::Job same_key;
    same_key.set_id(NewId("job-"));
    same_key.set_request_id("req-old");
    same_key.set_tenant("alpha");
    auto created = (*store)->CreateJob(same_key);
    ASSERT_TRUE(created.ok()) << created.status().message();
    EXPECT_EQ(created->second, open == 1) << "alpha's own key deduplicates only onto alpha's job";
    EXPECT_NE(created->first.id(), "job-old");
  }
}

v1::Job OldJob() {
  v1::Job job;
  job.set_id("job-old");
  job.set_request_id("req-old");
  job.set_state(v1::JOB_STATE_SUCCEEDED);
  job.set_device(v1::DEVICE_CLASS_ANY);
  job.set_created_unix_ms(1000);
  return job;
}

#ifdef QUANTD_JOB_STORE_TEST_POSTGRES
INSTANTIATE_TEST_SUITE_P(Postgres, JobStoreTest, ::testing::Values(Backend::kPostgres), BackendName);

TEST(PostgresJobStoreMigration, JobsFromBeforeTenantsBelongToTheDefaultTenant) {
  ServerConfig config;
  config.job_store = JobStoreBackend::kPostgres;
  config.postgres_dsn = quantd::testing::SharedPostgresServer().CreateDatabase("migration");
  PGconn* conn = PQconnectdb(config.postgres_dsn.c_str());
  ASSERT_EQ(PQstatus(conn), CONNECTION_OK) << PQerrorMessage(conn);
  // The schema as quantd created it before tenants.
  PGresult* schema = PQexec(conn,
                            "CREATE TABLE quantd_jobs(id TEXT COLLATE \"C\" PRIMARY KEY,"
                            " request_id TEXT NOT NULL DEFAULT '', state INTEGER NOT NULL, device INTEGER NOT NULL,"
                            " priority INTEGER NOT NULL, created_ms BIGINT NOT NULL, lease_id TEXT NOT NULL DEFAULT '',"
                            " lease_expires_ms BIGINT NOT NULL DEFAULT 0, last_seq BIGINT NOT NULL DEFAULT 0,"
                            " proto BYTEA NOT NULL);"
                            "CREATE UNIQUE INDEX quantd_jobs_request ON quantd_jobs(request_id) WHERE request_id <> '';"
                            "CREATE TABLE quantd_job_events(job_id TEXT COLLATE \"C\" NOT NULL"
                            " REFERENCES quantd_jobs(id) ON DELETE CASCADE, seq BIGINT NOT NULL, proto BYTEA NOT NULL,"
                            " PRIMARY KEY(job_id, seq));");
  ASSERT_EQ(PQresultStatus(schema), PGRES_COMMAND_OK) << PQresultErrorMessage(schema);
  PQclear(schema);
  auto bytes = OldJob().SerializeAsString();
  const char* values[] = {bytes.data()};
  int lengths[] = {static_cast<int>(bytes.size())};
  int formats[] = {1};
  PGresult* insert = PQexecParams(conn,
                                  "INSERT INTO quantd_jobs(id, request_id, state, device, priority, created_ms, proto)"
                                  " VALUES('job-old', 'req-old', 3, 3, 0, 1000, $1)",
                                  1, nullptr, values, lengths, formats, 0);
  ASSERT_EQ(PQresultStatus(insert), PGRES_COMMAND_OK) << PQresultErrorMessage(insert);
  PQclear(insert);
  PQfinish(conn);
  ExpectOldJobBelongsToTheDefaultTenant(config);
}

TEST(PostgresJobStoreOpen, AnUnreachableServerIsAnErrorNotAHang) {
  ServerConfig config;
  config.job_store = JobStoreBackend::kPostgres;
  config.postgres_dsn = "host=127.0.0.1 port=1 dbname=none connect_timeout=5";
  auto opened = OpenJobStore(config);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().reason(), "STORE_UNAVAILABLE");
}

// Pooled connections die with a server restart or failover; the next
// calls reconnect instead of failing.
TEST(PostgresJobStoreOpen, AServerRestartCostsNoFailedCalls) {
  ServerConfig config;
  config.job_store = JobStoreBackend::kPostgres;
  config.postgres_dsn = quantd::testing::SharedPostgresServer().CreateDatabase("restart");
  config.postgres_connections = 3;
  auto store = OpenJobStore(config);
  ASSERT_TRUE(store.ok()) << store.status().message();
  v1::Job job;
  job.set_id(NewId("job-"));
  ASSERT_TRUE((*store)->CreateJob(job).ok());
  // Fill the pool with connections that will all be dead.
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) threads.emplace_back([&] { (void)(*store)->GetJob(job.id()); });
  for (auto& thread : threads) thread.join();
  quantd::testing::SharedPostgresServer().Restart();
  for (int i = 0; i < 5; ++i) {
    auto got = (*store)->GetJob(job.id());
    ASSERT_TRUE(got.ok()) << "call " << i << ": " << got.status().message();
    v1::JobEvent event;
    event.mutable_log()->set_text("after restart");
    auto appended = (*store)->AppendEvent(job.id(), event);
    ASSERT_TRUE(appended.ok()) << "call " << i << ": " << appended.status().message();
    EXPECT_EQ(appended->seq(), i + 2);
  }
}

TEST(PostgresJobStoreOpen, ReplicasStartingTogetherShareOneSchema) {
  ServerConfig config;
  config.job_store = JobStoreBackend::kPostgres;
  config.postgres_dsn = quantd::testing::SharedPostgresServer().CreateDatabase("schema_race");
  std::vector<std::thread> threads;
  std::atomic<int> opened{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      if (OpenJobStore(config).ok()) ++opened;
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(opened.load(), 4);
}
#else
INSTANTIATE_TEST_SUITE_P(Sqlite, JobStoreTest, ::testing::Values(Backend::kSqlite), BackendName);

// A data dir written before jobs had tenants opens with its jobs owned by
// the default tenant, and request ids become per tenant.
TEST(SqliteJobStoreMigration, JobsFromBeforeTenantsBelongToTheDefaultTenant) {
  auto dir = std::filesystem::temp_directory_path() / NewId("job-store-migration-");
  std::filesystem::create_directories(dir);
  auto old_job = OldJob();
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir / "quantd.db").c_str(), &db), SQLITE_OK);
    const char* schema =
        "CREATE TABLE jobs(id TEXT PRIMARY KEY, request_id TEXT NOT NULL DEFAULT '', state INTEGER NOT NULL,"
        " device INTEGER NOT NULL, priority INTEGER NOT NULL, created_ms INTEGER NOT NULL,"
        " lease_id TEXT NOT NULL DEFAULT '', lease_expires_ms INTEGER NOT NULL DEFAULT 0, proto BLOB NOT NULL);"
        "CREATE UNIQUE INDEX jobs_request ON jobs(request_id) WHERE request_id <> '';";
    ASSERT_EQ(sqlite3_exec(db, schema, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    sqlite3_stmt* insert = nullptr;
    sqlite3_prepare_v2(db,
                       "INSERT INTO jobs(id, request_id, state, device, priority, created_ms, proto)"
                       " VALUES('job-old', 'req-old', 3, 3, 0, 1000, ?)",
                       -1, &insert, nullptr);
    auto bytes = old_job.SerializeAsString();
    sqlite3_bind_blob(insert, 1, bytes.data(), static_cast<int>(bytes.size()), SQLITE_TRANSIENT);
    ASSERT_EQ(sqlite3_step(insert), SQLITE_DONE);
    sqlite3_finalize(insert);
    sqlite3_close(db);
  }
  ServerConfig config;
  config.data_dir = dir;
  ExpectOldJobBelongsToTheDefaultTenant(config);
  std::filesystem::remove_all(dir);
}

TEST(JobStoreFactoryTest, TheFactoryOpensSqliteInTheDataDir) {
  ServerConfig config;
  config.data_dir = std::filesystem::temp_directory_path() / NewId("job-store-factory-");
  std::filesystem::create_directories(config.data_dir);
  {
    auto store = OpenJobStore(config);
    ASSERT_TRUE(store.ok()) << store.status().message();
  }
  EXPECT_TRUE(std::filesystem::exists(config.data_dir / "quantd.db"));
  std::filesystem::remove_all(config.data_dir);
}
#endif

}  // namespace
}  // namespace quantd::server
