// Dynamic quantization of MatMul/Gemm: the emitted operator chain, the
// stored weights against hand-computed values, Gemm's attributes, sharing,
// skip reasons, opset handling, and a reference evaluation of the rewritten
// graph against the float result.
#include "worker/quant/dynamic_quant.h"

#include <gtest/gtest.h>
#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/shape_inference/implementation.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "worker/onnx/graph_view.h"
#include "worker/onnx/tensor_util.h"

namespace quantd {
namespace {

using ::onnx::ModelProto;
using ::onnx::NodeProto;
using ::onnx::TensorProto;

// ---- building small models ------------------------------------------------

class ModelBuilder {
 public:
  explicit ModelBuilder(int opset) {
    model_.set_ir_version(8);
    model_.add_opset_import()->set_version(opset);
    model_.mutable_graph()->set_name("g");
  }

  ModelBuilder& Input(const std::string& name, std::vector<int64_t> dims) {
    Describe(model_.mutable_graph()->add_input(), name, dims);
    return *this;
  }
  ModelBuilder& Output(const std::string& name, std::vector<int64_t> dims) {
    Describe(model_.mutable_graph()->add_output(), name, dims);
    return *this;
  }
  ModelBuilder& Weight(const std::string& name, std::vector<int64_t> dims, std::vector<float> values) {
    *model_.mutable_graph()->add_initializer() = MakeFloatTensor(name, dims, values);
    return *this;
  }
  // Deterministic values in roughly [-scale, scale].
  ModelBuilder& Weight(const std::string& name, std::vector<int64_t> dims, float scale, int seed) {
    int64_t count = 1;
    for (int64_t d : dims) count *= d;
    std::vector<float> values(static_cast<size_t>(count));
    for (size_t i = 0; i < values.size(); ++i) {
      values[i] = scale * static_cast<float>(std::sin(0.37 * static_cast<double>(i) + seed) *
                                             std::cos(1.3 * static_cast<double>(i * i % 17)));
    }
    return Weight(name, dims, values);
  }
  NodeProto& Node(const std::string& op, const std::string& name, std::vector<std::string> inputs,
                  std::vector<std::string> outputs) {
    NodeProto& node = *model_.mutable_graph()->add_node();
    node.set_op_type(op);
    node.set_name(name);
    for (auto& input : inputs) node.add_input(input);
    for (auto& output : outputs) node.add_output(output);
    return node;
  }
  ModelProto& model() { return model_; }

  static void Describe(onnx::ValueInfoProto* value, const std::string& name, const std::vector<int64_t>& dims) {
    value->set_name(name);
    auto* type = value->mutable_type()->mutable_tensor_type();
    type->set_elem_type(onnx_type::kFloat);
    for (int64_t d : dims) type->mutable_shape()->add_dim()->set_dim_value(d);
  }

