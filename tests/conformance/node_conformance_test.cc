// ONNX backend node tests (Debian's libonnx-testdata) run through the CPU
// executor: every case whose ops all have a kernel is attempted, outputs
// are compared with the suite's tolerances (rtol 1e-3, atol 1e-7), and
// cases listed in excluded_node_tests.txt are skipped with their reason.
//
// QUANTD_ONNX_NODE_TESTS overrides the data folder.
#include <fnmatch.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include "worker/onnx/graph_view.h"
#include "worker/runtime/executor.h"

namespace quantd::runtime {
namespace {

namespace fs = std::filesystem;

constexpr double kRtol = 1e-3;
constexpr double kAtol = 1e-7;

fs::path DataRoot() {
  if (const char* env = std::getenv("QUANTD_ONNX_NODE_TESTS")) return env;
  return "/usr/share/libonnx-testdata/data/node";
}

std::vector<std::string> DiscoverCases() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(DataRoot(), ec)) {
    if (fs::exists(entry.path() / "model.onnx")) names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

struct Exclusion {
  std::string pattern;
  std::string reason;
};

const std::vector<Exclusion>& Exclusions() {
  static const std::vector<Exclusion> list = [] {
    std::vector<Exclusion> out;
    std::ifstream in(fs::path(QUANTD_CONFORMANCE_DIR) / "excluded_node_tests.txt");
    std::string line;
    while (std::getline(in, line)) {
      auto hash = line.find('#');
      std::string reason = hash == std::string::npos ? "" : line.substr(hash + 1);
      std::string pattern = line.substr(0, hash);
      pattern.erase(pattern.find_last_not_of(" \t") + 1);
      pattern.erase(0, pattern.find_first_not_of(" \t"));
      if (pattern.empty()) continue;
      reason.erase(0, reason.find_first_not_of(" \t"));
      out.push_back({pattern, reason});
    }
    return out;
  }();
  return list;
}

const Exclusion* FindExclusion(const std::string& name) {
  for (const auto& e : Exclusions()) {
    if (fnmatch(e.pattern.c_str(), name.c_str(), 0) == 0) return &e;
  }
  return nullptr;
}

bool ReadProto(const fs::path& path, google::protobuf::Message* message) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return in.good() || in.eof() ? message->ParseFromString(buffer.str()) : false;
}

// True when every node has a kernel for the model's opset.
bool AllOpsSupported(const onnx::ModelProto& model) {
  const KernelRegistry& registry = KernelRegistry::Default();
  std::map<std::string, int> opsets;
  for (const auto& op : model.opset_import()) {
    opsets[IsDefaultDomain(op.domain()) ? std::string() : op.domain()] = static_cast<int>(op.version());
  }
  for (const auto& node : model.graph().node()) {
    auto it = opsets.find(IsDefaultDomain(node.domain()) ? std::string() : node.domain());
    if (it == opsets.end() || !registry.Find(node.domain(), node.op_type(), it->second)) return false;
  }
  return true;
}

// Empty when equal within tolerance, else a description of the first
// mismatch.
std::string Compare(const Tensor& expected, const Tensor& actual) {
  if (expected.dtype() != actual.dtype()) {
    return "type " + ToString(actual.dtype()) + ", expected " + ToString(expected.dtype());
  }
  if (expected.shape() != actual.shape()) {
    return "shape " + ShapeToString(actual.shape()) + ", expected " + ShapeToString(expected.shape());
  }
  bool is_float = expected.dtype() == DataType::kFloat || expected.dtype() == DataType::kDouble ||
                  expected.dtype() == DataType::kFloat16 || expected.dtype() == DataType::kBfloat16;
  if (!is_float) {
    if (std::memcmp(expected.raw(), actual.raw(), expected.bytes()) != 0) {
      for (int64_t i = 0; i < expected.size(); ++i) {
        size_t es = ElementSize(expected.dtype());
        if (std::memcmp(static_cast<const char*>(expected.raw()) + i * es,
                        static_cast<const char*>(actual.raw()) + i * es, es) != 0) {
          return "element " + std::to_string(i) + " differs";
        }
      }
    }
    return "";
  }
  auto value = [](const Tensor& t, int64_t i) -> double {
    switch (t.dtype()) {
      case DataType::kFloat: return t.data<float>()[i];
      case DataType::kDouble: return t.data<double>()[i];
      case DataType::kFloat16: return HalfToFloat(t.data<uint16_t>()[i]);
      default: return Bfloat16ToFloat(t.data<uint16_t>()[i]);
    }
  };
  int mismatches = 0;
  std::string first;
  for (int64_t i = 0; i < expected.size(); ++i) {
    double e = value(expected, i), a = value(actual, i);
    if (std::isnan(e) && std::isnan(a)) continue;
    if (std::isinf(e) && e == a) continue;
    if (std::fabs(a - e) <= kAtol + kRtol * std::fabs(e)) continue;
    if (mismatches++ == 0) {
      std::ostringstream msg;
      msg.precision(9);
      msg << "element " << i << " is " << a << ", expected " << e;
      first = msg.str();
    }
  }
  if (mismatches) return first + " (" + std::to_string(mismatches) + " of " + std::to_string(expected.size()) + " differ)";
  return "";
}

enum class Outcome { kPassed, kFailed, kUnsupported, kExcluded };

struct CaseResult {
  Outcome outcome = Outcome::kFailed;
  std::string message;
};

CaseResult RunCase(const std::string& name) {
  if (const Exclusion* e = FindExclusion(name)) return {Outcome::kExcluded, e->reason};
  const fs::path dir = DataRoot() / name;
  onnx::ModelProto model;
  if (!ReadProto(dir / "model.onnx", &model)) return {Outcome::kFailed, "cannot parse model.onnx"};
  if (!AllOpsSupported(model)) return {Outcome::kUnsupported, "uses ops without a kernel"};

  auto executor = Executor::Create(model, {});
  if (!executor.ok()) return {Outcome::kFailed, "Create: " + executor.status().message()};

  // Graph inputs a feed may name, in order (initializers are not fed).
  std::vector<std::string> input_names;
  for (const auto& info : (*executor)->inputs()) {
    if (!info.optional) input_names.push_back(info.name);
  }
  std::vector<fs::path> sets;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_directory() && entry.path().filename().string().rfind("test_data_set_", 0) == 0) {
      sets.push_back(entry.path());
    }
  }
  std::sort(sets.begin(), sets.end());
  if (sets.empty()) return {Outcome::kFailed, "no test_data_set_* folder"};
  for (const auto& set : sets) {
    std::map<std::string, Tensor> feeds;
    for (size_t i = 0;; ++i) {
      fs::path file = set / ("input_" + std::to_string(i) + ".pb");
      if (!fs::exists(file)) break;
      onnx::TensorProto proto;
      if (!ReadProto(file, &proto)) return {Outcome::kFailed, file.string() + " is not a TensorProto"};
      auto value = TensorFromProto(proto);
      if (!value.ok()) return {Outcome::kFailed, file.string() + ": " + value.status().message()};
      bool named = std::find(input_names.begin(), input_names.end(), proto.name()) != input_names.end();
      std::string input = named || i >= input_names.size() ? proto.name() : input_names[i];
      feeds[input] = std::move(value).value();
    }
    auto outputs = (*executor)->Run(feeds);
    if (!outputs.ok()) return {Outcome::kFailed, set.filename().string() + ": Run: " + outputs.status().message()};
    const auto& graph_outputs = (*executor)->outputs();
    for (size_t i = 0; i < graph_outputs.size(); ++i) {
      fs::path file = set / ("output_" + std::to_string(i) + ".pb");
      onnx::TensorProto proto;
      if (!ReadProto(file, &proto)) return {Outcome::kFailed, file.string() + " is not a TensorProto"};
      auto expected = TensorFromProto(proto);
      if (!expected.ok()) return {Outcome::kFailed, file.string() + ": " + expected.status().message()};
      const std::string& out_name = graph_outputs[i].name;
      auto it = outputs->find(out_name);
      if (it == outputs->end()) return {Outcome::kFailed, "output '" + out_name + "' missing"};
      std::string diff = Compare(*expected, it->second);
      if (!diff.empty()) {
        return {Outcome::kFailed, set.filename().string() + " output '" + out_name + "': " + diff};
      }
    }
  }
  return {Outcome::kPassed, ""};
}

