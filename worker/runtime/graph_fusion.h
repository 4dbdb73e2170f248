// Graph rewrites the executor applies before creating kernels, so that a
// layer and the activation after it run as one pass over memory instead of
// two (the same fusions ONNX Runtime's graph optimiser makes).
#pragma once

#include <set>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

namespace quantd::runtime {

// Rewrites Conv -> {Relu, LeakyRelu, Clip, Sigmoid, Tanh, HardSigmoid} into
// one com.microsoft FusedConv node that keeps the Conv's name and inputs and
// writes the activation's output. A pair is fused only when the Conv output
// has that activation as its single reader, is not a graph output and is not
// in `keep` (tensors a caller wants to see); Clip bounds must be attributes
// or constants (initializers of `graph`, or Constant nodes in `nodes`).
// Returns the number of fused pairs; `nodes` keeps the remaining order.
int FuseConvActivations(std::vector<onnx::NodeProto>& nodes, const onnx::GraphProto& graph, int default_opset,
                        const std::set<std::string>& keep);

}  // namespace quantd::runtime
