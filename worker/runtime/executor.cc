#include "worker/runtime/executor.h"

#include <algorithm>
#include <exception>
#include <optional>
#include <unordered_map>
#include <utility>


#include "worker/onnx/graph_view.h"
#include "worker/onnx/tensor_util.h"
#include "worker/runtime/graph_fusion.h"
#include "worker/runtime/thread_pool.h"

namespace quantd::runtime {

namespace {

// Folding a node at load time trades memory for run time; results much
// larger than what they are computed from (Expand, Tile, ConstantOfShape)
// are recomputed per run instead.
constexpr size_t kMaxFoldGrowthBytes = 64u << 20;

std::string NodeLabel(const onnx::NodeProto& node) {
  return "node '" + node.name() + "' (" + node.op_type() + ")";
}

std::string DomainLabel(const std::string& domain) { return IsDefaultDomain(domain) ? "ai.onnx" : domain; }

std::string ExpectedText(const TensorInfo& info) {
  std::string s = info.dtype == DataType::kUndefined ? std::string("any type") : ToString(info.dtype);
  if (!info.has_shape) return s;
  s += " [";
  for (size_t i = 0; i < info.shape.size(); ++i) {
    if (i) s += ",";
    if (info.shape[i] >= 0) {
      s += std::to_string(info.shape[i]);
    } else {
      s += info.dim_params[i].empty() ? "?" : info.dim_params[i];
    }
  }
  return s + "]";
}

std::string ActualText(const Tensor& t) { return ToString(t.dtype()) + " " + ShapeToString(t.shape()); }

Status BadInput(const std::string& message) { return InvalidArgument("RUNTIME_BAD_INPUT", message); }
Status BadModel(const std::string& message) { return InvalidArgument("MODEL_INVALID", message); }


}  // namespace

TensorInfo DeclaredTensorInfo(const onnx::ValueInfoProto& value) {
  TensorInfo info;
  info.name = value.name();
  if (!value.type().has_tensor_type()) return info;
  const auto& tt = value.type().tensor_type();
  info.dtype = static_cast<DataType>(tt.elem_type());
  if (tt.has_shape()) {
    info.has_shape = true;
    for (const auto& d : tt.shape().dim()) {
      if (d.has_dim_value()) {
        info.shape.push_back(d.dim_value());
        info.dim_params.emplace_back();
      } else {
        info.shape.push_back(-1);
        info.dim_params.push_back(d.has_dim_param() ? d.dim_param() : std::string());
      }
    }
  }
  return info;
}

std::vector<TensorInfo> FedInputs(const onnx::ModelProto& model) {
  std::set<std::string> initializers;
  for (const auto& init : model.graph().initializer()) initializers.insert(init.name());
  std::vector<TensorInfo> inputs;
  for (const auto& v : model.graph().input()) {
    if (!initializers.count(v.name())) inputs.push_back(DeclaredTensorInfo(v));
  }
  return inputs;
}

struct Executor::Step {
  int node_index = -1;
  std::unique_ptr<Kernel> kernel;  // null: evaluated at Create()
  std::vector<int> input_slots;    // -1 for an absent optional input
  std::vector<int> output_slots;   // -1 for an omitted output
  // Run slots read here for the last time (each once).
  std::vector<int> release;
  // Input positions that read a run slot for the last time and that the
  // node reads only once: candidates for in-place reuse.
  std::vector<int> donatable;
  // Outputs that nothing reads and that are not graph outputs.
  std::vector<int> unread_outputs;
};

Executor::~Executor() = default;

int Executor::num_threads() const { return pool_->num_threads(); }

int Executor::SlotOf(const std::string& name) {
  auto [it, inserted] = slot_by_name_.emplace(name, static_cast<int>(slot_names_.size()));
  if (inserted) {
    slot_names_.push_back(name);
    slot_kind_.push_back(SlotKind::kRun);
    constants_.emplace_back();
    input_defaults_.emplace_back();
    is_graph_output_.push_back(false);
  }
  return it->second;
}

StatusOr<std::unique_ptr<Executor>> Executor::Create(const onnx::ModelProto& model, ExecutorOptions options) {
  std::unique_ptr<Executor> executor(new Executor());
  QUANTD_RETURN_IF_ERROR(executor->Build(model, options));
  return executor;
}

Status Executor::Build(const onnx::ModelProto& model, const ExecutorOptions& options) {
  const KernelRegistry& registry = options.registry ? *options.registry : KernelRegistry::Default();
  const onnx::GraphProto& graph = model.graph();

  std::map<std::string, int> opsets;
  for (const auto& op : model.opset_import()) {
    opsets[IsDefaultDomain(op.domain()) ? std::string() : op.domain()] = static_cast<int>(op.version());
  }
  auto opset_of = [&](const std::string& domain) {
    auto it = opsets.find(IsDefaultDomain(domain) ? std::string() : domain);
    return it == opsets.end() ? -1 : it->second;
  };

  nodes_.assign(graph.node().begin(), graph.node().end());
  if (options.fuse_activations) {
    const int fused = FuseConvActivations(nodes_, graph, opset_of(""), options.keep_unfused);
    if (fused > 0 && opset_of("com.microsoft") < 1) opsets["com.microsoft"] = 1;
  }

  // Every op must have a kernel; report all that do not, once each.
  std::vector<std::string> unsupported;
  std::set<std::pair<std::string, std::string>> seen;
  for (const auto& node : nodes_) {
    int opset = opset_of(node.domain());
    if (opset >= 0 && registry.Find(node.domain(), node.op_type(), opset)) continue;
    if (!seen.insert({DomainLabel(node.domain()), node.op_type()}).second) continue;
    unsupported.push_back(node.op_type() + " (domain '" + DomainLabel(node.domain()) + "', opset " +
                          (opset >= 0 ? std::to_string(opset) : std::string("not imported")) + ", first at node '" +
                          node.name() + "')");
  }
  if (!unsupported.empty()) {
    std::string list;
    for (const auto& u : unsupported) list += (list.empty() ? "" : ", ") + u;
    return Unimplemented("RUNTIME_UNSUPPORTED_OP", "the CPU executor has no kernel for " + list);
  }

  pool_ = std::make_unique<FixedThreadPool>(options.num_threads);

  // Initializers are constants unless a graph input of the same name may
  // override them. Before IR version 4 every initializer had to be listed
  // as an input too, so there such inputs are constants (as in ONNX
  // Runtime).
  std::set<std::string> input_names;
  for (const auto& v : graph.input()) input_names.insert(v.name());
  const bool overridable = model.ir_version() >= 4;
  std::set<std::string> constant_inputs;
  for (const auto& init : graph.initializer()) {
    auto value = TensorFromProto(init);
    if (!value.ok()) return value.status().WithContext("initializer '" + init.name() + "'");
    int slot = SlotOf(init.name());
    if (!overridable && input_names.count(init.name())) constant_inputs.insert(init.name());
    if (overridable && input_names.count(init.name())) {
      input_defaults_[static_cast<size_t>(slot)] = std::move(value).value();
    } else {
      slot_kind_[static_cast<size_t>(slot)] = SlotKind::kConstant;
      constants_[static_cast<size_t>(slot)] = std::move(value).value();
    }
  }
  for (const auto& v : graph.input()) {
    if (constant_inputs.count(v.name())) continue;
    TensorInfo info = DeclaredTensorInfo(v);
    int slot = SlotOf(v.name());
    info.optional = input_defaults_[static_cast<size_t>(slot)].defined();
    if (!IsSupported(info.dtype) && info.dtype != DataType::kUndefined) {
      return Status(StatusCode::kUnimplemented, "RUNTIME_UNSUPPORTED_TYPE",
                    "graph input '" + v.name() + "' has element type " +
                        DataTypeName(static_cast<int32_t>(info.dtype)) + ", which the CPU executor does not support");
    }
    inputs_.push_back(std::move(info));
    input_slots_.push_back(slot);
  }

  {
    // Ordered over nodes_, which may differ from the stored graph by fusion.
    onnx::GraphProto structure;
    *structure.mutable_input() = graph.input();
    *structure.mutable_output() = graph.output();
    for (const auto& node : nodes_) *structure.add_node() = node;
    GraphView view(structure);
    QUANTD_ASSIGN_OR_RETURN(order_, view.TopologicalOrder());
  }

  // Every name a node reads must be defined by something.
  std::set<std::string> defined(input_names.begin(), input_names.end());
  for (const auto& init : graph.initializer()) defined.insert(init.name());
  for (const auto& node : nodes_) {
    for (const auto& o : node.output()) {
      if (!o.empty()) defined.insert(o);
    }
  }
  for (const auto& node : nodes_) {
    for (const auto& i : node.input()) {
      if (!i.empty() && !defined.count(i)) {
        return BadModel(NodeLabel(node) + " reads '" + i + "', which no node, input or initializer defines");
      }
    }
  }
  for (const auto& v : graph.output()) {
    if (!defined.count(v.name())) return BadModel("graph output '" + v.name() + "' is never defined");
  }


  // Where each run slot is read for the last time, as a step position.
  std::vector<int> last_read;
  std::vector<bool> read_by_run_step;
  auto grow = [&] {
    last_read.resize(slot_names_.size(), -1);
    read_by_run_step.resize(slot_names_.size(), false);
  };

  steps_.reserve(order_.size());
  for (int node_index : order_) {
    const onnx::NodeProto& node = nodes_[static_cast<size_t>(node_index)];
    Step step;
    step.node_index = node_index;
    for (const auto& name : node.input()) step.input_slots.push_back(name.empty() ? -1 : SlotOf(name));
    for (const auto& name : node.output()) step.output_slots.push_back(name.empty() ? -1 : SlotOf(name));

    KernelInit init{node, opset_of(node.domain()), NodeAttributes(node), {}};
    bool all_constant = true;
    for (size_t i = 0; i < step.input_slots.size(); ++i) {
      int slot = step.input_slots[i];
      if (slot < 0) continue;
      if (slot_kind_[static_cast<size_t>(slot)] == SlotKind::kConstant) {
        const Tensor& value = constants_[static_cast<size_t>(slot)];
        init.constant_inputs.emplace(static_cast<int>(i), &value);
      } else {
        all_constant = false;
      }
    }
    const KernelFactory* factory = registry.Find(node.domain(), node.op_type(), init.opset);
    auto kernel = (*factory)(init);
    if (!kernel.ok()) return kernel.status().WithContext(NodeLabel(node));
    step.kernel = std::move(kernel).value();

    if (all_constant) {
      std::vector<const Tensor*> inputs;
      size_t input_bytes = 0;
      for (int slot : step.input_slots) {
        inputs.push_back(slot < 0 ? nullptr : &constants_[static_cast<size_t>(slot)]);
        if (slot >= 0) input_bytes += constants_[static_cast<size_t>(slot)].bytes();
      }
      std::vector<Tensor> outputs(step.output_slots.size());
      KernelContext ctx(inputs, outputs, InlineThreadPool());
      QUANTD_RETURN_IF_ERROR(step.kernel->Compute(ctx).WithContext(NodeLabel(node)));
      size_t output_bytes = 0;
      for (const auto& t : outputs) output_bytes += t.bytes();
      if (output_bytes <= input_bytes + kMaxFoldGrowthBytes) {
        for (size_t o = 0; o < outputs.size(); ++o) {
          int slot = step.output_slots[o];
          if (slot < 0) continue;
          if (!outputs[o].defined()) {
            return Internal("RUNTIME_KERNEL_ERROR", NodeLabel(node) + " left output '" + node.output(static_cast<int>(o)) + "' unset");
          }
          slot_kind_[static_cast<size_t>(slot)] = SlotKind::kConstant;
          constants_[static_cast<size_t>(slot)] = std::move(outputs[o]);
        }
        step.kernel.reset();
      }
    }
    grow();
    if (step.kernel) {
      for (int slot : step.input_slots) {
        if (slot < 0) continue;
        last_read[static_cast<size_t>(slot)] = static_cast<int>(steps_.size());
        read_by_run_step[static_cast<size_t>(slot)] = true;
      }
    }
    steps_.push_back(std::move(step));
  }

  for (const auto& v : graph.output()) {
    int slot = SlotOf(v.name());
    is_graph_output_[static_cast<size_t>(slot)] = true;
    outputs_.push_back(DeclaredTensorInfo(v));
    output_slots_.push_back(slot);
  }
  grow();

  // Initializers that only folded nodes read (e.g. integer weights behind
  // a DequantizeLinear) are not needed any more. Node outputs stay, since
  // taps replay them on every run.
  for (const auto& init : graph.initializer()) {
    auto slot = static_cast<size_t>(slot_by_name_.at(init.name()));
    if (slot_kind_[slot] == SlotKind::kConstant && !read_by_run_step[slot] && !is_graph_output_[slot]) {
      constants_[slot] = Tensor();
    }
  }

  for (size_t s = 0; s < steps_.size(); ++s) {
    Step& step = steps_[s];
    if (!step.kernel) continue;
    for (size_t i = 0; i < step.input_slots.size(); ++i) {
      int slot = step.input_slots[i];
      if (slot < 0 || slot_kind_[static_cast<size_t>(slot)] != SlotKind::kRun) continue;
      if (last_read[static_cast<size_t>(slot)] != static_cast<int>(s) || is_graph_output_[static_cast<size_t>(slot)]) {
        continue;
      }
      int reads = static_cast<int>(std::count(step.input_slots.begin(), step.input_slots.end(), slot));
      if (std::find(step.release.begin(), step.release.end(), slot) == step.release.end()) step.release.push_back(slot);
      if (reads == 1) step.donatable.push_back(static_cast<int>(i));
    }
    for (size_t o = 0; o < step.output_slots.size(); ++o) {
      int slot = step.output_slots[o];
      if (slot >= 0 && last_read[static_cast<size_t>(slot)] < 0 && !is_graph_output_[static_cast<size_t>(slot)]) {
        step.unread_outputs.push_back(static_cast<int>(o));
      }
    }
  }
  if (options.prepare_batch > 0) PrepareForBatch(options.prepare_batch);
  return Status::Ok();
}

void Executor::PrepareForBatch(int64_t batch) {
  // Every tensor's shape, from a run on empty batches: kernels work shapes
  // out without touching data. Models that need other dims fixed, or whose
  // kernels refuse empty inputs, are left unprepared.
  std::map<std::string, Tensor> feeds;
  for (const TensorInfo& input : inputs_) {
    if (input.optional) continue;
    const bool probeable = input.has_shape && !input.shape.empty() && input.shape[0] < 0 && IsSupported(input.dtype) &&
                           std::all_of(input.shape.begin() + 1, input.shape.end(), [](int64_t d) { return d >= 0; });
    if (!probeable) return;
    Shape empty = input.shape;
    empty[0] = 0;
    feeds[input.name] = Tensor(input.dtype, empty);
  }
  std::vector<std::optional<std::pair<DataType, Shape>>> full(slot_names_.size());
  RunOptions probe;
  probe.tap = [&](const onnx::NodeProto&, int, const std::string& name, const Tensor& value) {
    const int slot = slot_by_name_.at(name);
    if (slot_kind_[static_cast<size_t>(slot)] != SlotKind::kRun || value.rank() == 0 || value.dim(0) != 0) return;
    Shape shape = value.shape();
    shape[0] = batch;
    if (std::any_of(shape.begin() + 1, shape.end(), [](int64_t d) { return d <= 0; })) return;
    full[static_cast<size_t>(slot)] = {value.dtype(), std::move(shape)};
  };
  (void)Run(feeds, probe);

  // Replays one full run's allocations and releases without computing:
  // buffers are taken as the kernels would take them (a view shares its
  // input's, an in-place kernel takes over a donated input of its size),
  // written once so their pages are faulted in, and given back to the
  // buffer cache as the run would free them, where the first real run
  // finds them.
  std::vector<Tensor> held(slot_names_.size());
  std::vector<const Shape*> input_shapes;
  for (const Step& step : steps_) {
    if (!step.kernel) continue;
    input_shapes.clear();
    for (int slot : step.input_slots) {
      const Shape* shape = nullptr;
      if (slot >= 0 && slot_kind_[static_cast<size_t>(slot)] == SlotKind::kConstant) {
        shape = &constants_[static_cast<size_t>(slot)].shape();
      } else if (slot >= 0 && full[static_cast<size_t>(slot)]) {
        shape = &full[static_cast<size_t>(slot)]->second;
      }
      input_shapes.push_back(shape);
    }
    step.kernel->Prepare(input_shapes, pool_->num_threads());

    const bool view = step.kernel->OutputIsInputView();
    for (size_t o = 0; o < step.output_slots.size(); ++o) {
      const int slot = step.output_slots[o];
      if (slot < 0 || !full[static_cast<size_t>(slot)]) continue;
      const auto& [dtype, shape] = *full[static_cast<size_t>(slot)];
      Tensor& out = held[static_cast<size_t>(slot)];
      if (view && o == 0 && !step.input_slots.empty() && step.input_slots[0] >= 0) {
        out = held[static_cast<size_t>(step.input_slots[0])];
        continue;
      }
      const size_t bytes = static_cast<size_t>(NumElements(shape)) * ElementSize(dtype);
      for (int i : step.donatable) {
        Tensor& donor = held[static_cast<size_t>(step.input_slots[static_cast<size_t>(i)])];
        if (donor.defined() && donor.bytes() == bytes && donor.buffer_use_count() == 1) {
          out = std::move(donor);
          donor = Tensor();
          break;
        }
      }
      if (!out.defined()) out = Tensor::Zeros(dtype, shape);
    }
    for (int o : step.unread_outputs) {
      const int slot = step.output_slots[static_cast<size_t>(o)];
      if (slot >= 0) held[static_cast<size_t>(slot)] = Tensor();
    }
    for (int slot : step.release) held[static_cast<size_t>(slot)] = Tensor();
  }
}

StatusOr<std::map<std::string, Tensor>> Executor::Run(const std::map<std::string, Tensor>& feeds,
                                                      const RunOptions& options) const {
  std::vector<Tensor> values(slot_names_.size());

  for (const auto& [name, value] : feeds) {
    bool known = std::any_of(inputs_.begin(), inputs_.end(), [&](const TensorInfo& i) { return i.name == name; });
    if (!known) {
      std::string names;
      for (const auto& i : inputs_) names += (names.empty() ? "" : ", ") + i.name;
      return BadInput("'" + name + "' is not an input of the model (inputs: " + names + ")");
    }
  }
  for (size_t k = 0; k < inputs_.size(); ++k) {
    const TensorInfo& info = inputs_[k];
    int slot = input_slots_[k];
    auto it = feeds.find(info.name);
    if (it == feeds.end()) {
      if (info.optional) {
        values[static_cast<size_t>(slot)] = input_defaults_[static_cast<size_t>(slot)];
        continue;
      }
      return BadInput("input '" + info.name + "' (" + ExpectedText(info) + ") is missing");
    }
    const Tensor& feed = it->second;
    bool ok = feed.defined() && (info.dtype == DataType::kUndefined || feed.dtype() == info.dtype);
    if (ok && info.has_shape) {
      ok = feed.rank() == static_cast<int>(info.shape.size());
      for (size_t d = 0; ok && d < info.shape.size(); ++d) {
        if (info.shape[d] >= 0 && info.shape[d] != feed.shape()[d]) ok = false;
      }
    }
    if (!ok) {
      return BadInput("input '" + info.name + "' expects " + ExpectedText(info) + ", got " +
                      (feed.defined() ? ActualText(feed) : std::string("an empty tensor")));
    }
    values[static_cast<size_t>(slot)] = feed;
  }

  std::vector<char> keep(slot_names_.size(), 0);
  for (const auto& name : options.keep) {
    auto it = slot_by_name_.find(name);
    if (it == slot_by_name_.end()) return BadInput("kept tensor '" + name + "' does not exist in the graph");
    keep[static_cast<size_t>(it->second)] = 1;
  }

  std::map<std::string, Tensor> results;
  auto slot_value = [&](int slot) -> const Tensor& {
    return slot_kind_[static_cast<size_t>(slot)] == SlotKind::kConstant ? constants_[static_cast<size_t>(slot)]
                                                                        : values[static_cast<size_t>(slot)];
  };

  std::vector<const Tensor*> inputs;
  std::vector<Tensor*> reusable;
  std::vector<Tensor> outputs;
  for (const Step& step : steps_) {
    const onnx::NodeProto& node = nodes_[static_cast<size_t>(step.node_index)];
    if (step.kernel) {
      inputs.clear();
      for (int slot : step.input_slots) inputs.push_back(slot < 0 ? nullptr : &slot_value(slot));
      reusable.assign(step.input_slots.size(), nullptr);
      bool any_reusable = false;
      for (int i : step.donatable) {
        int slot = step.input_slots[static_cast<size_t>(i)];
        Tensor& t = values[static_cast<size_t>(slot)];
        if (!keep[static_cast<size_t>(slot)] && t.buffer_use_count() == 1) {
          reusable[static_cast<size_t>(i)] = &t;
          any_reusable = true;
        }
      }
      outputs.assign(step.output_slots.size(), Tensor());
      KernelContext ctx(inputs, outputs, *pool_);
      if (any_reusable) ctx.set_reusable_inputs(&reusable);
      Status status = step.kernel->Compute(ctx);
      if (!status.ok()) return status.WithContext(NodeLabel(node));
      for (size_t o = 0; o < outputs.size(); ++o) {
        int slot = step.output_slots[o];
        if (slot < 0) continue;
        if (!outputs[o].defined()) {
          return Internal("RUNTIME_KERNEL_ERROR",
                          NodeLabel(node) + " left output '" + node.output(static_cast<int>(o)) + "' unset");
        }
        values[static_cast<size_t>(slot)] = std::move(outputs[o]);
      }
    }
    if (options.tap) {
      for (size_t o = 0; o < step.output_slots.size(); ++o) {
        int slot = step.output_slots[o];
        if (slot < 0) continue;
        options.tap(node, step.node_index, node.output(static_cast<int>(o)), slot_value(slot));
      }
    }
    if (!step.kernel) continue;
    for (int o : step.unread_outputs) {
      int slot = step.output_slots[static_cast<size_t>(o)];
      if (keep[static_cast<size_t>(slot)]) {
        results[slot_names_[static_cast<size_t>(slot)]] = std::move(values[static_cast<size_t>(slot)]);
      }
      values[static_cast<size_t>(slot)] = Tensor();
    }
    for (int slot : step.release) {
      if (keep[static_cast<size_t>(slot)]) {
        results[slot_names_[static_cast<size_t>(slot)]] = std::move(values[static_cast<size_t>(slot)]);
      }
      values[static_cast<size_t>(slot)] = Tensor();
    }
  }

  for (size_t k = 0; k < outputs_.size(); ++k) {
    results[outputs_[k].name] = slot_value(output_slots_[k]);
  }
  for (size_t slot = 0; slot < keep.size(); ++slot) {
    if (!keep[slot] || results.count(slot_names_[slot])) continue;
    const Tensor& value = slot_value(static_cast<int>(slot));
    if (!value.defined()) {
      return BadInput("kept tensor '" + slot_names_[slot] + "' is an initializer that is only read at load time");
    }
    results[slot_names_[slot]] = value;
  }
  return results;
}

}  // namespace quantd::runtime
