#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

namespace quantd::testing {

// A private PostgreSQL server from the Debian packages: initdb into a fresh
// temporary folder, a free loopback port, the unix socket inside that
// folder, durability off for speed. initdb refuses to run as root, so under
// root the server runs as the `postgres` system user, which then owns the
// folder. The server is stopped and the folder removed when the object is
// destroyed, and also when this process dies without destroying it (a
// watchdog process holds the other end of a pipe).
class PostgresServer {
 public:
  // Throws std::runtime_error, with the server's log, if it cannot start.
  PostgresServer();
  ~PostgresServer();
  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;

  int port() const { return port_; }
  const std::filesystem::path& socket_dir() const { return socket_dir_; }

  // Creates an empty database with a unique name built from `hint`
  // ([a-z0-9_]) and returns a libpq DSN for it.
  std::string CreateDatabase(const std::string& hint);
  std::string Dsn(const std::string& database) const;
  // Stops the server, dropping every connection, and starts it again on
  // the same port; throws if it does not come back.
  void Restart();
  // Runs one SQL statement and returns its rows as text; throws on error.
  std::vector<std::vector<std::string>> Query(const std::string& dsn, const std::string& sql) const;

 private:
  bool TryStart(std::string& log);
  void StartWatchdog();
  std::vector<std::string> AsServerUser(std::vector<std::string> argv) const;

  std::filesystem::path bin_dir_, root_, data_dir_, socket_dir_, log_file_;
  int port_ = 0;
  int watchdog_pipe_ = -1;
  pid_t watchdog_pid_ = -1;
  int databases_ = 0;
};

// One server per test process, started on first use and stopped at exit.
PostgresServer& SharedPostgresServer();

// Where initdb and pg_ctl live: $QUANTD_PG_BINDIR, else the newest
// /usr/lib/postgresql/<major>/bin. Empty when neither exists.
std::filesystem::path PostgresBinDir();

}  // namespace quantd::testing