 private:
  ModelProto model_;
};

void SetInt(NodeProto& node, const std::string& name, int64_t value) {
  auto* attribute = node.add_attribute();
  attribute->set_name(name);
  attribute->set_type(onnx::AttributeProto::INT);
  attribute->set_i(value);
}

void SetFloat(NodeProto& node, const std::string& name, float value) {
  auto* attribute = node.add_attribute();
  attribute->set_name(name);
  attribute->set_type(onnx::AttributeProto::FLOAT);
  attribute->set_f(value);
}

DynamicQuantOptions Standard() {
  DynamicQuantOptions options;
  options.form = DynamicQuantForm::kStandardOnnx;
  return options;
}

// ---- looking at the result ------------------------------------------------

const NodeProto* Producer(const ModelProto& model, const std::string& tensor) {
  for (const auto& node : model.graph().node()) {
    for (const auto& output : node.output()) {
      if (output == tensor) return &node;
    }
  }
  return nullptr;
}

const TensorProto* Init(const ModelProto& model, const std::string& name) {
  for (const auto& tensor : model.graph().initializer()) {
    if (tensor.name() == name) return &tensor;
  }
  return nullptr;
}

std::vector<std::string> OpTypes(const ModelProto& model) {
  std::vector<std::string> ops;
  for (const auto& node : model.graph().node()) ops.push_back(node.op_type());
  return ops;
}

int Count(const ModelProto& model, const std::string& op) {
  int n = 0;
  for (const auto& node : model.graph().node()) n += node.op_type() == op;
  return n;
}

std::vector<uint8_t> Bytes(const TensorProto& tensor) {
  EXPECT_EQ(tensor.data_type(), onnx_type::kUint8);
  return {tensor.raw_data().begin(), tensor.raw_data().end()};
}

std::vector<int8_t> SignedBytes(const TensorProto& tensor) {
  EXPECT_EQ(tensor.data_type(), onnx_type::kInt8);
  return {tensor.raw_data().begin(), tensor.raw_data().end()};
}

std::vector<float> Floats(const TensorProto& tensor) {
  auto values = ReadFloatTensor(tensor);
  EXPECT_TRUE(values.ok()) << tensor.name();
  return values.ok() ? *values : std::vector<float>{};
}

std::vector<int64_t> Dims(const TensorProto& tensor) {
  return {tensor.dims().begin(), tensor.dims().end()};
}

// Every input is a graph input, an initializer or an earlier node's output.
void ExpectTopological(const ModelProto& model) {
  std::set<std::string> known;
  for (const auto& input : model.graph().input()) known.insert(input.name());
  for (const auto& tensor : model.graph().initializer()) known.insert(tensor.name());
  for (const auto& node : model.graph().node()) {
    for (const auto& input : node.input()) {
      EXPECT_TRUE(input.empty() || known.count(input)) << node.name() << " reads " << input << " before it exists";
    }
    for (const auto& output : node.output()) known.insert(output);
  }
}

void ExpectOnnxValid(const ModelProto& model) {
  ModelProto copy = model;
  EXPECT_NO_THROW(onnx::checker::check_model(copy));
  EXPECT_NO_THROW(onnx::shape_inference::InferShapes(copy, onnx::OpSchemaRegistry::Instance(),
                                                     onnx::ShapeInferenceOptions(true, 1, false)));
}

// ---- a reference evaluator for the operators involved ---------------------
//
// Written from the ONNX operator definitions, not from the pass: enough of
// MatMul, Gemm, Gather (axis 0), DynamicQuantizeLinear, MatMulInteger, Cast,
// Mul, Add and ONNX Runtime's DynamicQuantizeMatMul to run the small models
// below in double precision.

struct Value {
  std::vector<int64_t> dims;
  std::vector<double> data;
};

int64_t Size(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// A (any rank >= 1, last dim K) times a 2-D B [K, N], minus zero points.
Value MatMulRef(const Value& a, const Value& b, double a_zero = 0, double b_zero = 0) {
  const int64_t k = b.dims[0], n = b.dims[1], rows = Size(a.dims) / k;
  Value out;
  out.dims = a.dims;
  out.dims.back() = n;
  out.data.assign(static_cast<size_t>(rows * n), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < n; ++c) {
      double sum = 0;
      for (int64_t i = 0; i < k; ++i) {
        sum += (a.data[static_cast<size_t>(r * k + i)] - a_zero) * (b.data[static_cast<size_t>(i * n + c)] - b_zero);
      }
      out.data[static_cast<size_t>(r * n + c)] = sum;
    }
  }
  return out;
}

// Elementwise with numpy broadcasting.
Value Broadcast(const Value& x, const Value& y, const std::function<double(double, double)>& f) {
  const size_t rank = std::max(x.dims.size(), y.dims.size());
  auto padded = [rank](const std::vector<int64_t>& dims) {
    std::vector<int64_t> out(rank - dims.size(), 1);
    out.insert(out.end(), dims.begin(), dims.end());
    return out;
  };
  const std::vector<int64_t> xd = padded(x.dims), yd = padded(y.dims);
  Value out;
  for (size_t d = 0; d < rank; ++d) out.dims.push_back(std::max(xd[d], yd[d]));
  out.data.resize(static_cast<size_t>(Size(out.dims)));
  for (int64_t i = 0; i < Size(out.dims); ++i) {
    int64_t rest = i, xi = 0, yi = 0, x_stride = 1, y_stride = 1;
    for (size_t d = rank; d-- > 0;) {
      const int64_t coordinate = rest % out.dims[d];
      rest /= out.dims[d];
      xi += (xd[d] == 1 ? 0 : coordinate) * x_stride;
      yi += (yd[d] == 1 ? 0 : coordinate) * y_stride;
      x_stride *= xd[d];
      y_stride *= yd[d];
    }
    out.data[static_cast<size_t>(i)] = f(x.data[static_cast<size_t>(xi)], y.data[static_cast<size_t>(yi)]);
  }
  return out;
}

double RoundEven(double v) {
  return std::nearbyint(v);
}

// DynamicQuantizeLinear: uint8 values, scale and zero point.
std::tuple<Value, double, double> DynamicQuantize(const Value& x) {
  double lo = 0, hi = 0;
  for (double v : x.data) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  const double scale = (hi - lo) / 255.0;
  const double zero = std::clamp(RoundEven(-lo / scale), 0.0, 255.0);
  Value q{x.dims, {}};
  for (double v : x.data) q.data.push_back(std::clamp(RoundEven(v / scale) + zero, 0.0, 255.0));
  return {q, scale, zero};
}

std::map<std::string, Value> Evaluate(const ModelProto& model, std::map<std::string, Value> values) {
  for (const auto& tensor : model.graph().initializer()) {
    Value v;
    v.dims = Dims(tensor);
    if (tensor.data_type() == onnx_type::kFloat) {
      for (float f : Floats(tensor)) v.data.push_back(f);
    } else if (tensor.data_type() == onnx_type::kUint8) {
      for (uint8_t b : Bytes(tensor)) v.data.push_back(b);
    } else if (tensor.data_type() == onnx_type::kInt8) {
      for (int8_t b : SignedBytes(tensor)) v.data.push_back(b);
    } else {
      ADD_FAILURE() << "unexpected initializer type " << tensor.data_type();
    }
    values[tensor.name()] = v;
  }
  auto in = [&](const NodeProto& node, int i) -> const Value& { return values.at(node.input(i)); };
  for (const auto& node : model.graph().node()) {
    const std::string& op = node.op_type();
    if (op == "MatMul") {
      values[node.output(0)] = MatMulRef(in(node, 0), in(node, 1));
    } else if (op == "DynamicQuantizeLinear") {
      auto [q, scale, zero] = DynamicQuantize(in(node, 0));
      values[node.output(0)] = q;
      values[node.output(1)] = Value{{}, {scale}};
      values[node.output(2)] = Value{{}, {zero}};
    } else if (op == "DynamicQuantizeMatMul") {
      EXPECT_EQ(node.domain(), "com.microsoft");
      // A quantized as DynamicQuantizeLinear does, an integer product, then
      // a_scale * b_scale (per column) and the optional bias.
      auto [q, a_scale, a_zero] = DynamicQuantize(in(node, 0));
      const Value& b_zero = in(node, 3);
      EXPECT_EQ(b_zero.data.size(), 1u) << "one zero point for the whole weight";
      Value y = MatMulRef(q, in(node, 1), a_zero, b_zero.data.at(0));
      const Value& b_scale = in(node, 2);
      y = Broadcast(y, b_scale, [scale = a_scale](double p, double s) { return p * scale * s; });
      if (node.input_size() > 4) {
        EXPECT_EQ(in(node, 4).dims.size(), 1u) << "the bias is 1-D";
        y = Broadcast(y, in(node, 4), [](double a, double c) { return a + c; });
      }
      values[node.output(0)] = y;
    } else if (op == "MatMulInteger") {
      values[node.output(0)] = MatMulRef(in(node, 0), in(node, 1), in(node, 2).data.at(0), in(node, 3).data.at(0));
    } else if (op == "Cast" || op == "Identity") {
      values[node.output(0)] = in(node, 0);
    } else if (op == "Gather") {
      for (const auto& a : node.attribute()) EXPECT_FALSE(a.name() == "axis" && a.i() != 0) << "axis 0 only";
      const Value& data = in(node, 0);
      const Value& indices = in(node, 1);
      const int64_t rows = data.dims[0], row_size = Size(data.dims) / rows;
      Value y;
      y.dims = indices.dims;
      y.dims.insert(y.dims.end(), data.dims.begin() + 1, data.dims.end());
      for (double index : indices.data) {
        const int64_t row =
            static_cast<int64_t>(index) < 0 ? static_cast<int64_t>(index) + rows : static_cast<int64_t>(index);
        for (int64_t i = 0; i < row_size; ++i) y.data.push_back(data.data.at(static_cast<size_t>(row * row_size + i)));
      }
      values[node.output(0)] = y;
    } else if (op == "Mul") {
      values[node.output(0)] = Broadcast(in(node, 0), in(node, 1), [](double a, double b) { return a * b; });
    } else if (op == "Add") {
      values[node.output(0)] = Broadcast(in(node, 0), in(node, 1), [](double a, double b) { return a + b; });
    } else if (op == "Relu") {
      Value y = in(node, 0);
      for (double& v : y.data) v = std::max(v, 0.0);
      values[node.output(0)] = y;
    } else if (op == "Gemm") {
      double alpha = 1, beta = 1;
      bool trans_b = false;
      for (const auto& a : node.attribute()) {
        if (a.name() == "alpha") alpha = a.f();
        if (a.name() == "beta") beta = a.f();
        if (a.name() == "transB") trans_b = a.i() != 0;
      }
      Value b = in(node, 1);
      if (trans_b) {
        Value t{{b.dims[1], b.dims[0]}, std::vector<double>(b.data.size())};
        for (int64_t r = 0; r < b.dims[0]; ++r) {
          for (int64_t c = 0; c < b.dims[1]; ++c)
            t.data[static_cast<size_t>(c * b.dims[0] + r)] = b.data[static_cast<size_t>(r * b.dims[1] + c)];
        }
        b = t;
      }
      Value y = MatMulRef(in(node, 0), b);
      for (double& v : y.data) v *= alpha;
      if (node.input_size() > 2 && !node.input(2).empty()) {
        y = Broadcast(y, in(node, 2), [beta](double a, double c) { return a + beta * c; });
      }
      values[node.output(0)] = y;
    } else {
      ADD_FAILURE() << "the reference evaluator has no " << op;
    }
  }
  return values;
}

Value Ramp(std::vector<int64_t> dims, double lo, double hi) {
  Value v{dims, std::vector<double>(static_cast<size_t>(Size(dims)))};
  for (size_t i = 0; i < v.data.size(); ++i) {
    // A permuted ramp so rows differ and the extremes are hit exactly.
    const size_t j = (i * 7) % v.data.size();
    v.data[i] = lo + (hi - lo) * static_cast<double>(j) / static_cast<double>(v.data.size() - 1);
  }
  return v;
}

// The rewritten model's output lies within `tolerance` x max|y| of the
// float model's.
void ExpectCloseToFloat(const ModelProto& original, const ModelProto& quantized,
                        const std::map<std::string, Value>& inputs, double tolerance) {
  auto expected = Evaluate(original, inputs);
  auto actual = Evaluate(quantized, inputs);
  for (const auto& output : original.graph().output()) {
    const Value& e = expected.at(output.name());
    const Value& a = actual.at(output.name());
    ASSERT_EQ(a.dims, e.dims) << output.name();
    double peak = 0, error = 0;
    for (size_t i = 0; i < e.data.size(); ++i) {
      peak = std::max(peak, std::fabs(e.data[i]));
      error = std::max(error, std::fabs(e.data[i] - a.data[i]));
    }
    EXPECT_LE(error, tolerance * peak) << output.name() << ": error " << error << " against peak " << peak;
    EXPECT_GT(error, 0.0) << output.name() << " is bit-exact, so nothing was quantized";
  }
}

// ---- tests -----------------------------------------------------------------

TEST(DynamicQuantTest, MatMulBecomesAnIntegerChainWithPerColumnUint8Weights) {
  // Column 0 peaks at 1.27 (scale 0.01), column 1 at 2.54 (scale 0.02);
  // the values are exact multiples, so the stored integers are exact.
  ModelBuilder b(17);
  b.Input("x", {4, 3}).Output("y", {4, 2}).Weight("W", {3, 2}, {1.27f, 0.0f, -0.5f, 2.54f, 0.25f, -2.54f});
  b.Node("MatMul", "mm", {"x", "W"}, {"y"});
  ModelProto& model = b.model();
  auto report = QuantizeDynamic(model, Standard());
  ASSERT_TRUE(report.ok()) << report.status().message();

  EXPECT_EQ(OpTypes(model), (std::vector<std::string>{"DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Mul"}));
  const NodeProto* dql = &model.graph().node(0);
  const NodeProto* mmi = &model.graph().node(1);
  const NodeProto* cast = &model.graph().node(2);
  const NodeProto* scales_mul = &model.graph().node(3);
  const NodeProto* out_mul = &model.graph().node(4);
  EXPECT_EQ(dql->input(0), "x");
  ASSERT_EQ(dql->output_size(), 3);
  ASSERT_EQ(mmi->input_size(), 4);
  EXPECT_EQ(mmi->input(0), dql->output(0));
  EXPECT_EQ(mmi->input(2), dql->output(2));
  EXPECT_EQ(cast->input(0), mmi->output(0));
  ASSERT_EQ(cast->attribute_size(), 1);
  EXPECT_EQ(cast->attribute(0).name(), "to");
  EXPECT_EQ(cast->attribute(0).i(), onnx_type::kFloat);
  EXPECT_EQ(scales_mul->input(0), dql->output(1));
  EXPECT_EQ(out_mul->input(0), cast->output(0));
  EXPECT_EQ(out_mul->input(1), scales_mul->output(0));
  EXPECT_EQ(out_mul->output(0), "y") << "the output keeps its name";

  const TensorProto* weight = Init(model, mmi->input(1));
  ASSERT_NE(weight, nullptr);
  EXPECT_EQ(Dims(*weight), (std::vector<int64_t>{3, 2}));
  // q = round(w / scale) + 128, row-major [K, N].
  EXPECT_EQ(Bytes(*weight), (std::vector<uint8_t>{255, 128, 78, 255, 153, 1}));
  const TensorProto* zero_point = Init(model, mmi->input(3));
  ASSERT_NE(zero_point, nullptr);
  EXPECT_EQ(Dims(*zero_point), std::vector<int64_t>{}) << "one scalar zero point";
  EXPECT_EQ(Bytes(*zero_point), std::vector<uint8_t>{128});
  const TensorProto* scale = Init(model, scales_mul->input(1));
  ASSERT_NE(scale, nullptr);
  const auto scale_values = Floats(*scale);
  ASSERT_EQ(scale_values.size(), 2u);
  EXPECT_FLOAT_EQ(scale_values[0], 1.27f / 127.0f);
  EXPECT_FLOAT_EQ(scale_values[1], 2.54f / 127.0f);

  EXPECT_EQ(Init(model, "W"), nullptr) << "the float weight is dropped";
  EXPECT_EQ(report->quantized_nodes, std::vector<std::string>{"mm"});
  EXPECT_TRUE(report->skipped.empty());
  EXPECT_EQ(report->output_opset, 17);
  EXPECT_EQ(report->float_weight_bytes, 6 * 4);
  EXPECT_EQ(report->quantized_weight_bytes, 6 + 2 * 4 + 1);
  ExpectTopological(model);
  ExpectOnnxValid(model);
}

// z = x [2, 5, 16] * W [16, 12] + bias [12], the way PyTorch exports a
// Linear: MatMul "mm" -> "y", then Add "add"(bias, y) -> "z".
ModelProto LinearWithBias() {
  ModelBuilder b(17);
  b.Input("x", {2, 5, 16}).Output("z", {2, 5, 12}).Weight("W", {16, 12}, 0.8f, 1).Weight("bias", {12}, 0.3f, 2);
  b.Node("MatMul", "mm", {"x", "W"}, {"y"});
  b.Node("Add", "add", {"bias", "y"}, {"z"});
  return b.model();
}

TEST(DynamicQuantTest, BatchedActivationsMatchTheFloatResult) {
  const ModelProto original = LinearWithBias();
  ModelProto model = original;
  ASSERT_TRUE(QuantizeDynamic(model, Standard()).ok());
  EXPECT_EQ(model.graph().node(model.graph().node_size() - 1).op_type(), "Add") << "the model's own Add is kept";
  ExpectCloseToFloat(original, model, {{"x", Ramp({2, 5, 16}, -2.0, 3.0)}}, 0.02);
  ExpectOnnxValid(model);
}

TEST(DynamicQuantTest, GemmTransposedWeightAlphaAndBetaFoldIntoLayoutScaleAndBias) {
  // B is [N=2, K=3] with transB; stored as [K, N].
  ModelBuilder b(13);
  b.Input("x", {4, 3}).Output("y", {4, 2}).Weight("W", {2, 3}, {1.27f, -0.5f, 0.25f, 0.0f, 2.54f, -2.54f});
  b.Weight("C", {2}, {0.5f, -1.0f});
  NodeProto& gemm = b.Node("Gemm", "fc", {"x", "W", "C"}, {"y"});
  SetInt(gemm, "transB", 1);
  SetFloat(gemm, "alpha", 0.5f);
  SetFloat(gemm, "beta", 2.0f);
  const ModelProto original = b.model();
  ModelProto& model = b.model();
  auto report = QuantizeDynamic(model, Standard());
  ASSERT_TRUE(report.ok()) << report.status().message();

  EXPECT_EQ(OpTypes(model),
            (std::vector<std::string>{"DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Mul", "Add"}));
  const NodeProto* mmi = Producer(model, model.graph().node(2).input(0));
  ASSERT_NE(mmi, nullptr);
  const TensorProto* weight = Init(model, mmi->input(1));
  ASSERT_NE(weight, nullptr);
  EXPECT_EQ(Dims(*weight), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(Bytes(*weight), (std::vector<uint8_t>{255, 128, 78, 255, 153, 1}));
  const auto scale = Floats(*Init(model, model.graph().node(3).input(1)));
  ASSERT_EQ(scale.size(), 2u);
  EXPECT_FLOAT_EQ(scale[0], 0.5f * (1.27f / 127.0f)) << "alpha is folded in";
  EXPECT_FLOAT_EQ(scale[1], 0.5f * (2.54f / 127.0f));
  const NodeProto& add = model.graph().node(5);
  EXPECT_EQ(add.input(0), model.graph().node(4).output(0));
  EXPECT_EQ(add.output(0), "y");
  const auto bias = Floats(*Init(model, add.input(1)));
  EXPECT_EQ(bias, (std::vector<float>{1.0f, -2.0f})) << "beta * C";
  EXPECT_EQ(Init(model, "W"), nullptr);
  EXPECT_EQ(Init(model, "C"), nullptr) << "C is replaced by beta * C";
  ExpectCloseToFloat(original, model, {{"x", Ramp({4, 3}, -1.0, 1.5)}}, 0.02);
  ExpectOnnxValid(model);
}

TEST(DynamicQuantTest, GemmWithARuntimeCScalesItInTheGraph) {
  ModelBuilder b(13);
  b.Input("x", {3, 8}).Input("c", {3, 6}).Output("y", {3, 6}).Weight("W", {8, 6}, 1.0f, 3);
  NodeProto& gemm = b.Node("Gemm", "fc", {"x", "W", "c"}, {"y"});
  SetFloat(gemm, "beta", 0.75f);
  const ModelProto original = b.model();
  ModelProto& model = b.model();
  ASSERT_TRUE(QuantizeDynamic(model, Standard()).ok());
  const NodeProto* add = Producer(model, "y");
  ASSERT_NE(add, nullptr);
  ASSERT_EQ(add->op_type(), "Add");
  const NodeProto* scaled_c = Producer(model, add->input(1));
  ASSERT_NE(scaled_c, nullptr);
  EXPECT_EQ(scaled_c->op_type(), "Mul");
  EXPECT_EQ(scaled_c->input(0), "c");
  EXPECT_EQ(Floats(*Init(model, scaled_c->input(1))), std::vector<float>{0.75f});
  ExpectTopological(model);
  ExpectCloseToFloat(original, model, {{"x", Ramp({3, 8}, -1.0, 1.0)}, {"c", Ramp({3, 6}, -4.0, 2.0)}}, 0.02);
  ExpectOnnxValid(model);
}

TEST(DynamicQuantTest, GemmWithBetaZeroIgnoresC) {
  ModelBuilder b(13);
  b.Input("x", {3, 8}).Output("y", {3, 6}).Weight("W", {8, 6}, 1.0f, 4).Weight("C", {6}, 1.0f, 5);
  SetFloat(b.Node("Gemm", "fc", {"x", "W", "C"}, {"y"}), "beta", 0.0f);
  ModelProto& model = b.model();
  ASSERT_TRUE(QuantizeDynamic(model, Standard()).ok());
  EXPECT_EQ(Count(model, "Add"), 0);
  EXPECT_EQ(Producer(model, "y")->op_type(), "Mul");
  EXPECT_EQ(Init(model, "C"), nullptr);
}

TEST(DynamicQuantTest, AnActivationReadByTwoNodesIsQuantizedOnce) {
  ModelBuilder b(17);
  b.Input("x", {3, 8})
      .Output("ya", {3, 4})
      .Output("yb", {3, 5})
      .Weight("Wa", {8, 4}, 1.0f, 6)
      .Weight("Wb", {8, 5}, 1.0f, 7);
  b.Node("MatMul", "a", {"x", "Wa"}, {"ya"});
  b.Node("MatMul", "b", {"x", "Wb"}, {"yb"});
  const ModelProto original = b.model();
  ModelProto& model = b.model();
  ASSERT_TRUE(QuantizeDynamic(model, Standard()).ok());
  EXPECT_EQ(Count(model, "DynamicQuantizeLinear"), 1);
  ASSERT_EQ(Count(model, "MatMulInteger"), 2);
  std::vector<std::string> activations;
  for (const auto& node : model.graph().node()) {
    if (node.op_type() == "MatMulInteger") activations.push_back(node.input(0));
  }
  EXPECT_EQ(activations[0], activations[1]);
  ExpectTopological(model);
  ExpectCloseToFloat(original, model, {{"x", Ramp({3, 8}, -1.0, 2.0)}}, 0.02);
}

TEST(DynamicQuantTest, AWeightIsStoredOncePerLayoutItIsReadIn) {
  // "W" [6, 8]: read plainly by two MatMuls (K=6, N=8) and transposed by a
  // Gemm (K=8, N=6).
  ModelBuilder b(17);
  b.Input("x1", {2, 6}).Input("x2", {3, 6}).Input("x3", {2, 8});
  b.Output("y1", {2, 8}).Output("y2", {3, 8}).Output("y3", {2, 6}).Weight("W", {6, 8}, 1.0f, 8);
  b.Node("MatMul", "m1", {"x1", "W"}, {"y1"});
  b.Node("MatMul", "m2", {"x2", "W"}, {"y2"});
  SetInt(b.Node("Gemm", "g", {"x3", "W"}, {"y3"}), "transB", 1);
  const ModelProto original = b.model();
  ModelProto& model = b.model();
  auto report = QuantizeDynamic(model, Standard());
  ASSERT_TRUE(report.ok());
  std::vector<std::string> weights;
  for (const auto& node : model.graph().node()) {
    if (node.op_type() == "MatMulInteger") weights.push_back(node.input(1));
  }
  ASSERT_EQ(weights.size(), 3u);
  EXPECT_EQ(weights[0], weights[1]);
  EXPECT_NE(weights[0], weights[2]);
  EXPECT_EQ(Dims(*Init(model, weights[0])), (std::vector<int64_t>{6, 8}));
  EXPECT_EQ(Dims(*Init(model, weights[2])), (std::vector<int64_t>{8, 6}));
  EXPECT_EQ(Init(model, "W"), nullptr);
  EXPECT_EQ(report->float_weight_bytes, 2 * 48 * 4) << "counted once per stored layout";
  EXPECT_EQ(report->quantized_weight_bytes, 2 * 48 + 8 * 4 + 6 * 4 + 1);
  ExpectCloseToFloat(original, model,
                     {{"x1", Ramp({2, 6}, -1.0, 1.0)}, {"x2", Ramp({3, 6}, 0.0, 1.0)}, {"x3", Ramp({2, 8}, -3.0, 1.0)}},
                     0.02);
}

TEST(DynamicQuantTest, AWeightBehindIdentityCopiesIsQuantizedOnceAndTheCopiesGo) {
  // PyTorch writes deduplicated parameters as Identity of one initializer.
  ModelBuilder b(17);
  b.Input("x", {3, 8}).Output("y0", {3, 4}).Output("y1", {3, 4}).Output("y2", {3, 4});
  b.Weight("W", {8, 4}, 1.0f, 60).Weight("V", {8, 4}, 1.0f, 61);
  b.Node("Identity", "copy", {"W"}, {"W_copy"});
  b.Node("Identity", "copy_of_copy", {"W_copy"}, {"W_copy2"});
  b.Node("MatMul", "m0", {"x", "W"}, {"y0"});
  b.Node("MatMul", "m1", {"x", "W_copy2"}, {"y1"});
  b.Node("Identity", "still_read", {"V"}, {"V_copy"});
  b.Node("MatMul", "m2", {"x", "V_copy"}, {"y2"});
  b.Node("Relu", "reads_the_copy", {"V_copy"}, {"r"});
  const ModelProto original = b.model();
  for (const auto& options : {DynamicQuantOptions{}, Standard()}) {
    ModelProto model = original;
    auto report = QuantizeDynamic(model, options);
    ASSERT_TRUE(report.ok()) << report.status().message();
    EXPECT_EQ(report->quantized_nodes, (std::vector<std::string>{"m0", "m1", "m2"}));
    EXPECT_EQ(Count(model, "Identity"), 1) << "only the copy something else still reads stays";
    EXPECT_EQ(Producer(model, "V_copy")->input(0), "V");
    EXPECT_EQ(Init(model, "W"), nullptr) << "no float copy of W is left";
    EXPECT_NE(Init(model, "V"), nullptr);
    EXPECT_EQ(report->float_weight_bytes, 2 * 32 * 4) << "W is stored once for m0 and m1";
    ExpectTopological(model);
    ExpectCloseToFloat(original, model, {{"x", Ramp({3, 8}, -1.0, 2.0)}}, 0.02);
  }
}

TEST(DynamicQuantTest, SkippedNodesSayWhyAndLeaveTheModelAlone) {
  ModelBuilder b(17);
  b.Input("x", {2, 8}).Input("k", {8, 3}).Input("x3", {2, 8});
  b.Weight("W_skip", {8, 4}, 1.0f, 9).Weight("W_small", {8, 2}, 1.0f, 10).Weight("W_rank3", {2, 8, 4}, 1.0f, 11);
  b.Weight("W_nan", {8, 4},
           {std::numeric_limits<float>::quiet_NaN(),
            1,
            2,
            3,
            4,
            5,
            6,
            7,
            8,
            9,
            10,
            11,
            12,
            13,
            14,
            15,
            16,
            17,
            18,
            19,
            20,
            21,
            22,
            23,
            24,
            25,
            26,
            27,
            28,
            29,
            30,
            31});
  b.Weight("W_a", {2, 9}, 1.0f, 12);
  *b.model().mutable_graph()->add_initializer() =
      MakeRawTensor("W_half", onnx_type::kFloat16, std::vector<int64_t>{8, 4}, std::string(64, '\0'));
  b.Node("MatMul", "skipped", {"x", "W_skip"}, {"y1"});
  b.Node("MatMul", "small", {"x", "W_small"}, {"y2"});
  b.Node("MatMul", "activations", {"x", "k"}, {"y3"});
  b.Node("MatMul", "rank3", {"x3", "W_rank3"}, {"y4"});
  b.Node("MatMul", "nan", {"x", "W_nan"}, {"y5"});
  SetInt(b.Node("Gemm", "trans_a", {"x", "W_a"}, {"y6"}), "transA", 1);
  b.Node("MatMul", "half", {"x", "W_half"}, {"y7"});
  b.Output("y1", {2, 4}).Output("y2", {2, 2}).Output("y3", {2, 3}).Output("y4", {2, 2, 4});
  b.Output("y5", {2, 4}).Output("y6", {8, 9}).Output("y7", {2, 4});
  ModelProto& model = b.model();
  const std::string before = model.SerializeAsString();
  DynamicQuantOptions options = Standard();
  options.skip_quant_node = {"skipped"};
  options.min_quant_weight_size = 16;
  auto report = QuantizeDynamic(model, options);
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_TRUE(report->quantized_nodes.empty());
  std::map<std::string, std::string> reasons;
  for (const auto& skipped : report->skipped) reasons[skipped.node_name] = skipped.reason;
  EXPECT_EQ(reasons["skipped"], "in skip_quant_node");
  EXPECT_EQ(reasons["small"], "16 weight elements ≤ min_quant_weight_size 16");
  EXPECT_EQ(reasons["activations"], "second input is not a constant initializer");
  EXPECT_EQ(reasons["rank3"], "weight has rank 3, only rank 2 is quantized");
  EXPECT_EQ(reasons["nan"], "weight contains NaN or infinity");
  EXPECT_EQ(reasons["trans_a"], "transA = 1 is not supported");
  EXPECT_EQ(reasons["half"], "weight dtype is FLOAT16, only FLOAT is quantized");
  EXPECT_EQ(report->skipped.size(), 7u);
  EXPECT_EQ(report->skipped[0].node_type, "MatMul");
  EXPECT_EQ(model.SerializeAsString(), before) << "nothing quantized, nothing changed";
  EXPECT_EQ(report->float_weight_bytes, 0);
}

TEST(DynamicQuantTest, AWeightStillReadElsewhereIsKept) {
  ModelBuilder b(17);
  b.Input("x", {2, 8}).Output("y1", {2, 4}).Output("y2", {2, 4}).Weight("W", {8, 4}, 1.0f, 13);
  b.Node("MatMul", "quantized", {"x", "W"}, {"y1"});
  b.Node("MatMul", "float", {"x", "W"}, {"y2"});
  ModelProto& model = b.model();
  DynamicQuantOptions options = Standard();
  options.skip_quant_node = {"float"};
  ASSERT_TRUE(QuantizeDynamic(model, options).ok());
  EXPECT_NE(Init(model, "W"), nullptr);
  EXPECT_EQ(Producer(model, "y2")->input(1), "W");
  EXPECT_EQ(Producer(model, "y1")->op_type(), "Mul");
}

TEST(DynamicQuantTest, DroppedWeightsLeaveGraphInputsAndValueInfo) {
  // Models from IR < 4 also list initializers as graph inputs.
  ModelBuilder b(17);
  b.Input("x", {2, 8}).Input("W", {8, 4}).Output("y", {2, 4}).Weight("W", {8, 4}, 1.0f, 14);
  ModelBuilder::Describe(b.model().mutable_graph()->add_value_info(), "W", {8, 4});
  b.Node("MatMul", "mm", {"x", "W"}, {"y"});
  ModelProto& model = b.model();
  ASSERT_TRUE(QuantizeDynamic(model, Standard()).ok());
  ASSERT_EQ(model.graph().input_size(), 1);
  EXPECT_EQ(model.graph().input(0).name(), "x");
  EXPECT_EQ(model.graph().value_info_size(), 0);
}

TEST(DynamicQuantTest, NewNamesAvoidExistingOnes) {
  ModelBuilder b(17);
  b.Input("x", {2, 8}).Output("y", {2, 4}).Output("x_quantized", {2, 8}).Weight("W", {8, 4}, 1.0f, 15);
  b.Weight("W_quantized", {1}, {0.0f});
  b.Node("Relu", "r", {"x"}, {"x_quantized"});
  b.Node("MatMul", "mm", {"x", "W"}, {"y"});
  ModelProto& model = b.model();
  ASSERT_TRUE(QuantizeDynamic(model, Standard()).ok());
  const NodeProto* mmi = nullptr;
  for (const auto& node : model.graph().node()) {
    if (node.op_type() == "MatMulInteger") mmi = &node;
  }
  ASSERT_NE(mmi, nullptr);
  EXPECT_NE(mmi->input(0), "x_quantized");
  EXPECT_NE(mmi->input(1), "W_quantized");
  EXPECT_EQ(Init(model, mmi->input(1))->data_type(), onnx_type::kUint8);
  EXPECT_EQ(Init(model, "W_quantized")->data_type(), onnx_type::kFloat) << "the existing tensor is untouched";
  ExpectTopological(model);
}

TEST(DynamicQuantTest, OpsetEleven) {
  ModelBuilder b(11);
  b.Input("x", {2, 8}).Output("y", {2, 4}).Weight("W", {8, 4}, 1.0f, 16);
  b.Node("Gemm", "g", {"x", "W"}, {"y"});
  ModelProto& model = b.model();
  auto report = QuantizeDynamic(model, Standard());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->output_opset, 11) << "DynamicQuantizeLinear exists from 11 on";
  EXPECT_EQ(model.opset_import(0).version(), 11);
  ExpectOnnxValid(model);
}

TEST(DynamicQuantTest, BelowOpsetElevenIsRefusedOnlyWhenSomethingWouldBeQuantized) {
  ModelBuilder quantizable(10);
  quantizable.Input("x", {2, 8}).Output("y", {2, 4}).Weight("W", {8, 4}, 1.0f, 17);
  quantizable.Node("MatMul", "mm", {"x", "W"}, {"y"});
  auto refused = QuantizeDynamic(quantizable.model(), Standard());
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("DynamicQuantizeLinear needs opset 11"), std::string::npos)
      << refused.status().message();

