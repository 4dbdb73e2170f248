#include "worker/quant/dynamic_quant.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <unordered_set>
#include <utility>

#include "worker/onnx/graph_view.h"
#include "worker/onnx/opset_upgrade.h"
#include "worker/onnx/tensor_util.h"
#include "worker/quant/quant_math.h"

namespace quantd {
namespace {

// DynamicQuantizeLinear appeared in opset 11; MatMulInteger (10), Cast,
// Mul and Add are older.
constexpr int kMinOpset = 11;

// ONNX Runtime's operator domain, where DynamicQuantizeMatMul lives.
constexpr std::string_view kContribDomain = "com.microsoft";

// Symmetric int8 values q in [-127, 127] are stored as q + 128.
constexpr int kWeightZeroPoint = 128;

const onnx::AttributeProto* FindAttribute(const onnx::NodeProto& node, const std::string& name) {
  for (const auto& attribute : node.attribute()) {
    if (attribute.name() == name) return &attribute;
  }
  return nullptr;
}

// One MatMul/Gemm to rewrite; its weight is already quantized.
// A weight tensor and whether it is read transposed (Gemm transB).
using WeightKey = std::pair<std::string, bool>;

struct Target {
  int node = 0;
  WeightKey weight;
  float alpha = 1.0f;
  float beta = 1.0f;
  // A MatMul's bias Add folded into the fused node: its index and the 1-D
  // constant it adds; -1 when there is none.
  int bias_add = -1;
  std::string bias;
};

// A weight as MatMulInteger reads it: [K, N], one scale per column.
struct StoredWeight {
  std::string source;  // the float initializer it replaces
  int64_t rows = 0, columns = 0;
  std::string payload;  // UINT8 raw data
  std::vector<float> scales;
  // Set when its initializers are written, on first use; one scale
  // tensor per Gemm alpha that reads it.
  std::string quantized_name;
  std::map<float, std::string> scale_names;
};

// An embedding table read by Gather, quantized per row (axis 0).
struct StoredTable {
  std::vector<int64_t> dims;
  std::string payload;  // INT8 raw data, same layout
  std::vector<float> row_scales;
  std::string quantized_name, scale_name;  // set when first written
};

// Row-major [rows, cols] -> [cols, rows].
std::vector<float> Transpose(const std::vector<float>& values, int64_t rows, int64_t cols) {
  std::vector<float> out(values.size());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      out[static_cast<size_t>(c * rows + r)] = values[static_cast<size_t>(r * cols + c)];
    }
  }
  return out;
}

// Quantizes a row-major [k, n] matrix per column into `out`; a non-empty
// return says why it could not.
std::string QuantizeColumns(const std::vector<float>& values, int64_t k, int64_t n, StoredWeight& out) {
  const int64_t dims[] = {k, n};
  auto q = QuantizePerChannel(values, dims, 1, 8);
  if (!q.ok()) {
    return q.status().reason() == "WEIGHT_NOT_FINITE" ? "weight contains NaN or infinity" : q.status().message();
  }
  out.rows = k;
  out.columns = n;
  out.payload.resize(q->values.size());
  for (size_t i = 0; i < q->values.size(); ++i) {
    out.payload[i] = static_cast<char>(static_cast<uint8_t>(q->values[i] + kWeightZeroPoint));
  }
  out.scales = std::move(q->scales);
  return "";
}

// The initializer behind `name`, following Identity nodes, or "" when it is
// not a constant: PyTorch's exporter writes parameters it deduplicated (or
// shared ones) as an Identity of a single initializer.
std::string ConstantSource(const GraphView& view, std::string name) {
  for (int hops = 0; hops < 64; ++hops) {
    if (view.Initializer(name)) return name;
    const int producer = view.ProducerIndex(name);
    if (producer < 0) return "";
    const onnx::NodeProto& node = view.graph().node(producer);
    if (!IsDefaultDomain(node.domain()) || node.op_type() != "Identity" || node.input_size() != 1) return "";
    name = node.input(0);
  }
  return "";
}

