#include "worker/pipeline/calibrate.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <thread>

#include "worker/calib/dataset.h"
#include "worker/calib/observer.h"
#include "worker/report/tensor_stats.h"
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

// The calibration set as the model's inputs want it, in batches.
struct BatchedDataset {
  std::vector<calib::InputSpec> specs;
  calib::CalibrationDataset dataset;
  size_t batch = 1;

  size_t size() const { return dataset.size(); }

  StatusOr<std::map<std::string, Tensor>> Load(size_t start) const {
    std::vector<calib::Sample> samples;
    for (size_t i = start; i < std::min(dataset.size(), start + batch); ++i) {
      QUANTD_ASSIGN_OR_RETURN(auto sample, dataset.Load(i));
      samples.push_back(std::move(sample));
    }
    std::map<std::string, Tensor> feeds;
    for (const auto& spec : specs) {
      std::vector<const Tensor*> parts;
      for (const auto& sample : samples) parts.push_back(&sample.at(spec.name));
      feeds[spec.name] = parts.size() == 1 ? *parts.front() : Stack(parts);
    }
    return feeds;
  }
};

// Samples per run: several only where every fed input leaves the batch
// dimension open.
size_t BatchSize(const CalibrationRequest& request, const std::vector<runtime::TensorInfo>& inputs) {
  const bool batchable = std::all_of(inputs.begin(), inputs.end(), [](const runtime::TensorInfo& input) {
    return input.has_shape && !input.shape.empty() && input.shape[0] < 0;
  });
  return batchable ? static_cast<size_t>(std::max(1, request.batch_size)) : 1;
}

StatusOr<BatchedDataset> OpenBatches(const CalibrationRequest& request, const onnx::ModelProto& model) {
  std::vector<calib::InputSpec> specs;
  const auto inputs = runtime::FedInputs(model);
  for (const auto& input : inputs) specs.push_back({input.name, input.dtype, input.shape});
  QUANTD_ASSIGN_OR_RETURN(auto dataset, calib::CalibrationDataset::Open(request.config->preprocess, request.folders,
                                                                        specs, request.image_limits));
  return BatchedDataset{std::move(specs), std::move(dataset), BatchSize(request, inputs)};
}

// Hands out the batches in order while the next one is read and decoded on
// a second thread, so file reading and image decoding overlap the runs.
// Listing the files and decoding the first batch start at construction, so
// they overlap building the executors. One thread serves the whole data set
// (starting one per batch cost more than handing a batch over), and it
// loads a batch only once the previous one was taken, so at most one waits.
class BatchPrefetcher {
 public:
  using Feeds = std::map<std::string, Tensor>;

  BatchPrefetcher(const CalibrationRequest& request, const onnx::ModelProto& model)
      : loader_([this, &request, &model] { Load(request, model); }) {}
  BatchPrefetcher(const BatchPrefetcher&) = delete;
  BatchPrefetcher& operator=(const BatchPrefetcher&) = delete;
  // Waits for a load in progress: leaving early (error, cancellation) never
  // leaves a thread behind.
  ~BatchPrefetcher() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    changed_.notify_all();
    loader_.join();
  }

  // Waits for the file listing; fails as listing the files did (or
  // rethrows what it threw).
  StatusOr<const BatchedDataset*> Open() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return opened_; });
    if (thrown_ != nullptr) std::rethrow_exception(thrown_);
    if (!batches_) return open_status_;
    return &*batches_;
  }

  // The next batch, after Open(). Rethrows what loading it threw (an
  // allocation failing under the job's memory limit).
  StatusOr<Feeds> Take() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return ready_.has_value() || thrown_ != nullptr; });
    if (thrown_ != nullptr) std::rethrow_exception(thrown_);
    StatusOr<Feeds> feeds = std::move(*ready_);
    ready_.reset();
    lock.unlock();
    changed_.notify_all();
    return feeds;
  }

 private:
  void Load(const CalibrationRequest& request, const onnx::ModelProto& model) {
    try {
      auto opened = OpenBatches(request, model);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (opened.ok()) batches_ = std::move(opened).value();
        else open_status_ = opened.status();
        opened_ = true;
      }
      changed_.notify_all();
      if (!batches_) return;
      for (size_t start = 0; start < batches_->size(); start += batches_->batch) {
        {
          std::unique_lock<std::mutex> lock(mutex_);
          changed_.wait(lock, [&] { return stop_ || !ready_.has_value(); });
          if (stop_) return;
        }
        auto feeds = batches_->Load(start);
        const bool failed = !feeds.ok();
        {
          std::lock_guard<std::mutex> lock(mutex_);
          ready_ = std::move(feeds);
        }
        changed_.notify_all();
        if (failed) return;
      }
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        thrown_ = std::current_exception();
        opened_ = true;
      }
      changed_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable changed_;
  bool opened_ = false;
  bool stop_ = false;
  Status open_status_;
  std::optional<BatchedDataset> batches_;  // set once, before opened_
  std::optional<StatusOr<Feeds>> ready_;
  std::exception_ptr thrown_;
  // Last: starts after every member it uses is built.
  std::thread loader_;
};

