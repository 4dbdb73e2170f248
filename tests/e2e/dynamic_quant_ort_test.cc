// Dynamic quantization of the ONNX backend node tests' Gemm and MatMul cases
// (Debian's libonnx-testdata), in both operator forms, run in ONNX Runtime:
// every attribute and bias shape the suite covers must load, run on the
// quantized path and stay close to the suite's expected output.
//
// The weight (input B) and a Gemm's C become initializers, as they are in
// a trained model; A stays a run-time input.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include "tests/e2e/harness.h"
#include "worker/calib/dataset.h"
#include "worker/onnx/tensor_util.h"
#include "worker/quant/dynamic_quant.h"
#include "worker/runtime/tensor.h"

namespace quantd {
namespace {

namespace fs = std::filesystem;
using testing::RunOrt;
using testing::ScratchDir;

fs::path CaseDir(const std::string& name) {
  return fs::path("/usr/share/libonnx-testdata/data/node") / name;
}

bool ReadProto(const fs::path& path, google::protobuf::Message* message) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return in.good() || in.eof() ? message->ParseFromString(buffer.str()) : false;
}

struct Case {
  onnx::ModelProto model;
  std::vector<onnx::TensorProto> inputs;  // in graph input order
  onnx::TensorProto expected;
};

Case LoadCase(const std::string& name) {
  Case c;
  const fs::path dir = CaseDir(name);
  EXPECT_TRUE(ReadProto(dir / "model.onnx", &c.model)) << name;
  for (int i = 0; i < c.model.graph().input_size(); ++i) {
    EXPECT_TRUE(ReadProto(dir / "test_data_set_0" / ("input_" + std::to_string(i) + ".pb"), &c.inputs.emplace_back()))
        << name << " input " << i;
  }
  EXPECT_TRUE(ReadProto(dir / "test_data_set_0" / "output_0.pb", &c.expected)) << name;
  return c;
}

// The weight becomes an initializer, as in a trained model: a Gather's
// table (input 0), or a Gemm/MatMul's B and C (inputs 1..). Returns the
// index of the one input left to feed at run time.
size_t ConstantWeights(Case& c) {
  onnx::GraphProto& graph = *c.model.mutable_graph();
  const bool gather = graph.node(0).op_type() == "Gather";
  google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> fed;
  size_t fed_index = 0;
  for (int i = 0; i < graph.input_size(); ++i) {
    if ((i == 0) != gather) {
      fed_index = static_cast<size_t>(i);
      *fed.Add() = graph.input(i);
      continue;
    }
    onnx::TensorProto& init = *graph.add_initializer();
    init = c.inputs[static_cast<size_t>(i)];
    init.set_name(graph.input(i).name());
  }
  graph.mutable_input()->Swap(&fed);
  return fed_index;
}

struct Form {
  const char* name;
  DynamicQuantForm form;
};
constexpr Form kForms[] = {{"fused", DynamicQuantForm::kOnnxRuntimeFused},
                           {"standard", DynamicQuantForm::kStandardOnnx}};

// Writes `model`, runs it in ONNX Runtime on `feeds` (name -> .npy file)
// and returns output `output`.
StatusOr<runtime::Tensor> RunInOrt(const onnx::ModelProto& model, const fs::path& dir, const std::string& tag,
                                   const std::map<std::string, fs::path>& feeds, const std::string& output) {
  const fs::path file = dir / (tag + ".onnx");
  {
    std::ofstream out(file, std::ios::binary);
    if (!model.SerializeToOstream(&out)) return Internal("TEST", "cannot write " + file.string());
  }
  std::vector<std::string> args = {"run", "--model", file.string(), "--out", (dir / tag).string()};
  for (const auto& [name, path] : feeds) {
    args.push_back("--input");
    args.push_back(name + "=" + path.string());
  }
  RunOrt(args);
  return calib::ReadNpy(dir / tag / (output + ".npy"), 1 << 20);
}

// Largest absolute difference, and the largest magnitude of `expected`.
std::pair<double, double> ErrorAndPeak(const runtime::Tensor& actual, const runtime::Tensor& expected) {
  double peak = 0, error = 0;
  for (int64_t i = 0; i < expected.size(); ++i) {
    const double e = expected.data<float>()[i], v = actual.data<float>()[i];
    peak = std::max(peak, std::fabs(e));
    error = std::max(error, std::fabs(e - v));
  }
  return {error, peak};
}

struct NodeCase {
  const char* name;
  bool quantized;  // false: kept in float with a reason (transA, axis 1)
};

class DynamicQuantOrtTest : public ::testing::TestWithParam<NodeCase> {};

TEST_P(DynamicQuantOrtTest, RunsInOnnxRuntimeCloseToTheExpectedOutput) {
  const std::string name = GetParam().name;
  ASSERT_TRUE(fs::exists(CaseDir(name) / "model.onnx")) << "libonnx-testdata lacks " << name;
  ScratchDir scratch("quantd-dynamic-ort-");
  Case original = LoadCase(name);
  const size_t fed = ConstantWeights(original);
  auto input = runtime::TensorFromProto(original.inputs[fed]);
  auto expected = runtime::TensorFromProto(original.expected);
  ASSERT_TRUE(input.ok() && expected.ok()) << name;
  const fs::path input_file = scratch.path() / "input.npy";
  ASSERT_TRUE(calib::WriteNpy(input_file, *input).ok());
  const std::string input_name = original.model.graph().input(0).name();
  const std::string y_name = original.model.graph().output(0).name();

  for (const Form& form : kForms) {
    SCOPED_TRACE(std::string(form.name) + " form");
    onnx::ModelProto model = original.model;
    DynamicQuantOptions options;
    options.form = form.form;
    auto report = QuantizeDynamic(model, options);
    ASSERT_TRUE(report.ok()) << report.status().message();
    ASSERT_EQ(report->quantized_nodes.size(), GetParam().quantized ? 1u : 0u);
    ASSERT_EQ(report->skipped.size(), GetParam().quantized ? 0u : 1u);
    auto actual = RunInOrt(model, scratch.path(), form.name, {{input_name, input_file}}, y_name);
    ASSERT_TRUE(actual.ok()) << actual.status().message();
    ASSERT_EQ(actual->shape(), expected->shape());
    const auto [error, peak] = ErrorAndPeak(*actual, *expected);
    // 8-bit weights per column (or table row) and 8-bit activations over
    // the suite's small random matrices: a few percent of the output's peak.
    EXPECT_LE(error, 0.04 * peak) << "max error " << error << " against peak " << peak;
    EXPECT_EQ(error > 0.0, GetParam().quantized) << "max error " << error;
  }
}

INSTANTIATE_TEST_SUITE_P(
    NodeTests, DynamicQuantOrtTest,
    ::testing::Values(NodeCase{"test_gemm_all_attributes", false}, NodeCase{"test_gemm_alpha", true},
                      NodeCase{"test_gemm_beta", true}, NodeCase{"test_gemm_default_matrix_bias", true},
                      NodeCase{"test_gemm_default_no_bias", true}, NodeCase{"test_gemm_default_scalar_bias", true},
                      NodeCase{"test_gemm_default_single_elem_vector_bias", true},
                      NodeCase{"test_gemm_default_vector_bias", true}, NodeCase{"test_gemm_default_zero_bias", true},
                      NodeCase{"test_gemm_transposeA", false}, NodeCase{"test_gemm_transposeB", true},
                      NodeCase{"test_matmul_2d", true}, NodeCase{"test_gather_0", true},
                      NodeCase{"test_gather_1", false}),
    [](const ::testing::TestParamInfo<NodeCase>& info) { return std::string(info.param.name).substr(5); });

// A token-embedding model the way PyTorch exports one: Gather on a [50, 16]
// table (ids include negative ones, counted from the end), then a Linear
// as MatMul + bias Add whose parameters arrive through Identity nodes (as
// deduplicated ones do). Both forms are compared with the float model, all
// three run in ONNX Runtime.
TEST(DynamicQuantOrtModelTest, EmbeddingAndLinearStayCloseToTheFloatModel) {
  ScratchDir scratch("quantd-dynamic-embedding-");
  onnx::ModelProto model;
  model.set_ir_version(8);
  model.add_opset_import()->set_version(17);
  onnx::GraphProto& graph = *model.mutable_graph();
  graph.set_name("embedding");
  auto describe = [](onnx::ValueInfoProto* value, const std::string& name, int32_t type, std::vector<int64_t> dims) {
    value->set_name(name);
    auto* tensor = value->mutable_type()->mutable_tensor_type();
    tensor->set_elem_type(type);
    for (int64_t d : dims) tensor->mutable_shape()->add_dim()->set_dim_value(d);
  };
  describe(graph.add_input(), "ids", onnx_type::kInt64, {2, 5});
  describe(graph.add_output(), "y", onnx_type::kFloat, {2, 5, 8});
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random = [&](const std::string& name, std::vector<int64_t> dims, float scale) {
    int64_t count = 1;
    for (int64_t d : dims) count *= d;
    std::vector<float> values(static_cast<size_t>(count));
    for (float& v : values) v = scale * normal(rng);
    *graph.add_initializer() = MakeFloatTensor(name, dims, values);
  };
  random("table", {50, 16}, 1.0f);
  random("W", {16, 8}, 0.3f);
  random("b", {8}, 0.1f);
  auto node = [&](const std::string& op, const std::string& name, std::vector<std::string> in, std::string out) {
    onnx::NodeProto& n = *graph.add_node();
    n.set_op_type(op);
    n.set_name(name);
    for (auto& i : in) n.add_input(i);
    n.add_output(out);
  };
  node("Gather", "embed", {"table", "ids"}, "tokens");
  node("Identity", "W_copy", {"W"}, "W_shared");
  node("Identity", "b_copy", {"b"}, "b_shared");
  node("MatMul", "proj", {"tokens", "W_shared"}, "projected");
  node("Add", "proj_bias", {"projected", "b_shared"}, "y");

  runtime::Tensor ids(runtime::DataType::kInt64, {2, 5});
  const int64_t id_values[] = {0, 49, 7, -1, -50, 12, 12, 33, 1, -8};
  std::copy(std::begin(id_values), std::end(id_values), ids.data<int64_t>());
  const fs::path ids_file = scratch.path() / "ids.npy";
  ASSERT_TRUE(calib::WriteNpy(ids_file, ids).ok());
  auto reference = RunInOrt(model, scratch.path(), "float", {{"ids", ids_file}}, "y");
  ASSERT_TRUE(reference.ok()) << reference.status().message();

  for (const Form& form : kForms) {
    SCOPED_TRACE(std::string(form.name) + " form");
    onnx::ModelProto quantized = model;
    DynamicQuantOptions options;
    options.form = form.form;
    auto report = QuantizeDynamic(quantized, options);
    ASSERT_TRUE(report.ok()) << report.status().message();
    EXPECT_EQ(report->quantized_nodes, (std::vector<std::string>{"proj", "embed"}));
    EXPECT_EQ(report->fused_bias_adds, form.form == DynamicQuantForm::kOnnxRuntimeFused ? 1 : 0);
    for (const auto& init : quantized.graph().initializer()) {
      EXPECT_TRUE(init.name() != "table" && init.name() != "W") << "the float " << init.name() << " is dropped";
    }
    auto actual = RunInOrt(quantized, scratch.path(), form.name, {{"ids", ids_file}}, "y");
    ASSERT_TRUE(actual.ok()) << actual.status().message();
    ASSERT_EQ(actual->shape(), reference->shape());
    const auto [error, peak] = ErrorAndPeak(*actual, *reference);
    EXPECT_LE(error, 0.03 * peak) << "max error " << error << " against peak " << peak;
    EXPECT_GT(error, 0.0);
  }
}

}  // namespace
}  // namespace quantd
