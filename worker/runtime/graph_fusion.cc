#include "worker/runtime/graph_fusion.h"

#include <limits>
#include <optional>
#include <unordered_map>

#include "worker/onnx/graph_view.h"
#include "worker/runtime/tensor.h"

namespace quantd::runtime {
namespace {

struct FusedActivation {
  std::string name;
  std::vector<float> params;
};

const onnx::AttributeProto* FindAttribute(const onnx::NodeProto& node, const std::string& name) {
  for (const auto& attr : node.attribute()) {
    if (attr.name() == name) return &attr;
  }
  return nullptr;
}

float FloatAttribute(const onnx::NodeProto& node, const std::string& name, float fallback) {
  const auto* attr = FindAttribute(node, name);
  return attr != nullptr && attr->type() == onnx::AttributeProto::FLOAT ? attr->f() : fallback;
}

std::optional<float> ScalarFromProto(const onnx::TensorProto& proto) {
  auto tensor = TensorFromProto(proto);
  if (!tensor.ok() || tensor->dtype() != DataType::kFloat || tensor->size() != 1) return std::nullopt;
  return tensor->data<float>()[0];
}

// Values of constant float scalars, from initializers and Constant nodes.
class ScalarConstants {
 public:
  ScalarConstants(const std::vector<onnx::NodeProto>& nodes, const onnx::GraphProto& graph) {
    for (const auto& init : graph.initializer()) initializers_.emplace(init.name(), &init);
    for (const auto& node : nodes) {
      if (node.op_type() != "Constant" || !IsDefaultDomain(node.domain()) || node.output_size() != 1) continue;
      if (const auto* value = FindAttribute(node, "value"); value != nullptr && value->has_t()) {
        if (auto scalar = ScalarFromProto(value->t())) constant_nodes_.emplace(node.output(0), *scalar);
      } else if (const auto* f = FindAttribute(node, "value_float"); f != nullptr) {
        constant_nodes_.emplace(node.output(0), f->f());
      }
    }
    for (const auto& input : graph.input()) graph_inputs_.insert(input.name());
  }

  std::optional<float> Get(const std::string& name) const {
    if (auto it = constant_nodes_.find(name); it != constant_nodes_.end()) return it->second;
    // An initializer that is also a graph input may be overridden at run time.
    if (graph_inputs_.count(name)) return std::nullopt;
    if (auto it = initializers_.find(name); it != initializers_.end()) return ScalarFromProto(*it->second);
    return std::nullopt;
  }

 private:
  std::unordered_map<std::string, const onnx::TensorProto*> initializers_;
  std::unordered_map<std::string, float> constant_nodes_;
  std::set<std::string> graph_inputs_;
};

std::optional<FusedActivation> AsFusedActivation(const onnx::NodeProto& node, int opset,
                                                 const ScalarConstants& constants) {
  if (!IsDefaultDomain(node.domain()) || node.input_size() < 1 || node.output_size() != 1) return std::nullopt;
  const std::string& op = node.op_type();
  if (op == "Relu" || op == "Sigmoid" || op == "Tanh") return FusedActivation{op, {}};
  if (op == "LeakyRelu") return FusedActivation{op, {FloatAttribute(node, "alpha", 0.01f)}};
  if (op == "HardSigmoid") {
    return FusedActivation{op, {FloatAttribute(node, "alpha", 0.2f), FloatAttribute(node, "beta", 0.5f)}};
  }
  if (op != "Clip") return std::nullopt;
  float lo = std::numeric_limits<float>::lowest();
  float hi = std::numeric_limits<float>::max();
  if (opset < 11) {
    lo = FloatAttribute(node, "min", lo);
    hi = FloatAttribute(node, "max", hi);
  } else {
    for (int i = 1; i < node.input_size() && i <= 2; ++i) {
      if (node.input(i).empty()) continue;
      auto value = constants.Get(node.input(i));
      if (!value) return std::nullopt;
      (i == 1 ? lo : hi) = *value;
    }
  }
  return FusedActivation{op, {lo, hi}};
}

}  // namespace

int FuseConvActivations(std::vector<onnx::NodeProto>& nodes, const onnx::GraphProto& graph, int default_opset,
                        const std::set<std::string>& keep) {
  std::set<std::string> graph_outputs;
  for (const auto& output : graph.output()) graph_outputs.insert(output.name());
  // Readers per tensor, counting each read (a node reading twice counts
  // twice) and subgraph reads from outer scope.
  std::unordered_map<std::string, std::vector<size_t>> readers;
  for (size_t n = 0; n < nodes.size(); ++n) {
    for (const auto& input : nodes[n].input()) {
      if (!input.empty()) readers[input].push_back(n);
    }
    for (const auto& attr : nodes[n].attribute()) {
      std::vector<const onnx::GraphProto*> bodies;
      if (attr.has_g()) bodies.push_back(&attr.g());
      for (const auto& g : attr.graphs()) bodies.push_back(&g);
      for (const auto* body : bodies) {
        for (const auto& name : OuterScopeReads(*body)) readers[name].push_back(n);
      }
    }
  }
  ScalarConstants constants(nodes, graph);

  std::vector<bool> absorbed(nodes.size(), false);
  int fused = 0;
  for (size_t c = 0; c < nodes.size(); ++c) {
    onnx::NodeProto& conv = nodes[c];
    if (conv.op_type() != "Conv" || !IsDefaultDomain(conv.domain()) || conv.output_size() != 1) continue;
    const std::string& y = conv.output(0);
    if (y.empty() || graph_outputs.count(y) || keep.count(y)) continue;
    auto it = readers.find(y);
    if (it == readers.end() || it->second.size() != 1) continue;
    const size_t a = it->second.front();
    if (absorbed[a] || nodes[a].input(0) != y) continue;
    auto activation = AsFusedActivation(nodes[a], default_opset, constants);
    if (!activation) continue;

    conv.set_domain("com.microsoft");
    conv.set_op_type("FusedConv");
    conv.set_output(0, nodes[a].output(0));
    auto* name = conv.add_attribute();
    name->set_name("activation");
    name->set_type(onnx::AttributeProto::STRING);
    name->set_s(activation->name);
    if (!activation->params.empty()) {
      auto* params = conv.add_attribute();
      params->set_name("activation_params");
      params->set_type(onnx::AttributeProto::FLOATS);
      for (float p : activation->params) params->add_floats(p);
    }
    absorbed[a] = true;
    ++fused;
  }
  if (fused == 0) return 0;
  std::vector<onnx::NodeProto> kept;
  kept.reserve(nodes.size() - static_cast<size_t>(fused));
  for (size_t n = 0; n < nodes.size(); ++n) {
    if (!absorbed[n]) kept.push_back(std::move(nodes[n]));
  }
  nodes = std::move(kept);
  return fused;
}

}  // namespace quantd::runtime
