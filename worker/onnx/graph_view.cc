#include "worker/onnx/graph_view.h"

#include <algorithm>
#include <queue>

namespace quantd {

namespace {

template <typename Fn>
void ForEachSubgraph(const onnx::NodeProto& node, Fn&& fn) {
  for (const auto& attr : node.attribute()) {
    if (attr.has_g()) fn(attr.g());
    for (const auto& g : attr.graphs()) fn(g);
  }
}

}  // namespace

bool IsDefaultDomain(const std::string& domain) {
  return domain.empty() || domain == "ai.onnx";
}

int DefaultOpset(const onnx::ModelProto& model) {
  for (const auto& op : model.opset_import()) {
    if (IsDefaultDomain(op.domain())) return static_cast<int>(op.version());
  }
  return -1;
}

std::set<std::string> OuterScopeReads(const onnx::GraphProto& g) {
  std::unordered_set<std::string> defined;
  for (const auto& v : g.input()) defined.insert(v.name());
  for (const auto& t : g.initializer()) defined.insert(t.name());
  for (const auto& s : g.sparse_initializer()) defined.insert(s.values().name());
  for (const auto& n : g.node()) {
    for (const auto& o : n.output()) defined.insert(o);
  }
  std::set<std::string> reads;
  auto note = [&](const std::string& name) {
    if (!name.empty() && !defined.count(name)) reads.insert(name);
  };
  for (const auto& n : g.node()) {
    for (const auto& i : n.input()) note(i);
    ForEachSubgraph(n, [&](const onnx::GraphProto& sub) {
      for (const auto& name : OuterScopeReads(sub)) note(name);
    });
  }
  for (const auto& o : g.output()) note(o.name());
  return reads;
}

GraphView::GraphView(const onnx::GraphProto& graph) : graph_(&graph) {
  for (int i = 0; i < graph.initializer_size(); ++i) {
    initializer_.emplace(graph.initializer(i).name(), i);
  }
  for (const auto& v : graph.input()) inputs_.insert(v.name());
  for (const auto& v : graph.output()) outputs_.insert(v.name());
  for (int i = 0; i < graph.node_size(); ++i) {
    const auto& node = graph.node(i);
    for (const auto& o : node.output()) {
      if (!o.empty()) producer_.emplace(o, i);
    }
    auto add_reader = [&](const std::string& name) {
      if (name.empty()) return;
      auto& list = consumers_[name];
      if (list.empty() || list.back() != i) list.push_back(i);
    };
    for (const auto& in : node.input()) add_reader(in);
    ForEachSubgraph(node, [&](const onnx::GraphProto& sub) {
      for (const auto& name : OuterScopeReads(sub)) add_reader(name);
    });
  }
}

int GraphView::InitializerIndex(const std::string& name) const {
  auto it = initializer_.find(name);
  return it == initializer_.end() ? -1 : it->second;
}

const onnx::TensorProto* GraphView::Initializer(const std::string& name) const {
  int i = InitializerIndex(name);
  return i < 0 ? nullptr : &graph_->initializer(i);
}

int GraphView::ProducerIndex(const std::string& name) const {
  auto it = producer_.find(name);
  return it == producer_.end() ? -1 : it->second;
}

const std::vector<int>& GraphView::ConsumerIndices(const std::string& name) const {
  static const std::vector<int> kNone;
  auto it = consumers_.find(name);
  return it == consumers_.end() ? kNone : it->second;
}

bool GraphView::IsGraphInput(const std::string& name) const { return inputs_.count(name) > 0; }
bool GraphView::IsGraphOutput(const std::string& name) const { return outputs_.count(name) > 0; }

StatusOr<std::vector<int>> GraphView::TopologicalOrder() const {
  const int n = graph_->node_size();
  std::vector<int> pending(n, 0);
  std::vector<std::vector<int>> dependents(n);
  for (const auto& [name, readers] : consumers_) {
    int p = ProducerIndex(name);
    if (p < 0) continue;
    for (int r : readers) {
      if (r == p) return Status(StatusCode::kInvalidArgument, "MODEL_INVALID",
                                "node #" + std::to_string(p) + " ('" + graph_->node(p).name() +
                                    "') reads its own output '" + name + "'");
      dependents[p].push_back(r);
      ++pending[r];
    }
  }
  // Smallest index first keeps already-sorted graphs unchanged.
  std::priority_queue<int, std::vector<int>, std::greater<int>> ready;
  for (int i = 0; i < n; ++i) {
    if (pending[i] == 0) ready.push(i);
  }
  std::vector<int> order;
  order.reserve(n);
  while (!ready.empty()) {
    int i = ready.top();
    ready.pop();
    order.push_back(i);
    for (int d : dependents[i]) {
      if (--pending[d] == 0) ready.push(d);
    }
  }
  if (static_cast<int>(order.size()) != n) {
    return Status(StatusCode::kInvalidArgument, "MODEL_INVALID", "the graph has a cycle");
  }
  return order;
}

NameAllocator::NameAllocator(const onnx::ModelProto& model) {
  if (model.has_graph()) AddGraph(model.graph());
  for (const auto& f : model.functions()) {
    for (const auto& n : f.node()) {
      used_.insert(n.name());
      for (const auto& o : n.output()) used_.insert(o);
    }
  }
}

void NameAllocator::AddGraph(const onnx::GraphProto& g) {
  for (const auto& v : g.input()) used_.insert(v.name());
  for (const auto& v : g.output()) used_.insert(v.name());
  for (const auto& v : g.value_info()) used_.insert(v.name());
  for (const auto& t : g.initializer()) used_.insert(t.name());
  for (const auto& s : g.sparse_initializer()) used_.insert(s.values().name());
  for (const auto& n : g.node()) {
    if (!n.name().empty()) used_.insert(n.name());
    for (const auto& i : n.input()) used_.insert(i);
    for (const auto& o : n.output()) used_.insert(o);
    ForEachSubgraph(n, [&](const onnx::GraphProto& sub) { AddGraph(sub); });
  }
}

std::string NameAllocator::Make(const std::string& base) {
  std::string name = base;
  for (int k = 1; used_.count(name); ++k) name = base + "_" + std::to_string(k);
  used_.insert(name);
  return name;
}

}  // namespace quantd
