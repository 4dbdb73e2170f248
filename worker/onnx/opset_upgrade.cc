#include "worker/onnx/opset_upgrade.h"

#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <onnx/defs/schema.h>
#include <onnx/shape_inference/implementation.h>

#include "worker/onnx/graph_view.h"
#include "worker/onnx/tensor_util.h"

namespace quantd {

namespace {

using RankMap = std::unordered_map<std::string, int>;

// Initializers above this many elements are described to shape inference by
// type and shape only; copying their data would double the model in memory
// and shape inference only needs values of small shape-like tensors.
constexpr int64_t kInlineForInference = 4096;

bool IsSoftmaxFamily(const std::string& op) {
  return op == "Softmax" || op == "LogSoftmax" || op == "Hardmax";
}

// Opset at which a Reduce* op moved `axes` from attribute to input; 0 if
// `op` is not one of them.
int ReduceAxesInputSince(const std::string& op) {
  if (op == "ReduceSum") return 13;
  static const std::unordered_set<std::string> k18 = {
      "ReduceMean", "ReduceMax",    "ReduceMin",       "ReduceProd",      "ReduceL1",
      "ReduceL2",   "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
  };
  return k18.count(op) ? 18 : 0;
}

const onnx::AttributeProto* FindAttr(const onnx::NodeProto& node, const std::string& name) {
  for (const auto& a : node.attribute()) {
    if (a.name() == name) return &a;
  }
  return nullptr;
}

onnx::AttributeProto* FindAttr(onnx::NodeProto& node, const std::string& name) {
  for (auto& a : *node.mutable_attribute()) {
    if (a.name() == name) return &a;
  }
  return nullptr;
}

void RemoveAttr(onnx::NodeProto& node, const std::string& name) {
  auto* attrs = node.mutable_attribute();
  for (int i = 0; i < attrs->size(); ++i) {
    if (attrs->Get(i).name() == name) {
      attrs->DeleteSubrange(i, 1);
      return;
    }
  }
}

onnx::AttributeProto* SetAttr(onnx::NodeProto& node, const std::string& name,
                              onnx::AttributeProto::AttributeType type) {
  onnx::AttributeProto* a = FindAttr(node, name);
  if (!a) a = node.add_attribute();
  a->Clear();
  a->set_name(name);
  a->set_type(type);
  return a;
}

bool InputPresent(const onnx::NodeProto& node, int slot) {
  return node.input_size() > slot && !node.input(slot).empty();
}

void SetInput(onnx::NodeProto& node, int slot, const std::string& name) {
  while (node.input_size() <= slot) node.add_input("");
  node.set_input(slot, name);
}

template <typename Fn>
void ForEachSubgraph(const onnx::NodeProto& node, Fn&& fn) {
  for (const auto& attr : node.attribute()) {
    if (attr.has_g()) fn(attr.g());
    for (const auto& g : attr.graphs()) fn(g);
  }
}

template <typename Fn>
void ForEachMutableSubgraph(onnx::NodeProto& node, Fn&& fn) {
  for (auto& attr : *node.mutable_attribute()) {
    if (attr.has_g()) fn(*attr.mutable_g());
    for (auto& g : *attr.mutable_graphs()) fn(g);
  }
}

void CollectRanks(const onnx::GraphProto& g, RankMap& ranks) {
  auto note = [&](const onnx::ValueInfoProto& v) {
    if (v.type().has_tensor_type() && v.type().tensor_type().has_shape()) {
      ranks[v.name()] = v.type().tensor_type().shape().dim_size();
    }
  };
  for (const auto& v : g.input()) note(v);
  for (const auto& v : g.value_info()) note(v);
  for (const auto& v : g.output()) note(v);
  for (const auto& t : g.initializer()) ranks[t.name()] = t.dims_size();
  for (const auto& n : g.node()) {
    ForEachSubgraph(n, [&](const onnx::GraphProto& sub) { CollectRanks(sub, ranks); });
  }
}

bool NeedsRanks(const onnx::GraphProto& g) {
  for (const auto& n : g.node()) {
    if (IsDefaultDomain(n.domain()) && IsSoftmaxFamily(n.op_type())) return true;
    bool nested = false;
    ForEachSubgraph(n, [&](const onnx::GraphProto& sub) { nested = nested || NeedsRanks(sub); });
    if (nested) return true;
  }
  return false;
}

// Ranks of as many tensors as ONNX shape inference can work out, on a copy
// of the model that leaves large initializer payloads behind.
RankMap InferRanks(const onnx::ModelProto& model) {
  onnx::ModelProto light;
  light.set_ir_version(model.ir_version());
  *light.mutable_opset_import() = model.opset_import();
  *light.mutable_functions() = model.functions();
  const onnx::GraphProto& g = model.graph();
  onnx::GraphProto* lg = light.mutable_graph();
  lg->set_name(g.name());
  *lg->mutable_node() = g.node();
  *lg->mutable_input() = g.input();
  *lg->mutable_output() = g.output();
  *lg->mutable_value_info() = g.value_info();
  std::unordered_set<std::string> input_names;
  for (const auto& v : g.input()) input_names.insert(v.name());
  for (const auto& t : g.initializer()) {
    const auto n = ElementCount(t);
    if (n && *n <= kInlineForInference) {
      *lg->add_initializer() = t;
    } else if (!input_names.count(t.name())) {
      auto* v = lg->add_input();
      v->set_name(t.name());
      auto* tt = v->mutable_type()->mutable_tensor_type();
      tt->set_elem_type(t.data_type());
      auto* shape = tt->mutable_shape();
      for (int64_t d : t.dims()) shape->add_dim()->set_dim_value(d);
    }
  }
  try {
    onnx::shape_inference::InferShapes(light, onnx::OpSchemaRegistry::Instance(),
                                       onnx::ShapeInferenceOptions(false, 0, true));
  } catch (const std::exception&) {
    // Whatever was inferred before the failure is still usable; tensors left
    // without a rank make the Softmax check refuse rather than guess.
  }
  RankMap ranks;
  CollectRanks(light.graph(), ranks);
  CollectRanks(g, ranks);
  return ranks;
}

class Upgrader {
 public:
  Upgrader(int source, int target, const RankMap& ranks, NameAllocator& names)
      : source_(source), target_(target), ranks_(ranks), names_(names) {}