  ModelBuilder nothing(10);
  nothing.Input("x", {2, 8}).Input("k", {8, 4}).Output("y", {2, 4});
  nothing.Node("MatMul", "mm", {"x", "k"}, {"y"});
  auto report = QuantizeDynamic(nothing.model(), Standard());
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->output_opset, 10);
}

TEST(DynamicQuantTest, RefusesAModelWithoutGraphOrOpset) {
  ModelProto empty;
  EXPECT_FALSE(QuantizeDynamic(empty, Standard()).ok());
  ModelBuilder b(17);
  b.model().clear_opset_import();
  auto report = QuantizeDynamic(b.model(), Standard());
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().reason(), "MODEL_INVALID");
}

// ---- the fused form (ONNX Runtime's DynamicQuantizeMatMul) -----------------

bool ImportsContribOpset(const ModelProto& model) {
  for (const auto& opset : model.opset_import()) {
    if (opset.domain() == "com.microsoft") return opset.version() == 1;
  }
  return false;
}

TEST(DynamicQuantFusedTest, AMatMulAndItsBiasAddBecomeOneNodeComputingWhatTheStandardChainDoes) {
  const ModelProto original = LinearWithBias();
  ModelProto model = original;
  ModelBuilder::Describe(model.mutable_graph()->add_value_info(), "y", {2, 5, 12});
  auto report = QuantizeDynamic(model, {});
  ASSERT_TRUE(report.ok()) << report.status().message();

  ASSERT_EQ(OpTypes(model), std::vector<std::string>{"DynamicQuantizeMatMul"});
  EXPECT_EQ(model.graph().value_info_size(), 0) << "y is no longer produced, so its value_info goes";
  const NodeProto& node = model.graph().node(0);
  EXPECT_EQ(node.domain(), "com.microsoft");
  EXPECT_EQ(node.name(), "mm") << "the fused node keeps the MatMul's name";
  ASSERT_EQ(node.input_size(), 5);
  EXPECT_EQ(node.input(0), "x");
  EXPECT_EQ(Dims(*Init(model, node.input(1))), (std::vector<int64_t>{16, 12}));
  EXPECT_EQ(Init(model, node.input(1))->data_type(), onnx_type::kUint8);
  EXPECT_EQ(Dims(*Init(model, node.input(2))), std::vector<int64_t>{12}) << "per-column scales";
  EXPECT_EQ(Bytes(*Init(model, node.input(3))), std::vector<uint8_t>{128});
  EXPECT_EQ(node.input(4), "bias");
  EXPECT_EQ(node.output(0), "z") << "the Add's output";
  EXPECT_TRUE(ImportsContribOpset(model));
  EXPECT_EQ(model.opset_import(0).version(), 17);
  EXPECT_EQ(report->fused_bias_adds, 1);
  EXPECT_EQ(report->quantized_nodes, std::vector<std::string>{"mm"});
  EXPECT_EQ(Init(model, "W"), nullptr);
  ASSERT_NE(Init(model, "bias"), nullptr);
  ExpectOnnxValid(model);

  const std::map<std::string, Value> inputs = {{"x", Ramp({2, 5, 16}, -2.0, 3.0)}};
  ExpectCloseToFloat(original, model, inputs, 0.02);
  ModelProto standard = original;
  ASSERT_TRUE(QuantizeDynamic(standard, Standard()).ok());
  const Value fused_z = Evaluate(model, inputs).at("z");
  const Value standard_z = Evaluate(standard, inputs).at("z");
  ASSERT_EQ(fused_z.data.size(), standard_z.data.size());
  for (size_t i = 0; i < fused_z.data.size(); ++i) EXPECT_NEAR(fused_z.data[i], standard_z.data[i], 1e-9) << i;
}

