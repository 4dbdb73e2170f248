#include "server/job_store.h"

#include <gtest/gtest.h>

#include <thread>

#include "common/ids.h"

namespace quantd::server {
namespace {

class JobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / NewId("job-store-test-");
    std::filesystem::create_directories(dir_);
    Reopen();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Reopen() {
    store_.reset();
    auto opened = JobStore::Open(dir_ / "quantd.db");
    ASSERT_TRUE(opened.ok()) << opened.status().message();
    store_ = std::move(*opened);
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
    return created->first;
  }

  std::filesystem::path dir_;
  std::unique_ptr<JobStore> store_;
};

TEST_F(JobStoreTest, SameRequestIdReturnsTheExistingJob) {
  auto first = store_->CreateJob(NewJob("req-1", 0, v1::DEVICE_CLASS_ANY, 1000));
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->second);
  auto second = store_->CreateJob(NewJob("req-1", 5, v1::DEVICE_CLASS_CPU, 2000));
  ASSERT_TRUE(second.ok());
  EXPECT_TRUE(second->second);
  EXPECT_EQ(second->first.id(), first->first.id());
  auto other = store_->CreateJob(NewJob("req-2", 0, v1::DEVICE_CLASS_ANY, 3000));
  EXPECT_NE(other->first.id(), first->first.id());
}

TEST_F(JobStoreTest, LeaseOrderIsPriorityThenAgeAndRespectsDeviceClass) {
  auto old_low = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  auto new_high = Create(NewJob("", 9, v1::DEVICE_CLASS_ANY, 3000));
  auto old_high = Create(NewJob("", 9, v1::DEVICE_CLASS_ANY, 2000));
  auto gpu_only = Create(NewJob("", 100, v1::DEVICE_CLASS_GPU, 500));
  std::vector<std::string> order;
  for (int i = 0; i < 3; ++i) {
    auto leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 10000);
    ASSERT_TRUE(leased.ok());
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
}

TEST_F(JobStoreTest, EventsHaveDenseSequenceNumbersAndSurviveReopen) {
  auto job = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  for (int i = 0; i < 5; ++i) {
    v1::JobEvent event;
    event.mutable_log()->set_text("line " + std::to_string(i));
    ASSERT_TRUE(store_->AppendEvent(job.id(), event).ok());
  }
  Reopen();
  auto events = store_->EventsAfter(job.id(), 0, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 6u);  // queued state + 5 logs
  for (size_t i = 0; i < events->size(); ++i) EXPECT_EQ((*events)[i].seq(), static_cast<int64_t>(i + 1));
  auto tail = store_->EventsAfter(job.id(), 4, 100);
  ASSERT_EQ(tail->size(), 2u);
  EXPECT_EQ((*tail)[0].log().text(), "line 3");
}

TEST_F(JobStoreTest, ExpiredLeaseRequeuesThenFailsAfterMaxAttempts) {
  auto job = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  for (int attempt = 1; attempt <= 2; ++attempt) {
    auto leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 1);
    ASSERT_TRUE(leased->has_value());
    EXPECT_EQ((*leased)->job.attempts(), attempt);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    auto expired = store_->ExpireLeases(2);
    ASSERT_TRUE(expired.ok());
    ASSERT_EQ(expired->size(), 1u);
    EXPECT_EQ((*expired)[0].new_state, attempt < 2 ? v1::JOB_STATE_QUEUED : v1::JOB_STATE_FAILED);
  }
  auto final_job = store_->GetJob(job.id());
  EXPECT_EQ(final_job->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(final_job->failure_reason(), "WORKER_LOST");
}

TEST_F(JobStoreTest, StaleLeaseCannotCompleteAJob) {
  auto job = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  auto first = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w1", 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(store_->ExpireLeases(3).ok());
  auto second = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w2", 10000);
  ASSERT_TRUE(second->has_value());
  auto stale = store_->Complete(job.id(), (*first)->lease_id);
  EXPECT_EQ(stale.status().reason(), "LEASE_LOST");
  auto fresh = store_->Complete(job.id(), (*second)->lease_id);
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(fresh->state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(JobStoreTest, CancelQueuedEndsAtOnceCancelRunningWaitsForWorker) {
  auto queued = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  auto running = Create(NewJob("", 5, v1::DEVICE_CLASS_ANY, 1000));
  auto leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 10000);
  ASSERT_EQ((*leased)->job.id(), running.id());
  EXPECT_EQ(store_->RequestCancel(queued.id())->state(), v1::JOB_STATE_CANCELLED);
  auto flagged = store_->RequestCancel(running.id());
  EXPECT_EQ(flagged->state(), v1::JOB_STATE_RUNNING);
  EXPECT_TRUE(flagged->cancel_requested());
  auto ended = store_->Fail(running.id(), (*leased)->lease_id, "CANCELLED", "stopped", true, 3);
  EXPECT_EQ(ended->state(), v1::JOB_STATE_CANCELLED) << "a cancelled job must not be retried";
}

TEST_F(JobStoreTest, NonRetryableFailureIsFinalRetryableIsRequeued) {
  auto job = Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000));
  auto leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 10000);
  auto requeued = store_->Fail(job.id(), (*leased)->lease_id, "IO_ERROR", "disk", true, 3);
  EXPECT_EQ(requeued->state(), v1::JOB_STATE_QUEUED);
  leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 10000);
  auto failed = store_->Fail(job.id(), (*leased)->lease_id, "MODEL_INVALID", "garbage", false, 3);
  EXPECT_EQ(failed->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed->failure_reason(), "MODEL_INVALID");
  EXPECT_EQ(failed->attempts(), 2);
}

TEST_F(JobStoreTest, ListPagesThroughEveryJobOnceAndFiltersByState) {
  std::set<std::string> ids;
  for (int i = 0; i < 7; ++i) ids.insert(Create(NewJob("", 0, v1::DEVICE_CLASS_ANY, 1000 + i % 3)).id());
  std::set<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    auto page = store_->ListJobs({}, 3, token);
    ASSERT_TRUE(page.ok());
    for (const auto& job : page->jobs) EXPECT_TRUE(seen.insert(job.id()).second) << "listed twice: " << job.id();
    token = page->next_page_token;
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(seen, ids);
  EXPECT_EQ(pages, 3);
  auto leased = store_->LeaseNext(v1::DEVICE_CLASS_CPU, "w", 10000);
  auto running = store_->ListJobs({v1::JOB_STATE_RUNNING}, 50, "");
  ASSERT_EQ(running->jobs.size(), 1u);
  EXPECT_EQ(running->jobs[0].id(), (*leased)->job.id());
  EXPECT_EQ(store_->ListJobs({}, 10, "garbage").status().reason(), "BAD_PAGE_TOKEN");
}

}  // namespace
}  // namespace quantd::server