  Status Check(const onnx::GraphProto& g) const {
    for (const auto& node : g.node()) {
      if (IsDefaultDomain(node.domain())) QUANTD_RETURN_IF_ERROR(CheckNode(node));
      Status nested;
      ForEachSubgraph(node, [&](const onnx::GraphProto& sub) {
        if (nested.ok()) nested = Check(sub);
      });
      QUANTD_RETURN_IF_ERROR(nested);
    }
    return Status::Ok();
  }

  void Rewrite(onnx::GraphProto& g) {
    for (auto& node : *g.mutable_node()) {
      if (IsDefaultDomain(node.domain())) RewriteNode(node, g);
      ForEachMutableSubgraph(node, [&](onnx::GraphProto& sub) { Rewrite(sub); });
    }
  }

 private:
  bool Crosses(int version) const { return source_ < version && target_ >= version; }

  Status Refuse(const onnx::NodeProto& node, const std::string& why) const {
    return FailedPrecondition("MODEL_OPSET_UPGRADE_UNSUPPORTED",
                              "cannot upgrade opset " + std::to_string(source_) + " to " +
                                  std::to_string(target_) + ": " + node.op_type() + " node '" +
                                  node.name() + "' " + why);
  }

  // An attribute that is about to become input `slot` must have the expected
  // type, and the slot must still be free.
  Status CheckAttrToInput(const onnx::NodeProto& node, const std::string& attr, int slot,
                          onnx::AttributeProto::AttributeType type) const {
    const auto* a = FindAttr(node, attr);
    if (!a) return Status::Ok();
    if (a->type() != type) return Refuse(node, "has attribute '" + attr + "' of an unexpected type");
    if (InputPresent(node, slot)) {
      return Refuse(node, "has both attribute '" + attr + "' and input " + std::to_string(slot));
    }
    return Status::Ok();
  }

