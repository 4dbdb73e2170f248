#include "tests/pg/postgres_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace quantd::testing {
namespace {

constexpr const char* kSuperuser = "quantd";

std::string ShellQuote(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

std::string ReadText(const std::filesystem::path& file) {
  std::ifstream in(file);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Runs argv (PATH lookup) with stdout and stderr appended to `log`;
// returns the exit status. posix_spawn, because the calling test may
// already run threads.
int Spawn(const std::vector<std::string>& argv, const std::filesystem::path& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> args;
  for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return 127;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int FreeLoopbackPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
    if (fd >= 0) ::close(fd);
    throw std::runtime_error("cannot find a free loopback port");
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

bool RunningAsRoot() { return ::geteuid() == 0; }

}  // namespace

std::filesystem::path PostgresBinDir() {
  if (const char* dir = std::getenv("QUANTD_PG_BINDIR"); dir && *dir) return dir;
  std::filesystem::path best;
  int best_major = -1;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/usr/lib/postgresql", ec)) {
    auto name = entry.path().filename().string();
    if (name.empty() || !std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
    int major = std::stoi(name);
    if (major > best_major && std::filesystem::exists(entry.path() / "bin" / "initdb")) {
      best_major = major;
      best = entry.path() / "bin";
    }
  }
  return best;
}

std::vector<std::string> PostgresServer::AsServerUser(std::vector<std::string> argv) const {
  if (!RunningAsRoot()) return argv;
  argv.insert(argv.begin(), {"runuser", "-u", "postgres", "--"});
  return argv;
}

PostgresServer::PostgresServer() {
  bin_dir_ = PostgresBinDir();
  if (bin_dir_.empty()) {
    throw std::runtime_error(
        "PostgreSQL server binaries not found (Debian package postgresql; or set QUANTD_PG_BINDIR)");
  }
  std::string pattern = (std::filesystem::temp_directory_path() / "quantd-pg-XXXXXX").string();
  if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed for " + pattern);
  root_ = pattern;
  data_dir_ = root_ / "data";
  socket_dir_ = root_ / "sock";
  log_file_ = root_ / "server.log";
  std::filesystem::create_directories(socket_dir_);
  if (RunningAsRoot()) {
    passwd* user = ::getpwnam("postgres");
    if (!user) {
      std::filesystem::remove_all(root_);
      throw std::runtime_error("running as root, and there is no 'postgres' user to run the server as");
    }
    for (const auto& path : {root_, socket_dir_}) {
      if (::chown(path.c_str(), user->pw_uid, user->pw_gid) != 0) {
        std::filesystem::remove_all(root_);
        throw std::runtime_error("cannot chown " + path.string() + " to postgres");
      }
    }
  }
  // From here on the watchdog owns the cleanup, whatever happens to us.
  StartWatchdog();
  auto setup_log = root_ / "initdb.log";
  int rc = Spawn(AsServerUser({(bin_dir_ / "initdb").string(), "-D", data_dir_.string(), "-U", kSuperuser, "-A",
                               "trust", "-E", "UTF8", "--locale=C", "--no-sync"}),
                 setup_log);
  if (rc != 0) {
    std::string log = ReadText(setup_log);
    ::close(watchdog_pipe_);
    ::waitpid(watchdog_pid_, nullptr, 0);
    throw std::runtime_error("initdb failed (" + std::to_string(rc) + "): " + log);
  }
  std::string log;
  for (int attempt = 0; attempt < 5; ++attempt) {
    if (TryStart(log)) return;
  }
  ::close(watchdog_pipe_);
  ::waitpid(watchdog_pid_, nullptr, 0);
  throw std::runtime_error("PostgreSQL did not start: " + log);
}

bool PostgresServer::TryStart(std::string& log) {
  // The port is free now; another process may take it before the server
  // binds it, in which case the caller tries another.
  port_ = FreeLoopbackPort();
  std::string options = "-p " + std::to_string(port_) + " -k " + socket_dir_.string() +
                        " -h 127.0.0.1 -F -c max_connections=300 -c synchronous_commit=off"
                        " -c full_page_writes=off";
  int rc = Spawn(AsServerUser({(bin_dir_ / "pg_ctl").string(), "-D", data_dir_.string(), "-l", log_file_.string(),
                               "-w", "-t", "60", "-o", options, "start"}),
                 root_ / "pg_ctl.log");
  if (rc == 0) return true;
  log = ReadText(root_ / "pg_ctl.log") + ReadText(log_file_);
  // A half-started server would keep the data folder locked.
  Spawn(AsServerUser({(bin_dir_ / "pg_ctl").string(), "-D", data_dir_.string(), "-m", "immediate", "stop"}),
        root_ / "pg_ctl.log");
  return false;
}

void PostgresServer::Restart() {
  // Without -o, pg_ctl restarts with the options of the last start.
  int rc = Spawn(AsServerUser({(bin_dir_ / "pg_ctl").string(), "-D", data_dir_.string(), "-l", log_file_.string(),
                               "-m", "fast", "-w", "-t", "60", "restart"}),
                 root_ / "pg_ctl.log");
  if (rc != 0) throw std::runtime_error("PostgreSQL did not restart: " + ReadText(root_ / "pg_ctl.log"));
}

void PostgresServer::StartWatchdog() {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  std::string stop;
  for (const auto& arg :
       AsServerUser({(bin_dir_ / "pg_ctl").string(), "-D", data_dir_.string(), "-m", "immediate", "-w", "stop"})) {
    stop += ShellQuote(arg) + " ";
  }
  // `cat` returns when every copy of the write end is closed: on
  // destruction, or when this process dies in any way.
  // A server that was still starting when we died may recreate its log
  // after the first removal, hence the retries.
  std::string script = "cat >/dev/null; for attempt in 1 2 3 4 5 6 7 8 9 10; do if [ -f " +
                       ShellQuote((data_dir_ / "postmaster.pid").string()) + " ]; then " + stop + "; fi; rm -rf " +
                       ShellQuote(root_.string()) + "; [ -e " + ShellQuote(root_.string()) +
                       " ] || break; sleep 1; done";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[0], 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  // Its own session: a signal to our process group must not take it along.
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSID);
  const char* argv[] = {"/bin/sh", "-c", script.c_str(), nullptr};
  int rc = posix_spawn(&watchdog_pid_, "/bin/sh", &actions, &attributes, const_cast<char* const*>(argv), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  ::close(fds[0]);
  if (rc != 0) {
    ::close(fds[1]);
    std::filesystem::remove_all(root_);
    throw std::runtime_error("cannot start the PostgreSQL watchdog");
  }
  watchdog_pipe_ = fds[1];
}

PostgresServer::~PostgresServer() {
  if (watchdog_pipe_ >= 0) ::close(watchdog_pipe_);
  if (watchdog_pid_ > 0) {
    while (::waitpid(watchdog_pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
}

std::string PostgresServer::Dsn(const std::string& database) const {
  return "host=127.0.0.1 port=" + std::to_string(port_) + " user=" + kSuperuser + " dbname=" + database +
         " connect_timeout=10";
}

std::string PostgresServer::CreateDatabase(const std::string& hint) {
  std::string name;
  for (char c : hint) {
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_') name += c;
  }
  if (name.empty() || (name[0] >= '0' && name[0] <= '9')) name = "db_" + name;
  name = name.substr(0, 40) + "_" + std::to_string(++databases_);
  Query(Dsn("postgres"), "CREATE DATABASE " + name);
  return Dsn(name);
}

std::vector<std::vector<std::string>> PostgresServer::Query(const std::string& dsn, const std::string& sql) const {
  std::unique_ptr<PGconn, decltype(&PQfinish)> conn(PQconnectdb(dsn.c_str()), &PQfinish);
  if (!conn || PQstatus(conn.get()) != CONNECTION_OK) {
    throw std::runtime_error("cannot connect to " + dsn + ": " + (conn ? PQerrorMessage(conn.get()) : "no memory"));
  }
  std::unique_ptr<PGresult, decltype(&PQclear)> result(PQexec(conn.get(), sql.c_str()), &PQclear);
  auto status = result ? PQresultStatus(result.get()) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    throw std::runtime_error("'" + sql + "' failed: " + PQerrorMessage(conn.get()));
  }
  std::vector<std::vector<std::string>> rows;
  for (int row = 0; row < PQntuples(result.get()); ++row) {
    std::vector<std::string> values;
    for (int column = 0; column < PQnfields(result.get()); ++column) {
      values.emplace_back(PQgetvalue(result.get(), row, column));
    }
    rows.push_back(std::move(values));
  }
  return rows;
}

PostgresServer& SharedPostgresServer() {
  static PostgresServer server;
  return server;
}

}  // namespace quantd::testing