// C's values as the 1-D [columns] bias a fused node adds (beta applied),
// when C is a FLOAT constant held inline that Gemm broadcasts along rows:
// shape [columns], [1, columns] or a single value.
std::optional<std::vector<float>> RowBias(const onnx::TensorProto* c, int64_t columns, float beta) {
  if (!c || c->data_type() != onnx_type::kFloat || c->data_location() == onnx::TensorProto::EXTERNAL) {
    return std::nullopt;
  }
  const std::vector<int64_t> dims = DimsOf(*c);
  const bool row = (dims.size() == 1 && dims[0] == columns) || (dims.size() == 2 && dims[0] == 1 && dims[1] == columns);
  const bool single = dims.size() <= 2 && ElementCount(*c) == 1;
  if (!row && !single) return std::nullopt;
  auto values = ReadFloatTensor(*c);
  if (!values.ok()) return std::nullopt;
  std::vector<float> bias = single ? std::vector<float>(static_cast<size_t>(columns), values->at(0)) : *values;
  for (float& v : bias) v *= beta;
  return bias;
}

// The Add that only adds a 1-D [columns] FLOAT constant to a MatMul's
// output (PyTorch's Linear bias), which the fused node can take over.
// Returns its index and fills `bias`; -1 when there is none.
int FindBiasAdd(const onnx::NodeProto& matmul, const GraphView& view, int64_t columns, std::string& bias) {
  const std::string& y = matmul.output(0);
  const std::vector<int>& readers = view.ConsumerIndices(y);
  if (readers.size() != 1 || view.IsGraphOutput(y)) return -1;
  const onnx::NodeProto& add = view.graph().node(readers[0]);
  if (!IsDefaultDomain(add.domain()) || add.op_type() != "Add" || add.input_size() != 2 || add.output_size() != 1 ||
      add.output(0).empty()) {
    return -1;
  }
  const std::string& other = add.input(0) == y ? add.input(1) : add.input(0);
  if (other == y) return -1;
  const std::string source = ConstantSource(view, other);
  const onnx::TensorProto* constant = source.empty() ? nullptr : view.Initializer(source);
  if (!constant || constant->data_type() != onnx_type::kFloat ||
      constant->data_location() == onnx::TensorProto::EXTERNAL || DimsOf(*constant) != std::vector<int64_t>{columns}) {
    return -1;
  }
  bias = source;
  return readers[0];
}

// Why a Gather's table cannot be quantized, or "".
std::string CheckGather(const onnx::NodeProto& node, const GraphView& view, const DynamicQuantOptions& options) {
  if (options.skip_quant_node.count(node.name())) return "in skip_quant_node";
  if (node.input_size() != 2 || node.output_size() != 1 || node.output(0).empty())
    return "node lacks inputs or outputs";
  const onnx::TensorProto* table = view.Initializer(node.input(0));
  if (!table) return "data input is not a constant initializer";
  if (table->data_type() != onnx_type::kFloat) {
    return "table dtype is " + DataTypeName(table->data_type()) + ", only FLOAT is quantized";
  }
  if (table->data_location() == onnx::TensorProto::EXTERNAL)
    return "table data is stored externally and was not loaded";
  const int rank = table->dims_size();
  if (rank < 2) return "table has rank " + std::to_string(rank) + ", rows need rank 2 or more";
  int64_t axis = 0;
  if (const auto* a = FindAttribute(node, "axis")) axis = a->i() < 0 ? a->i() + rank : a->i();
  if (axis != 0) return "axis " + std::to_string(axis) + ": only row lookups (axis 0) are quantized";
  const auto elements = ElementCount(*table);
  if (!elements) return "table has invalid dims";
  if (*elements <= options.min_quant_weight_size) {
    return std::to_string(*elements) + " table elements ≤ min_quant_weight_size " +
           std::to_string(options.min_quant_weight_size);
  }
  if (view.IsGraphOutput(node.input(0))) return "the table is also a graph output";
  return "";
}

// Quantizes a table per row (axis 0) into `out`, symmetric int8; a
// non-empty return says why it could not.
std::string QuantizeRows(const onnx::TensorProto& tensor, StoredTable& out) {
  auto values = ReadFloatTensor(tensor);
  if (!values.ok()) return "table data is unreadable: " + values.status().message();
  out.dims = DimsOf(tensor);
  auto q = QuantizePerChannel(*values, out.dims, 0, 8);
  if (!q.ok()) {
    return q.status().reason() == "WEIGHT_NOT_FINITE" ? "table contains NaN or infinity" : q.status().message();
  }
  out.payload.resize(q->values.size());
  for (size_t i = 0; i < q->values.size(); ++i) out.payload[i] = static_cast<char>(static_cast<int8_t>(q->values[i]));
  out.row_scales = std::move(q->scales);
  return "";
}