  Status CheckNode(const onnx::NodeProto& node) const {
    const std::string& op = node.op_type();
    using A = onnx::AttributeProto;
    if (IsSoftmaxFamily(op) && Crosses(13)) {
      int64_t axis = 1;  // the default before opset 13
      if (const auto* a = FindAttr(node, "axis")) {
        if (a->type() != A::INT) return Refuse(node, "has a non-integer axis");
        axis = a->i();
      }
      auto it = node.input_size() > 0 ? ranks_.find(node.input(0)) : ranks_.end();
      if (it == ranks_.end()) {
        return Refuse(node, "has an input of unknown rank; opset 13 changed it from flattening "
                            "to 2-D at the axis to working on that axis alone, which is the "
                            "same only when the axis is the last dimension");
      }
      const int rank = it->second;
      const int64_t normal = axis < 0 ? axis + rank : axis;
      if (normal != rank - 1) {
        return Refuse(node, "uses axis " + std::to_string(axis) + " of a rank-" +
                                std::to_string(rank) +
                                " input; opset 13 changed it from flattening to 2-D at the axis "
                                "to working on that axis alone, which is the same only when the "
                                "axis is the last dimension");
      }
    }
    if (op == "Resize" && Crosses(13)) {
      const auto* a = FindAttr(node, "coordinate_transformation_mode");
      if (a && a->s() == "tf_half_pixel_for_nn") {
        return Refuse(node, "uses coordinate_transformation_mode tf_half_pixel_for_nn, which "
                            "opset 13 removed");
      }
    }
    if (op == "BatchNormalization" && Crosses(14)) {
      for (int i = 1; i < node.output_size(); ++i) {
        if (!node.output(i).empty()) {
          return Refuse(node, "has training-mode outputs, whose meaning changed at opset 14");
        }
      }
    }
    if (op == "GroupNormalization" && Crosses(21)) {
      return Refuse(node, "cannot be carried over: opset 21 changed scale and bias from one "
                          "value per group to one per channel");
    }
    if (const int since = ReduceAxesInputSince(op); since && Crosses(since)) {
      QUANTD_RETURN_IF_ERROR(CheckAttrToInput(node, "axes", 1, A::INTS));
    }
    if ((op == "Squeeze" || op == "Unsqueeze") && Crosses(13)) {
      QUANTD_RETURN_IF_ERROR(CheckAttrToInput(node, "axes", 1, A::INTS));
      if (op == "Unsqueeze" && !FindAttr(node, "axes") && !InputPresent(node, 1)) {
        return Refuse(node, "has no axes");
      }
    }
    if (op == "Split" && Crosses(13)) {
      QUANTD_RETURN_IF_ERROR(CheckAttrToInput(node, "split", 1, A::INTS));
    }
    if (op == "Dropout" && Crosses(12)) {
      QUANTD_RETURN_IF_ERROR(CheckAttrToInput(node, "ratio", 1, A::FLOAT));
    }
    if (op == "DFT" && Crosses(20)) {
      QUANTD_RETURN_IF_ERROR(CheckAttrToInput(node, "axis", 2, A::INT));
    }
    return Status::Ok();
  }

  std::string BaseName(const onnx::NodeProto& node) const {
    if (!node.name().empty()) return node.name();
    if (node.output_size() > 0 && !node.output(0).empty()) return node.output(0);
    return node.op_type();
  }

  void Int64sToInput(onnx::NodeProto& node, onnx::GraphProto& g, const std::string& attr,
                     int slot) {
    const auto* a = FindAttr(node, attr);
    if (!a) return;
    std::vector<int64_t> values(a->ints().begin(), a->ints().end());
    const std::string name = names_.Make(BaseName(node) + "_" + attr);
    const int64_t dims[] = {static_cast<int64_t>(values.size())};
    *g.add_initializer() = MakeInt64Tensor(name, dims, values);
    RemoveAttr(node, attr);
    SetInput(node, slot, name);
  }

