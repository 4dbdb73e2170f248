// Fixed-size pool behind ThreadPool::ParallelFor. Several threads may call
// ParallelFor at once (concurrent Executor::Run calls share one pool); each
// call's chunks are shared between its caller and idle workers. A
// ParallelFor issued from inside a worker runs inline, so nested parallel
// loops cannot deadlock.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "worker/runtime/kernel.h"

namespace quantd::runtime {

class FixedThreadPool final : public ThreadPool {
 public:
  // num_threads counts the calling thread: 1 starts no workers. Values
  // below 1 mean one thread per hardware core.
  explicit FixedThreadPool(int num_threads);
  ~FixedThreadPool() override;
  FixedThreadPool(const FixedThreadPool&) = delete;
  FixedThreadPool& operator=(const FixedThreadPool&) = delete;

  int num_threads() const override { return num_threads_; }
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) override;

 private:
  struct Job;
  void WorkerLoop();
  static bool RunChunks(Job& job);

  int num_threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stopping_ = false;
};

// A pool that always runs inline; for kernels evaluated at model load.
ThreadPool& InlineThreadPool();

}  // namespace quantd::runtime
