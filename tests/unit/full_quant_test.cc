#include "worker/quant/full_quant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "worker/onnx/graph_view.h"
#include "worker/onnx/tensor_util.h"
#include "worker/runtime/executor.h"

namespace quantd {
namespace {

void AddValue(onnx::ValueInfoProto* info, const std::string& name, std::vector<int64_t> dims) {
  info->set_name(name);
  auto* type = info->mutable_type()->mutable_tensor_type();
  type->set_elem_type(onnx::TensorProto::FLOAT);
  for (auto d : dims) type->mutable_shape()->add_dim()->set_dim_value(d);
}

// input -> Conv(w, b) -> Relu -> MaxPool -> Flatten -> Gemm -> logits
onnx::ModelProto SmallConvNet() {
  onnx::ModelProto model;
  model.set_ir_version(8);
  auto* opset = model.add_opset_import();
  opset->set_version(13);
  auto* graph = model.mutable_graph();
  AddValue(graph->add_input(), "input", {1, 2, 4, 4});
  std::vector<float> w(3 * 2 * 3 * 3), b = {0.5f, -0.25f, 0.125f}, gw(10 * 12), gb(10, 0.1f);
  for (size_t i = 0; i < w.size(); ++i) w[i] = std::sin(static_cast<float>(i)) * (1 + static_cast<float>(i / 18));
  for (size_t i = 0; i < gw.size(); ++i) gw[i] = std::cos(static_cast<float>(i)) * 0.3f;
  const int64_t w_dims[] = {3, 2, 3, 3}, b_dims[] = {3}, gw_dims[] = {10, 12}, gb_dims[] = {10};
  *graph->add_initializer() = MakeFloatTensor("w", w_dims, w);
  *graph->add_initializer() = MakeFloatTensor("b", b_dims, b);
  *graph->add_initializer() = MakeFloatTensor("gw", gw_dims, gw);
  *graph->add_initializer() = MakeFloatTensor("gb", gb_dims, gb);
  auto add = [&](const std::string& op, const std::string& name, std::vector<std::string> in, const std::string& out) {
    auto* node = graph->add_node();
    node->set_op_type(op);
    node->set_name(name);
    for (auto& i : in) node->add_input(i);
    node->add_output(out);
    return node;
  };
  auto* conv = add("Conv", "conv", {"input", "w", "b"}, "conv_out");
  auto* pads = conv->add_attribute();
  pads->set_name("pads");
  pads->set_type(onnx::AttributeProto::INTS);
  for (int i = 0; i < 4; ++i) pads->add_ints(1);
  add("Relu", "relu", {"conv_out"}, "relu_out");
  auto* pool = add("MaxPool", "pool", {"relu_out"}, "pool_out");
  auto* kernel = pool->add_attribute();
  kernel->set_name("kernel_shape");
  kernel->set_type(onnx::AttributeProto::INTS);
  kernel->add_ints(2);
  kernel->add_ints(2);
  auto* strides = pool->add_attribute();
  strides->set_name("strides");
  strides->set_type(onnx::AttributeProto::INTS);
  strides->add_ints(2);
  strides->add_ints(2);
  add("Flatten", "flatten", {"pool_out"}, "flat");
  auto* gemm = add("Gemm", "fc", {"flat", "gw", "gb"}, "logits");
  auto* trans = gemm->add_attribute();
  trans->set_name("transB");
  trans->set_type(onnx::AttributeProto::INT);
  trans->set_i(1);
  AddValue(graph->add_output(), "logits", {1, 10});
  return model;
}

CalibrationTable Table() {
  return {{"input", {-1.0f, 1.0f}},  {"conv_out", {-3.0f, 5.0f}}, {"relu_out", {0.0f, 5.0f}},
          {"pool_out", {0.0f, 4.0f}}, {"flat", {0.0f, 4.0f}},     {"logits", {-8.0f, 8.0f}}};
}

const onnx::NodeProto* FindNode(const onnx::GraphProto& graph, const std::string& name) {
  for (const auto& node : graph.node()) {
    if (node.name() == name) return &node;
  }
  return nullptr;
}

TEST(FullQuantTest, ActivationParamsIncludeZeroAndMatchTheScheme) {
  auto asym = ActivationParams({0.0f, 5.1f}, ActivationScheme::kUint8Asymmetric);
  EXPECT_FLOAT_EQ(asym.scale, 5.1f / 255.0f);
  EXPECT_EQ(asym.zero_point, 0);
  auto shifted = ActivationParams({-1.0f, 3.0f}, ActivationScheme::kUint8Asymmetric);
  EXPECT_FLOAT_EQ(shifted.scale, 4.0f / 255.0f);
  EXPECT_EQ(shifted.zero_point, 64);  // round(1 / (4/255)) = round(63.75)
  auto positive = ActivationParams({2.0f, 3.0f}, ActivationScheme::kUint8Asymmetric);
  EXPECT_FLOAT_EQ(positive.scale, 3.0f / 255.0f) << "the range is widened to include 0";
  auto sym = ActivationParams({-1.0f, 3.0f}, ActivationScheme::kInt8Symmetric);
  EXPECT_FLOAT_EQ(sym.scale, 3.0f / 127.0f);
  EXPECT_EQ(sym.zero_point, 0);
}

TEST(FullQuantTest, InsertsQdqAroundQuantizedNodesWithInt32BiasAtInputTimesWeightScale) {
  auto model = SmallConvNet();
  auto report = QuantizeStatic(model, Table(), {});
  ASSERT_TRUE(report.ok()) << report.status().message();
  const auto& graph = model.graph();
  GraphView view(graph);
  // Conv reads dequantized input, weight and bias.
  const auto* conv = FindNode(graph, "conv");
  ASSERT_NE(conv, nullptr);
  for (int i = 0; i < 3; ++i) {
    int producer = view.ProducerIndex(conv->input(i));
    ASSERT_GE(producer, 0) << conv->input(i);
    EXPECT_EQ(graph.node(producer).op_type(), "DequantizeLinear") << "input " << i;
  }
  // The float weight is gone; an int8 per-channel weight replaced it.
  EXPECT_EQ(view.Initializer("w"), nullptr);
  const auto* bias_dq = &graph.node(view.ProducerIndex(conv->input(2)));
  const auto* bias_q = view.Initializer(bias_dq->input(0));
  ASSERT_NE(bias_q, nullptr);
  EXPECT_EQ(bias_q->data_type(), onnx_type::kInt32);
  const auto* weight_dq = &graph.node(view.ProducerIndex(conv->input(1)));
  auto weight_scales = ReadFloatTensor(*view.Initializer(weight_dq->input(1)));
  auto bias_scales = ReadFloatTensor(*view.Initializer(bias_dq->input(1)));
  ASSERT_EQ(weight_scales->size(), 3u);
  auto input_params = ActivationParams({-1.0f, 1.0f}, ActivationScheme::kUint8Asymmetric);
  const std::vector<float> bias = {0.5f, -0.25f, 0.125f};
  const auto* q = reinterpret_cast<const int32_t*>(bias_q->raw_data().data());
  for (int c = 0; c < 3; ++c) {
    EXPECT_FLOAT_EQ((*bias_scales)[static_cast<size_t>(c)], input_params.scale * (*weight_scales)[static_cast<size_t>(c)]);
    EXPECT_NEAR(q[c] * (*bias_scales)[static_cast<size_t>(c)], bias[static_cast<size_t>(c)],
                (*bias_scales)[static_cast<size_t>(c)] / 2 + 1e-7);
  }
  // The graph output stays float and keeps its name.
  EXPECT_EQ(graph.output(0).name(), "logits");
  EXPECT_EQ(graph.node(view.ProducerIndex("logits")).op_type(), "Gemm");
}

TEST(FullQuantTest, DataMovementOpsReuseTheirInputParameters) {
  auto model = SmallConvNet();
  auto report = QuantizeStatic(model, Table(), {});
  ASSERT_TRUE(report.ok());
  std::map<std::string, const TensorQuantParam*> by_tensor;
  for (const auto& param : report->params) by_tensor[param.tensor_name] = &param;
  ASSERT_TRUE(by_tensor.count("relu_out") && by_tensor.count("pool_out") && by_tensor.count("flat"));
  // MaxPool and Flatten pass the Relu output's scale through, although the
  // table says otherwise, so ONNX Runtime can drop their Q/DQ pairs.
  EXPECT_EQ(by_tensor["pool_out"]->scales, by_tensor["relu_out"]->scales);
  EXPECT_EQ(by_tensor["flat"]->scales, by_tensor["relu_out"]->scales);
  EXPECT_EQ(by_tensor["relu_out"]->zero_points[0], 0) << "Relu output range starts at 0";
  // Conv feeding only a Relu: ONNX Runtime fuses the pair, so the tensor
  // between them carries no Q/DQ round trip.
  EXPECT_EQ(by_tensor.count("conv_out"), 0u);
  for (const auto& node : model.graph().node()) {
    if (node.op_type() == "QuantizeLinear") {
      EXPECT_NE(node.input(0), "conv_out");
    }
    if (node.op_type() == "Relu") {
      EXPECT_EQ(node.input(0), "conv_out");
    }
  }
}

TEST(FullQuantTest, SkippedNodesStayFloatAndBiasCorrectionIsApplied) {
  auto model = SmallConvNet();
  FullQuantOptions options;
  options.skip_quant_node = {"fc"};
  options.input_channel_means["conv"] = {0.5, -0.25};
  auto report = QuantizeStatic(model, Table(), options);
  ASSERT_TRUE(report.ok());
  GraphView view(model.graph());
  const auto* fc = FindNode(model.graph(), "fc");
  EXPECT_NE(view.Initializer(fc->input(1)), nullptr) << "skipped Gemm keeps its float weight";
  ASSERT_FALSE(report->skipped.empty());
  EXPECT_EQ(report->skipped[0].node_name, "fc");
  EXPECT_EQ(report->skipped[0].reason, "in skip_quant_node");
  const TensorQuantParam* bias = nullptr;
  for (const auto& param : report->params) {
    if (param.tensor_name == "b") bias = &param;
  }
  ASSERT_NE(bias, nullptr);
  // Independent computation of -(W_q - W).E[x]: per output channel c,
  // W_q = round(W / s_c) * s_c with s_c = max|W_c| / 127, summed over the
  // kernel window and weighted by the input channel's mean.
  std::vector<float> w(3 * 2 * 3 * 3);
  for (size_t i = 0; i < w.size(); ++i) w[i] = std::sin(static_cast<float>(i)) * (1 + static_cast<float>(i / 18));
  const double means[] = {0.5, -0.25};
  std::vector<float> expected(3);
  for (int c = 0; c < 3; ++c) {
    float max_abs = 0;
    for (int j = 0; j < 18; ++j) max_abs = std::max(max_abs, std::fabs(w[static_cast<size_t>(c * 18 + j)]));
    float scale = max_abs / 127.0f;
    double total = 0;
    for (int j = 0; j < 18; ++j) {
      float value = w[static_cast<size_t>(c * 18 + j)];
      total += (std::nearbyint(value / scale) * scale - value) * means[j / 9];
    }
    expected[static_cast<size_t>(c)] = static_cast<float>(-total);
  }
  ASSERT_EQ(bias->correction.size(), 3u);
  for (int c = 0; c < 3; ++c) EXPECT_NEAR(bias->correction[static_cast<size_t>(c)], expected[static_cast<size_t>(c)], 1e-5);
  EXPECT_EQ(report->bias_corrected_nodes, 1);
  const auto* conv = FindNode(model.graph(), "conv");
  const auto& dq = model.graph().node(view.ProducerIndex(conv->input(2)));
  auto scales = ReadFloatTensor(*view.Initializer(dq.input(1)));
  const auto* q = reinterpret_cast<const int32_t*>(view.Initializer(dq.input(0))->raw_data().data());
  EXPECT_NEAR(q[0] * (*scales)[0], 0.5f + expected[0], (*scales)[0]);
  EXPECT_NEAR(q[2] * (*scales)[2], 0.125f + expected[2], (*scales)[2]);
}

TEST(FullQuantTest, NvgpuUsesInt8SymmetricActivations) {
  auto model = SmallConvNet();
  FullQuantOptions options;
  options.activations = ActivationScheme::kInt8Symmetric;
  ASSERT_TRUE(QuantizeStatic(model, Table(), options).ok());
  int quantize_nodes = 0;
  GraphView view(model.graph());
  for (const auto& node : model.graph().node()) {
    if (node.op_type() != "QuantizeLinear") continue;
    ++quantize_nodes;
    const auto* zero_point = view.Initializer(node.input(2));
    ASSERT_NE(zero_point, nullptr);
    EXPECT_EQ(zero_point->data_type(), onnx_type::kInt8);
    EXPECT_EQ(zero_point->raw_data(), std::string(1, '\0'));
  }
  EXPECT_GE(quantize_nodes, 4);
}

// The model's logits for a fixed input, run in quantd's executor.
std::vector<float> Logits(const onnx::ModelProto& model) {
  auto executor = runtime::Executor::Create(model, {});
  EXPECT_TRUE(executor.ok()) << executor.status().message();
  if (!executor.ok()) return {};
  runtime::Tensor input(runtime::DataType::kFloat, {1, 2, 4, 4});
  for (int64_t i = 0; i < input.size(); ++i) input.data<float>()[i] = std::sin(0.7f * static_cast<float>(i));
  auto outputs = (*executor)->Run({{"input", input}});
  EXPECT_TRUE(outputs.ok()) << outputs.status().message();
  if (!outputs.ok()) return {};
  const runtime::Tensor& logits = outputs->at("logits");
  return {logits.data<float>(), logits.data<float>() + logits.size()};
}

TEST(FullQuantTest, PadsTheInputChannelsOfAConvReadingAGraphInputToAMultipleOfFour) {
  auto model = SmallConvNet();  // the input has 2 channels
  ASSERT_TRUE(QuantizeStatic(model, Table(), {}).ok());
  ASSERT_EQ(ConvInputsToPad(model), 1);
  const auto* conv = FindNode(model.graph(), "conv");
  const std::string weight_name = model.graph().node(GraphView(model.graph()).ProducerIndex(conv->input(1))).input(0);
  const std::string weights_before = GraphView(model.graph()).Initializer(weight_name)->raw_data();
  const std::vector<float> expected = Logits(model);

  auto padded = model;
  ASSERT_EQ(PadConvInputChannels(padded), 1);
  EXPECT_EQ(ConvInputsToPad(padded), 0) << "padding twice changes nothing";
  const auto& graph = padded.graph();
  GraphView view(graph);
  // input -> Pad (2 zero channels at the end of dim 1) -> QuantizeLinear.
  const auto& pad = graph.node(0);
  ASSERT_EQ(pad.op_type(), "Pad");
  EXPECT_EQ(pad.input(0), "input");
  const auto* pads = view.Initializer(pad.input(1));
  ASSERT_NE(pads, nullptr);
  ASSERT_EQ(pads->data_type(), onnx_type::kInt64);
  std::vector<int64_t> pad_values(pads->raw_data().size() / sizeof(int64_t));
  std::memcpy(pad_values.data(), pads->raw_data().data(), pads->raw_data().size());
  EXPECT_EQ(pad_values, (std::vector<int64_t>{0, 0, 0, 0, 0, 2, 0, 0}));
  const auto& readers = view.ConsumerIndices(pad.output(0));
  ASSERT_EQ(readers.size(), 1u);
  EXPECT_EQ(graph.node(readers[0]).op_type(), "QuantizeLinear");
  // Weights [3, 2, 3, 3] -> [3, 4, 3, 3]: each filter's old taps, then zeros.
  const auto* weights = view.Initializer(weight_name);
  ASSERT_NE(weights, nullptr);
  EXPECT_EQ(DimsOf(*weights), (std::vector<int64_t>{3, 4, 3, 3}));
  const std::string& raw = weights->raw_data();
  ASSERT_EQ(raw.size(), 3u * 4 * 9);
  for (size_t m = 0; m < 3; ++m) {
    EXPECT_EQ(raw.substr(m * 36, 18), weights_before.substr(m * 18, 18)) << "filter " << m;
    EXPECT_EQ(raw.substr(m * 36 + 18, 18), std::string(18, '\0')) << "filter " << m;
  }
  // The outputs do not change.
  const std::vector<float> actual = Logits(padded);
  ASSERT_EQ(actual.size(), expected.size());
  ASSERT_FALSE(expected.empty());
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_NEAR(actual[i], expected[i], 1e-5f) << i;
}

TEST(FullQuantTest, LeavesConvInputsAloneThatOthersReadOrThatAreNotGraphInputs) {
  // The graph input is also read by another node: padding it would change
  // what that node sees.
  auto shared = SmallConvNet();
  ASSERT_TRUE(QuantizeStatic(shared, Table(), {}).ok());
  auto* identity = shared.mutable_graph()->add_node();
  identity->set_op_type("Identity");
  identity->set_name("copy");
  identity->add_input("input");
  identity->add_output("input_copy");
  AddValue(shared.mutable_graph()->add_output(), "input_copy", {1, 2, 4, 4});
  EXPECT_EQ(ConvInputsToPad(shared), 0);
  EXPECT_EQ(PadConvInputChannels(shared), 0);
  // The Conv itself kept in float: no int8 weights to pad.
  auto skipped = SmallConvNet();
  FullQuantOptions options;
  options.skip_quant_node = {"conv"};
  ASSERT_TRUE(QuantizeStatic(skipped, Table(), options).ok());
  EXPECT_EQ(ConvInputsToPad(skipped), 0);
}

}  // namespace
}  // namespace quantd