  void RewriteNode(onnx::NodeProto& node, onnx::GraphProto& g) {
    const std::string& op = node.op_type();
    using A = onnx::AttributeProto;
    if (IsSoftmaxFamily(op) && Crosses(13)) {
      // Check() proved the old axis is the last one.
      SetAttr(node, "axis", A::INT)->set_i(-1);
    }
    if (const int since = ReduceAxesInputSince(op); since && Crosses(since)) {
      Int64sToInput(node, g, "axes", 1);
    }
    if ((op == "Squeeze" || op == "Unsqueeze") && Crosses(13)) Int64sToInput(node, g, "axes", 1);
    if (op == "Split") {
      if (Crosses(13)) Int64sToInput(node, g, "split", 1);
      // From 18 on, Split without a split input must say how many pieces.
      if (Crosses(18) && !InputPresent(node, 1) && !FindAttr(node, "num_outputs")) {
        SetAttr(node, "num_outputs", A::INT)->set_i(node.output_size());
      }
    }
    if (op == "Dropout" && Crosses(12)) {
      if (const auto* a = FindAttr(node, "ratio")) {
        const float ratio = a->f();
        const std::string name = names_.Make(BaseName(node) + "_ratio");
        *g.add_initializer() = MakeFloatTensor(name, {}, std::span<const float>(&ratio, 1));
        RemoveAttr(node, "ratio");
        SetInput(node, 1, name);
      }
    }
    if (op == "RoiAlign" && Crosses(16) && !FindAttr(node, "coordinate_transformation_mode")) {
      // Opset 16 added the attribute with default half_pixel; older RoiAlign
      // behaves as output_half_pixel.
      SetAttr(node, "coordinate_transformation_mode", A::STRING)->set_s("output_half_pixel");
    }
    if (op == "GridSample" && Crosses(20)) {
      if (auto* a = FindAttr(node, "mode")) {
        if (a->s() == "bilinear") a->set_s("linear");
        if (a->s() == "bicubic") a->set_s("cubic");
      }
    }
    if (op == "DFT" && Crosses(20)) {
      // Opset 20 moved axis to an input whose default is -2, not the old 1,
      // so the old value (given or default) is always spelled out.
      int64_t axis = 1;
      if (const auto* a = FindAttr(node, "axis")) axis = a->i();
      const std::string name = names_.Make(BaseName(node) + "_axis");
      *g.add_initializer() = MakeInt64Tensor(name, {}, std::span<const int64_t>(&axis, 1));
      RemoveAttr(node, "axis");
      SetInput(node, 2, name);
    }
  }

  int source_;
  int target_;
  const RankMap& ranks_;
  NameAllocator& names_;
};

}  // namespace

Status UpgradeOpset(onnx::ModelProto& model, int target) {
  if (target != 13 && target != 21) {
    return InvalidArgument("OPSET_TARGET_UNSUPPORTED",
                           "opset upgrades go to 13 or 21, not " + std::to_string(target));
  }
  const int source = DefaultOpset(model);
  auto refuse = [&](const std::string& why) {
    return FailedPrecondition("MODEL_OPSET_UPGRADE_UNSUPPORTED",
                              "cannot upgrade opset " + std::to_string(source) + " to " +
                                  std::to_string(target) + ": " + why);
  };
  if (source < 0) return refuse("the model has no default-domain opset import");
  if (source >= target) return Status::Ok();
  if (source < 11) return refuse("upgrades start from opset 11 or later");
  if (!model.has_graph()) return refuse("the model has no graph");
  for (const auto& f : model.functions()) {
    for (const auto& op : f.opset_import()) {
      if (IsDefaultDomain(op.domain())) {
        return refuse("model-local function '" + f.name() +
                      "' imports the default domain, and functions are not upgraded");
      }
    }
  }

  RankMap ranks;
  if (source < 13 && NeedsRanks(model.graph())) ranks = InferRanks(model);
  NameAllocator names(model);
  Upgrader upgrader(source, target, ranks, names);
  // Every refusal is found before anything is modified.
  QUANTD_RETURN_IF_ERROR(upgrader.Check(model.graph()));
  upgrader.Rewrite(*model.mutable_graph());

  for (auto& op : *model.mutable_opset_import()) {
    if (IsDefaultDomain(op.domain())) op.set_version(target);
  }
  const int64_t min_ir = target >= 21 ? 10 : 7;
  if (model.ir_version() < min_ir) model.set_ir_version(min_ir);
  return Status::Ok();
}

}  // namespace quantd
