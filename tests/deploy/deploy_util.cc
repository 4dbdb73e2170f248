#include "tests/deploy/deploy_util.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace quantd::deploy_test {

std::filesystem::path SourceDir() { return QUANTD_SOURCE_DIR; }
std::filesystem::path BinDir() { return QUANTD_BIN_DIR; }

std::string ReadText(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw std::runtime_error("cannot read " + file.string());
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

CommandOutput Capture(const std::vector<std::string>& argv) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 2);
  std::vector<char*> args;
  for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  CommandOutput output;
  if (rc != 0) {
    ::close(fds[0]);
    output.exit_code = 127;
    output.out = "cannot run " + argv[0];
    return output;
  }
  char buffer[65536];
  ssize_t n;
  while ((n = ::read(fds[0], buffer, sizeof(buffer))) != 0) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    output.out.append(buffer, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  output.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return output;
}

std::vector<std::string> SplitWords(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  std::string word;
  while (in >> word) words.push_back(word);
  return words;
}

std::vector<DockerStage> ParseDockerfile(const std::string& text) {
  std::vector<DockerStage> stages;
  std::istringstream in(text);
  std::string line, logical;
  auto flush = [&] {
    auto start = logical.find_first_not_of(" \t");
    if (start == std::string::npos) {
      logical.clear();
      return;
    }
    logical = logical.substr(start);
    auto space = logical.find_first_of(" \t");
    DockerInstruction instruction;
    instruction.keyword = logical.substr(0, space);
    for (auto& c : instruction.keyword) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    instruction.args = space == std::string::npos ? "" : logical.substr(logical.find_first_not_of(" \t", space));
    logical.clear();
    if (instruction.keyword == "FROM") {
      auto words = SplitWords(instruction.args);
      DockerStage stage;
      for (size_t i = 0; i < words.size(); ++i) {
        if (words[i].rfind("--", 0) == 0) continue;
        if (stage.base.empty()) {
          stage.base = words[i];
        } else if ((words[i] == "AS" || words[i] == "as") && i + 1 < words.size()) {
          stage.name = words[++i];
        }
      }
      stages.push_back(std::move(stage));
      return;
    }
    if (stages.empty()) return;  // ARG before FROM, parser directives
    stages.back().instructions.push_back(std::move(instruction));
  };
  while (std::getline(in, line)) {
    auto first = line.find_first_not_of(" \t");
    // Comment lines are dropped, also in the middle of a continued instruction.
    if (first != std::string::npos && line[first] == '#') continue;
    auto last = line.find_last_not_of(" \t\r");
    if (last != std::string::npos && line[last] == '\\') {
      logical += line.substr(0, last) + " ";
      continue;
    }
    logical += line;
    flush();
  }
  flush();
  return stages;
}

std::vector<DockerStage> ProjectDockerfile() {
  return ParseDockerfile(ReadText(SourceDir() / "deploy" / "docker" / "Dockerfile"));
}

namespace {

std::string Strip(std::string token, const std::string& chars) {
  while (!token.empty() && chars.find(token.front()) != std::string::npos) token.erase(0, 1);
  while (!token.empty() && chars.find(token.back()) != std::string::npos) token.pop_back();
  return token;
}

bool IsPlaceholder(const std::string& token) {
  if (token.empty() || token.rfind("--", 0) == 0 || token == "...") return false;
  return true;
}

// The part of a help line before its description, which starts after a run
// of two or more spaces.
std::string Synopsis(const std::string& line) {
  auto start = line.find_first_not_of(' ');
  if (start == std::string::npos) return "";
  auto gap = line.find("  ", start);
  return line.substr(start, gap == std::string::npos ? std::string::npos : gap - start);
}

// Reads "--flag VALUE", "[--flag]", "[--flag V ...]", "JOB" tokens.
void ReadSynopsis(const std::vector<std::string>& words, size_t from, CommandSpec& spec) {
  for (size_t i = from; i < words.size(); ++i) {
    std::string word = words[i];
    bool closes = !word.empty() && word.back() == ']';
    std::string bare = Strip(word, "[]");
    if (bare.rfind("--", 0) == 0) {
      FlagSpec flag;
      if (!closes && i + 1 < words.size() && IsPlaceholder(Strip(words[i + 1], "[]")) &&
          words[i + 1].front() != '[') {
        std::string placeholder = Strip(words[++i], "[]");
        flag.takes_value = true;
        if (placeholder.find('|') != std::string::npos) {
          std::stringstream alternatives(placeholder);
          std::string choice;
          while (std::getline(alternatives, choice, '|')) flag.choices.insert(choice);
        }
      }
      spec.flags[bare] = flag;
    } else if (!bare.empty() && bare != "..." && bare != "flags" && bare != "COMMAND" &&
               std::all_of(bare.begin(), bare.end(), [](char c) { return std::isupper(static_cast<unsigned char>(c)) || c == '_'; })) {
      spec.takes_positional = true;
    }
  }
}

}  // namespace

