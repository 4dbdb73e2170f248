#include "server/worker_supervisor.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "common/log.h"

namespace quantd::server {

WorkerSupervisor::WorkerSupervisor(boost::asio::io_context& io, std::filesystem::path worker_binary,
                                   std::string server_address, int count, std::vector<std::string> extra_args,
                                   std::vector<std::string> extra_env)
    : io_(io),
      worker_binary_(std::move(worker_binary)),
      server_address_(std::move(server_address)),
      count_(count),
      extra_args_(std::move(extra_args)),
      extra_env_(std::move(extra_env)),
      child_signals_(io, SIGCHLD) {}

void WorkerSupervisor::Start() {
  WaitForChildren();
  for (int slot = 0; slot < count_; ++slot) Spawn(slot);
}

void WorkerSupervisor::Spawn(int slot) {
  std::vector<std::string> args = {worker_binary_.string(),
                                   "--server",
                                   server_address_,
                                   "--device",
                                   "cpu",
                                   "--worker-id",
                                   "local-" + std::to_string(slot) + "-" + std::to_string(::getpid())};
  args.insert(args.end(), extra_args_.begin(), extra_args_.end());
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  // Built before fork: the child of a threaded parent may only make
  // async-signal-safe calls until it execs.
  std::vector<std::string> env;
  for (char** entry = environ; *entry; ++entry) {
    std::string_view text(*entry);
    bool replaced = false;
    for (const auto& extra : extra_env_) {
      replaced = replaced || text.substr(0, text.find('=') + 1) == extra.substr(0, extra.find('=') + 1);
    }
    if (!replaced) env.emplace_back(text);
  }
  env.insert(env.end(), extra_env_.begin(), extra_env_.end());
  std::vector<char*> envp;
  for (auto& entry : env) envp.push_back(entry.data());
  envp.push_back(nullptr);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    LogError("cannot fork a local worker");
    return;
  }
  if (pid == 0) {
    // A worker must not outlive its server, even if the server is SIGKILLed.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(1);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  slot_by_pid_[pid] = slot;
  LogInfo("started local worker " + std::to_string(slot) + " (pid " + std::to_string(pid) + ")");
}

void WorkerSupervisor::WaitForChildren() {
  child_signals_.async_wait([this](const boost::system::error_code& error, int) {
    if (error) return;
    Reap();
    WaitForChildren();
  });
}

void WorkerSupervisor::Reap() {
  int status = 0;
  pid_t pid;
  while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
    auto it = slot_by_pid_.find(pid);
    if (it == slot_by_pid_.end()) continue;
    int slot = it->second;
    slot_by_pid_.erase(it);
    if (stopping_) continue;
    std::string how = WIFSIGNALED(status) ? "signal " + std::to_string(WTERMSIG(status))
                                          : "exit code " + std::to_string(WEXITSTATUS(status));
    LogWarning("local worker " + std::to_string(slot) + " (pid " + std::to_string(pid) + ") ended with " + how +
               "; restarting in 1 s");
    auto timer = std::make_shared<boost::asio::steady_timer>(io_, std::chrono::seconds(1));
    timer->async_wait([this, slot, timer](const boost::system::error_code& error) {
      if (!error && !stopping_) Spawn(slot);
    });
  }
}

void WorkerSupervisor::Stop(std::chrono::milliseconds grace) {
  stopping_ = true;
  for (const auto& [pid, slot] : slot_by_pid_) ::kill(pid, SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (!slot_by_pid_.empty() && std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      slot_by_pid_.erase(pid);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  for (const auto& [pid, slot] : slot_by_pid_) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  slot_by_pid_.clear();
}

std::vector<pid_t> WorkerSupervisor::pids() const {
  std::vector<pid_t> pids;
  for (const auto& [pid, slot] : slot_by_pid_) pids.push_back(pid);
  return pids;
}

}  // namespace quantd::server
