#include "worker/pipeline/calibrate.h"

#include <algorithm>
#include <cstring>
#include <future>
#include <memory>
#include <set>

#include "worker/calib/dataset.h"
#include "worker/calib/observer.h"
#include "worker/runtime/executor.h"

namespace quantd::pipeline {
namespace {

using runtime::DataType;
using runtime::Tensor;

// Accumulates per-channel sums of a tensor laid out [..., C, ...] with the
// channel at `axis`.
class ChannelMean {
 public:
  explicit ChannelMean(int axis) : axis_(axis) {}
  void Add(const Tensor& value) {
    if (value.dtype() != DataType::kFloat || value.rank() == 0) return;
    int axis = axis_ < 0 ? value.rank() + axis_ : axis_;
    if (axis < 0 || axis >= value.rank()) return;
    int64_t channels = value.dim(axis), outer = 1, inner = 1;
    for (int i = 0; i < axis; ++i) outer *= value.dim(i);
    for (int i = axis + 1; i < value.rank(); ++i) inner *= value.dim(i);
    if (sums_.empty()) sums_.assign(static_cast<size_t>(channels), 0.0);
    if (static_cast<int64_t>(sums_.size()) != channels) return;
    const float* data = value.data<float>();
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t c = 0; c < channels; ++c) {
        const float* row = data + (o * channels + c) * inner;
        double sum = 0;
        for (int64_t i = 0; i < inner; ++i) sum += row[i];
        sums_[static_cast<size_t>(c)] += sum;
      }
    }
    count_ += outer * inner;
  }
  std::vector<double> Mean() const {
    std::vector<double> mean = sums_;
    for (auto& m : mean) m /= static_cast<double>(std::max<int64_t>(count_, 1));
    return mean;
  }

 private:
  int axis_;
  std::vector<double> sums_;
  int64_t count_ = 0;
};

// Stacks batch-1 samples along dimension 0.
Tensor Stack(const std::vector<const Tensor*>& parts) {
  runtime::Shape shape = parts.front()->shape();
  shape[0] = static_cast<int64_t>(parts.size());
  Tensor stacked(parts.front()->dtype(), shape);
  auto* out = static_cast<char*>(stacked.raw());
  for (const auto* part : parts) {
    std::memcpy(out, part->raw(), part->bytes());
    out += part->bytes();
  }
  return stacked;
}

StatusOr<std::vector<calib::Sample>> LoadBatch(const calib::CalibrationDataset& dataset, size_t begin, size_t end) {
  std::vector<calib::Sample> samples;
  samples.reserve(end - begin);
  for (size_t i = begin; i < end; ++i) {
    QUANTD_ASSIGN_OR_RETURN(auto sample, dataset.Load(i));
    samples.push_back(std::move(sample));
  }
  return samples;
}

// Runs `model` over the calibration set in batches and hands every
// produced tensor (and every fed input) to `visit`. The next batch is
// decoded on a second thread while the current one runs, so file reading
// and image decoding cost no time of their own.
//
// Conv and the activation after it run fused except where `keep_unfused`
// names the Conv output; fused-away tensors never reach `visit`.
Status RunOverDataset(const CalibrationRequest& request, const onnx::ModelProto& model,
                      const std::set<std::string>& keep_unfused,
                      const std::function<void(const std::string&, const Tensor&)>& visit, size_t* samples) {
  runtime::ExecutorOptions executor_options;
  executor_options.num_threads = request.num_threads;
  executor_options.fuse_activations = true;
  executor_options.keep_unfused = keep_unfused;
  QUANTD_ASSIGN_OR_RETURN(auto executor, runtime::Executor::Create(model, executor_options));
  std::vector<calib::InputSpec> specs;
  bool batchable = true;
  for (const auto& input : executor->inputs()) {
    if (input.optional) continue;
    specs.push_back({input.name, input.dtype, input.shape});
    // Several samples run as one batch only where the model leaves the
    // batch dimension open.
    batchable = batchable && input.has_shape && !input.shape.empty() && input.shape[0] < 0;
  }
  QUANTD_ASSIGN_OR_RETURN(auto dataset,
                          calib::CalibrationDataset::Open(request.config->preprocess, request.folders, specs));
  const size_t total = dataset.size();
  const size_t batch = batchable ? static_cast<size_t>(std::max(1, request.batch_size)) : 1;
  runtime::RunOptions options;
  options.tap = [&](const onnx::NodeProto&, int, const std::string& name, const Tensor& value) { visit(name, value); };
  auto load_async = [&dataset, total, batch](size_t begin) {
    return std::async(std::launch::async, LoadBatch, std::cref(dataset), begin, std::min(total, begin + batch));
  };
  std::future<StatusOr<std::vector<calib::Sample>>> next;
  if (total > 0) next = load_async(0);
  for (size_t start = 0; start < total; start += batch) {
    auto loaded = next.get();
    if (!loaded.ok()) return loaded.status();
    if (start + batch < total) next = load_async(start + batch);
    // A pending load finishes before `next` goes out of scope, whatever
    // path leaves this loop.
    if (request.on_progress && !request.on_progress(start, total)) return Cancelled("calibration cancelled");
    const std::vector<calib::Sample>& batch_samples = *loaded;
    std::map<std::string, Tensor> feeds;
    for (const auto& spec : specs) {
      std::vector<const Tensor*> parts;
      for (const auto& sample : batch_samples) parts.push_back(&sample.at(spec.name));
      feeds[spec.name] = parts.size() == 1 ? *parts.front() : Stack(parts);
      visit(spec.name, feeds[spec.name]);
    }
    QUANTD_ASSIGN_OR_RETURN(auto outputs, executor->Run(feeds, options));
    (void)outputs;
  }
  if (request.on_progress) request.on_progress(total, total);
  if (samples) *samples = total;
  return Status::Ok();
}