// Options for running a model whose Conv -> Relu/Clip intermediates nobody
// needs, except those in `keep_unfused`, prepared for a full batch.
runtime::ExecutorOptions FusedExecution(const CalibrationRequest& request, const onnx::ModelProto& model,
                                        std::set<std::string> keep_unfused = {}) {
  runtime::ExecutorOptions options;
  options.num_threads = request.num_threads;
  options.fuse_activations = true;
  options.keep_unfused = std::move(keep_unfused);
  options.prepare_batch = static_cast<int64_t>(BatchSize(request, runtime::FedInputs(model)));
  return options;
}

// Runs `model` over the calibration set in batches and hands every
// produced tensor (and every fed input) to `visit`. Conv and the
// activation after it run fused except where `keep_unfused` names the Conv
// output; fused-away tensors never reach `visit`.
Status RunOverDataset(const CalibrationRequest& request, const onnx::ModelProto& model,
                      const std::set<std::string>& keep_unfused,
                      const std::function<void(const std::string&, const Tensor&)>& visit, size_t* samples) {
  BatchPrefetcher prefetcher(request, model);
  QUANTD_ASSIGN_OR_RETURN(auto executor,
                          runtime::Executor::Create(model, FusedExecution(request, model, keep_unfused)));
  QUANTD_ASSIGN_OR_RETURN(const BatchedDataset* batches, prefetcher.Open());
  const size_t total = batches->size();
  runtime::RunOptions options;
  options.tap = [&](const onnx::NodeProto&, int, const std::string& name, const Tensor& value) { visit(name, value); };
  for (size_t start = 0; start < total; start += batches->batch) {
    QUANTD_ASSIGN_OR_RETURN(auto feeds, prefetcher.Take());
    if (request.on_progress && !request.on_progress(start, total)) return Cancelled("calibration cancelled");
    for (const auto& [name, value] : feeds) visit(name, value);
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

StatusOr<OutputAgreement> CompareOutputs(const CalibrationRequest& request, const onnx::ModelProto& candidate) {
  // Only graph outputs are compared, so both models may run fused.
  BatchPrefetcher prefetcher(request, *request.model);
  QUANTD_ASSIGN_OR_RETURN(auto reference_executor,
                          runtime::Executor::Create(*request.model, FusedExecution(request, *request.model)));
  QUANTD_ASSIGN_OR_RETURN(auto candidate_executor,
                          runtime::Executor::Create(candidate, FusedExecution(request, candidate)));
  QUANTD_ASSIGN_OR_RETURN(const BatchedDataset* batches, prefetcher.Open());
  const size_t total = batches->size();
  if (total == 0) return FailedPrecondition("CALIBRATION_EMPTY", "the calibration set has no samples");
  OutputAgreement agreement;
  double cosine_sum = 0;
  int64_t compared = 0;
  for (size_t start = 0; start < total; start += batches->batch) {
    if (request.on_progress && !request.on_progress(start, total)) return Cancelled("output comparison cancelled");
    QUANTD_ASSIGN_OR_RETURN(auto feeds, prefetcher.Take());
    const int64_t batch = static_cast<int64_t>(std::min(batches->batch, total - start));
    QUANTD_ASSIGN_OR_RETURN(auto expected, reference_executor->Run(feeds));
    QUANTD_ASSIGN_OR_RETURN(auto produced, candidate_executor->Run(feeds));
    for (const auto& [name, reference] : expected) {
      if (reference.dtype() != DataType::kFloat) continue;
      auto it = produced.find(name);
      if (it == produced.end() || it->second.dtype() != DataType::kFloat || it->second.shape() != reference.shape()) {
        return Internal("OUTPUT_MISMATCH", "output '" + name + "' of the quantized model has another type or shape");
      }
      // One cosine per sample where the output is batched along dim 0.
      const int64_t rows = reference.rank() > 0 && reference.dim(0) == batch ? batch : 1;
      const int64_t row_size = rows > 0 ? reference.size() / rows : 0;
      for (int64_t r = 0; r < rows; ++r) {
        const double cosine = report::CosineSimilarity(
            std::span<const float>(reference.data<float>() + r * row_size, static_cast<size_t>(row_size)),
            std::span<const float>(it->second.data<float>() + r * row_size, static_cast<size_t>(row_size)));
        cosine_sum += cosine;
        agreement.min_cosine = std::min(agreement.min_cosine, cosine);
        ++compared;
      }
    }
  }
  if (request.on_progress) request.on_progress(total, total);
  if (compared == 0) return FailedPrecondition("MODEL_NO_FLOAT_OUTPUT", "the model has no float output to compare");
  agreement.mean_cosine = cosine_sum / static_cast<double>(compared);
  agreement.samples = total;
  return agreement;
}

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
