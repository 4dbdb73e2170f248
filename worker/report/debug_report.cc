#include "worker/report/debug_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>

#include "common/archive.h"
#include "common/files.h"
#include "worker/calib/dataset.h"
#include "worker/onnx/graph_view.h"
#include "worker/onnx/tensor_util.h"
#include "worker/report/report_html.h"
#include "worker/report/tensor_stats.h"
#include "worker/runtime/executor.h"

namespace quantd::report {
namespace {

using runtime::DataType;
using runtime::Tensor;

const std::vector<std::string>& DistributionColumns() {
  static const std::vector<std::string> kColumns = {
      "NodeName", "NodeType", "TensorName", "InOutFlag", "DataTypeFlag", "TensorTypeFlag", "Min",  "Q1",
      "Median",   "Q3",       "Max",        "Mean",      "Var",          "Sparsity",       "Clip", "CosineSimilarity"};
  return kColumns;
}

std::string DistributionHeader() {
  std::string header;
  for (const auto& column : DistributionColumns()) header += (header.empty() ? "" : ",") + column;
  return header;
}
const char* const kQuantParamHeader =
    "NodeName,NodeType,TensorName,ElementsNum,Dims,Scale,ZeroPoint,Bits,CorrectionVar,CorrectionMean";
const char* const kOutputSummaryHeader = "Round,OutputName,CosineSimilarity,MeanRelativeError";

// One row slot of a data distribution CSV.
struct Entry {
  std::string node_name, node_type, tensor_name;  // names in the original model
  bool output = false;
  bool weight = false;
  bool dequant = false;
  std::string value_name;  // the tensor holding the value, in the model the row describes
};

// What the quantized model can represent for the tensor behind one
// DequantizeLinear output, and which tensor went into its quantization.
struct ClipSource {
  std::string source;  // activation: QuantizeLinear's input in the quantized model
  bool weight = false;
  std::string origin_weight;  // weight: the float initializer of the original model
  QuantRange range;
};

struct Stats {
  DistributionStats distribution;
  double clip = 0;
  double cosine = 1;
};

struct LayerTrack {
  std::string node_type;
  double cosine_sum = 0;
  int rounds = 0;
  bool has_histogram = false;
  Histogram origin, dequant;
};

std::span<const float> Floats(const Tensor& value) {
  return {value.data<float>(), static_cast<size_t>(value.size())};
}

std::string Number(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char text[40];
  std::snprintf(text, sizeof(text), "%.9g", value);
  return text;
}

// RFC 4180: fields with separators or quotes are quoted, quotes doubled.
std::string CsvField(const std::string& text) {
  if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  return quoted + "\"";
}

template <typename T>
std::string SpaceSeparated(const std::vector<T>& values) {
  std::string text;
  for (const auto& value : values) {
    if (!text.empty()) text += ' ';
    text += Number(static_cast<double>(value));
  }
  return text;
}

double JsonNumber(double value) {
  return std::isfinite(value) ? value : 0.0;
}

nlohmann::json JsonValue(double value) {
  if (std::isfinite(value)) return value;
  return nullptr;
}

// Integer range of a quantized type, narrowed to `bits` where the values
// use fewer bits than their container (e.g. 4-bit weights in INT8).
std::pair<double, double> IntegerRange(DataType type, int bits) {
  bool is_signed = true;
  int width = 8;
  switch (type) {
    case DataType::kUint8:
      is_signed = false;
      width = 8;
      break;
    case DataType::kInt8: width = 8; break;
    case DataType::kUint16:
      is_signed = false;
      width = 16;
      break;
    case DataType::kInt16: width = 16; break;
    case DataType::kInt32: width = 32; break;
    case DataType::kUint4:
      is_signed = false;
      width = 4;
      break;
    case DataType::kInt4: width = 4; break;
    default: break;
  }
  if (bits > 0 && bits < width) width = bits;
  if (is_signed) return {-std::ldexp(1.0, width - 1), std::ldexp(1.0, width - 1) - 1};
  return {0.0, std::ldexp(1.0, width) - 1};
}

StatusOr<std::vector<int32_t>> IntegerValues(const onnx::TensorProto& proto) {
  QUANTD_ASSIGN_OR_RETURN(auto tensor, runtime::TensorFromProto(proto));
  std::vector<int32_t> values(static_cast<size_t>(tensor.size()));
  for (size_t i = 0; i < values.size(); ++i) {
    switch (tensor.dtype()) {
      case DataType::kUint8:
      case DataType::kUint4: values[i] = tensor.data<uint8_t>()[i]; break;
      case DataType::kInt8:
      case DataType::kInt4: values[i] = tensor.data<int8_t>()[i]; break;
      case DataType::kUint16: values[i] = tensor.data<uint16_t>()[i]; break;
      case DataType::kInt16: values[i] = tensor.data<int16_t>()[i]; break;
      case DataType::kInt32: values[i] = tensor.data<int32_t>()[i]; break;
      default:
        return InvalidArgument("DEBUG_REPORT_UNSUPPORTED",
                               "zero point " + proto.name() + " has an element type the report does not read");
    }
  }
  return values;
}

int AxisAttribute(const onnx::NodeProto& node) {
  for (const auto& attribute : node.attribute()) {
    if (attribute.name() == "axis") return static_cast<int>(attribute.i());
  }
  return 1;
}

class ReportBuilder {
 public:
  explicit ReportBuilder(const DebugReportRequest& request)
      : request_(request), original_(request.original->graph()), quantized_(request.quantized->graph()) {}