// Conv outputs that must stay visible: all but those read only by a
// Relu/Clip that will be quantized. Full quantization never places Q/DQ
// between such a pair (ONNX Runtime fuses it), so their own range is
// never needed.
std::set<std::string> ConvOutputsToKeep(const onnx::ModelProto& model, const CalibrationRequest& request) {
  const auto& skip = request.config->common.skip_quant_node;
  std::map<std::string, std::vector<const onnx::NodeProto*>> readers;
  for (const auto& node : model.graph().node()) {
    for (const auto& input : node.input()) readers[input].push_back(&node);
  }
  std::set<std::string> keep;
  for (const auto& [tensor, axis] : request.channel_mean_tensors) keep.insert(tensor);
  for (const auto& node : model.graph().node()) {
    if (node.op_type() != "Conv" || node.output_size() != 1) continue;
    const auto& users = readers[node.output(0)];
    const bool fusable_reader = users.size() == 1 && (users[0]->op_type() == "Relu" || users[0]->op_type() == "Clip") &&
                                std::find(skip.begin(), skip.end(), users[0]->name()) == skip.end() &&
                                std::find(skip.begin(), skip.end(), node.name()) == skip.end();
    if (!fusable_reader) keep.insert(node.output(0));
  }
  return keep;
}

}  // namespace

StatusOr<CalibrationResult> Calibrate(const CalibrationRequest& request) {
  std::map<std::string, std::unique_ptr<calib::Observer>> observers;
  std::map<std::string, ChannelMean> means;
  for (const auto& [tensor, axis] : request.channel_mean_tensors) means.emplace(tensor, ChannelMean(axis));
  CalibrationResult result;
  auto visit = [&](const std::string& name, const Tensor& value) {
    if (value.dtype() != DataType::kFloat) return;
    auto& observer = observers[name];
    if (!observer) observer = calib::MakeObserver(request.config->full.activation_quant_method);
    observer->Observe(value.data<float>(), value.size());
    if (auto it = means.find(name); it != means.end()) it->second.Add(value);
  };
  QUANTD_RETURN_IF_ERROR(
      RunOverDataset(request, *request.model, ConvOutputsToKeep(*request.model, request), visit, &result.samples));
  for (const auto& [name, observer] : observers) {
    auto range = observer->Range();
    result.table[name] = {range.min, range.max};
  }
  // A Conv output fused into its Relu/Clip was never observed; it is
  // listed with the activation's range so the pair counts as calibrated
  // (the range itself is unused: no Q/DQ goes between the two).
  for (const auto& node : request.model->graph().node()) {
    if (node.op_type() != "Relu" && node.op_type() != "Clip") continue;
    if (node.input_size() == 0 || node.output_size() != 1 || result.table.count(node.input(0))) continue;
    if (auto it = result.table.find(node.output(0)); it != result.table.end()) {
      result.table[node.input(0)] = it->second;
    }
  }
  for (const auto& [name, mean] : means) result.channel_means[name] = mean.Mean();
  return result;
}

StatusOr<std::map<std::string, std::vector<double>>> MeasureChannelMeans(const CalibrationRequest& request) {
  std::map<std::string, ChannelMean> means;
  for (const auto& [tensor, axis] : request.channel_mean_tensors) means.emplace(tensor, ChannelMean(axis));
  auto visit = [&](const std::string& name, const Tensor& value) {
    if (auto it = means.find(name); it != means.end()) it->second.Add(value);
  };
  std::set<std::string> keep;
  for (const auto& [tensor, axis] : request.channel_mean_tensors) keep.insert(tensor);
  QUANTD_RETURN_IF_ERROR(RunOverDataset(request, *request.model, keep, visit, nullptr));
  std::map<std::string, std::vector<double>> result;
  for (const auto& [name, mean] : means) result[name] = mean.Mean();
  return result;
}

}  // namespace quantd::pipeline
