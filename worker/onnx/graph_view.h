// Read-only lookups over one ONNX graph: who produces, who reads, which
// initializer backs a name. Indices refer to the graph passed in and go stale
// as soon as its node or initializer list changes; build a new view then.
#pragma once

#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <onnx/onnx_pb.h>

#include "common/status.h"

namespace quantd {

// True for "" and "ai.onnx", the two spellings of the standard domain.
bool IsDefaultDomain(const std::string& domain);

// Version of the default-domain opset import; -1 when the model has none.
int DefaultOpset(const onnx::ModelProto& model);

// Names a subgraph reads from enclosing scopes (directly or from deeper
// subgraphs), i.e. everything it reads that it does not define itself.
std::set<std::string> OuterScopeReads(const onnx::GraphProto& subgraph);

class GraphView {
 public:
  explicit GraphView(const onnx::GraphProto& graph);

  const onnx::GraphProto& graph() const { return *graph_; }

  // -1 when absent.
  int InitializerIndex(const std::string& name) const;
  const onnx::TensorProto* Initializer(const std::string& name) const;
  int ProducerIndex(const std::string& name) const;

  // Nodes that read `name`, in ascending order, each once. A node whose
  // subgraph (If/Loop/Scan body) reads `name` from the outer scope counts as
  // a reader too, since removing the tensor would break that body.
  const std::vector<int>& ConsumerIndices(const std::string& name) const;

  bool IsGraphInput(const std::string& name) const;
  bool IsGraphOutput(const std::string& name) const;

  // Node indices such that every node comes after the producers of what it
  // reads; ties keep the stored order. MODEL_INVALID on a cycle.
  StatusOr<std::vector<int>> TopologicalOrder() const;

 private:
  const onnx::GraphProto* graph_;
  std::unordered_map<std::string, int> initializer_;
  std::unordered_map<std::string, int> producer_;
  std::unordered_map<std::string, std::vector<int>> consumers_;
  std::unordered_set<std::string> inputs_;
  std::unordered_set<std::string> outputs_;
};

// Hands out tensor and node names that collide with nothing in the model,
// including names used inside subgraphs.
class NameAllocator {
 public:
  explicit NameAllocator(const onnx::ModelProto& model);
  // `base` if free, else base_1, base_2, ...; the result is reserved.
  std::string Make(const std::string& base);

 private:
  void AddGraph(const onnx::GraphProto& graph);
  std::unordered_set<std::string> used_;
};

}  // namespace quantd
