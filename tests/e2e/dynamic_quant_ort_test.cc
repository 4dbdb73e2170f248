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
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include "tests/e2e/harness.h"
#include "worker/calib/dataset.h"
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

// Graph inputs 1.. (B, and C where present) become initializers.
void ConstantWeights(Case& c) {
  onnx::GraphProto& graph = *c.model.mutable_graph();
  for (int i = 1; i < graph.input_size(); ++i) {
    onnx::TensorProto& init = *graph.add_initializer();
    init = c.inputs[static_cast<size_t>(i)];
    init.set_name(graph.input(i).name());
  }
  while (graph.input_size() > 1) graph.mutable_input()->RemoveLast();
}

bool TransposesA(const onnx::NodeProto& node) {
  for (const auto& attribute : node.attribute()) {
    if (attribute.name() == "transA") return attribute.i() != 0;
  }
  return false;
}

struct Form {
  const char* name;
  DynamicQuantForm form;
};

class DynamicQuantOrtTest : public ::testing::TestWithParam<std::string> {};

TEST_P(DynamicQuantOrtTest, RunsInOnnxRuntimeCloseToTheExpectedOutput) {
  const std::string& name = GetParam();
  ASSERT_TRUE(fs::exists(CaseDir(name) / "model.onnx")) << "libonnx-testdata lacks " << name;
  ScratchDir scratch("quantd-dynamic-ort-");
  Case original = LoadCase(name);
  ConstantWeights(original);
  auto a = runtime::TensorFromProto(original.inputs[0]);
  auto expected = runtime::TensorFromProto(original.expected);
  ASSERT_TRUE(a.ok() && expected.ok()) << name;
  const fs::path a_file = scratch.path() / "a.npy";
  ASSERT_TRUE(calib::WriteNpy(a_file, *a).ok());
  const std::string a_name = original.model.graph().input(0).name();
  const std::string y_name = original.model.graph().output(0).name();

  for (const Form form :
       {Form{"fused", DynamicQuantForm::kOnnxRuntimeFused}, Form{"standard", DynamicQuantForm::kStandardOnnx}}) {
    SCOPED_TRACE(std::string(form.name) + " form");
    onnx::ModelProto model = original.model;
    DynamicQuantOptions options;
    options.form = form.form;
    auto report = QuantizeDynamic(model, options);
    ASSERT_TRUE(report.ok()) << report.status().message();
    if (TransposesA(original.model.graph().node(0))) {
      ASSERT_EQ(report->skipped.size(), 1u) << "transA is not quantized";
    } else {
      ASSERT_EQ(report->quantized_nodes.size(), 1u);
    }
    const fs::path file = scratch.path() / (std::string(form.name) + ".onnx");
    {
      std::ofstream out(file, std::ios::binary);
      ASSERT_TRUE(model.SerializeToOstream(&out));
    }
    const fs::path out_dir = scratch.path() / form.name;
    RunOrt({"run", "--model", file.string(), "--input", a_name + "=" + a_file.string(), "--out", out_dir.string()});
    auto actual = calib::ReadNpy(out_dir / (y_name + ".npy"), 1 << 20);
    ASSERT_TRUE(actual.ok()) << actual.status().message();
    ASSERT_EQ(actual->shape(), expected->shape());
    double peak = 0, error = 0;
    for (int64_t i = 0; i < expected->size(); ++i) {
      const double e = expected->data<float>()[i], v = actual->data<float>()[i];
      peak = std::max(peak, std::fabs(e));
      error = std::max(error, std::fabs(e - v));
    }
    // 8-bit weights per column and 8-bit activations over the suite's small
    // random matrices: a few percent of the output's peak.
    EXPECT_LE(error, 0.04 * peak) << "max error " << error << " against peak " << peak;
    if (!report->quantized_nodes.empty()) {
      EXPECT_GT(error, 0.0) << "bit-exact, so nothing was quantized";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(NodeTests, DynamicQuantOrtTest,
                         ::testing::Values("test_gemm_all_attributes", "test_gemm_alpha", "test_gemm_beta",
                                           "test_gemm_default_matrix_bias", "test_gemm_default_no_bias",
                                           "test_gemm_default_scalar_bias", "test_gemm_default_single_elem_vector_bias",
                                           "test_gemm_default_vector_bias", "test_gemm_default_zero_bias",
                                           "test_gemm_transposeA", "test_gemm_transposeB", "test_matmul_2d"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param.substr(5); });

}  // namespace
}  // namespace quantd
