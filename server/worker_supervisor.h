#pragma once

#include <sys/types.h>

// clang-format off
#include <utility>  // Boost 1.74 asio uses std::exchange without including it
#include <boost/asio.hpp>
// clang-format on
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace quantd::server {

// Spawns the local quantd-worker processes and restarts any that exits
// while the server runs. Driven by the server's io_context: SIGCHLD tells
// it a child ended, a timer spaces restarts so a crashing binary cannot
// spin the machine.
class WorkerSupervisor {
 public:
  WorkerSupervisor(boost::asio::io_context& io, std::filesystem::path worker_binary, std::string server_address,
                   int count, std::vector<std::string> extra_args, std::vector<std::string> extra_env = {});
  void Start();
  // Sends SIGTERM to every child and waits up to `grace` for them to exit,
  // then SIGKILLs what is left.
  void Stop(std::chrono::milliseconds grace);
  std::vector<pid_t> pids() const;

 private:
  void Spawn(int slot);
  void WaitForChildren();
  void Reap();

  boost::asio::io_context& io_;
  std::filesystem::path worker_binary_;
  std::string server_address_;
  int count_;
  std::vector<std::string> extra_args_;
  // NAME=VALUE entries added to the workers' environment: secrets go here,
  // since every user can read a process's arguments.
  std::vector<std::string> extra_env_;
  boost::asio::signal_set child_signals_;
  std::map<pid_t, int> slot_by_pid_;
  bool stopping_ = false;
};

}  // namespace quantd::server