  Status Plan();
  Status ReadWeights();
  Status RunRounds();
  Status WriteFiles(DebugReportResult& result);

 private:
  Status PlanClipSources();
  Status WriteRound(const std::string& file_name);
  void TrackLayers(bool from_weights);
  Status Write(const std::string& name, const std::string& content, DebugReportResult& result);
  Status WriteReportJson(const nlohmann::json& report, DebugReportResult& result);

  const DebugReportRequest& request_;
  GraphView original_, quantized_;
  std::vector<Entry> entries_;
  std::set<std::string> original_constants_;
  std::map<std::string, const TensorQuantParam*> param_by_tensor_;
  std::map<std::string, ClipSource> clip_by_dequantized_;
  std::map<std::string, std::vector<std::string>> clip_targets_by_source_;  // activation source -> DQ outputs
  std::map<std::string, std::string> origin_of_value_;                      // Dequant value -> original tensor
  std::set<std::string> kept_origin_;                                       // float tensors a Dequant row compares with
  std::set<std::string> weight_values_;                                     // Dequant weight values, computed once

  // Weights: fixed for all rounds.
  std::map<std::string, Stats> weight_origin_, weight_dequant_;
  // The current round.
  std::map<std::string, Stats> origin_, dequant_;
  std::map<std::string, double> clip_;
  std::map<std::string, runtime::Shape> first_round_shapes_;

