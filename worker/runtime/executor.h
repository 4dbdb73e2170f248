// Runs an ONNX model on the CPU in float32 (and the integer types shape
// computations need), exposing every intermediate tensor through a tap.
//
// Create() does all the per-model work once: it checks that every op has a
// kernel, loads initializers, evaluates Constant nodes and every node whose
// inputs are all constant, orders the nodes, creates one kernel per node and
// works out where each tensor is read for the last time. Run() then only
// executes kernels; its per-run state lives on the caller's stack, so one
// Executor may run from several threads at once.
//
// Memory: an intermediate tensor is released as soon as the last node that
// reads it has run, unless it is a graph output or named in RunOptions::keep.
// A kernel may overwrite an input in place when nothing else holds that
// buffer; a tap that copies a Tensor handle keeps the buffer alive (and
// unchanged) for as long as it holds it.
//
// Failure reasons:
//   RUNTIME_UNSUPPORTED_OP   (kUnimplemented) ops without a kernel, listed
//   RUNTIME_UNSUPPORTED_TYPE (kUnimplemented) an element type the runtime lacks
//   RUNTIME_BAD_INPUT        (kInvalidArgument) feeds that do not match the
//                            graph inputs, unknown names in `keep`
//   RUNTIME_INVALID_NODE / RUNTIME_KERNEL_ERROR  see kernel.h
//   MODEL_INVALID            the graph itself is broken (cycle, undefined
//                            tensor, bad initializer)
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "common/status.h"
#include "worker/runtime/kernel.h"
#include "worker/runtime/tensor.h"

namespace quantd::runtime {

struct ExecutorOptions {
  // Threads used inside kernels (counting the caller); below 1 means one
  // per hardware core.
  int num_threads = 1;
  // nullptr selects KernelRegistry::Default().
  const KernelRegistry* registry = nullptr;
  // Runs Conv and the activation after it as one com.microsoft FusedConv
  // (see graph_fusion.h): faster, but the Conv's pre-activation output is
  // then never produced, so taps do not see it and `keep` cannot name it,
  // and tap node indices refer to the fused node list. Tensors listed in
  // keep_unfused are never fused away.
  bool fuse_activations = false;
  std::set<std::string> keep_unfused = {};
  // The batch size runs will mostly have (a calibration batch). Where every
  // fed input has a known shape but an open first dimension, Create() then
  // runs the graph once on empty batches to learn each tensor's shape, lets
  // kernels set up for full batches and faults in the buffers one full run
  // takes; otherwise all of that lands on the first run (a fresh page costs
  // microseconds). Tensors whose first dimension is not the batch are
  // skipped. 0: no preparation.
  int64_t prepare_batch = 0;
};

// Called once for every tensor a node produces (every non-empty output
// name), right after the node ran, including nodes evaluated at Create().
using TensorTap = std::function<void(const onnx::NodeProto& node, int node_index, const std::string& tensor_name,
                                     const Tensor& value)>;

struct RunOptions {
  TensorTap tap;
  // Intermediate tensors to return in addition to the graph outputs.
  std::set<std::string> keep;
};

// A graph input or output as declared in the model.
struct TensorInfo {
  std::string name;
  DataType dtype = DataType::kUndefined;  // kUndefined when not declared
  bool has_shape = false;                 // false: any rank is accepted
  Shape shape;                            // -1 for symbolic or unknown dims
  std::vector<std::string> dim_params;    // per dim: the symbol, or ""
  bool optional = false;                  // an input backed by an initializer
};

// A graph input or output's declared type and shape.
TensorInfo DeclaredTensorInfo(const onnx::ValueInfoProto& value);

// The graph inputs a caller has to feed, read from the model alone: those no
// initializer backs (an initializer makes an input optional, or before IR
// version 4 a constant). Executor::inputs() lists these as not optional.
std::vector<TensorInfo> FedInputs(const onnx::ModelProto& model);

// Sets up the kernel libraries' one-time machinery (oneDNN's JIT), which
// otherwise lands on the first convolution a model runs. Any thread may call
// it, any number of times; callers run it while doing other work.
void WarmUpKernelLibraries();

class Executor {
 public:
  static StatusOr<std::unique_ptr<Executor>> Create(const onnx::ModelProto& model, ExecutorOptions options = {});
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  StatusOr<std::map<std::string, Tensor>> Run(const std::map<std::string, Tensor>& feeds,
                                              const RunOptions& options = {}) const;

  const std::vector<TensorInfo>& inputs() const { return inputs_; }
  const std::vector<TensorInfo>& outputs() const { return outputs_; }
  // Nodes in the order Run() executes them (indices as passed to taps
  // refer to nodes(): the model's node list, after fusion if enabled).
  const std::vector<int>& execution_order() const { return order_; }
  const std::vector<onnx::NodeProto>& nodes() const { return nodes_; }
  int num_threads() const;

 private:
  Executor() = default;
  struct Step;
  enum class SlotKind { kRun, kConstant };

  Status Build(const onnx::ModelProto& model, const ExecutorOptions& options);
  void PrepareForBatch(int64_t batch);
  int SlotOf(const std::string& name);

  std::vector<onnx::NodeProto> nodes_;
  std::vector<TensorInfo> inputs_;
  std::vector<TensorInfo> outputs_;
  std::vector<int> order_;

  // Every tensor name maps to a slot; constants hold their value here,
  // run slots are filled per Run().
  std::map<std::string, int> slot_by_name_;
  std::vector<std::string> slot_names_;
  std::vector<SlotKind> slot_kind_;
  std::vector<Tensor> constants_;         // by slot; defined for constants
  std::vector<Tensor> input_defaults_;    // by slot; initializer behind an input
  std::vector<int> input_slots_;          // per inputs_ entry
  std::vector<int> output_slots_;         // per outputs_ entry
  std::vector<bool> is_graph_output_;     // by slot
  // One per node in execution order; nodes evaluated at Create() keep a
  // step without a kernel so taps still see their outputs in order.
  std::vector<Step> steps_;

  std::unique_ptr<ThreadPool> pool_;
};

}  // namespace quantd::runtime