BinarySpec ParseHelp(const std::string& binary, const std::string& help) {
  BinarySpec spec;
  spec.commands[""];
  std::istringstream in(help);
  std::string line;
  bool in_commands = false;
  std::string current;
  while (std::getline(in, line)) {
    if (line.rfind("usage:", 0) == 0) {
      auto words = SplitWords(line);
      // usage: NAME [--global ...] COMMAND [flags]
      size_t from = 2;
      std::vector<std::string> before_command;
      for (size_t i = from; i < words.size() && words[i] != "COMMAND"; ++i) before_command.push_back(words[i]);
      CommandSpec global;
      ReadSynopsis(before_command, 0, global);
      for (auto& [name, flag] : global.flags) spec.commands[""].flags[name] = flag;
      continue;
    }
    if (line == "commands:") {
      in_commands = true;
      continue;
    }
    if (line.empty()) {
      in_commands = false;
      continue;
    }
    auto indent = line.find_first_not_of(' ');
    if (indent == std::string::npos) continue;
    if (in_commands) {
      auto words = SplitWords(Synopsis(line));
      if (words.empty()) continue;
      if (indent == 2 && std::islower(static_cast<unsigned char>(words[0][0]))) {
        current = words[0];
        ReadSynopsis(words, 1, spec.commands[current]);
      } else if (!current.empty() && (words[0][0] == '[' || words[0].rfind("--", 0) == 0)) {
        ReadSynopsis(words, 0, spec.commands[current]);
      }
      continue;
    }
    // Option lines are indented; a footnote at column 0 that starts with a
    // flag name is prose.
    if (indent > 0 && line.compare(indent, 2, "--") == 0) {
      auto words = SplitWords(Synopsis(line));
      ReadSynopsis(words, 0, spec.commands[""]);
    }
  }
  if (spec.commands.size() == 1 && spec.commands[""].flags.empty()) {
    throw std::runtime_error(binary + " --help lists no flags");
  }
  return spec;
}

namespace {

// Consumes argv[i] (a flag) and its value; returns an error or "".
std::string TakeFlag(const std::map<std::string, FlagSpec>& flags, const std::vector<std::string>& argv, size_t& i,
                     const std::string& where) {
  std::string token = argv[i];
  std::string name = token, value;
  bool inline_value = false;
  if (auto eq = token.find('='); eq != std::string::npos) {
    name = token.substr(0, eq);
    value = token.substr(eq + 1);
    inline_value = true;
  }
  auto found = flags.find(name);
  if (found == flags.end()) return "unknown flag " + name + where;
  if (!found->second.takes_value) {
    if (inline_value) return name + " takes no value" + where;
    return "";
  }
  if (!inline_value) {
    if (i + 1 >= argv.size() || argv[i + 1].rfind("--", 0) == 0) return name + " needs a value" + where;
    value = argv[++i];
  }
  const auto& choices = found->second.choices;
  if (!choices.empty() && !choices.count(value)) return name + " does not accept '" + value + "'" + where;
  return "";
}

}  // namespace

std::string CheckArguments(const BinarySpec& spec, const std::vector<std::string>& argv) {
  const auto& global = spec.commands.at("");
  size_t i = 0;
  if (spec.commands.size() == 1) {
    for (; i < argv.size(); ++i) {
      if (argv[i].rfind("--", 0) != 0) return "unexpected argument '" + argv[i] + "'";
      if (auto error = TakeFlag(global.flags, argv, i, ""); !error.empty()) return error;
    }
    return "";
  }
  for (; i < argv.size() && argv[i].rfind("--", 0) == 0; ++i) {
    if (auto error = TakeFlag(global.flags, argv, i, " before the command"); !error.empty()) return error;
  }
  if (i >= argv.size()) return "no command";
  auto command = spec.commands.find(argv[i]);
  if (argv[i].empty() || command == spec.commands.end()) return "unknown command '" + argv[i] + "'";
  std::string where = " for " + argv[i];
  int positionals = 0;
  for (++i; i < argv.size(); ++i) {
    if (argv[i].rfind("--", 0) == 0) {
      if (auto error = TakeFlag(command->second.flags, argv, i, where); !error.empty()) return error;
    } else if (!command->second.takes_positional || ++positionals > 1) {
      return "unexpected argument '" + argv[i] + "'" + where;
    }
  }
  return "";
}

std::string ProjectVersion() {
  std::smatch match;
  std::string text = ReadText(SourceDir() / "CMakeLists.txt");
  if (!std::regex_search(text, match, std::regex(R"(project\s*\(\s*quantd\s+VERSION\s+([0-9.]+))"))) {
    throw std::runtime_error("no project(quantd VERSION ...) in CMakeLists.txt");
  }
  return match[1];
}

}  // namespace quantd::deploy_test