onnx::NodeProto MakeNode(const std::string& op, const std::string& name, std::vector<std::string> inputs,
                         std::vector<std::string> outputs) {
  onnx::NodeProto node;
  node.set_op_type(op);
  node.set_name(name);
  for (auto& input : inputs) node.add_input(std::move(input));
  for (auto& output : outputs) node.add_output(std::move(output));
  return node;
}

onnx::NodeProto MakeCastToFloat(const std::string& name, const std::string& input, const std::string& output) {
  onnx::NodeProto node = MakeNode("Cast", name, {input}, {output});
  auto* to = node.add_attribute();
  to->set_name("to");
  to->set_type(onnx::AttributeProto::INT);
  to->set_i(onnx_type::kFloat);
  return node;
}

template <typename T, typename Pred>
void EraseWhere(google::protobuf::RepeatedPtrField<T>* field, Pred&& pred) {
  google::protobuf::RepeatedPtrField<T> kept;
  for (auto& item : *field) {
    if (!pred(item)) *kept.Add() = std::move(item);
  }
  field->Swap(&kept);
}

// Why `node` (a default-domain MatMul or Gemm) cannot be quantized, or ""
// with its weight (the initializer behind input 1, and whether transB reads
// it transposed) and Gemm's alpha and beta read into `target`.
std::string CheckNode(const onnx::NodeProto& node, const GraphView& view, const DynamicQuantOptions& options,
                      Target& target) {
  if (options.skip_quant_node.count(node.name())) return "in skip_quant_node";
  if (node.input_size() < 2 || node.output_size() < 1 || node.input(0).empty() || node.output(0).empty()) {
    return "node lacks inputs or outputs";
  }
  const std::string source = ConstantSource(view, node.input(1));
  if (source.empty()) return "second input is not a constant initializer";
  const onnx::TensorProto* weight = view.Initializer(source);
  if (weight->data_type() != onnx_type::kFloat) {
    return "weight dtype is " + DataTypeName(weight->data_type()) + ", only FLOAT is quantized";
  }
  if (weight->data_location() == onnx::TensorProto::EXTERNAL)
    return "weight data is stored externally and was not loaded";
  if (weight->dims_size() != 2) {
    return "weight has rank " + std::to_string(weight->dims_size()) + ", only rank 2 is quantized";
  }
  const auto elements = ElementCount(*weight);
  if (!elements) return "weight has invalid dims";
  if (*elements <= options.min_quant_weight_size) {
    return std::to_string(*elements) + " weight elements ≤ min_quant_weight_size " +
           std::to_string(options.min_quant_weight_size);
  }
  bool transposed = false;
  if (node.op_type() == "Gemm") {
    if (const auto* a = FindAttribute(node, "transA"); a && a->i() != 0) return "transA = 1 is not supported";
    const auto* b = FindAttribute(node, "transB");
    transposed = b && b->i() != 0;
    if (const auto* alpha = FindAttribute(node, "alpha")) target.alpha = alpha->f();
    if (const auto* beta = FindAttribute(node, "beta")) target.beta = beta->f();
    if (!std::isfinite(target.alpha) || !std::isfinite(target.beta)) return "alpha or beta is not finite";
  }
  target.weight = {source, transposed};
  return "";
}

}  // namespace

