#pragma once

#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace quantd::deploy_test {

std::filesystem::path SourceDir();
std::filesystem::path BinDir();
std::string ReadText(const std::filesystem::path& file);

struct CommandOutput {
  int exit_code = -1;
  std::string out;  // stdout and stderr together
};
// Runs argv (PATH lookup), no shell.
CommandOutput Capture(const std::vector<std::string>& argv);

std::vector<std::string> SplitWords(const std::string& text);

// Dockerfile instructions with line continuations joined and comments
// dropped, grouped by stage.
struct DockerInstruction {
  std::string keyword;  // upper case
  std::string args;
};
struct DockerStage {
  std::string base;  // FROM image
  std::string name;  // AS name, may be empty
  std::vector<DockerInstruction> instructions;
};
std::vector<DockerStage> ParseDockerfile(const std::string& text);
std::vector<DockerStage> ProjectDockerfile();  // deploy/docker/Dockerfile

// What a binary's --help says it accepts. For quantctl the flags come per
// subcommand; "" holds the flags accepted before the subcommand.
struct FlagSpec {
  bool takes_value = false;
  std::set<std::string> choices;  // from a "a|b|c" placeholder; empty: any value
};
struct CommandSpec {
  std::map<std::string, FlagSpec> flags;
  bool takes_positional = false;
};
struct BinarySpec {
  std::map<std::string, CommandSpec> commands;  // "" only, for binaries without subcommands
};
BinarySpec ParseHelp(const std::string& binary, const std::string& help);
// Empty when argv fits the spec, else what is wrong.
std::string CheckArguments(const BinarySpec& spec, const std::vector<std::string>& argv);

// The project version from the top-level CMakeLists.txt (project(... VERSION x)).
std::string ProjectVersion();

}  // namespace quantd::deploy_test
