#include "worker/quant/weight_quant.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include "worker/onnx/graph_view.h"
#include "worker/onnx/opset_upgrade.h"
#include "worker/onnx/tensor_util.h"
#include "worker/quant/mixed_bit.h"
#include "worker/quant/quant_math.h"

namespace quantd {

namespace {

struct Use {
  int node;
  int slot;
};

// One weight tensor to quantize, and the nodes that will read its
// dequantized form.
struct Plan {
  std::string tensor;
  int axis;
  std::vector<Use> uses;
  int64_t channels;
};

const onnx::AttributeProto* FindAttr(const onnx::NodeProto& node, const std::string& name) {
  for (const auto& a : node.attribute()) {
    if (a.name() == name) return &a;
  }
  return nullptr;
}

// Axis of the output channels in the weight, or an empty string with the
// axis set; a non-empty return is the reason the weight is not quantizable.
std::string WeightAxis(const onnx::NodeProto& node, int rank, int* axis) {
  const std::string& op = node.op_type();
  if (op == "Conv") {
    if (rank < 1) return "Conv weight has rank 0";
    *axis = 0;
  } else if (op == "ConvTranspose") {
    if (rank < 2) return "ConvTranspose weight has rank " + std::to_string(rank);
    *axis = 1;
  } else if (op == "Gemm") {
    if (rank != 2) return "Gemm weight has rank " + std::to_string(rank) + ", not 2";
    const auto* t = FindAttr(node, "transB");
    *axis = (t && t->i() != 0) ? 0 : 1;
  } else {  // MatMul
    if (rank < 2) {
      return "weight has rank " + std::to_string(rank) +
             ", per-channel quantization needs rank ≥ 2";
    }
    *axis = rank - 1;
  }
  return "";
}

bool IsQuantizableOp(const onnx::NodeProto& node) {
  if (!IsDefaultDomain(node.domain())) return false;
  const std::string& op = node.op_type();
  return op == "Conv" || op == "ConvTranspose" || op == "Gemm" || op == "MatMul";
}

int32_t OnnxType(WeightStorage s) {
  switch (s) {
    case WeightStorage::kInt4Packed: return onnx_type::kInt4;
    case WeightStorage::kInt8: return onnx_type::kInt8;
    case WeightStorage::kInt16: return onnx_type::kInt16;
    case WeightStorage::kInt32: return onnx_type::kInt32;
  }
  return onnx_type::kUndefined;
}

// Integer payload in ONNX raw_data layout.
std::string Encode(std::span<const int16_t> q, WeightStorage s) {
  std::string raw;
  switch (s) {
    case WeightStorage::kInt4Packed: {
      const auto packed = PackInt4(q);
      raw.assign(reinterpret_cast<const char*>(packed.data()), packed.size());
      break;
    }
    case WeightStorage::kInt8:
      raw.resize(q.size());
      for (size_t i = 0; i < q.size(); ++i) raw[i] = static_cast<char>(static_cast<int8_t>(q[i]));
      break;
    case WeightStorage::kInt16:
      raw.resize(q.size() * 2);
      if (!q.empty()) std::memcpy(raw.data(), q.data(), raw.size());
      break;
    case WeightStorage::kInt32: {
      raw.resize(q.size() * 4);
      for (size_t i = 0; i < q.size(); ++i) {
        const int32_t v = q[i];
        std::memcpy(raw.data() + i * 4, &v, 4);
      }
      break;
    }
  }
  return raw;
}

// Deletes the elements for which drop() holds, keeping the others in order.
template <typename T, typename Drop>
void RemoveIf(google::protobuf::RepeatedPtrField<T>* field, Drop&& drop) {
  int w = 0;
  const int n = field->size();
  for (int r = 0; r < n; ++r) {
    if (drop(field->Get(r))) continue;
    if (w != r) field->SwapElements(w, r);
    ++w;
  }
  if (w < n) field->DeleteSubrange(w, n - w);
}

}  // namespace

std::string ToString(WeightStorage s) {
  switch (s) {
    case WeightStorage::kInt4Packed: return "INT4";
    case WeightStorage::kInt8: return "INT8";
    case WeightStorage::kInt16: return "INT16";
    case WeightStorage::kInt32: return "INT32";
  }
  return "?";
}

StatusOr<WeightQuantReport> QuantizeWeights(onnx::ModelProto& model,
                                            const WeightQuantOptions& opts) {
  if (opts.bits < 0 || opts.bits > 16) {
    return InvalidArgument("QUANT_BITS_OUT_OF_RANGE",
                           "bits must be 1..16 (or 0 for mixed bits), not " + std::to_string(opts.bits));
  }
  const bool mixed = opts.bits == 0;
  if (mixed && !(opts.mixed_bit_init_scale > 0 && opts.mixed_bit_init_scale < 1)) {
    return InvalidArgument("QUANT_BITS_OUT_OF_RANGE",
                           "mixed-bit init_scale must lie in (0, 1), not " +
                               std::to_string(opts.mixed_bit_init_scale));
  }
  if (!model.has_graph()) return InvalidArgument("MODEL_INVALID", "the model has no graph");
  WeightQuantReport report;
  report.input_opset = DefaultOpset(model);
  report.output_opset = report.input_opset;
  if (report.input_opset < 0) {
    return InvalidArgument("MODEL_INVALID", "the model has no default-domain opset import");
  }

  // Decide everything on the untouched graph first; upgrades below only add
  // initializers and edit nodes in place, so node indices stay valid.
  std::vector<Plan> plans;
  {
    const onnx::GraphProto& g = model.graph();
    GraphView view(g);
    std::unordered_map<std::string, int> plan_of;        // tensor -> plans index
    std::unordered_map<std::string, std::string> owner;  // tensor -> first node name
    for (int i = 0; i < g.node_size(); ++i) {
      const onnx::NodeProto& node = g.node(i);
      if (!IsQuantizableOp(node)) continue;
      const std::string tensor = node.input_size() > 1 ? node.input(1) : "";
      auto skip = [&](std::string reason) {
        report.skipped.push_back({node.name(), node.op_type(), tensor, std::move(reason)});
      };
      if (opts.skip_quant_node.count(node.name())) {
        skip("in skip_quant_node");
        continue;
      }
      if (tensor.empty()) {
        skip("node has no weight input");
        continue;
      }
      const onnx::TensorProto* w = view.Initializer(tensor);
      if (!w) {
        skip("weight is not a constant initializer");
        continue;
      }
      if (w->data_type() != onnx_type::kFloat) {
        skip("weight dtype is " + DataTypeName(w->data_type()) + ", only FLOAT is quantized");
        continue;
      }
      if (w->data_location() == onnx::TensorProto::EXTERNAL) {
        skip("weight data is stored externally and was not loaded");
        continue;
      }
      int axis = 0;
      if (std::string why = WeightAxis(node, w->dims_size(), &axis); !why.empty()) {
        skip(why);
        continue;
      }
      const auto elements = ElementCount(*w);
      if (!elements) {
        skip("weight has invalid dims");
        continue;
      }
      if (*elements <= opts.min_quant_weight_size) {
        skip(std::to_string(*elements) + " elements ≤ min_quant_weight_size " +
             std::to_string(opts.min_quant_weight_size));
        continue;
      }
      const int64_t channels = w->dims(axis);
      if (channels <= opts.min_quant_weight_channel) {
        skip(std::to_string(channels) + " output channels ≤ min_quant_weight_channel " +
             std::to_string(opts.min_quant_weight_channel));
        continue;
      }
      if (auto it = plan_of.find(tensor); it != plan_of.end()) {
        Plan& p = plans[it->second];
        if (p.axis != axis) {
          skip("weight is shared with node '" + owner[tensor] + "', which quantizes it along axis " +
               std::to_string(p.axis) + "; this node needs axis " + std::to_string(axis));
          continue;
        }
        p.uses.push_back({i, 1});
        continue;
      }
      plan_of[tensor] = static_cast<int>(plans.size());
      owner[tensor] = node.name();
      plans.push_back({tensor, axis, {{i, 1}}, channels});
    }
  }
  if (plans.empty()) return report;

  // The width of every weight: fixed, or searched on its untouched values.
  // A weight whose values cannot be read or measured keeps the widest
  // candidate; the loop below then skips it with the reason.
  std::vector<int> bits_of(plans.size(), mixed ? kMixedBitMaxBits : opts.bits);
  std::vector<BitErrorCurve> curves(plans.size());
  std::vector<BitChoice> choices(plans.size());
  // With mixed bits the search is the first half of the work.
  const size_t steps = mixed ? 2 * plans.size() : plans.size();
  const size_t steps_before_writing = steps - plans.size();
  if (mixed) {
    GraphView view(model.graph());
    for (size_t i = 0; i < plans.size(); ++i) {
      if (opts.on_progress && !opts.on_progress(i, steps)) {
        return Cancelled("mixed-bit search stopped before " + plans[i].tensor);
      }
      const onnx::TensorProto* w = view.Initializer(plans[i].tensor);
      if (!w) continue;
      auto values = ReadFloatTensor(*w);
      if (!values.ok()) continue;
      auto curve = MeasureBitErrors(*values, DimsOf(*w), plans[i].axis);
      if (!curve.ok()) continue;
      curves[i] = std::move(*curve);
      choices[i] = ChooseBits(curves[i], opts.mixed_bit_init_scale);
      bits_of[i] = ContainerBits(choices[i].searched_bits);
    }
  }

  // Opset: per-axis DequantizeLinear needs 13; INT4 and INT16 need 21.
  if (report.input_opset < 13) {
    QUANTD_RETURN_IF_ERROR(UpgradeOpset(model, 13).WithContext(
        "per-channel weights need opset 13"));
  }
  auto storage_for = [](int bits) {
    return bits <= 4   ? WeightStorage::kInt4Packed
           : bits <= 8 ? WeightStorage::kInt8
                       : WeightStorage::kInt16;
  };
  const bool needs_opset_21 =
      std::any_of(bits_of.begin(), bits_of.end(),
                  [&](int bits) { return storage_for(bits) != WeightStorage::kInt8; });
  bool containers_widened = false;
  if (needs_opset_21 && DefaultOpset(model) < 21) {
    Status up = UpgradeOpset(model, 21);
    if (!up.ok()) {
      containers_widened = true;
      const std::string what =
          mixed ? "mixed-bit weights stored as 8 bits in INT8"
                : std::to_string(opts.bits) + "-bit weights stored in " +
                      ToString(opts.bits <= 8 ? WeightStorage::kInt8 : WeightStorage::kInt32);
      report.storage_note = "kept opset " + std::to_string(DefaultOpset(model)) + ": " +
                            up.message() + "; " + what + " containers";
    }
  }
  std::vector<WeightStorage> storage_of(plans.size());
  for (size_t i = 0; i < plans.size(); ++i) {
    const int bits = bits_of[i];
    storage_of[i] = !containers_widened ? storage_for(bits)
                    : bits <= 8         ? WeightStorage::kInt8
                                        : WeightStorage::kInt32;
    if (mixed && !curves[i].relative_error.empty()) {
      const int container = storage_of[i] == WeightStorage::kInt4Packed ? 4 : 8;
      bits_of[i] = StoredBits(curves[i], choices[i], container);
    }
  }
  // INT4 exists from IR 10 on.
  const bool any_int4 = std::find(storage_of.begin(), storage_of.end(),
                                  WeightStorage::kInt4Packed) != storage_of.end();
  if (any_int4 && model.ir_version() < 10) model.set_ir_version(10);

  onnx::GraphProto& g = *model.mutable_graph();
  NameAllocator names(model);
  std::map<int, std::vector<onnx::NodeProto>> insert_before;  // node index -> DQ nodes
  std::unordered_set<std::string> maybe_unused;

  for (size_t plan_index = 0; plan_index < plans.size(); ++plan_index) {
    const Plan& plan = plans[plan_index];
    const int bits = bits_of[plan_index];
    const WeightStorage storage = storage_of[plan_index];
    if (opts.on_progress && !opts.on_progress(steps_before_writing + plan_index, steps)) {
      return Cancelled("weight quantization stopped before " + plan.tensor);
    }
    const onnx::NodeProto& first = g.node(plan.uses.front().node);
    // Found again by name: upgrades may have appended initializers.
    const onnx::TensorProto* w = nullptr;
    for (const auto& t : g.initializer()) {
      if (t.name() == plan.tensor) {
        w = &t;
        break;
      }
    }
    if (!w) return Internal("QUANT_INTERNAL", "weight '" + plan.tensor + "' disappeared");
    const std::vector<int64_t> dims = DimsOf(*w);
    auto skip_all = [&](const std::string& reason) {
      for (const Use& u : plan.uses) {
        const auto& n = g.node(u.node);
        report.skipped.push_back({n.name(), n.op_type(), plan.tensor, reason});
      }
    };
    auto values = ReadFloatTensor(*w);
    if (!values.ok()) {
      skip_all("weight data is unreadable: " + values.status().message());
      continue;
    }
    auto q = QuantizePerChannel(*values, dims, plan.axis, bits);
    if (!q.ok()) {
      skip_all(q.status().reason() == "WEIGHT_NOT_FINITE" ? "weight contains NaN or infinity"
                                                          : q.status().message());
      continue;
    }
    QUANTD_ASSIGN_OR_RETURN(const ChannelLayout layout, MakeChannelLayout(dims, plan.axis));
    const QuantError err = MeasureQuantError(*values, q->values, q->scales, layout);
    std::vector<float>().swap(*values);  // the float copy is no longer needed

    const std::string q_name = names.Make(plan.tensor + "_quantized");
    const std::string s_name = names.Make(plan.tensor + "_scale");
    const std::string out_name = names.Make(plan.tensor + "_dequantized");
    const std::string node_name = names.Make(plan.tensor + "_DequantizeLinear");
    // DequantizeLinear of int32 has no zero point by definition.
    const bool with_zero_point = storage != WeightStorage::kInt32;
    const std::string zp_name = with_zero_point ? names.Make(plan.tensor + "_zero_point") : "";

    const int32_t type = OnnxType(storage);
    std::string payload = Encode(q->values, storage);
    int64_t stored = static_cast<int64_t>(payload.size());
    *g.add_initializer() = MakeRawTensor(q_name, type, dims, std::move(payload));
    const int64_t channel_dims[] = {plan.channels};
    *g.add_initializer() = MakeFloatTensor(s_name, channel_dims, q->scales);
    stored += plan.channels * 4;
    if (with_zero_point) {
      const std::vector<int16_t> zeros(static_cast<size_t>(plan.channels), 0);
      std::string zp = Encode(zeros, storage);
      stored += static_cast<int64_t>(zp.size());
      *g.add_initializer() = MakeRawTensor(zp_name, type, channel_dims, std::move(zp));
    }

    onnx::NodeProto dq;
    dq.set_name(node_name);
    dq.set_op_type("DequantizeLinear");
    dq.add_input(q_name);
    dq.add_input(s_name);
    if (with_zero_point) dq.add_input(zp_name);
    dq.add_output(out_name);
    auto* axis_attr = dq.add_attribute();
    axis_attr->set_name("axis");
    axis_attr->set_type(onnx::AttributeProto::INT);
    axis_attr->set_i(plan.axis);

    int first_use = plan.uses.front().node;
    for (const Use& u : plan.uses) {
      g.mutable_node(u.node)->set_input(u.slot, out_name);
      first_use = std::min(first_use, u.node);
    }
    insert_before[first_use].push_back(std::move(dq));
    maybe_unused.insert(plan.tensor);

    QuantizedWeight qw;
    qw.node_name = first.name();
    qw.node_type = first.op_type();
    qw.tensor_name = plan.tensor;
    qw.dims = dims;
    qw.bits = bits;
    qw.storage = storage;
    qw.axis = plan.axis;
    qw.scales = std::move(q->scales);
    qw.float_bytes = layout.size() * 4;
    qw.stored_bytes = stored;
    qw.max_abs_error = err.max_abs_error;
    qw.cosine_similarity = err.cosine_similarity;
    qw.relative_error = err.relative_error;
    if (mixed) {
      qw.relative_error_by_bits = curves[plan_index].relative_error;
      qw.searched_bits = choices[plan_index].searched_bits;
      qw.budget_met = choices[plan_index].budget_met;
    }
    report.quantized.push_back(std::move(qw));
  }

  if (!insert_before.empty()) {
    google::protobuf::RepeatedPtrField<onnx::NodeProto> nodes;
    nodes.Reserve(g.node_size() + static_cast<int>(report.quantized.size()));
    for (int i = 0; i < g.node_size(); ++i) {
      if (auto it = insert_before.find(i); it != insert_before.end()) {
        for (auto& dq : it->second) *nodes.Add() = std::move(dq);
      }
      *nodes.Add() = std::move(*g.mutable_node(i));
    }
    g.mutable_node()->Swap(&nodes);
  }

  // Float originals go once nothing reads them any more.
  std::unordered_set<std::string> unused;
  {
    GraphView after(g);
    for (const auto& name : maybe_unused) {
      if (after.ConsumerIndices(name).empty() && !after.IsGraphOutput(name)) unused.insert(name);
    }
  }
  if (!unused.empty()) {
    RemoveIf(g.mutable_initializer(),
             [&](const onnx::TensorProto& t) { return unused.count(t.name()) > 0; });
    RemoveIf(g.mutable_input(),
             [&](const onnx::ValueInfoProto& v) { return unused.count(v.name()) > 0; });
    RemoveIf(g.mutable_value_info(),
             [&](const onnx::ValueInfoProto& v) { return unused.count(v.name()) > 0; });
  }
  report.output_opset = DefaultOpset(model);
  return report;
}

}  // namespace quantd