StatusOr<DynamicQuantReport> QuantizeDynamic(onnx::ModelProto& model, const DynamicQuantOptions& options) {
  if (!model.has_graph()) return InvalidArgument("MODEL_INVALID", "the model has no graph");
  const int input_opset = DefaultOpset(model);
  if (input_opset < 0) return InvalidArgument("MODEL_INVALID", "the model has no default-domain opset import");
  DynamicQuantReport report;
  report.output_opset = input_opset;

  // Everything is decided and quantized on the untouched graph, so a model
  // with nothing to quantize is returned as it came.
  std::vector<Target> targets;
  std::map<WeightKey, StoredWeight> weights;
  std::vector<int> gathers;  // node indices of Gathers whose table is quantized
  std::map<std::string, StoredTable> tables;
  {
    const onnx::GraphProto& graph = model.graph();
    GraphView view(graph);
    std::map<WeightKey, std::string> failed;
    for (int i = 0; i < graph.node_size(); ++i) {
      const onnx::NodeProto& node = graph.node(i);
      if (!IsDefaultDomain(node.domain()) || (node.op_type() != "MatMul" && node.op_type() != "Gemm")) continue;
      Target target;
      target.node = i;
      std::string why = CheckNode(node, view, options, target);
      if (why.empty()) {
        if (auto it = failed.find(target.weight); it != failed.end()) {
          why = it->second;
        } else if (!weights.count(target.weight)) {
          const onnx::TensorProto& tensor = *view.Initializer(target.weight.first);
          StoredWeight stored;
          stored.source = target.weight.first;
          auto values = ReadFloatTensor(tensor);
          if (!values.ok()) {
            why = "weight data is unreadable: " + values.status().message();
          } else if (target.weight.second) {
            why = QuantizeColumns(Transpose(*values, tensor.dims(0), tensor.dims(1)), tensor.dims(1), tensor.dims(0),
                                  stored);
          } else {
            why = QuantizeColumns(*values, tensor.dims(0), tensor.dims(1), stored);
          }
          if (why.empty()) {
            weights.emplace(target.weight, std::move(stored));
          } else {
            failed.emplace(target.weight, why);
          }
        }
      }
      if (!why.empty()) {
        report.skipped.push_back({node.name(), node.op_type(), std::move(why)});
        continue;
      }
      if (options.form == DynamicQuantForm::kOnnxRuntimeFused && node.op_type() == "MatMul") {
        target.bias_add = FindBiasAdd(node, view, weights.at(target.weight).columns, target.bias);
      }
      targets.push_back(std::move(target));
      report.quantized_nodes.push_back(node.name());
    }

    // Gathers, once the MatMul/Gemm weights are known: a table is only
    // quantized when every reader either is such a Gather or stores its own
    // integer copy, so that no float copy has to stay beside it.
    std::map<std::string, std::vector<int>> gathers_by_table;
    for (int i = 0; i < graph.node_size(); ++i) {
      const onnx::NodeProto& node = graph.node(i);
      if (!IsDefaultDomain(node.domain()) || node.op_type() != "Gather") continue;
      if (std::string why = CheckGather(node, view, options); !why.empty()) {
        report.skipped.push_back({node.name(), node.op_type(), std::move(why)});
        continue;
      }
      gathers_by_table[node.input(0)].push_back(i);
    }
    std::set<int> weight_readers;
    for (const Target& target : targets) weight_readers.insert(target.node);
    for (const auto& [name, readers] : gathers_by_table) {
      std::string why;
      for (int reader : view.ConsumerIndices(name)) {
        const onnx::NodeProto& other = graph.node(reader);
        const bool gather = std::find(readers.begin(), readers.end(), reader) != readers.end();
        const bool own_copy = weight_readers.count(reader) && other.input(0) != name;
        if (!gather && !own_copy) {
          why = "the table is also read by " + other.op_type() + " '" + other.name() + "', which needs it in float";
          break;
        }
      }
      StoredTable table;
      if (why.empty()) why = QuantizeRows(*view.Initializer(name), table);
      for (int reader : readers) {
        const onnx::NodeProto& node = graph.node(reader);
        if (!why.empty()) {
          report.skipped.push_back({node.name(), node.op_type(), why});
        } else {
          gathers.push_back(reader);
          report.quantized_nodes.push_back(node.name());
        }
      }
      if (why.empty()) tables.emplace(name, std::move(table));
    }
  }
  if (targets.empty() && gathers.empty()) return report;

  const bool fused = options.form == DynamicQuantForm::kOnnxRuntimeFused;
  if (!fused && !targets.empty() && input_opset < kMinOpset) {
    QUANTD_RETURN_IF_ERROR(UpgradeOpset(model, 13).WithContext("DynamicQuantizeLinear needs opset 11"));
    report.output_opset = DefaultOpset(model);
  }

  // Upgrades append initializers and edit nodes in place, so the node
  // indices in `targets` still hold.
  onnx::GraphProto& graph = *model.mutable_graph();
  const GraphView view(graph);
  NameAllocator names(model);
  std::vector<onnx::TensorProto> new_initializers;
  auto add_float = [&](const std::string& base, std::span<const int64_t> dims, std::span<const float> values) {
    std::string name = names.Make(base);
    new_initializers.push_back(MakeFloatTensor(name, dims, values));
    return name;
  };
  // One scalar serves every weight: the zero point only shifts integers,
  // while the per-column scales live in the float multiplier.
  std::string weight_zero_point;
  if (!targets.empty()) {
    weight_zero_point = names.Make("dynamic_quant_weight_zero_point");
    new_initializers.push_back(
        MakeRawTensor(weight_zero_point, onnx_type::kUint8, {}, std::string(1, static_cast<char>(kWeightZeroPoint))));
  }

  std::map<int, std::vector<onnx::NodeProto>> replacement;  // node index -> nodes in its place
  std::map<std::string, std::array<std::string, 3>> quantized_activation;
  std::unordered_set<std::string> maybe_unused;
  std::unordered_set<std::string> vanished;  // MatMul outputs a fused bias Add replaced

  for (const Target& target : targets) {
    const onnx::NodeProto& node = graph.node(target.node);
    const bool gemm = node.op_type() == "Gemm";
    const std::string& x = node.input(0);
    const std::string& y = node.output(0);
    const std::string base = node.name().empty() ? y : node.name();
    std::vector<onnx::NodeProto>& chain = replacement[target.node];

    StoredWeight& w = weights.at(target.weight);
    if (w.quantized_name.empty()) {
      w.quantized_name = names.Make(w.source + "_quantized");
      const int64_t dims[] = {w.rows, w.columns};
      new_initializers.push_back(MakeRawTensor(w.quantized_name, onnx_type::kUint8, dims, std::move(w.payload)));
      report.float_weight_bytes += w.rows * w.columns * 4;
      report.quantized_weight_bytes += w.rows * w.columns;
      maybe_unused.insert(w.source);
    }
    // Gemm's alpha folds into the weight scale the multiplier applies.
    std::string& weight_scale = w.scale_names[target.alpha];
    if (weight_scale.empty()) {
      std::vector<float> scales(w.scales);
      for (float& s : scales) s *= target.alpha;
      const int64_t columns[] = {w.columns};
      weight_scale = add_float(w.source + (target.alpha == 1.0f ? "_scale" : "_scale_alpha"), columns, scales);
      report.quantized_weight_bytes += w.columns * 4;
    }

    // Gemm's beta * C, as a tensor name to add to the product.
    const bool has_c = gemm && node.input_size() > 2 && !node.input(2).empty();
    if (has_c && target.beta == 0.0f) maybe_unused.insert(node.input(2));
    auto scaled_c = [&]() -> StatusOr<std::string> {
      const std::string& c = node.input(2);
      if (target.beta == 1.0f) return c;
      const onnx::TensorProto* constant = view.Initializer(c);
      if (constant && constant->data_type() == onnx_type::kFloat &&
          constant->data_location() != onnx::TensorProto::EXTERNAL) {
        QUANTD_ASSIGN_OR_RETURN(auto values, ReadFloatTensor(*constant));
        for (float& v : values) v *= target.beta;
        maybe_unused.insert(c);
        return add_float(c + "_beta", DimsOf(*constant), values);
      }
      const float beta[] = {target.beta};
      const std::string beta_name = add_float(base + "_beta", {}, beta);
      std::string scaled = names.Make(base + "_scaled_C");
      chain.push_back(MakeNode("Mul", names.Make(base + "_beta_Mul"), {c, beta_name}, {scaled}));
      return scaled;
    };

    if (fused) {
      // Each fused node quantizes X itself, so nodes reading the same
      // activation measure its range once each: a small cost next to the
      // bytes a shared DynamicQuantizeLinear and wider nodes would add.
      std::string bias, output = y;
      if (target.bias_add >= 0) {
        bias = target.bias;
        output = graph.node(target.bias_add).output(0);
        replacement[target.bias_add];  // the Add goes
        vanished.insert(y);
        ++report.fused_bias_adds;
      }
      bool add_c_after = false;
      if (has_c && target.beta != 0.0f) {
        const std::string& c = node.input(2);
        const onnx::TensorProto* constant = view.Initializer(c);
        if (target.beta == 1.0f && constant && constant->data_type() == onnx_type::kFloat &&
            DimsOf(*constant) == std::vector{w.columns}) {
          bias = c;  // already the 1-D bias the node takes
        } else if (auto values = RowBias(constant, w.columns, target.beta)) {
          const int64_t columns[] = {w.columns};
          bias = add_float(c + "_bias", columns, *values);
          maybe_unused.insert(c);
        } else {
          add_c_after = true;
        }
      }
      std::vector<std::string> inputs = {x, w.quantized_name, weight_scale, weight_zero_point};
      if (!bias.empty()) inputs.push_back(bias);
      const std::string product = add_c_after ? names.Make(base + "_unbiased") : output;
      onnx::NodeProto& matmul = chain.emplace_back(MakeNode(
          "DynamicQuantizeMatMul", node.name().empty() ? names.Make(y + "_DynamicQuantizeMatMul") : node.name(),
          std::move(inputs), {product}));
      matmul.set_domain(std::string(kContribDomain));
      if (add_c_after) {
        QUANTD_ASSIGN_OR_RETURN(std::string c, scaled_c());
        chain.push_back(MakeNode("Add", names.Make(base + "_Add"), {product, c}, {output}));
      }
      continue;
    }

    // One DynamicQuantizeLinear per activation: the range is measured once
    // however many weights read it (ORT's own CSE would merge copies too).
    auto activation = quantized_activation.find(x);
    if (activation == quantized_activation.end()) {
      std::array<std::string, 3> outs = {names.Make(x + "_quantized"), names.Make(x + "_scale"),
                                         names.Make(x + "_zero_point")};
      chain.push_back(MakeNode("DynamicQuantizeLinear", names.Make(x + "_DynamicQuantizeLinear"), {x},
                               {outs[0], outs[1], outs[2]}));
      activation = quantized_activation.emplace(x, outs).first;
    }
    const auto& [x_q, x_scale, x_zero_point] = activation->second;

    const std::string product = names.Make(base + "_int32");
    const std::string product_float = names.Make(base + "_float");
    const std::string multiplier = names.Make(base + "_multiplier");
    chain.push_back(MakeNode("MatMulInteger", names.Make(base + "_MatMulInteger"),
                             {x_q, w.quantized_name, x_zero_point, weight_zero_point}, {product}));
    chain.push_back(MakeCastToFloat(names.Make(base + "_Cast"), product, product_float));
    // X_scale exists only at run time, so the product of the scales is
    // computed in the graph too.
    chain.push_back(MakeNode("Mul", names.Make(base + "_scale_Mul"), {x_scale, weight_scale}, {multiplier}));

    if (!has_c || target.beta == 0.0f) {
      chain.push_back(MakeNode("Mul", names.Make(base + "_Mul"), {product_float, multiplier}, {y}));
    } else {
      QUANTD_ASSIGN_OR_RETURN(std::string c, scaled_c());
      const std::string unbiased = names.Make(base + "_unbiased");
      chain.push_back(MakeNode("Mul", names.Make(base + "_Mul"), {product_float, multiplier}, {unbiased}));
      chain.push_back(MakeNode("Add", names.Make(base + "_Add"), {unbiased, c}, {y}));
    }
  }
  // Gather(table_q, indices) picks int8 rows and Gather(row_scales, indices)
  // their scales ([..., 1, ...] against the rows' [..., d, ...]); a Cast and
  // a Mul turn them into float. Only the rows looked up are converted.
  for (int index : gathers) {
    const onnx::NodeProto& node = graph.node(index);
    const std::string& source = node.input(0);
    const std::string& indices = node.input(1);
    const std::string& y = node.output(0);
    const std::string base = node.name().empty() ? y : node.name();
    StoredTable& table = tables.at(source);
    if (table.quantized_name.empty()) {
      table.quantized_name = names.Make(source + "_quantized");
      table.scale_name = names.Make(source + "_row_scale");
      const auto elements = static_cast<int64_t>(table.payload.size());
      new_initializers.push_back(
          MakeRawTensor(table.quantized_name, onnx_type::kInt8, table.dims, std::move(table.payload)));
      std::vector<int64_t> scale_dims(table.dims.size(), 1);
      scale_dims[0] = table.dims[0];
      new_initializers.push_back(MakeFloatTensor(table.scale_name, scale_dims, table.row_scales));
      report.float_weight_bytes += elements * 4;
      report.quantized_weight_bytes += elements + static_cast<int64_t>(table.row_scales.size()) * 4;
      maybe_unused.insert(source);
    }
    const std::string rows = names.Make(y + "_quantized");
    const std::string scales = names.Make(y + "_scale");
    const std::string rows_float = names.Make(y + "_float");
    std::vector<onnx::NodeProto>& chain = replacement[index];
    chain.push_back(MakeNode("Gather", node.name().empty() ? names.Make(base + "_quantized_Gather") : node.name(),
                             {table.quantized_name, indices}, {rows}));
    chain.push_back(MakeNode("Gather", names.Make(base + "_scale_Gather"), {table.scale_name, indices}, {scales}));
    chain.push_back(MakeCastToFloat(names.Make(base + "_Cast"), rows, rows_float));
    chain.push_back(MakeNode("Mul", names.Make(base + "_Mul"), {rows_float, scales}, {y}));
  }
  if (fused && !targets.empty()) {
    bool imported = false;
    for (const auto& opset : model.opset_import()) imported |= opset.domain() == kContribDomain;
    if (!imported) {
      auto* opset = model.add_opset_import();
      opset->set_domain(std::string(kContribDomain));
      opset->set_version(1);
    }
  }

  google::protobuf::RepeatedPtrField<onnx::NodeProto> nodes;
  for (int i = 0; i < graph.node_size(); ++i) {
    auto it = replacement.find(i);
    if (it == replacement.end()) {
      *nodes.Add() = std::move(*graph.mutable_node(i));
    } else {
      for (auto& inserted : it->second) *nodes.Add() = std::move(inserted);
    }
  }
  graph.mutable_node()->Swap(&nodes);
  for (auto& initializer : new_initializers) *graph.add_initializer() = std::move(initializer);

  // Identity copies of a constant that nothing reads any more (those of a
  // quantized weight, or of a bias a fused node now reads directly) go too,
  // the last of a chain first, so that the float original can go.
  for (;;) {
    const GraphView after(graph);
    std::unordered_set<std::string> dead;
    for (const auto& node : graph.node()) {
      if (IsDefaultDomain(node.domain()) && node.op_type() == "Identity" && node.input_size() == 1 &&
          node.output_size() == 1 && !ConstantSource(after, node.input(0)).empty() &&
          after.ConsumerIndices(node.output(0)).empty() && !after.IsGraphOutput(node.output(0))) {
        dead.insert(node.output(0));
      }
    }
    if (dead.empty()) break;
    EraseWhere(graph.mutable_node(), [&](const auto& node) {
      return node.op_type() == "Identity" && node.output_size() == 1 && dead.count(node.output(0)) > 0;
    });
    vanished.insert(dead.begin(), dead.end());
  }

  // Float originals go once nothing reads them.
  std::unordered_set<std::string> unused;
  {
    const GraphView after(graph);
    for (const auto& name : maybe_unused) {
      if (after.ConsumerIndices(name).empty() && !after.IsGraphOutput(name)) unused.insert(name);
    }
  }
  if (!targets.empty()) report.quantized_weight_bytes += 1;  // the shared zero point
  if (!vanished.empty()) {
    EraseWhere(graph.mutable_value_info(), [&](const auto& info) { return vanished.count(info.name()) > 0; });
  }
  if (!unused.empty()) {
    auto is_unused = [&](const auto& item) { return unused.count(item.name()) > 0; };
    EraseWhere(graph.mutable_initializer(), is_unused);
    EraseWhere(graph.mutable_input(), is_unused);
    EraseWhere(graph.mutable_value_info(), is_unused);
  }
  return report;
}

}  // namespace quantd
