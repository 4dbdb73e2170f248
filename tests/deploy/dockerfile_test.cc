// deploy/docker/Dockerfile, checked without a container engine: its runtime
// package list against what the built binaries really load, and its stages
// against the project's build.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "tests/deploy/deploy_util.h"

namespace quantd::deploy_test {
namespace {

const std::vector<std::string> kBinaries = {"quantd", "quantd-worker", "quantctl"};

std::string Join(const std::set<std::string>& items) {
  std::string text;
  for (const auto& item : items) text += (text.empty() ? "" : " ") + item;
  return text;
}

// The packages `apt-get install` names in the runtime (last) stage.
std::vector<std::string> RuntimePackages(const DockerStage& stage) {
  std::vector<std::string> packages;
  for (const auto& instruction : stage.instructions) {
    if (instruction.keyword != "RUN") continue;
    auto words = SplitWords(instruction.args);
    for (size_t i = 0; i + 1 < words.size(); ++i) {
      if (words[i] != "apt-get" || words[i + 1] != "install") continue;
      for (size_t j = i + 2; j < words.size(); ++j) {
        const auto& word = words[j];
        if (word == "&&" || word == ";" || word == "||" || word == "|") break;
        if (word.rfind("-", 0) == 0) continue;
        packages.push_back(word);
      }
    }
  }
  return packages;
}

// Absolute paths of every shared object the binary loads, as ldd reports
// them (the whole closure, not only direct dependencies).
std::set<std::string> LinkedLibraries(const std::filesystem::path& binary, std::vector<std::string>& missing) {
  auto ldd = Capture({"ldd", binary.string()});
  EXPECT_EQ(ldd.exit_code, 0) << ldd.out;
  std::set<std::string> paths;
  std::istringstream lines(ldd.out);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.find("not found") != std::string::npos) missing.push_back(line);
    auto words = SplitWords(line);
    for (size_t i = 0; i < words.size(); ++i) {
      if (words[i] == "=>" && i + 1 < words.size() && words[i + 1].front() == '/') paths.insert(words[i + 1]);
    }
    if (!words.empty() && words[0].front() == '/') paths.insert(words[0]);  // the dynamic loader
  }
  return paths;
}

// The spellings under which dpkg may have registered a loaded file: with
// merged /usr the same file is reachable as /lib/... and /usr/lib/..., and
// ldd may report a symlink's name or its target.
std::vector<std::string> Spellings(const std::string& path) {
  std::vector<std::string> spellings = {path};
  std::error_code ec;
  auto canonical = std::filesystem::canonical(path, ec).string();
  if (!ec && canonical != path) spellings.push_back(canonical);
  for (const auto& spelling : std::vector<std::string>(spellings)) {
    spellings.push_back(spelling.rfind("/usr/", 0) == 0 ? spelling.substr(4) : "/usr" + spelling);
  }
  return spellings;
}

// Library path -> owning package, with one dpkg -S for all of them (it
// reads its whole file database per call).
std::map<std::string, std::string> OwningPackages(const std::set<std::string>& libraries) {
  std::vector<std::string> argv = {"dpkg", "-S"};
  for (const auto& library : libraries) {
    for (const auto& spelling : Spellings(library)) argv.push_back(spelling);
  }
  // Exits 1 when some spelling is unknown, which is expected.
  auto answer = Capture(argv);
  std::map<std::string, std::string> by_path;
  std::istringstream lines(answer.out);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("diversion", 0) == 0 || line.rfind("dpkg-query:", 0) == 0) continue;
    auto colon = line.find(": /");
    if (colon == std::string::npos) continue;
    auto packages = line.substr(0, colon);
    auto package = packages.substr(0, packages.find(','));
    by_path[line.substr(colon + 2)] = package.substr(0, package.find(':'));  // drop :amd64
  }
  std::map<std::string, std::string> owners;
  for (const auto& library : libraries) {
    for (const auto& spelling : Spellings(library)) {
      if (auto found = by_path.find(spelling); found != by_path.end()) {
        owners[library] = found->second;
        break;
      }
    }
  }
  return owners;
}

// debian:12-slim is debootstrap's minbase variant: every package of
// Priority required, apt, and what they depend on. Computed from this
// machine's dpkg database (a Debian 12 system has all of them installed).
std::set<std::string> SlimBasePackages() {
  auto query = Capture({"dpkg-query", "-W", "-f=${db:Status-Abbrev}\t${Package}\t${Priority}\t${Pre-Depends}, ${Depends}\n"});
  EXPECT_EQ(query.exit_code, 0) << query.out;
  std::map<std::string, std::pair<std::string, std::vector<std::string>>> installed;
  std::istringstream lines(query.out);
  std::string line;
  while (std::getline(lines, line)) {
    std::vector<std::string> fields;
    std::stringstream split(line);
    std::string field;
    while (std::getline(split, field, '\t')) fields.push_back(field);
    if (fields.size() < 4 || fields[0].rfind("ii", 0) != 0) continue;
    std::vector<std::string> depends;
    // Alternatives count as dependencies each; version constraints and
    // architecture qualifiers are dropped.
    std::string cleaned = std::regex_replace(fields[3], std::regex(R"(\([^)]*\))"), "");
    for (char& c : cleaned) {
      if (c == ',' || c == '|') c = ' ';
    }
    for (auto name : SplitWords(cleaned)) depends.push_back(name.substr(0, name.find(':')));
    installed[fields[1]] = {fields[2], depends};
  }
  std::vector<std::string> todo = {"apt"};
  for (const auto& [name, info] : installed) {
    if (info.first == "required") todo.push_back(name);
  }
  std::set<std::string> base;
  while (!todo.empty()) {
    auto name = todo.back();
    todo.pop_back();
    auto found = installed.find(name);
    if (found == installed.end() || !base.insert(name).second) continue;
    for (const auto& dependency : found->second.second) todo.push_back(dependency);
  }
  return base;
}

