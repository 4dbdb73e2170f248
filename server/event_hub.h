#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace quantd::server {

// Wakes watchers and long-polling workers when anything in the store
// changed. Waiters re-read the store, so a coarse version counter suffices.
class EventHub {
 public:
  uint64_t version() {
    std::lock_guard lock(mutex_);
    return version_;
  }
  void Notify() {
    {
      std::lock_guard lock(mutex_);
      ++version_;
    }
    cv_.notify_all();
  }
  // Returns when the version moved past `seen`, on timeout, or on Close().
  void WaitPast(uint64_t seen, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, timeout, [&] { return version_ != seen || closed_; });
  }
  void Close() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
    }
    cv_.notify_all();
  }
  bool closed() {
    std::lock_guard lock(mutex_);
    return closed_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  uint64_t version_ = 0;
  bool closed_ = false;
};

}  // namespace quantd::server
