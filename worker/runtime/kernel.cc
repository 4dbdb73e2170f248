#include "worker/runtime/kernel.h"

#include <algorithm>
#include <set>

#include <onnx/onnx_pb.h>

namespace quantd::runtime {

namespace {

std::string NormalizeDomain(const std::string& domain) { return domain == "ai.onnx" ? std::string() : domain; }

std::string AttrTypeName(int type) {
  switch (type) {
    case onnx::AttributeProto::FLOAT: return "FLOAT";
    case onnx::AttributeProto::INT: return "INT";
    case onnx::AttributeProto::STRING: return "STRING";
    case onnx::AttributeProto::TENSOR: return "TENSOR";
    case onnx::AttributeProto::GRAPH: return "GRAPH";
    case onnx::AttributeProto::FLOATS: return "FLOATS";
    case onnx::AttributeProto::INTS: return "INTS";
    case onnx::AttributeProto::STRINGS: return "STRINGS";
    default: return "type " + std::to_string(type);
  }
}

}  // namespace

Status NodeError(const std::string& message) {
  return InvalidArgument("RUNTIME_INVALID_NODE", message);
}

Status KernelError(const std::string& message) {
  return InvalidArgument("RUNTIME_KERNEL_ERROR", message);
}

StatusOr<std::vector<int64_t>> ToInt64Vector(const Tensor& tensor) {
  std::vector<int64_t> values(static_cast<size_t>(tensor.size()));
  switch (tensor.dtype()) {
    case DataType::kInt64:
      std::copy(tensor.data<int64_t>(), tensor.data<int64_t>() + tensor.size(), values.begin());
      break;
    case DataType::kInt32:
      std::copy(tensor.data<int32_t>(), tensor.data<int32_t>() + tensor.size(), values.begin());
      break;
    default:
      return KernelError("expected an int32 or int64 tensor, got " + ToString(tensor.dtype()));
  }
  return values;
}

StatusOr<Shape> BroadcastShapes(const Shape& a, const Shape& b) {
  size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (size_t i = 0; i < rank; ++i) {
    int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da == db || db == 1) {
      out[i] = da;
    } else if (da == 1) {
      out[i] = db;
    } else {
      return KernelError("shapes " + ShapeToString(a) + " and " + ShapeToString(b) + " cannot be broadcast");
    }
  }
  return out;
}

StatusOr<int> NormalizeAxis(int64_t axis, int rank) {
  if (axis < -rank || axis >= rank) {
    return KernelError("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  }
  return static_cast<int>(axis < 0 ? axis + rank : axis);
}

NodeAttributes::NodeAttributes(const onnx::NodeProto& node) : node_(node) {}

const onnx::AttributeProto* NodeAttributes::Find(const std::string& name) const {
  for (const auto& attr : node_.attribute()) {
    if (attr.name() == name) return &attr;
  }
  return nullptr;
}

bool NodeAttributes::Has(const std::string& name) const { return Find(name) != nullptr; }

StatusOr<int64_t> NodeAttributes::Int(const std::string& name) const {
  const auto* attr = Find(name);
  if (!attr) return NodeError("required attribute '" + name + "' is missing");
  if (attr->type() != onnx::AttributeProto::INT && !(attr->type() == 0 && attr->has_i())) {
    return NodeError("attribute '" + name + "' is " + AttrTypeName(attr->type()) + ", expected INT");
  }
  return attr->i();
}

int64_t NodeAttributes::Int(const std::string& name, int64_t fallback) const {
  const auto* attr = Find(name);
  return attr ? attr->i() : fallback;
}

float NodeAttributes::Float(const std::string& name, float fallback) const {
  const auto* attr = Find(name);
  return attr ? attr->f() : fallback;
}

std::string NodeAttributes::String(const std::string& name, const std::string& fallback) const {
  const auto* attr = Find(name);
  return attr ? attr->s() : fallback;
}

std::vector<int64_t> NodeAttributes::Ints(const std::string& name, std::vector<int64_t> fallback) const {
  const auto* attr = Find(name);
  if (!attr) return fallback;
  return {attr->ints().begin(), attr->ints().end()};
}

std::vector<float> NodeAttributes::Floats(const std::string& name, std::vector<float> fallback) const {
  const auto* attr = Find(name);
  if (!attr) return fallback;
  return {attr->floats().begin(), attr->floats().end()};
}

StatusOr<Tensor> NodeAttributes::TensorValue(const std::string& name) const {
  const auto* attr = Find(name);
  if (!attr) return NodeError("required attribute '" + name + "' is missing");
  if (!attr->has_t()) return NodeError("attribute '" + name + "' is " + AttrTypeName(attr->type()) + ", expected TENSOR");
  return TensorFromProto(attr->t());
}

void KernelRegistry::Register(const std::string& domain, const std::string& op_type, int since_version,
                              int until_version, KernelFactory factory) {
  entries_[{NormalizeDomain(domain), op_type}].push_back({since_version, until_version, std::move(factory)});
}

const KernelFactory* KernelRegistry::Find(const std::string& domain, const std::string& op_type, int opset) const {
  auto it = entries_.find({NormalizeDomain(domain), op_type});
  if (it == entries_.end()) return nullptr;
  // Later registrations win, so a specialised range can override a broad one.
  for (auto e = it->second.rbegin(); e != it->second.rend(); ++e) {
    if (opset >= e->since_version && opset <= e->until_version) return &e->factory;
  }
  return nullptr;
}

std::vector<std::string> KernelRegistry::OpTypes() const {
  std::set<std::string> names;
  for (const auto& [key, entries] : entries_) {
    names.insert(key.first.empty() ? key.second : key.first + "." + key.second);
  }
  return {names.begin(), names.end()};
}

const KernelRegistry& KernelRegistry::Default() {
  static const KernelRegistry* registry = [] {
    auto* r = new KernelRegistry();
    RegisterElementwiseKernels(*r);
    RegisterActivationKernels(*r);
    RegisterReductionKernels(*r);
    RegisterShapeKernels(*r);
    RegisterNormalizationKernels(*r);
    RegisterQuantizeKernels(*r);
    RegisterResizeKernels(*r);
    RegisterConvKernels(*r);
    RegisterMatMulKernels(*r);
    RegisterPoolKernels(*r);
    return r;
  }();
  return *registry;
}

}  // namespace quantd::runtime