class NodeConformance : public ::testing::TestWithParam<std::string> {};

TEST_P(NodeConformance, MatchesReference) {
  CaseResult result = RunCase(GetParam());
  switch (result.outcome) {
    case Outcome::kPassed: break;
    case Outcome::kExcluded: GTEST_SKIP() << "excluded: " << result.message;
    case Outcome::kUnsupported: GTEST_SKIP() << result.message;
    case Outcome::kFailed: FAIL() << result.message;
  }
}

INSTANTIATE_TEST_SUITE_P(Onnx, NodeConformance, ::testing::ValuesIn(DiscoverCases()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(NodeConformance);

// Counts over the whole suite; fails if any attempted case fails.
TEST(NodeConformanceSummary, AllAttemptedCasesPass) {
  auto cases = DiscoverCases();
  if (cases.empty()) GTEST_SKIP() << "no ONNX node tests under " << DataRoot();
  int passed = 0, attempted = 0, unsupported = 0, excluded = 0;
  std::vector<std::string> failed;
  for (const auto& name : cases) {
    CaseResult r = RunCase(name);
    switch (r.outcome) {
      case Outcome::kPassed:
        ++passed;
        ++attempted;
        break;
      case Outcome::kFailed:
        ++attempted;
        failed.push_back(name + ": " + r.message);
        break;
      case Outcome::kUnsupported: ++unsupported; break;
      case Outcome::kExcluded: ++excluded; break;
    }
  }
  std::cout << "ONNX node conformance: passed " << passed << " / attempted " << attempted
            << " / skipped-unsupported " << unsupported << " / excluded " << excluded << " (of " << cases.size()
            << " cases)\n";
  for (const auto& f : failed) ADD_FAILURE() << f;
  EXPECT_EQ(passed, attempted);
}

}  // namespace
}  // namespace quantd::runtime
