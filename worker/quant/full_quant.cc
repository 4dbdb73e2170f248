#include "worker/quant/full_quant.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "worker/onnx/graph_view.h"
#include "worker/onnx/opset_upgrade.h"
#include "worker/onnx/tensor_util.h"
#include "worker/quant/quant_math.h"

namespace quantd {
namespace {

// Ops that carry weights: input 1 is the weight, input 2 the bias.
bool IsWeightedOp(const std::string& op) {
  return op == "Conv" || op == "ConvTranspose" || op == "Gemm" || op == "MatMul";
}

// Ops that only move or select values: their output is quantized with the
// input's parameters, so ONNX Runtime can drop the Q/DQ pair around them.
bool IsSameScaleOp(const std::string& op) {
  static const std::set<std::string> kOps = {"MaxPool", "Reshape",   "Flatten", "Transpose", "Squeeze",
                                             "Unsqueeze", "Resize", "Upsample", "GlobalMaxPool"};
  return kOps.count(op) > 0;
}

int WeightAxis(const onnx::NodeProto& node, int weight_rank) {
  if (node.op_type() == "Conv") return 0;
  if (node.op_type() == "ConvTranspose") return 1;
  if (node.op_type() == "Gemm") {
    for (const auto& attribute : node.attribute()) {
      if (attribute.name() == "transB" && attribute.i() != 0) return 0;
    }
    return 1;
  }
  return weight_rank - 1;  // MatMul: output columns
}

onnx::TensorProto ScalarTensor(const std::string& name, int32_t type, const std::string& raw) {
  onnx::TensorProto tensor;
  tensor.set_name(name);
  tensor.set_data_type(type);
  tensor.set_raw_data(raw);
  return tensor;
}

std::string FloatBytes(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

onnx::NodeProto MakeNode(const std::string& op, const std::string& name, std::vector<std::string> inputs,
                         const std::string& output, int axis = -1000) {
  onnx::NodeProto node;
  node.set_op_type(op);
  node.set_name(name);
  for (auto& input : inputs) node.add_input(input);
  node.add_output(output);
  if (axis != -1000) {
    auto* attribute = node.add_attribute();
    attribute->set_name("axis");
    attribute->set_type(onnx::AttributeProto::INT);
    attribute->set_i(axis);
  }
  return node;
}

int64_t IntAttribute(const onnx::NodeProto& node, const std::string& name, int64_t fallback) {
  for (const auto& attribute : node.attribute()) {
    if (attribute.name() == name) return attribute.i();
  }
  return fallback;
}

// -(W_q - W) . E[x] per output channel, for Conv (any group count) and
// Gemm/MatMul with a 2-D weight. Empty when the layout is not one of those
// or the means do not fit.
std::vector<float> WeightErrorShift(const onnx::NodeProto& node, const std::vector<int64_t>& dims,
                                    const std::vector<float>& error, const std::vector<double>& input_means) {
  std::vector<float> shift;
  if (node.op_type() == "Conv" && dims.size() >= 3) {
    const int64_t out_channels = dims[0], group_in = dims[1], group = IntAttribute(node, "group", 1);
    int64_t spatial = 1;
    for (size_t i = 2; i < dims.size(); ++i) spatial *= dims[i];
    if (group <= 0 || out_channels % group != 0 || static_cast<int64_t>(input_means.size()) != group_in * group) return {};
    const int64_t per_group = out_channels / group;
    shift.assign(static_cast<size_t>(out_channels), 0.0f);
    for (int64_t c = 0; c < out_channels; ++c) {
      double total = 0;
      for (int64_t k = 0; k < group_in; ++k) {
        const float* e = &error[static_cast<size_t>((c * group_in + k) * spatial)];
        double sum = 0;
        for (int64_t s = 0; s < spatial; ++s) sum += e[s];
        total += sum * input_means[static_cast<size_t>((c / per_group) * group_in + k)];
      }
      shift[static_cast<size_t>(c)] = static_cast<float>(-total);
    }
    return shift;
  }
  if ((node.op_type() == "Gemm" || node.op_type() == "MatMul") && dims.size() == 2) {
    // transA, or alpha/beta other than 1, would change the shift; only
    // plain Gemm is corrected.
    for (const auto& attribute : node.attribute()) {
      if (attribute.name() == "transA" && attribute.i() != 0) return {};
      if ((attribute.name() == "alpha" || attribute.name() == "beta") && attribute.f() != 1.0f) return {};
    }
    const bool transposed = node.op_type() == "Gemm" && IntAttribute(node, "transB", 0) != 0;
    const int64_t k_size = transposed ? dims[1] : dims[0], n_size = transposed ? dims[0] : dims[1];
    if (static_cast<int64_t>(input_means.size()) != k_size) return {};
    shift.assign(static_cast<size_t>(n_size), 0.0f);
    for (int64_t n = 0; n < n_size; ++n) {
      double total = 0;
      for (int64_t k = 0; k < k_size; ++k) {
        total += error[static_cast<size_t>(transposed ? n * k_size + k : k * n_size + n)] * input_means[static_cast<size_t>(k)];
      }
      shift[static_cast<size_t>(n)] = static_cast<float>(-total);
    }
  }
  return shift;
}

// A quantized Conv whose input channels PadConvInputChannels pads.
struct PaddableConv {
  int quantize = -1;     // the QuantizeLinear reading the graph input
  int weight = -1;       // the int8 weight initializer
  std::string input;     // the graph input
  int64_t channels = 0;  // input channels now; padded to a multiple of 4
};

std::vector<PaddableConv> FindPaddableConvs(const onnx::ModelProto& model) {
  if (DefaultOpset(model) < 11) return {};  // Pad takes its pads as an input from opset 11
  const onnx::GraphProto& graph = model.graph();
  GraphView view(graph);
  // The tensor's only reader, or -1.
  auto only_reader = [&](const std::string& tensor) {
    const auto& readers = view.ConsumerIndices(tensor);
    return readers.size() == 1 && !view.IsGraphOutput(tensor) ? readers[0] : -1;
  };
  // The DequantizeLinear producing `tensor` for `reader` alone, or nullptr.
  auto private_dequantize = [&](const std::string& tensor, int reader) -> const onnx::NodeProto* {
    const int producer = view.ProducerIndex(tensor);
    if (producer < 0 || only_reader(tensor) != reader) return nullptr;
    const auto& node = graph.node(producer);
    return node.op_type() == "DequantizeLinear" && IsDefaultDomain(node.domain()) ? &node : nullptr;
  };
  std::vector<PaddableConv> found;
  for (int index = 0; index < graph.node_size(); ++index) {
    const auto& conv = graph.node(index);
    if (conv.op_type() != "Conv" || !IsDefaultDomain(conv.domain()) || conv.input_size() < 2) continue;
    if (IntAttribute(conv, "group", 1) != 1) continue;
    const onnx::NodeProto* input_dq = private_dequantize(conv.input(0), index);
    const onnx::NodeProto* weight_dq = private_dequantize(conv.input(1), index);
    if (input_dq == nullptr || weight_dq == nullptr) continue;
    const int weight = view.InitializerIndex(weight_dq->input(0));
    if (weight < 0 || only_reader(weight_dq->input(0)) != view.ProducerIndex(conv.input(1))) continue;
    const auto& weights = graph.initializer(weight);
    if (weights.data_type() != onnx_type::kInt8 || weights.dims_size() != 4 || !weights.has_raw_data()) continue;
    const int64_t channels = weights.dims(1);
    if (channels % 4 == 0) continue;
    const int quantize = view.ProducerIndex(input_dq->input(0));
    if (quantize < 0 || only_reader(input_dq->input(0)) != view.ProducerIndex(conv.input(0))) continue;
    const auto& q = graph.node(quantize);
    if (q.op_type() != "QuantizeLinear" || q.input_size() == 0) continue;
    const std::string& input = q.input(0);
    if (!view.IsGraphInput(input) || view.Initializer(input) != nullptr || only_reader(input) != quantize) continue;
    found.push_back({quantize, weight, input, channels});
  }
  return found;
}

}  // namespace

int ConvInputsToPad(const onnx::ModelProto& model) { return static_cast<int>(FindPaddableConvs(model).size()); }

int PadConvInputChannels(onnx::ModelProto& model) {
  const std::vector<PaddableConv> convs = FindPaddableConvs(model);
  if (convs.empty()) return 0;
  NameAllocator names(model);
  onnx::GraphProto& graph = *model.mutable_graph();
  std::vector<onnx::NodeProto> pads;
  for (const PaddableConv& conv : convs) {
    const int64_t padded = (conv.channels + 3) / 4 * 4;
    // Weights [M, C, kh, kw] -> [M, padded, kh, kw], the new taps zero.
    onnx::TensorProto& weights = *graph.mutable_initializer(conv.weight);
    const int64_t filters = weights.dims(0), taps = weights.dims(2) * weights.dims(3);
    const std::string& old_raw = weights.raw_data();
    std::string raw(static_cast<size_t>(filters * padded * taps), '\0');
    for (int64_t m = 0; m < filters; ++m) {
      std::copy_n(old_raw.data() + m * conv.channels * taps, conv.channels * taps, raw.data() + m * padded * taps);
    }
    weights.set_raw_data(std::move(raw));
    weights.set_dims(1, padded);
    // Pad's `pads` input: begin N, C, H, W, then end N, C, H, W.
    const std::string pads_name = names.Make(conv.input + "_channel_pads");
    const int64_t pad_dims[] = {8};
    const int64_t pad_values[] = {0, 0, 0, 0, 0, padded - conv.channels, 0, 0};
    *graph.add_initializer() = MakeInt64Tensor(pads_name, pad_dims, pad_values);
    const std::string padded_input = names.Make(conv.input + "_padded");
    pads.push_back(MakeNode("Pad", names.Make(conv.input + "_Pad"), {conv.input, pads_name}, padded_input));
    graph.mutable_node(conv.quantize)->set_input(0, padded_input);
  }
  // The Pads read graph inputs only, so they may go first.
  google::protobuf::RepeatedPtrField<onnx::NodeProto> nodes;
  for (auto& pad : pads) *nodes.Add() = std::move(pad);
  for (auto& node : *graph.mutable_node()) *nodes.Add() = std::move(node);
  graph.mutable_node()->Swap(&nodes);
  return static_cast<int>(convs.size());
}

bool IsQuantizableOp(const std::string& op_type) {
  static const std::set<std::string> kOps = {
      "Conv",    "ConvTranspose", "Gemm",    "MatMul",        "Add",       "Mul",     "Concat",
      "MaxPool", "AveragePool",   "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample", "Relu",
      "Clip",    "LeakyRelu",     "Sigmoid", "Reshape",       "Flatten",   "Transpose", "Squeeze", "Unsqueeze"};
  return kOps.count(op_type) > 0;
}

QuantParams ActivationParams(ActivationRange range, ActivationScheme scheme) {
  float lo = std::min(range.min, 0.0f), hi = std::max(range.max, 0.0f);
  if (!std::isfinite(lo) || !std::isfinite(hi)) lo = hi = 0.0f;
  QuantParams params;
  if (scheme == ActivationScheme::kInt8Symmetric) {
    float bound = std::max(std::fabs(lo), std::fabs(hi));
    params.scale = bound > 0 ? bound / 127.0f : 1.0f;
    params.zero_point = 0;
    return params;
  }
  float span = hi - lo;
  params.scale = span > 0 ? span / 255.0f : 1.0f;
  params.zero_point = static_cast<int32_t>(std::clamp(RoundHalfToEven(-lo / params.scale), 0.0, 255.0));
  return params;
}

StatusOr<FullQuantReport> QuantizeStatic(onnx::ModelProto& model, const CalibrationTable& table,
                                         const FullQuantOptions& options) {
  if (DefaultOpset(model) < 13) QUANTD_RETURN_IF_ERROR(UpgradeOpset(model, 13));
  FullQuantReport report;
  report.output_opset = DefaultOpset(model);
  onnx::GraphProto& graph = *model.mutable_graph();
  GraphView view(graph);
  QUANTD_ASSIGN_OR_RETURN(auto order, view.TopologicalOrder());
  std::set<std::string> original_initializers;
  for (const auto& initializer : graph.initializer()) original_initializers.insert(initializer.name());
  NameAllocator names(model);
  const bool symmetric = options.activations == ActivationScheme::kInt8Symmetric;
  const int32_t activation_type = symmetric ? onnx_type::kInt8 : onnx_type::kUint8;

  // 1. Which nodes are quantized.
  std::vector<bool> quantized(static_cast<size_t>(graph.node_size()), false);
  for (int index : order) {
    const auto& node = graph.node(index);
    if (!IsDefaultDomain(node.domain()) || !IsQuantizableOp(node.op_type())) continue;
    if (options.skip_quant_node.count(node.name())) {
      report.skipped.push_back({node.name(), node.op_type(), "in skip_quant_node"});
      continue;
    }
    if (node.input_size() == 0 || table.find(node.input(0)) == table.end()) {
      report.skipped.push_back({node.name(), node.op_type(), "its input is not a calibrated float activation"});
      continue;
    }
    if (IsWeightedOp(node.op_type()) && node.input_size() > 1) {
      const auto* weight = view.Initializer(node.input(1));
      bool activation_weight = !weight && table.count(node.input(1)) && node.op_type() == "MatMul";
      if (!activation_weight && (!weight || weight->data_type() != onnx_type::kFloat)) {
        report.skipped.push_back({node.name(), node.op_type(), "its weight is not a float constant"});
        continue;
      }
    }
    quantized[static_cast<size_t>(index)] = true;
    report.quantized_nodes.push_back(node.name());
  }

  // 2. Parameters per activation tensor; same-scale ops pass theirs on.
  std::map<std::string, QuantParams> activation_params;
  auto params_of = [&](const std::string& tensor) -> const QuantParams* {
    auto it = activation_params.find(tensor);
    if (it != activation_params.end()) return &it->second;
    auto range = table.find(tensor);
    if (range == table.end()) return nullptr;
    return &(activation_params[tensor] = ActivationParams(range->second, options.activations));
  };
  // A Conv/Gemm/MatMul/Add feeding only a quantized Relu/Clip is fused with
  // it by ONNX Runtime, so the tensor between them stays float: a Q/DQ pair
  // there would force a dequantize/quantize round trip at run time and add
  // rounding error for nothing.
  std::set<std::string> fused_tensors;
  for (int index : order) {
    if (!quantized[static_cast<size_t>(index)]) continue;
    const auto& node = graph.node(index);
    if (!IsWeightedOp(node.op_type()) && node.op_type() != "Add") continue;
    if (node.output_size() != 1 || view.IsGraphOutput(node.output(0))) continue;
    const auto& readers = view.ConsumerIndices(node.output(0));
    if (readers.size() != 1 || !quantized[static_cast<size_t>(readers[0])]) continue;
    const auto& reader = graph.node(readers[0]);
    if (reader.op_type() == "Relu" || reader.op_type() == "Clip") fused_tensors.insert(node.output(0));
  }
  std::set<std::string> to_quantize;
  std::map<std::string, std::pair<std::string, std::string>> first_user;  // tensor -> node name, type
  for (int index : order) {
    if (!quantized[static_cast<size_t>(index)]) continue;
    const auto& node = graph.node(index);
    // Only data inputs are quantized: weights get their own treatment, and
    // Clip's bounds, Resize's scales and the like must stay plain constants.
    int activation_inputs = node.input_size();
    if (IsWeightedOp(node.op_type()) && view.Initializer(node.input(1))) activation_inputs = 1;
    if (node.op_type() != "Add" && node.op_type() != "Mul" && node.op_type() != "Concat" &&
        node.op_type() != "MatMul") {
      activation_inputs = std::min(activation_inputs, 1);
    }
    for (int i = 0; i < activation_inputs; ++i) {
      const auto& input = node.input(i);
      if (input.empty() || view.Initializer(input) || fused_tensors.count(input) || !params_of(input)) continue;
      to_quantize.insert(input);
      first_user.emplace(input, std::make_pair(node.name(), node.op_type()));
    }
    for (const auto& output : node.output()) {
      if (output.empty() || view.IsGraphOutput(output) || !table.count(output) || fused_tensors.count(output)) continue;
      if (IsSameScaleOp(node.op_type()) && activation_params.count(node.input(0))) {
        activation_params[output] = activation_params[node.input(0)];
      }
      if (!params_of(output)) continue;
      to_quantize.insert(output);
      first_user.emplace(output, std::make_pair(node.name(), node.op_type()));
    }
  }

  // 3. Q/DQ pairs for activations, placed right after the producer.
  std::map<int, std::vector<onnx::NodeProto>> after_node;  // -1: before everything
  std::unordered_map<std::string, std::string> dequantized_name;
  std::vector<onnx::TensorProto> new_initializers;
  for (const auto& tensor : to_quantize) {
    const QuantParams& params = activation_params.at(tensor);
    std::string scale = names.Make(tensor + "_scale"), zero_point = names.Make(tensor + "_zero_point");
    std::string q_out = names.Make(tensor + "_quantized"), dq_out = names.Make(tensor + "_dequantized");
    new_initializers.push_back(ScalarTensor(scale, onnx_type::kFloat, FloatBytes({params.scale})));
    char zp_byte = static_cast<char>(symmetric ? static_cast<int8_t>(params.zero_point) : static_cast<uint8_t>(params.zero_point));
    new_initializers.push_back(ScalarTensor(zero_point, activation_type, std::string(1, zp_byte)));
    int producer = view.ProducerIndex(tensor);
    auto& slot = after_node[producer];
    slot.push_back(MakeNode("QuantizeLinear", names.Make(tensor + "_QuantizeLinear"), {tensor, scale, zero_point}, q_out));
    slot.push_back(MakeNode("DequantizeLinear", names.Make(tensor + "_DequantizeLinear"), {q_out, scale, zero_point}, dq_out));
    dequantized_name[tensor] = dq_out;
    const auto& [user_name, user_type] = first_user.at(tensor);
    report.params.push_back({user_name, user_type, tensor, {}, 0, {params.scale}, {params.zero_point}, 8, {}});
  }

  // 4. Weights (int8 symmetric per channel) and biases (int32).
  std::map<std::string, std::string> dequantized_weight;  // "tensor@axis" -> DQ output
  std::map<std::string, std::vector<float>> weight_scales;
  std::map<std::string, std::vector<float>> weight_errors;  // dequantized - float
  for (int index : order) {
    if (!quantized[static_cast<size_t>(index)]) continue;
    auto& node = *graph.mutable_node(index);
    if (!IsWeightedOp(node.op_type()) || node.input_size() < 2) continue;
    const auto* weight = view.Initializer(node.input(1));
    if (!weight) continue;
    auto dims = DimsOf(*weight);
    int axis = WeightAxis(node, static_cast<int>(dims.size()));
    std::string key = node.input(1) + "@" + std::to_string(axis);
    if (!dequantized_weight.count(key)) {
      QUANTD_ASSIGN_OR_RETURN(auto values, ReadFloatTensor(*weight));
      QUANTD_ASSIGN_OR_RETURN(auto q, QuantizePerChannel(values, dims, axis, 8));
      std::string q_name = names.Make(node.input(1) + "_quantized"), s_name = names.Make(node.input(1) + "_scale");
      std::string zp_name = names.Make(node.input(1) + "_zero_point"), dq_name = names.Make(node.input(1) + "_dequantized");
      std::string raw(q.values.size(), '\0');
      for (size_t i = 0; i < q.values.size(); ++i) raw[i] = static_cast<char>(static_cast<int8_t>(q.values[i]));
      new_initializers.push_back(MakeRawTensor(q_name, onnx_type::kInt8, dims, raw));
      const int64_t channels[] = {static_cast<int64_t>(q.scales.size())};
      new_initializers.push_back(MakeRawTensor(s_name, onnx_type::kFloat, channels, FloatBytes(q.scales)));
      new_initializers.push_back(MakeRawTensor(zp_name, onnx_type::kInt8, channels, std::string(q.scales.size(), '\0')));
      after_node[-2 - index].push_back(
          MakeNode("DequantizeLinear", names.Make(node.input(1) + "_DequantizeLinear"), {q_name, s_name, zp_name}, dq_name, axis));
      dequantized_weight[key] = dq_name;
      weight_scales[key] = q.scales;
      if (!options.input_channel_means.empty()) {
        QUANTD_ASSIGN_OR_RETURN(const ChannelLayout layout, MakeChannelLayout(dims, axis));
        auto dequantized = DequantizePerChannel(q.values, q.scales, layout);
        for (size_t i = 0; i < dequantized.size(); ++i) dequantized[i] -= values[i];
        weight_errors[key] = std::move(dequantized);
      }
      int64_t elements = 1;
      for (auto d : dims) elements *= d;
      std::vector<int32_t> zeros(q.scales.size(), 0);
      report.params.push_back({node.name(), node.op_type(), node.input(1), dims, elements, q.scales, zeros, 8, {}});
    }
    const auto& scales = weight_scales[key];
    node.set_input(1, dequantized_weight[key]);

    // Bias correction: the weights' rounding error shifts every output
    // channel's mean by (W_q - W) . E[x]; the calibration data gives E[x]
    // per input channel, and the bias absorbs the shift.
    std::vector<float> correction;
    if (auto means = options.input_channel_means.find(node.name());
        means != options.input_channel_means.end() && weight_errors.count(key)) {
      correction = WeightErrorShift(node, dims, weight_errors[key], means->second);
    }

    // Bias: int32 with scale = input scale x weight scale, so integer
    // kernels add it to the accumulator directly.
    const int bias_index = 2;
    const QuantParams* input_params = params_of(node.input(0));
    if (!input_params || node.op_type() == "MatMul") continue;
    std::vector<float> bias_values;
    std::vector<int64_t> bias_dims;
    std::string bias_name;
    if (node.input_size() > bias_index && !node.input(bias_index).empty()) {
      const auto* bias = view.Initializer(node.input(bias_index));
      if (!bias || bias->data_type() != onnx_type::kFloat) continue;
      bias_dims = DimsOf(*bias);
      QUANTD_ASSIGN_OR_RETURN(bias_values, ReadFloatTensor(*bias));
      bias_name = node.input(bias_index);
    } else if (!correction.empty()) {
      // No bias yet: one is added to carry the correction.
      bias_values.assign(correction.size(), 0.0f);
      bias_dims = {static_cast<int64_t>(correction.size())};
      bias_name = names.Make(node.name() + "_bias");
      while (node.input_size() <= bias_index) node.add_input("");
    } else {
      continue;
    }
    if (bias_dims.size() != 1 || (scales.size() != 1 && bias_values.size() != scales.size())) continue;
    if (!correction.empty() && correction.size() == bias_values.size()) {
      for (size_t c = 0; c < bias_values.size(); ++c) bias_values[c] += correction[c];
      ++report.bias_corrected_nodes;
    } else {
      correction.clear();
    }
    std::vector<float> bias_scales(bias_values.size());
    std::string raw(bias_values.size() * sizeof(int32_t), '\0');
    auto* out = reinterpret_cast<int32_t*>(raw.data());
    for (size_t c = 0; c < bias_values.size(); ++c) {
      float scale = input_params->scale * scales[scales.size() == 1 ? 0 : c];
      bias_scales[c] = scale;
      double q = RoundHalfToEven(static_cast<double>(bias_values[c]) / scale);
      out[c] = static_cast<int32_t>(std::clamp(q, -2147483648.0, 2147483647.0));
    }
    std::string q_name = names.Make(bias_name + "_quantized");
    std::string s_name = names.Make(bias_name + "_scale");
    std::string dq_name = names.Make(bias_name + "_dequantized");
    const int64_t channels[] = {static_cast<int64_t>(bias_values.size())};
    new_initializers.push_back(MakeRawTensor(q_name, onnx_type::kInt32, channels, raw));
    new_initializers.push_back(MakeRawTensor(s_name, onnx_type::kFloat, channels, FloatBytes(bias_scales)));
    after_node[-2 - index].push_back(
        MakeNode("DequantizeLinear", names.Make(bias_name + "_DequantizeLinear"), {q_name, s_name}, dq_name, 0));
    std::vector<int32_t> zeros(bias_values.size(), 0);
    report.params.push_back({node.name(), node.op_type(), bias_name, bias_dims,
                             static_cast<int64_t>(bias_values.size()), bias_scales, zeros, 32, correction});
    node.set_input(bias_index, dq_name);
  }

  // 5. Rewire readers of quantized activations to the dequantized tensors.
  for (int index = 0; index < graph.node_size(); ++index) {
    auto& node = *graph.mutable_node(index);
    for (int i = 0; i < node.input_size(); ++i) {
      auto it = dequantized_name.find(node.input(i));
      if (it != dequantized_name.end()) node.set_input(i, it->second);
    }
  }
  for (const auto& initializer : new_initializers) *graph.add_initializer() = initializer;

  // 6. Node list in order: graph-input Q/DQ first; each original node is
  // preceded by its weight/bias DQs and followed by its outputs' Q/DQ.
  google::protobuf::RepeatedPtrField<onnx::NodeProto> nodes;
  for (auto& inserted : after_node[-1]) *nodes.Add() = std::move(inserted);
  for (int index : order) {
    for (auto& inserted : after_node[-2 - index]) *nodes.Add() = std::move(inserted);
    *nodes.Add() = graph.node(index);
    for (auto& inserted : after_node[index]) *nodes.Add() = std::move(inserted);
  }
  graph.mutable_node()->Swap(&nodes);

  // Float weights that nothing reads any more are dropped.
  std::set<std::string> read;
  for (const auto& node : graph.node()) {
    for (const auto& input : node.input()) read.insert(input);
  }
  auto* initializers = graph.mutable_initializer();
  initializers->erase(std::remove_if(initializers->begin(), initializers->end(),
                                     [&](const onnx::TensorProto& t) { return !read.count(t.name()); }),
                      initializers->end());
  auto* inputs = graph.mutable_input();
  inputs->erase(std::remove_if(inputs->begin(), inputs->end(),
                               [&](const onnx::ValueInfoProto& v) {
                                 return !read.count(v.name()) && original_initializers.count(v.name()) > 0;
                               }),
                inputs->end());
  return report;
}

}  // namespace quantd