  std::map<std::string, LayerTrack> layers_;
  std::vector<std::string> layer_order_;
  std::map<std::string, std::string> layer_output_value_;  // node -> its first output's Dequant value
  std::map<std::string, std::vector<std::string>> layers_by_value_;
  std::map<std::string, std::string> layer_output_origin_;
  nlohmann::json output_summary_ = nlohmann::json::array();
  std::string output_summary_csv_;
  // Each round's rows go to disk as they are made, so report.json costs no
  // memory per round; WriteFiles() splices them in.
  std::vector<std::string> csv_files_;
  std::filesystem::path rows_path_;
  std::ofstream rows_out_;
  size_t rounds_ = 0;
  bool has_data_ = false;
};

Status ReportBuilder::Plan() {
  for (const auto& param : request_.params) param_by_tensor_.emplace(param.tensor_name, &param);
  const auto& graph = original_.graph();
  for (const auto& initializer : graph.initializer()) original_constants_.insert(initializer.name());
  for (const auto& node : graph.node()) {
    if (node.op_type() == "Constant") {
      for (const auto& output : node.output()) original_constants_.insert(output);
    }
  }
  std::map<std::string, int> quantized_node_index;
  for (int i = 0; i < quantized_.graph().node_size(); ++i) quantized_node_index[quantized_.graph().node(i).name()] = i;
  QUANTD_RETURN_IF_ERROR(PlanClipSources());
  // The dequantized copy that consumers of a quantized activation read.
  std::map<std::string, std::string> dequantized_of;
  for (const auto& [dequantized, source] : clip_by_dequantized_) {
    if (!source.weight) dequantized_of.emplace(source.source, dequantized);
  }

  QUANTD_ASSIGN_OR_RETURN(auto order, original_.TopologicalOrder());
  for (int index : order) {
    const auto& node = graph.node(index);
    auto add_origin = [&](const std::string& tensor, bool output) {
      if (tensor.empty()) return;
      entries_.push_back(
          {node.name(), node.op_type(), tensor, output, original_constants_.count(tensor) > 0, false, tensor});
    };
    for (const auto& input : node.input()) add_origin(input, false);
    for (const auto& output : node.output()) add_origin(output, true);
    auto found = quantized_node_index.find(node.name());
    if (!request_.quantized_nodes.count(node.name()) || found == quantized_node_index.end()) continue;
    const auto& quantized_node = quantized_.graph().node(found->second);
    const int inputs = std::min(node.input_size(), quantized_node.input_size());
    for (int i = 0; i < inputs; ++i) {
      const std::string& value = quantized_node.input(i);
      auto clip = clip_by_dequantized_.find(value);
      if (node.input(i).empty() || clip == clip_by_dequantized_.end()) continue;
      const bool weight = clip->second.weight;
      entries_.push_back({node.name(), node.op_type(), node.input(i), false, weight, true, value});
      origin_of_value_[value] = node.input(i);
      if (weight) {
        weight_values_.insert(value);
      } else {
        kept_origin_.insert(node.input(i));
      }
    }
    for (const auto& output : node.output()) {
      if (output.empty()) continue;
      auto dequantized = dequantized_of.find(output);
      const std::string value = dequantized == dequantized_of.end() ? output : dequantized->second;
      entries_.push_back({node.name(), node.op_type(), output, true, false, true, value});
      origin_of_value_[value] = output;
      kept_origin_.insert(output);
      if (!layers_.count(node.name())) {
        layers_[node.name()].node_type = node.op_type();
        layer_order_.push_back(node.name());
        layer_output_value_[node.name()] = value;
        layers_by_value_[value].push_back(node.name());
        layer_output_origin_[node.name()] = output;
      }
    }
  }
  for (const auto& output : graph.output()) kept_origin_.insert(output.name());
  // Weight-only reports fall back to each layer's weight for its cosine.
  for (const auto& entry : entries_) {
    if (!entry.dequant || !entry.weight || layers_.count(entry.node_name)) continue;
    layers_[entry.node_name].node_type = entry.node_type;
    layer_order_.push_back(entry.node_name);
  }
  return Status::Ok();
}

Status ReportBuilder::PlanClipSources() {
  const auto& graph = quantized_.graph();
  for (const auto& node : graph.node()) {
    if (node.op_type() != "DequantizeLinear" || !IsDefaultDomain(node.domain()) || node.input_size() < 2 ||
        node.output_size() < 1) {
      continue;
    }
    ClipSource clip;
    const onnx::TensorProto* scale = quantized_.Initializer(node.input(1));
    const onnx::TensorProto* zero_point = node.input_size() > 2 ? quantized_.Initializer(node.input(2)) : nullptr;
    if (quantized_.Initializer(node.input(0))) {
      clip.weight = true;
    } else {
      int producer = quantized_.ProducerIndex(node.input(0));
      if (producer < 0 || graph.node(producer).op_type() != "QuantizeLinear") continue;
      clip.source = graph.node(producer).input(0);
    }
    if (!scale || scale->data_type() != onnx::TensorProto::FLOAT) continue;
    QUANTD_ASSIGN_OR_RETURN(clip.range.scales, ReadFloatTensor(*scale));
    if (zero_point) {
      QUANTD_ASSIGN_OR_RETURN(clip.range.zero_points, IntegerValues(*zero_point));
    } else {
      clip.range.zero_points.assign(clip.range.scales.size(), 0);
    }
    clip.range.axis = AxisAttribute(node);
    const std::string& dequantized = node.output(0);
    clip_by_dequantized_[dequantized] = clip;
  }
  // Bits come from the quantization report (keyed by original names, which
  // Plan() learns from the readers); containers give the rest.
  for (auto& [dequantized, clip] : clip_by_dequantized_) {
    const onnx::NodeProto* dq = nullptr;
    int producer = quantized_.ProducerIndex(dequantized);
    if (producer >= 0) dq = &graph.node(producer);
    if (!dq) continue;
    int32_t type = 0;
    if (const auto* integers = quantized_.Initializer(dq->input(0))) {
      type = integers->data_type();
    } else if (dq->input_size() > 2 && quantized_.Initializer(dq->input(2))) {
      type = quantized_.Initializer(dq->input(2))->data_type();
    } else {
      type = onnx::TensorProto::UINT8;
    }
    std::string original_name = clip.weight ? std::string() : clip.source;
    if (clip.weight) {
      // The reader's original input at the same position names the weight.
      for (int reader : quantized_.ConsumerIndices(dequantized)) {
        const auto& quantized_node = graph.node(reader);
        int original_index = -1;
        for (int i = 0; i < original_.graph().node_size(); ++i) {
          if (original_.graph().node(i).name() == quantized_node.name()) original_index = i;
        }
        if (original_index < 0) continue;
        const auto& original_node = original_.graph().node(original_index);
        for (int i = 0; i < std::min(quantized_node.input_size(), original_node.input_size()); ++i) {
          if (quantized_node.input(i) == dequantized) original_name = original_node.input(i);
        }
        if (!original_name.empty()) break;
      }
      clip.origin_weight = original_name;
    }
    auto param = param_by_tensor_.find(original_name);
    int bits = param == param_by_tensor_.end() ? 0 : param->second->bits;
    auto [qmin, qmax] = IntegerRange(static_cast<DataType>(type), bits);
    clip.range.qmin = qmin;
    clip.range.qmax = qmax;
    if (!clip.weight) clip_targets_by_source_[clip.source].push_back(dequantized);
  }
  return Status::Ok();
}

// Float weights of the original model, and their dequantized copies as the
// quantized model's executor produces them (the DequantizeLinear nodes over
// initializers, run once on their own).
Status ReportBuilder::ReadWeights() {
  std::map<std::string, std::vector<float>> origin_values;
  std::map<std::string, std::vector<int64_t>> origin_dims;
  for (const auto& entry : entries_) {
    if (!entry.weight || entry.dequant || weight_origin_.count(entry.tensor_name)) continue;
    const auto* initializer = original_.Initializer(entry.tensor_name);
    if (!initializer || initializer->data_type() != onnx::TensorProto::FLOAT) continue;
    QUANTD_ASSIGN_OR_RETURN(auto values, ReadFloatTensor(*initializer));
    weight_origin_[entry.tensor_name].distribution = ComputeDistribution(values);
    origin_dims[entry.tensor_name] = DimsOf(*initializer);
    origin_values[entry.tensor_name] = std::move(values);
  }
  if (weight_values_.empty()) return Status::Ok();

  onnx::ModelProto weights_only;
  weights_only.set_ir_version(request_.quantized->ir_version());
  *weights_only.mutable_opset_import() = request_.quantized->opset_import();
  auto* graph = weights_only.mutable_graph();
  graph->set_name("dequantized_weights");
  std::set<std::string> needed;
  for (const auto& node : quantized_.graph().node()) {
    if (node.op_type() != "DequantizeLinear" || !weight_values_.count(node.output(0))) continue;
    *graph->add_node() = node;
    for (const auto& input : node.input()) needed.insert(input);
    auto* output = graph->add_output();
    output->set_name(node.output(0));
    output->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  }
  for (const auto& initializer : quantized_.graph().initializer()) {
    if (needed.count(initializer.name())) *graph->add_initializer() = initializer;
  }
  QUANTD_ASSIGN_OR_RETURN(auto executor, runtime::Executor::Create(weights_only, {request_.num_threads, nullptr}));
  runtime::RunOptions options;
  Status failure;
  options.tap = [&](const onnx::NodeProto&, int, const std::string& name, const Tensor& value) {
    if (!weight_values_.count(name) || value.dtype() != DataType::kFloat) return;
    Stats& stats = weight_dequant_[name];
    stats.distribution = ComputeDistribution(Floats(value));
    const auto& clip = clip_by_dequantized_.at(name);
    auto origin = origin_values.find(origin_of_value_[name]);
    if (origin == origin_values.end()) {
      stats.cosine = std::nan("");
      return;
    }
    stats.cosine = CosineSimilarity(Floats(value), origin->second);
    stats.clip = ClipFraction(origin->second, origin_dims[origin->first], clip.range);
  };
  QUANTD_ASSIGN_OR_RETURN(auto outputs, executor->Run({}, options));
  (void)outputs;
  return Status::Ok();
}

Status ReportBuilder::RunRounds() {
  std::vector<config::CalibrationSource> folders = request_.folders;
  if (folders.empty() && request_.preprocess) folders = request_.preprocess->calibrate_path;
  has_data_ = !folders.empty() && request_.preprocess;
  if (!has_data_) {
    TrackLayers(/*from_weights=*/true);
    if (request_.round_files == RoundFiles::kSingle) return WriteRound("data_distribution.csv");
    return Status::Ok();
  }
  QUANTD_ASSIGN_OR_RETURN(auto original_run,
                          runtime::Executor::Create(*request_.original, {request_.num_threads, nullptr}));
  QUANTD_ASSIGN_OR_RETURN(auto quantized_run,
                          runtime::Executor::Create(*request_.quantized, {request_.num_threads, nullptr}));
  std::vector<calib::InputSpec> specs;
  for (const auto& input : original_run->inputs()) {
    if (!input.optional) specs.push_back({input.name, input.dtype, input.shape});
  }
  QUANTD_ASSIGN_OR_RETURN(auto dataset,
                          calib::CalibrationDataset::Open(*request_.preprocess, folders, specs, request_.image_limits));
  const size_t total = dataset.size();
  output_summary_csv_ = std::string(kOutputSummaryHeader) + "\n";
  for (size_t round = 0; round < total; ++round) {
    if (request_.on_progress && !request_.on_progress(round, total)) return Cancelled("debug report cancelled");
    QUANTD_ASSIGN_OR_RETURN(auto sample, dataset.Load(round));
    origin_.clear();
    dequant_.clear();
    clip_.clear();
    std::map<std::string, Tensor> kept;  // only until the quantized model has run on this sample

    auto visit_origin = [&](const std::string& name, const Tensor& value) {
      if (value.dtype() != DataType::kFloat) return;
      origin_[name].distribution = ComputeDistribution(Floats(value));
      if (kept_origin_.count(name)) kept[name] = value;
      if (round == 0) first_round_shapes_[name] = value.shape();
    };
    for (const auto& [name, value] : sample) visit_origin(name, value);
    runtime::RunOptions origin_options;
    origin_options.tap = [&](const onnx::NodeProto&, int, const std::string& name, const Tensor& value) {
      visit_origin(name, value);
    };
    QUANTD_ASSIGN_OR_RETURN(auto origin_outputs, original_run->Run(sample, origin_options));

    auto visit_dequant = [&](const std::string& name, const Tensor& value) {
      if (value.dtype() != DataType::kFloat) return;
      if (auto targets = clip_targets_by_source_.find(name); targets != clip_targets_by_source_.end()) {
        for (const auto& dequantized : targets->second) {
          clip_[dequantized] = ClipFraction(Floats(value), value.shape(), clip_by_dequantized_.at(dequantized).range);
        }
      }
      auto origin_name = origin_of_value_.find(name);
      if (origin_name == origin_of_value_.end() || weight_values_.count(name)) return;
      Stats& stats = dequant_[name];
      stats.distribution = ComputeDistribution(Floats(value));
      auto origin = kept.find(origin_name->second);
      stats.cosine = origin == kept.end() ? std::nan("") : CosineSimilarity(Floats(value), Floats(origin->second));
      auto layer_nodes = layers_by_value_.find(name);
      if (layer_nodes == layers_by_value_.end() || origin == kept.end()) return;
      for (const auto& node : layer_nodes->second) {
        LayerTrack& layer = layers_[node];
        if (!layer.has_histogram) {
          const auto& a = origin_[origin_name->second].distribution;
          const auto& b = stats.distribution;
          double lo = std::min(a.min, b.min), hi = std::max(a.max, b.max);
          if (!std::isfinite(lo) || !std::isfinite(hi)) lo = hi = 0;
          layer.origin = MakeHistogram(lo, hi, kHistogramBins);
          layer.dequant = MakeHistogram(layer.origin.lo, layer.origin.hi, kHistogramBins);
          layer.has_histogram = true;
        }
        layer.origin.Add(Floats(origin->second));
        layer.dequant.Add(Floats(value));
      }
    };
    for (const auto& [name, value] : sample) visit_dequant(name, value);
    runtime::RunOptions dequant_options;
    dequant_options.tap = [&](const onnx::NodeProto&, int, const std::string& name, const Tensor& value) {
      visit_dequant(name, value);
    };
    QUANTD_ASSIGN_OR_RETURN(auto dequant_outputs, quantized_run->Run(sample, dequant_options));

    for (const auto& output : request_.original->graph().output()) {
      auto origin = origin_outputs.find(output.name());
      auto quantized = dequant_outputs.find(output.name());
      if (origin == origin_outputs.end() || quantized == dequant_outputs.end() ||
          origin->second.dtype() != DataType::kFloat || quantized->second.dtype() != DataType::kFloat) {
        continue;
      }
      double cosine = CosineSimilarity(Floats(quantized->second), Floats(origin->second));
      double error = MeanRelativeError(Floats(quantized->second), Floats(origin->second));
      output_summary_.push_back({{"round", round},
                                 {"output", output.name()},
                                 {"cosine_similarity", JsonValue(cosine)},
                                 {"mean_relative_error", JsonValue(error)}});
      output_summary_csv_ +=
          std::to_string(round) + "," + CsvField(output.name()) + "," + Number(cosine) + "," + Number(error) + "\n";
    }
    TrackLayers(/*from_weights=*/false);
    if (request_.round_files == RoundFiles::kOnePerSample) {
      char name[32];
      std::snprintf(name, sizeof(name), "round_%04zu.csv", round);
      QUANTD_RETURN_IF_ERROR(WriteRound(name));
    } else if (round == 0) {
      QUANTD_RETURN_IF_ERROR(WriteRound("data_distribution.csv"));
    }
    ++rounds_;
  }
  if (request_.on_progress) request_.on_progress(total, total);
  return Status::Ok();
}

void ReportBuilder::TrackLayers(bool from_weights) {
  for (const auto& node : layer_order_) {
    LayerTrack& layer = layers_[node];
    double cosine = std::nan("");
    if (!from_weights) {
      auto stats = dequant_.find(layer_output_value_[node]);
      if (stats != dequant_.end()) cosine = stats->second.cosine;
    } else {
      for (const auto& entry : entries_) {
        if (entry.node_name != node || !entry.dequant || !entry.weight) continue;
        auto stats = weight_dequant_.find(entry.value_name);
        if (stats != weight_dequant_.end()) cosine = stats->second.cosine;
        break;
      }
    }
    if (std::isnan(cosine)) continue;
    layer.cosine_sum += cosine;
    ++layer.rounds;
  }
}

Status ReportBuilder::WriteRound(const std::string& file_name) {
  std::string csv = DistributionHeader() + "\n";
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& entry : entries_) {
    // Initializers are measured once; everything else, Constant outputs
    // included, comes from this round's runs.
    const Stats* stats = nullptr;
    const auto& fixed = entry.dequant ? weight_dequant_ : weight_origin_;
    const auto& per_round = entry.dequant ? dequant_ : origin_;
    if (auto found = fixed.find(entry.value_name); entry.weight && found != fixed.end()) {
      stats = &found->second;
    } else if (auto measured = per_round.find(entry.value_name); measured != per_round.end()) {
      stats = &measured->second;
    }
    if (!stats) continue;
    double clip = 0;
    if (entry.dequant) {
      if (entry.weight) {
        clip = stats->clip;
      } else if (auto found = clip_.find(entry.value_name); found != clip_.end()) {
        clip = found->second;
      }
    }
    const double cosine = entry.dequant ? stats->cosine : 1.0;
    const auto& d = stats->distribution;
    const char* in_out = entry.output ? "Output" : "Input";
    const char* data_type = entry.dequant ? "Dequant" : "Origin";
    const char* tensor_type = entry.weight ? "Weight" : "Activation";
    csv += CsvField(entry.node_name) + "," + CsvField(entry.node_type) + "," + CsvField(entry.tensor_name) + "," +
           in_out + "," + data_type + "," + tensor_type;
    for (double value : {d.min, d.q1, d.median, d.q3, d.max, d.mean, d.var, d.sparsity, clip, cosine}) {
      csv += "," + Number(value);
    }
    csv += "\n";
    rows.push_back({{"node", entry.node_name},
                    {"node_type", entry.node_type},
                    {"tensor", entry.tensor_name},
                    {"in_out", in_out},
                    {"data_type", data_type},
                    {"tensor_type", tensor_type},
                    {"elements", d.elements},
                    {"min", JsonValue(d.min)},
                    {"q1", JsonValue(d.q1)},
                    {"median", JsonValue(d.median)},
                    {"q3", JsonValue(d.q3)},
                    {"max", JsonValue(d.max)},
                    {"mean", JsonValue(d.mean)},
                    {"var", JsonValue(d.var)},
                    {"sparsity", JsonValue(d.sparsity)},
                    {"clip", JsonValue(clip)},
                    {"cosine_similarity", JsonValue(cosine)}});
  }
  auto path = request_.out_dir / file_name;
  if (auto status = WriteFileAtomic(path, csv); !status.ok()) {
    return Internal("DEBUG_REPORT_IO", "cannot write " + path.string() + ": " + status.message());
  }
  if (!rows_out_.is_open()) {
    rows_path_ = request_.out_dir / ".report_rows.tmp";
    rows_out_.open(rows_path_, std::ios::binary | std::ios::trunc);
  }
  nlohmann::json round = {{"round", rounds_}, {"file", file_name}, {"rows", std::move(rows)}};
  rows_out_ << (csv_files_.empty() ? "\n" : ",\n")
            << round.dump(1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (!rows_out_) return Internal("DEBUG_REPORT_IO", "cannot write " + rows_path_.string());
  csv_files_.push_back(file_name);
  return Status::Ok();
}

Status ReportBuilder::Write(const std::string& name, const std::string& content, DebugReportResult& result) {
  auto path = request_.out_dir / name;
  if (auto status = WriteFileAtomic(path, content); !status.ok()) {
    return Internal("DEBUG_REPORT_IO", "cannot write " + path.string() + ": " + status.message());
  }
  result.files.push_back(path);
  return Status::Ok();
}

// Keys print in sorted order, so "data_distribution" is the first key and
// its placeholder value is found before any user-controlled text.
Status ReportBuilder::WriteReportJson(const nlohmann::json& report, DebugReportResult& result) {
  const std::string text = report.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  const std::string placeholder = "\"data_distribution\": \"rows\"";
  const size_t at = text.find(placeholder);
  if (at == std::string::npos) return Internal("DEBUG_REPORT_IO", "report.json layout changed");
  rows_out_.close();
  const auto path = request_.out_dir / "report.json";
  const auto partial = request_.out_dir / ".report.json.tmp";
  {
    std::ofstream out(partial, std::ios::binary | std::ios::trunc);
    out << text.substr(0, at) << "\"data_distribution\": [";
    if (!rows_path_.empty()) {
      std::ifstream rows(rows_path_, std::ios::binary);
      out << rows.rdbuf();
    }
    out << "\n]" << text.substr(at + placeholder.size());
    if (!out) return Internal("DEBUG_REPORT_IO", "cannot write " + partial.string());
  }
  std::error_code ec;
  std::filesystem::rename(partial, path, ec);
  if (ec) return Internal("DEBUG_REPORT_IO", "cannot write " + path.string() + ": " + ec.message());
  if (!rows_path_.empty()) std::filesystem::remove(rows_path_, ec);
  result.files.push_back(path);
  return Status::Ok();
}

Status ReportBuilder::WriteFiles(DebugReportResult& result) {
  for (const auto& file : csv_files_) result.files.push_back(request_.out_dir / file);

  std::string params_csv = std::string(kQuantParamHeader) + "\n";
  nlohmann::json params_json = nlohmann::json::array();
  for (const auto& param : request_.params) {
    std::vector<int64_t> dims = param.dims;
    int64_t elements = param.elements;
    // Activations have no static shape; one sample's shape stands in.
    if (dims.empty()) {
      if (auto shape = first_round_shapes_.find(param.tensor_name); shape != first_round_shapes_.end()) {
        dims.assign(shape->second.begin(), shape->second.end());
        elements = runtime::NumElements(shape->second);
      }
    }
    const std::string correction_mean = param.correction.empty() ? "0" : SpaceSeparated(param.correction);
    params_csv += CsvField(param.node_name) + "," + CsvField(param.node_type) + "," + CsvField(param.tensor_name) +
                  "," + std::to_string(elements) + "," + SpaceSeparated(dims) + "," + SpaceSeparated(param.scales) +
                  "," + SpaceSeparated(param.zero_points) + "," + std::to_string(param.bits) + ",1," + correction_mean +
                  "\n";
    std::vector<double> correction(param.correction.begin(), param.correction.end());
    params_json.push_back({{"node", param.node_name},
                           {"node_type", param.node_type},
                           {"tensor", param.tensor_name},
                           {"elements", elements},
                           {"dims", dims},
                           {"scales", param.scales},
                           {"zero_points", param.zero_points},
                           {"bits", param.bits},
                           {"correction_var", 1},
                           {"correction_mean", correction}});
  }
  QUANTD_RETURN_IF_ERROR(Write("quant_param.csv", params_csv, result));
  if (output_summary_csv_.empty()) output_summary_csv_ = std::string(kOutputSummaryHeader) + "\n";
  QUANTD_RETURN_IF_ERROR(Write("output_summary.csv", output_summary_csv_, result));

  nlohmann::json layers = nlohmann::json::array();
  std::vector<std::pair<double, std::string>> ranked;
  for (const auto& node : layer_order_) {
    const LayerTrack& layer = layers_[node];
    if (layer.rounds == 0) continue;
    double mean = layer.cosine_sum / layer.rounds;
    layers.push_back(
        {{"node", node}, {"node_type", layer.node_type}, {"mean_cosine", JsonNumber(mean)}, {"rounds", layer.rounds}});
    ranked.emplace_back(mean, node);
  }
  std::stable_sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  if (ranked.size() > static_cast<size_t>(kWorstLayerCount)) ranked.resize(kWorstLayerCount);
  std::vector<std::string> skip = request_.skip_quant_node;
  for (const auto& [mean, node] : ranked) {
    const LayerTrack& layer = layers_[node];
    nlohmann::json worst = {{"node", node}, {"node_type", layer.node_type}, {"mean_cosine", JsonNumber(mean)}};
    if (layer.has_histogram) {
      worst["histogram"] = {{"tensor", layer_output_origin_[node]},
                            {"lo", layer.origin.lo},
                            {"hi", layer.origin.hi},
                            {"origin", layer.origin.counts},
                            {"dequant", layer.dequant.counts}};
    }
    result.worst_layers.push_back(worst);
    if (std::find(skip.begin(), skip.end(), node) == skip.end()) skip.push_back(node);
  }
  if (!ranked.empty()) {
    result.skip_line = "skip_quant_node=";
    for (size_t i = 0; i < skip.size(); ++i) result.skip_line += (i ? "," : "") + skip[i];
  }
  result.rounds = rounds_;
  // Without calibration data only the weights have values to compare.
  const char* basis = has_data_ ? "output" : "weight";

  nlohmann::json report = {
      {"schema", kReportSchema},
      {"quant_type", request_.quant_type},
      {"rounds", rounds_},
      {"data_distribution_columns", DistributionColumns()},
      {"data_distribution_files", csv_files_},
      {"data_distribution", "rows"},
      {"quant_params", params_json},
      {"output_summary", output_summary_},
      {"layer_cosine_basis", basis},
      {"layers", layers},
      {"worst_layers", result.worst_layers},
      {"suggested_skip_quant_node", result.skip_line},
  };
  QUANTD_RETURN_IF_ERROR(WriteReportJson(report, result));

  nlohmann::json page = {{"schema", kReportSchema},
                         {"quant_type", request_.quant_type},
                         {"rounds", rounds_},
                         {"layer_cosine_basis", basis},
                         {"layers", layers},
                         {"worst_layers", result.worst_layers},
                         {"output_summary", output_summary_},
                         {"suggested_skip_quant_node", result.skip_line}};
  QUANTD_RETURN_IF_ERROR(Write("report.html", RenderReportHtml(page), result));

  if (!request_.tar_path.empty()) {
    if (auto status = CreateTarArchive(request_.out_dir, request_.tar_path); !status.ok()) {
      return Internal("DEBUG_REPORT_IO", "cannot pack " + request_.tar_path.string() + ": " + status.message());
    }
  }
  return Status::Ok();
}

}  // namespace

std::vector<TensorQuantParam> WeightQuantParams(const WeightQuantReport& report) {
  std::vector<TensorQuantParam> params;
  for (const auto& weight : report.quantized) {
    int64_t elements = 1;
    for (auto dim : weight.dims) elements *= dim;
    params.push_back({weight.node_name,
                      weight.node_type,
                      weight.tensor_name,
                      weight.dims,
                      elements,
                      weight.scales,
                      std::vector<int32_t>(weight.scales.size(), 0),
                      weight.bits,
                      {}});
  }
  return params;
}

std::set<std::string> NodesReadingDequantized(const onnx::ModelProto& model) {
  std::set<std::string> dequantized;
  for (const auto& node : model.graph().node()) {
    if (node.op_type() == "DequantizeLinear") dequantized.insert(node.output().begin(), node.output().end());
  }
  std::set<std::string> readers;
  for (const auto& node : model.graph().node()) {
    if (node.op_type() == "DequantizeLinear" || node.op_type() == "QuantizeLinear") continue;
    for (const auto& input : node.input()) {
      if (dequantized.count(input)) readers.insert(node.name());
    }
  }
  return readers;
}

StatusOr<DebugReportResult> WriteDebugReport(const DebugReportRequest& request) {
  if (!request.original || !request.quantized) {
    return InvalidArgument("DEBUG_REPORT_BAD_REQUEST", "the debug report needs the original and the quantized model");
  }
  std::error_code ec;
  std::filesystem::create_directories(request.out_dir, ec);
  if (ec) {
    return InvalidArgument("DEBUG_REPORT_IO", "common_quant_param.debug_info_save_path: cannot create " +
                                                  request.out_dir.string() + ": " + ec.message());
  }
  ReportBuilder builder(request);
  QUANTD_RETURN_IF_ERROR(builder.Plan());
  QUANTD_RETURN_IF_ERROR(builder.ReadWeights());
  QUANTD_RETURN_IF_ERROR(builder.RunRounds());
  DebugReportResult result;
  QUANTD_RETURN_IF_ERROR(builder.WriteFiles(result));
  return result;
}

}  // namespace quantd::report
