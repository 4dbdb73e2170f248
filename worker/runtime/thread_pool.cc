#include "worker/runtime/thread_pool.h"

#include <algorithm>
#include <atomic>

namespace quantd::runtime {

namespace {

thread_local bool in_pool_worker = false;

class InlinePool final : public ThreadPool {
 public:
  int num_threads() const override { return 1; }
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) override {
    if (n > 0) fn(0, n);
  }
};

}  // namespace

struct FixedThreadPool::Job {
  const std::function<void(int64_t, int64_t)>* fn;
  int64_t n;
  int64_t chunk;
  int64_t num_chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable finished;
};

FixedThreadPool::FixedThreadPool(int num_threads) {
  if (num_threads < 1) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  num_threads_ = num_threads;
  workers_.reserve(static_cast<size_t>(num_threads - 1));
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

FixedThreadPool::~FixedThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

// Claims and runs chunks until none are left; true if this thread ran the
// job's last chunk.
bool FixedThreadPool::RunChunks(Job& job) {
  bool finished_last = false;
  for (;;) {
    int64_t c = job.next.fetch_add(1, std::memory_order_relaxed);
    if (c >= job.num_chunks) break;
    int64_t begin = c * job.chunk;
    int64_t end = std::min(job.n, begin + job.chunk);
    (*job.fn)(begin, end);
    if (job.done.fetch_add(1, std::memory_order_acq_rel) + 1 == job.num_chunks) finished_last = true;
  }
  return finished_last;
}

void FixedThreadPool::WorkerLoop() {
  in_pool_worker = true;
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_ && queue_.empty()) return;
      job = queue_.front();
      // Once every chunk is claimed nobody needs to find this job again.
      if (job->next.load(std::memory_order_relaxed) >= job->num_chunks) {
        queue_.pop_front();
        continue;
      }
    }
    if (RunChunks(*job)) {
      std::lock_guard<std::mutex> lock(job->mutex);
      job->finished.notify_all();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (!queue_.empty() && queue_.front() == job) queue_.pop_front();
  }
}

void FixedThreadPool::ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t max_chunks = (n + grain - 1) / grain;
  int64_t num_chunks = std::min<int64_t>(max_chunks, static_cast<int64_t>(num_threads_) * 4);
  if (num_threads_ == 1 || num_chunks <= 1 || in_pool_worker) {
    fn(0, n);
    return;
  }
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->n = n;
  job->chunk = (n + num_chunks - 1) / num_chunks;
  job->num_chunks = (n + job->chunk - 1) / job->chunk;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(job);
  }
  if (job->num_chunks - 1 >= static_cast<int64_t>(workers_.size())) {
    wake_.notify_all();
  } else {
    for (int64_t i = 0; i + 1 < job->num_chunks; ++i) wake_.notify_one();
  }
  RunChunks(*job);
  {
    std::unique_lock<std::mutex> lock(job->mutex);
    job->finished.wait(lock, [&] { return job->done.load(std::memory_order_acquire) == job->num_chunks; });
  }
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = std::find(queue_.begin(), queue_.end(), job);
  if (it != queue_.end()) queue_.erase(it);
}

ThreadPool& InlineThreadPool() {
  static InlinePool pool;
  return pool;
}

}  // namespace quantd::runtime
