// Kernel interface of the executor. One kernel family per file under
// kernels/; attributes are parsed once when the kernel is created, and
// Compute() is const so a compiled model can run from several threads.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/runtime/tensor.h"

namespace onnx {
class NodeProto;
class AttributeProto;
}  // namespace onnx

namespace quantd::runtime {

// Work splitting for kernels. Runs fn(begin, end) over [0, n) in chunks of
// at least `grain`; runs inline when single-threaded.
class ThreadPool {
 public:
  virtual ~ThreadPool() = default;
  virtual int num_threads() const = 0;
  virtual void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) = 0;
};

// Typed access to a node's attributes, with defaults and errors that name
// the node and the attribute.
class NodeAttributes {
 public:
  explicit NodeAttributes(const onnx::NodeProto& node);
  bool Has(const std::string& name) const;
  StatusOr<int64_t> Int(const std::string& name) const;
  int64_t Int(const std::string& name, int64_t fallback) const;
  float Float(const std::string& name, float fallback) const;
  std::string String(const std::string& name, const std::string& fallback) const;
  std::vector<int64_t> Ints(const std::string& name, std::vector<int64_t> fallback = {}) const;
  std::vector<float> Floats(const std::string& name, std::vector<float> fallback = {}) const;
  StatusOr<Tensor> TensorValue(const std::string& name) const;
  const onnx::AttributeProto* Find(const std::string& name) const;

 private:
  const onnx::NodeProto& node_;
};

// What a kernel factory sees: the node, the opset it is interpreted under,
// and the values of inputs that are constant initializers (so weights can
// be pre-packed once, e.g. Conv filters in the layout the GEMM wants).
struct KernelInit {
  const onnx::NodeProto& node;
  int opset;
  NodeAttributes attributes;
  // Index -> value for inputs that are initializers; absent otherwise.
  std::map<int, const Tensor*> constant_inputs;
};

class KernelContext {
 public:
  KernelContext(const std::vector<const Tensor*>& inputs, std::vector<Tensor>& outputs, ThreadPool& pool)
      : inputs_(inputs), outputs_(outputs), pool_(pool) {}
  int num_inputs() const { return static_cast<int>(inputs_.size()); }
  // nullptr when an optional input is absent ("" in the node) or beyond the end.
  const Tensor* input(int i) const {
    return i < num_inputs() ? inputs_[static_cast<size_t>(i)] : nullptr;
  }
  int num_outputs() const { return static_cast<int>(outputs_.size()); }
  // Kernels allocate (or alias an input's buffer) and assign their outputs.
  Tensor& output(int i) { return outputs_[static_cast<size_t>(i)]; }
  ThreadPool& threads() { return pool_; }

  // Non-null when input i may be overwritten: this node is its last reader
  // and nothing else (graph output, tap, feed, constant, alias) holds its
  // buffer. A kernel may then assign it to an output and write in place.
  Tensor* reusable_input(int i) const {
    if (!reusable_ || i >= static_cast<int>(reusable_->size())) return nullptr;
    return (*reusable_)[static_cast<size_t>(i)];
  }
  void set_reusable_inputs(const std::vector<Tensor*>* reusable) { reusable_ = reusable; }

 private:
  const std::vector<const Tensor*>& inputs_;
  std::vector<Tensor>& outputs_;
  ThreadPool& pool_;
  const std::vector<Tensor*>* reusable_ = nullptr;
};

class Kernel {
 public:
  virtual ~Kernel() = default;
  virtual Status Compute(KernelContext& ctx) const = 0;
  // Called by Executor::Create() with the input shapes a run is expected to
  // bring (nullptr where unknown or absent), so per-shape set-up (plans,
  // JIT code) happens before the first run instead of inside it. Best
  // effort: a kernel that cannot use the shapes ignores them.
  virtual void Prepare(const std::vector<const Shape*>& /*input_shapes*/, int /*num_threads*/) const {}
  // True when output 0 is always input 0's buffer under another shape (a
  // reshape or a pass-through): Executor::Create's allocation replay then
  // gives it no buffer of its own, as the real run would not.
  virtual bool OutputIsInputView() const { return false; }
};

using KernelFactory = std::function<StatusOr<std::unique_ptr<Kernel>>(const KernelInit& init)>;

// Central table: (domain, op_type, opset range) -> factory. Filled by the
// explicit Register*Kernels functions below (not static initialisers, which
// a static library's linker would drop).
class KernelRegistry {
 public:
  static const KernelRegistry& Default();

  void Register(const std::string& domain, const std::string& op_type, int since_version, int until_version,
                KernelFactory factory);
  // The factory whose range contains `opset`, or nullptr.
  const KernelFactory* Find(const std::string& domain, const std::string& op_type, int opset) const;
  std::vector<std::string> OpTypes() const;

 private:
  struct Entry {
    int since_version;
    int until_version;
    KernelFactory factory;
  };
  std::map<std::pair<std::string, std::string>, std::vector<Entry>> entries_;
};

constexpr int kLatestOpset = 21;

// Failure reasons used by kernels:
//   RUNTIME_INVALID_NODE  attributes or constant inputs do not fit the op
//                         (found when the kernel is created)
//   RUNTIME_KERNEL_ERROR  input shapes/types do not fit the op at run time
// The executor prefixes the node's name and op type to the message.
Status NodeError(const std::string& message);
Status KernelError(const std::string& message);

// Values of an integer tensor (int32 or int64), e.g. a shape or axes input.
StatusOr<std::vector<int64_t>> ToInt64Vector(const Tensor& tensor);
// Numpy-style multidirectional broadcast of two shapes.
StatusOr<Shape> BroadcastShapes(const Shape& a, const Shape& b);
// Axis in [-rank, rank) mapped to [0, rank).
StatusOr<int> NormalizeAxis(int64_t axis, int rank);

// One per kernel family file.
void RegisterElementwiseKernels(KernelRegistry& registry);
void RegisterActivationKernels(KernelRegistry& registry);
void RegisterReductionKernels(KernelRegistry& registry);
void RegisterShapeKernels(KernelRegistry& registry);
void RegisterNormalizationKernels(KernelRegistry& registry);
void RegisterQuantizeKernels(KernelRegistry& registry);
void RegisterResizeKernels(KernelRegistry& registry);
// Compute-heavy kernels: Conv, ConvTranspose, Gemm, MatMul, pooling.
void RegisterConvKernels(KernelRegistry& registry);
void RegisterMatMulKernels(KernelRegistry& registry);
void RegisterPoolKernels(KernelRegistry& registry);

}  // namespace quantd::runtime