TEST(DynamicQuantFusedTest, AnAddThatIsNotAPlainBiasStaysSeparate) {
  // y1 is also a graph output; y2 feeds two nodes; y3's constant is 2-D;
  // y4 is added to an activation.
  ModelBuilder b(17);
  b.Input("x", {3, 8}).Input("r", {3, 4});
  b.Output("y1", {3, 4}).Output("z1", {3, 4}).Output("z2", {3, 4}).Output("w2", {3, 4});
  b.Output("z3", {3, 4}).Output("z4", {3, 4});
  for (int i = 1; i <= 4; ++i) b.Weight("W" + std::to_string(i), {8, 4}, 1.0f, 20 + i);
  b.Weight("b", {4}, 0.5f, 30).Weight("b2d", {1, 4}, 0.5f, 31);
  b.Node("MatMul", "m1", {"x", "W1"}, {"y1"});
  b.Node("Add", "a1", {"y1", "b"}, {"z1"});
  b.Node("MatMul", "m2", {"x", "W2"}, {"y2"});
  b.Node("Add", "a2", {"y2", "b"}, {"z2"});
  b.Node("Relu", "r2", {"y2"}, {"w2"});
  b.Node("MatMul", "m3", {"x", "W3"}, {"y3"});
  b.Node("Add", "a3", {"y3", "b2d"}, {"z3"});
  b.Node("MatMul", "m4", {"x", "W4"}, {"y4"});
  b.Node("Add", "a4", {"y4", "r"}, {"z4"});
  ModelProto& model = b.model();
  auto report = QuantizeDynamic(model, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_EQ(Count(model, "DynamicQuantizeMatMul"), 4);
  EXPECT_EQ(Count(model, "Add"), 4);
  EXPECT_EQ(report->fused_bias_adds, 0);
  for (const std::string y : {"y1", "y2", "y3", "y4"}) {
    const NodeProto* producer = Producer(model, y);
    ASSERT_NE(producer, nullptr) << y;
    EXPECT_EQ(producer->op_type(), "DynamicQuantizeMatMul");
    EXPECT_EQ(producer->input_size(), 4) << y << " has no bias input";
  }
  ExpectTopological(model);
}

TEST(DynamicQuantFusedTest, GemmTakesBetaTimesARowBroadcastCAsItsBias) {
  ModelBuilder b(13);
  b.Input("x", {4, 3}).Output("y", {4, 2}).Output("y1", {4, 2});
  b.Weight("W", {2, 3}, {1.27f, -0.5f, 0.25f, 0.0f, 2.54f, -2.54f});
  b.Weight("C", {1, 2}, {0.5f, -1.0f}).Weight("C1", {1}, {0.75f});
  NodeProto& gemm = b.Node("Gemm", "fc", {"x", "W", "C"}, {"y"});
  SetInt(gemm, "transB", 1);
  SetFloat(gemm, "alpha", 0.5f);
  SetFloat(gemm, "beta", 2.0f);
  SetInt(b.Node("Gemm", "fc1", {"x", "W", "C1"}, {"y1"}), "transB", 1);
  const ModelProto original = b.model();
  ModelProto& model = b.model();
  auto report = QuantizeDynamic(model, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  ASSERT_EQ(OpTypes(model), (std::vector<std::string>{"DynamicQuantizeMatMul", "DynamicQuantizeMatMul"}));
  const NodeProto& fc = model.graph().node(0);
  EXPECT_EQ(fc.name(), "fc");
  ASSERT_EQ(fc.input_size(), 5);
  EXPECT_EQ(Floats(*Init(model, fc.input(4))), (std::vector<float>{1.0f, -2.0f})) << "beta * C, made 1-D";
  EXPECT_EQ(Dims(*Init(model, fc.input(4))), std::vector<int64_t>{2});
  const auto scale = Floats(*Init(model, fc.input(2)));
  ASSERT_EQ(scale.size(), 2u);
  EXPECT_FLOAT_EQ(scale[0], 0.5f * (1.27f / 127.0f)) << "alpha is folded in";
  const NodeProto& fc1 = model.graph().node(1);
  ASSERT_EQ(fc1.input_size(), 5);
  EXPECT_EQ(Floats(*Init(model, fc1.input(4))), (std::vector<float>{0.75f, 0.75f})) << "one value, spread over N";
  EXPECT_EQ(fc1.input(1), fc.input(1)) << "the same weight in the same layout is stored once";
  EXPECT_EQ(Init(model, "C"), nullptr);
  EXPECT_EQ(Init(model, "C1"), nullptr);
  ExpectCloseToFloat(original, model, {{"x", Ramp({4, 3}, -1.0, 1.5)}}, 0.02);
  ExpectOnnxValid(model);
}

TEST(DynamicQuantFusedTest, GemmWithARuntimeCAddsItAfterTheFusedNode) {
  ModelBuilder b(13);
  b.Input("x", {3, 8}).Input("c", {3, 6}).Output("y", {3, 6}).Weight("W", {8, 6}, 1.0f, 3);
  SetFloat(b.Node("Gemm", "fc", {"x", "W", "c"}, {"y"}), "beta", 0.5f);
  const ModelProto original = b.model();
  ModelProto& model = b.model();
  ASSERT_TRUE(QuantizeDynamic(model, {}).ok());
  EXPECT_EQ(OpTypes(model), (std::vector<std::string>{"DynamicQuantizeMatMul", "Mul", "Add"}));
  EXPECT_EQ(model.graph().node(0).input_size(), 4);
  EXPECT_EQ(Producer(model, "y")->op_type(), "Add");
  ExpectTopological(model);
  ExpectCloseToFloat(original, model, {{"x", Ramp({3, 8}, -1.0, 1.0)}, {"c", Ramp({3, 6}, -4.0, 2.0)}}, 0.02);
}

TEST(DynamicQuantFusedTest, OpsetTenNeedsNoUpgrade) {
  ModelBuilder b(10);
  b.Input("x", {2, 8}).Output("y", {2, 4}).Weight("W", {8, 4}, 1.0f, 17);
  b.Node("MatMul", "mm", {"x", "W"}, {"y"});
  const ModelProto original = b.model();
  ModelProto& model = b.model();
  auto report = QuantizeDynamic(model, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_EQ(report->output_opset, 10);
  EXPECT_EQ(model.opset_import(0).version(), 10);
  EXPECT_TRUE(ImportsContribOpset(model));
  ExpectCloseToFloat(original, model, {{"x", Ramp({2, 8}, -1.0, 1.0)}}, 0.02);
}

// ---- embedding tables read by Gather ---------------------------------------

TEST(DynamicQuantGatherTest, ATableBecomesInt8RowsWithOneScalePerRow) {
  // Row peaks 1.27, 2.54, 0 (all zero: scale 1) and 0.127; every value is
  // a multiple of its row's scale, so the stored integers are exact.
  ModelBuilder b(13);
  b.Input("ids", {2, 3}).Output("y", {2, 3, 3});
  b.Weight("table", {4, 3}, {1.27f, -0.5f, 0.25f, 2.54f, 0.0f, -2.54f, 0.0f, 0.0f, 0.0f, 0.0f, -0.127f, 0.1f});
  b.Node("Gather", "embed", {"table", "ids"}, {"y"});
  b.model().mutable_graph()->mutable_input(0)->mutable_type()->mutable_tensor_type()->set_elem_type(onnx_type::kInt64);
  const ModelProto original = b.model();
  for (const auto& options : {DynamicQuantOptions{}, Standard()}) {
    ModelProto model = original;
    auto report = QuantizeDynamic(model, options);
    ASSERT_TRUE(report.ok()) << report.status().message();
    ASSERT_EQ(OpTypes(model), (std::vector<std::string>{"Gather", "Gather", "Cast", "Mul"}));
    const NodeProto& rows = model.graph().node(0);
    const NodeProto& scales = model.graph().node(1);
    EXPECT_EQ(rows.name(), "embed") << "the lookup keeps the node's name";
    EXPECT_EQ(rows.input(1), "ids");
    EXPECT_EQ(scales.input(1), "ids");
    const TensorProto* table = Init(model, rows.input(0));
    ASSERT_NE(table, nullptr);
    EXPECT_EQ(Dims(*table), (std::vector<int64_t>{4, 3}));
    EXPECT_EQ(SignedBytes(*table), (std::vector<int8_t>{127, -50, 25, 127, 0, -127, 0, 0, 0, 0, -127, 100}));
    const TensorProto* row_scale = Init(model, scales.input(0));
    ASSERT_NE(row_scale, nullptr);
    EXPECT_EQ(Dims(*row_scale), (std::vector<int64_t>{4, 1}));
    const auto scale_values = Floats(*row_scale);
    ASSERT_EQ(scale_values.size(), 4u);
    EXPECT_FLOAT_EQ(scale_values[0], 0.01f);
    EXPECT_FLOAT_EQ(scale_values[1], 0.02f);
    EXPECT_FLOAT_EQ(scale_values[2], 1.0f);
    EXPECT_FLOAT_EQ(scale_values[3], 0.001f);
    EXPECT_EQ(model.graph().node(3).output(0), "y");
    EXPECT_EQ(Init(model, "table"), nullptr) << "the float table is dropped";
    EXPECT_EQ(Init(model, "dynamic_quant_weight_zero_point"), nullptr) << "no MatMul, so no weight zero point";
    EXPECT_EQ(report->quantized_nodes, std::vector<std::string>{"embed"});
    EXPECT_EQ(report->float_weight_bytes, 12 * 4);
    EXPECT_EQ(report->quantized_weight_bytes, 12 + 4 * 4);
    EXPECT_EQ(model.opset_import_size(), 1) << "standard operators only";
    ExpectTopological(model);
    ExpectOnnxValid(model);

    const std::map<std::string, Value> ids = {{"ids", Value{{2, 3}, {0, 1, 2, 3, -1, -4}}}};
    const Value expected = Evaluate(original, ids).at("y");
    const Value actual = Evaluate(model, ids).at("y");
    ASSERT_EQ(actual.dims, (std::vector<int64_t>{2, 3, 3}));
    for (size_t i = 0; i < expected.data.size(); ++i) EXPECT_NEAR(actual.data[i], expected.data[i], 1e-6) << i;
  }
}

TEST(DynamicQuantGatherTest, ATableAlsoReadInFloatElsewhereIsKept) {
  ModelBuilder b(13);
  b.Input("ids", {3}).Input("x", {2, 4}).Output("y", {3, 3}).Output("t", {3, 4}).Output("z", {2, 3});
  b.Weight("shared", {4, 3}, 1.0f, 40).Weight("tied", {4, 3}, 1.0f, 41);
  b.Node("Gather", "lookup_shared", {"shared", "ids"}, {"y"});
  b.Node("Transpose", "reads_in_float", {"shared"}, {"t"});
  b.Node("Gather", "lookup_tied", {"tied", "ids"}, {"u"});
  b.Node("MatMul", "tied_projection", {"x", "tied"}, {"z"});
  ModelProto& model = b.model();
  auto report = QuantizeDynamic(model, {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  ASSERT_EQ(report->skipped.size(), 1u);
  EXPECT_EQ(report->skipped[0].node_name, "lookup_shared");
  EXPECT_EQ(report->skipped[0].reason, "the table is also read by Transpose 'reads_in_float', which needs it in float");
  EXPECT_EQ(Producer(model, "y")->input(0), "shared");
  EXPECT_EQ(report->quantized_nodes, (std::vector<std::string>{"tied_projection", "lookup_tied"}))
      << "a MatMul stores its own integer copy, so the lookup is quantized too";
  EXPECT_EQ(Init(model, "tied"), nullptr);
  ExpectTopological(model);
}

TEST(DynamicQuantGatherTest, LookupsThatAreNotRowsOfAConstantTableStayFloat) {
  ModelBuilder b(13);
  b.Input("ids", {2}).Input("runtime_table", {4, 3});
  b.Output("y1", {4, 2}).Output("y2", {2}).Output("y3", {2, 3}).Output("y4", {2, 3});
  b.Weight("table", {4, 3}, 1.0f, 50).Weight("vector", {6}, 1.0f, 51).Weight("small", {2, 3}, 1.0f, 52);
  SetInt(b.Node("Gather", "columns", {"table", "ids"}, {"y1"}), "axis", 1);
  b.Node("Gather", "rank1", {"vector", "ids"}, {"y2"});
  b.Node("Gather", "runtime", {"runtime_table", "ids"}, {"y3"});
  b.Node("Gather", "tiny", {"small", "ids"}, {"y4"});
  ModelProto& model = b.model();
  const ModelProto original = model;
  DynamicQuantOptions options;
  options.min_quant_weight_size = 6;
  auto report = QuantizeDynamic(model, options);
  ASSERT_TRUE(report.ok()) << report.status().message();
  std::map<std::string, std::string> reasons;
  for (const auto& skipped : report->skipped) reasons[skipped.node_name] = skipped.reason;
  EXPECT_EQ(reasons["columns"], "axis 1: only row lookups (axis 0) are quantized");
  EXPECT_EQ(reasons["rank1"], "table has rank 1, rows need rank 2 or more");
  EXPECT_EQ(reasons["runtime"], "data input is not a constant initializer");
  EXPECT_EQ(reasons["tiny"], "6 table elements ≤ min_quant_weight_size 6");
  EXPECT_TRUE(report->quantized_nodes.empty());
  EXPECT_EQ(model.SerializeAsString(), original.SerializeAsString()) << "nothing changes";
}

}  // namespace
}  // namespace quantd