TEST(DockerfileTest, BuildStageUsesTheProjectScriptOnDebian12) {
  auto stages = ProjectDockerfile();
  ASSERT_GE(stages.size(), 2u);
  const auto& build = stages.front();
  EXPECT_EQ(build.base, "debian:12");
  EXPECT_FALSE(build.name.empty());
  std::string runs;
  for (const auto& instruction : build.instructions) {
    if (instruction.keyword == "RUN") runs += instruction.args + "\n";
  }
  EXPECT_NE(runs.find("./quantd.sh deps"), std::string::npos);
  EXPECT_NE(runs.find("./quantd.sh build"), std::string::npos);
}

TEST(DockerfileTest, RuntimeStageIsSlimNonRootAndShipsTheThreeBinaries) {
  auto stages = ProjectDockerfile();
  ASSERT_GE(stages.size(), 2u);
  const auto& runtime = stages.back();
  EXPECT_EQ(runtime.base, "debian:12-slim");
  std::string user, copied, entrypoint;
  for (const auto& instruction : runtime.instructions) {
    if (instruction.keyword == "USER") user = instruction.args;
    if (instruction.keyword == "COPY" && instruction.args.find("--from=" + stages.front().name) != std::string::npos) {
      copied += instruction.args + " ";
    }
    if (instruction.keyword == "ENTRYPOINT") entrypoint = instruction.args;
  }
  // Numeric, so the kubelet can check runAsNonRoot without the image's
  // /etc/passwd.
  std::smatch match;
  ASSERT_TRUE(std::regex_match(user, match, std::regex(R"(([0-9]+)(:[0-9]+)?)"))) << "USER " << user;
  EXPECT_NE(std::stoi(match[1]), 0);
  for (const auto& binary : kBinaries) {
    EXPECT_NE(copied.find("/bin/" + binary + " "), std::string::npos) << binary << " is not copied from the build";
  }
  EXPECT_NE(entrypoint.find("quantd\""), std::string::npos) << entrypoint;
}

TEST(DockerfileTest, RuntimePackagesAreExactlyTheOwnersOfTheLinkedLibraries) {
  auto stages = ProjectDockerfile();
  ASSERT_FALSE(stages.empty());
  auto listed_vector = RuntimePackages(stages.back());
  ASSERT_FALSE(listed_vector.empty()) << "no apt-get install in the runtime stage";
  std::set<std::string> listed(listed_vector.begin(), listed_vector.end());
  EXPECT_EQ(listed.size(), listed_vector.size()) << "a package is listed twice";

  std::set<std::string> libraries;
  std::vector<std::string> unresolved;
  for (const auto& binary : kBinaries) {
    auto path = BinDir() / binary;
    ASSERT_TRUE(std::filesystem::exists(path)) << path;
    auto linked = LinkedLibraries(path, unresolved);
    libraries.insert(linked.begin(), linked.end());
  }
  EXPECT_TRUE(unresolved.empty()) << "ldd cannot resolve: " << unresolved.front();
  std::map<std::string, std::set<std::string>> owners;  // package -> libraries
  std::vector<std::string> unowned;
  auto owning = OwningPackages(libraries);
  for (const auto& library : libraries) {
    auto found = owning.find(library);
    if (found == owning.end()) {
      unowned.push_back(library);
    } else {
      owners[found->second].insert(library);
    }
  }
  EXPECT_TRUE(unowned.empty()) << "no Debian package owns " << unowned.front()
                               << " (a library from outside the archive cannot be installed in the image)";

  auto base = SlimBasePackages();
  ASSERT_TRUE(base.count("libc6") && base.count("libstdc++6") && base.count("libgcc-s1"))
      << "unexpected base set: " << Join(base);
  std::set<std::string> missing, extra;
  for (const auto& [package, files] : owners) {
    if (!listed.count(package) && !base.count(package)) missing.insert(package + " (" + *files.begin() + ")");
  }
  for (const auto& package : listed) {
    if (!owners.count(package)) extra.insert(package);
  }
  EXPECT_TRUE(missing.empty()) << "add to the runtime apt-get install: " << Join(missing);
  EXPECT_TRUE(extra.empty()) << "no built binary loads a library from: " << Join(extra);
}

TEST(DockerfileTest, EveryBinaryAnswersHelp) {
  for (const auto& binary : kBinaries) {
    auto help = Capture({(BinDir() / binary).string(), "--help"});
    EXPECT_EQ(help.exit_code, 0) << binary << ": " << help.out;
    EXPECT_NE(help.out.find("usage: " + binary), std::string::npos) << binary << ": " << help.out;
  }
}

}  // namespace
}  // namespace quantd::deploy_test
