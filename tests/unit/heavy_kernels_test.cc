// The optimised Conv / ConvTranspose / Gemm / MatMul / pooling kernels
// against the plain reference loops, on random tensors with fixed seeds over
// many attribute combinations.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <onnx/onnx_pb.h>

#include "worker/runtime/kernel.h"
#include "worker/runtime/kernels/reference_kernels.h"

namespace quantd::runtime {
namespace {

namespace ref = reference;

// Runs ParallelFor chunks on short-lived threads, so the kernels' parallel
// code paths (and their per-thread scratch) are exercised.
class TestThreadPool : public ThreadPool {
 public:
  explicit TestThreadPool(int threads) : threads_(threads) {}
  int num_threads() const override { return threads_; }
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) override {
    if (n <= 0) return;
    grain = std::max<int64_t>(grain, 1);
    const int64_t chunks = std::min<int64_t>(threads_, (n + grain - 1) / grain);
    if (chunks <= 1) {
      fn(0, n);
      return;
    }
    std::vector<std::thread> workers;
    const int64_t step = (n + chunks - 1) / chunks;
    for (int64_t begin = step; begin < n; begin += step) {
      workers.emplace_back([&fn, begin, step, n] { fn(begin, std::min(n, begin + step)); });
    }
    fn(0, std::min(n, step));
    for (auto& t : workers) t.join();
  }

 private:
  int threads_;
};

// ---------------------------------------------------------------------------
// Building nodes and running kernels
// ---------------------------------------------------------------------------

class NodeBuilder {
 public:
  NodeBuilder(const std::string& op, int inputs, const std::string& domain = "") {
    node_.set_op_type(op);
    node_.set_domain(domain);
    node_.set_name("test_" + op);
    for (int i = 0; i < inputs; ++i) node_.add_input("in" + std::to_string(i));
    node_.add_output("out0");
  }
  NodeBuilder& Ints(const std::string& name, const std::vector<int64_t>& values) {
    if (values.empty()) return *this;
    auto* a = Add(name, onnx::AttributeProto::INTS);
    for (int64_t v : values) a->add_ints(v);
    return *this;
  }
  NodeBuilder& Int(const std::string& name, int64_t value) {
    Add(name, onnx::AttributeProto::INT)->set_i(value);
    return *this;
  }
  NodeBuilder& Float(const std::string& name, float value) {
    Add(name, onnx::AttributeProto::FLOAT)->set_f(value);
    return *this;
  }
  NodeBuilder& Floats(const std::string& name, const std::vector<float>& values) {
    auto* a = Add(name, onnx::AttributeProto::FLOATS);
    for (float v : values) a->add_floats(v);
    return *this;
  }
  NodeBuilder& String(const std::string& name, const std::string& value) {
    Add(name, onnx::AttributeProto::STRING)->set_s(value);
    return *this;
  }
  NodeBuilder& Outputs(int count) {
    node_.clear_output();
    for (int i = 0; i < count; ++i) node_.add_output("out" + std::to_string(i));
    return *this;
  }
  const onnx::NodeProto& node() const { return node_; }

 private:
  onnx::AttributeProto* Add(const std::string& name, onnx::AttributeProto::AttributeType type) {
    auto* a = node_.add_attribute();
    a->set_name(name);
    a->set_type(type);
    return a;
  }
  onnx::NodeProto node_;
};

const KernelRegistry& Registry() {
  static const KernelRegistry* registry = [] {
    auto* r = new KernelRegistry;
    RegisterConvKernels(*r);
    RegisterMatMulKernels(*r);
    RegisterPoolKernels(*r);
    return r;
  }();
  return *registry;
}

struct RunOptions {
  int opset = 13;
  int threads = 1;
  std::set<int> constant;  // input indices handed to the factory as initializers
  int outputs = 1;
};

// Absent optional inputs are passed as undefined tensors.
StatusOr<std::vector<Tensor>> RunKernel(const onnx::NodeProto& node, const std::vector<Tensor>& inputs,
                                        const RunOptions& options = {}) {
  const KernelFactory* factory = Registry().Find(node.domain(), node.op_type(), options.opset);
  if (factory == nullptr) return NotFound("TEST", "no kernel for " + node.op_type());
  KernelInit init{node, options.opset, NodeAttributes(node), {}};
  for (int i : options.constant) init.constant_inputs[i] = &inputs[static_cast<size_t>(i)];
  QUANTD_ASSIGN_OR_RETURN(std::unique_ptr<Kernel> kernel, (*factory)(init));
  std::vector<const Tensor*> in;
  for (const Tensor& t : inputs) in.push_back(t.defined() ? &t : nullptr);
  std::vector<Tensor> out(static_cast<size_t>(options.outputs));
  TestThreadPool pool(options.threads);
  KernelContext ctx(in, out, pool);
  QUANTD_RETURN_IF_ERROR(kernel->Compute(ctx));
  return out;
}

Tensor Random(const Shape& shape, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  Tensor t(DataType::kFloat, shape);
  for (int64_t i = 0; i < t.size(); ++i) t.data<float>()[i] = dist(rng);
  return t;
}

// Relative tolerance 1e-4, with an absolute floor of 1e-4 for values near 0.
::testing::AssertionResult Close(const Tensor& actual, const Tensor& expected, double rtol = 1e-4) {
  if (actual.shape() != expected.shape()) {
    return ::testing::AssertionFailure() << "shape " << ShapeToString(actual.shape()) << " vs expected "
                                         << ShapeToString(expected.shape());
  }
  for (int64_t i = 0; i < actual.size(); ++i) {
    const double a = actual.data<float>()[i], e = expected.data<float>()[i];
    if (std::isinf(e) && a == e) continue;
    if (!(std::abs(a - e) <= rtol * std::max(1.0, std::abs(e)))) {
      return ::testing::AssertionFailure() << "element " << i << ": " << a << " vs expected " << e;
    }
  }
  return ::testing::AssertionSuccess();
}

std::string Join(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

// ---------------------------------------------------------------------------
// Conv
// ---------------------------------------------------------------------------

struct ConvCase {
  Shape x;  // N, C, spatial...
  int64_t m = 4;
  std::vector<int64_t> kernel;
  ref::ConvParams p;
  bool bias = true;
  bool constant_weights = true;
  int threads = 1;

  std::string Describe() const {
    return "X" + ShapeToString(x) + " M" + std::to_string(m) + " k" + Join(kernel) + " s" + Join(p.strides) +
           " d" + Join(p.dilations) + " pads" + Join(p.pads) + " g" + std::to_string(p.group) + " " + p.auto_pad +
           (bias ? " bias" : "") + (constant_weights ? " constW" : " runtimeW") + " t" + std::to_string(threads);
  }
};

NodeBuilder ConvNode(const ref::ConvParams& p, int inputs, const std::string& op = "Conv",
                     const std::string& domain = "") {
  NodeBuilder b(op, inputs, domain);
  b.Ints("kernel_shape", p.kernel_shape).Ints("strides", p.strides).Ints("pads", p.pads);
  b.Ints("dilations", p.dilations).Ints("output_padding", p.output_padding).Ints("output_shape", p.output_shape);
  if (p.auto_pad != "NOTSET") b.String("auto_pad", p.auto_pad);
  if (p.group != 1) b.Int("group", p.group);
  return b;
}

void CheckConv(const ConvCase& c, uint32_t seed) {
  SCOPED_TRACE(c.Describe());
  Shape w_shape = {c.m, c.x[1] / c.p.group};
  w_shape.insert(w_shape.end(), c.kernel.begin(), c.kernel.end());
  std::vector<Tensor> inputs = {Random(c.x, seed), Random(w_shape, seed + 1)};
  if (c.bias) inputs.push_back(Random({c.m}, seed + 2));
  auto expected = ref::Conv(inputs[0], inputs[1], c.bias ? &inputs[2] : nullptr, c.p);
  ASSERT_TRUE(expected.ok()) << expected.status().message();
  RunOptions options;
  options.threads = c.threads;
  if (c.constant_weights) options.constant = c.bias ? std::set<int>{1, 2} : std::set<int>{1};
  auto actual = RunKernel(ConvNode(c.p, static_cast<int>(inputs.size())).node(), inputs, options);
  ASSERT_TRUE(actual.ok()) << actual.status().message();
  EXPECT_TRUE(Close((*actual)[0], *expected));
}

TEST(HeavyKernelsConv, FashionCnnLayers) {
  uint32_t seed = 1;
  for (int64_t n : {1, 3}) {
    for (auto [c, m, hw] : std::vector<std::array<int64_t, 3>>{{1, 32, 28}, {32, 64, 14}, {64, 64, 7}}) {
      ConvCase cc;
      cc.x = {n, c, hw, hw};
      cc.m = m;
      cc.kernel = {3, 3};
      cc.p.pads = {1, 1, 1, 1};
      CheckConv(cc, seed++);
    }
  }
  // Batch 32 with thinner layers: several images per primitive call.
  for (auto [c, m, hw] : std::vector<std::array<int64_t, 3>>{{1, 8, 28}, {8, 16, 14}}) {
    ConvCase cc;
    cc.x = {32, c, hw, hw};
    cc.m = m;
    cc.kernel = {3, 3};
    cc.p.pads = {1, 1, 1, 1};
    CheckConv(cc, seed++);
  }
}

TEST(HeavyKernelsConv, GroupsDepthwiseStridesDilationsPads) {
  uint32_t seed = 100;
  struct Layer {
    int64_t c, m, group;
  };
  for (Layer layer : {Layer{3, 5, 1}, Layer{4, 6, 2}, Layer{16, 16, 16}, Layer{8, 16, 8}, Layer{20, 20, 20},
                      Layer{24, 48, 4}, Layer{17, 9, 1}}) {
    for (std::vector<int64_t> kernel : {std::vector<int64_t>{1, 1}, {3, 3}, {5, 3}}) {
      for (int64_t stride : {1, 2}) {
        for (int64_t dilation : {1, 2}) {
          for (auto pads : {std::vector<int64_t>{}, {1, 1, 1, 1}, {0, 2, 1, 0}}) {
            ConvCase cc;
            cc.x = {2, layer.c, 11, 9};
            cc.m = layer.m;
            cc.kernel = kernel;
            cc.p.group = layer.group;
            cc.p.strides = {stride, stride};
            cc.p.dilations = {dilation, dilation};
            cc.p.pads = pads;
            cc.bias = seed % 3 != 0;
            cc.constant_weights = seed % 4 != 1;
            CheckConv(cc, seed++);
          }
        }
      }
    }
  }
}

// MobileNet-style pointwise (1x1) layers, including row tails and channel
// counts that are not multiples of 8.
TEST(HeavyKernelsConv, Pointwise) {
  uint32_t seed = 200;
  for (auto [c, m] : std::vector<std::pair<int64_t, int64_t>>{{8, 8}, {33, 13}, {96, 24}, {256, 64}, {5, 130}}) {
    for (auto [h, w] : std::vector<std::pair<int64_t, int64_t>>{{7, 7}, {14, 14}, {5, 3}, {28, 28}, {1, 1}}) {
      ConvCase cc;
      cc.x = {seed % 3 == 0 ? 4 : 1, c, h, w};
      cc.m = m;
      cc.kernel = {1, 1};
      cc.bias = seed % 4 != 0;
      cc.constant_weights = seed % 5 != 0;
      cc.threads = seed % 2 == 0 ? 3 : 1;
      CheckConv(cc, seed++);
    }
  }
}

// Depthwise layers: strides, kernel sizes, paddings and plane sizes.
TEST(HeavyKernelsConv, Depthwise) {
  uint32_t seed = 250;
  for (int64_t c : {1, 16, 96}) {
    for (auto [h, w] : std::vector<std::pair<int64_t, int64_t>>{{7, 7}, {14, 14}, {28, 28}, {5, 9}}) {
      for (auto [kh, kw] : std::vector<std::pair<int64_t, int64_t>>{{3, 3}, {5, 5}, {3, 1}}) {
        for (auto [sh, sw] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {2, 2}, {1, 2}, {3, 3}}) {
          ConvCase cc;
          cc.x = {seed % 3 == 0 ? 3 : 1, c, h, w};
          cc.m = c;
          cc.p.group = c;
          cc.kernel = {kh, kw};
          cc.p.strides = {sh, sw};
          cc.p.pads = seed % 2 ? std::vector<int64_t>{kh / 2, kw / 2, kh / 2, kw / 2} : std::vector<int64_t>{0, 1, 1, 0};
          if (h + cc.p.pads[0] + cc.p.pads[2] < kh || w + cc.p.pads[1] + cc.p.pads[3] < kw) continue;
          cc.bias = seed % 4 != 0;
          cc.threads = seed % 3 == 1 ? 2 : 1;
          CheckConv(cc, seed++);
        }
      }
    }
  }
}

TEST(HeavyKernelsConv, AutoPad) {
  uint32_t seed = 300;
  for (const char* mode : {"SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET"}) {
    for (int64_t stride : {1, 2, 3}) {
      for (std::vector<int64_t> kernel : {std::vector<int64_t>{2, 2}, {3, 3}, {4, 1}}) {
        for (int64_t group : {1, 3}) {
          ConvCase cc;
          cc.x = {1, 6, 10, 7};
          cc.m = 9;
          cc.kernel = kernel;
          cc.p.group = group;
          cc.p.auto_pad = mode;
          cc.p.strides = {stride, stride};
          CheckConv(cc, seed++);
        }
      }
    }
  }
}

TEST(HeavyKernelsConv, RandomSweep) {
  std::mt19937 rng(4242);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  for (int i = 0; i < 120; ++i) {
    ConvCase cc;
    const int64_t group = std::vector<int64_t>{1, 1, 2, 3, 4}[static_cast<size_t>(pick(0, 4))];
    const bool depthwise = pick(0, 4) == 0;
    const int64_t cg = depthwise ? 1 : pick(1, 6);
    const int64_t c = depthwise ? pick(1, 24) : group * cg;
    cc.p.group = depthwise ? c : group;
    cc.m = depthwise ? c * pick(1, 2) : group * pick(1, 6);
    cc.x = {pick(1, 3), c, pick(5, 17), pick(5, 17)};
    cc.kernel = {pick(1, 4), pick(1, 4)};
    cc.p.strides = {pick(1, 3), pick(1, 3)};
    cc.p.dilations = {pick(1, 2), pick(1, 2)};
    cc.p.pads = {pick(0, 2), pick(0, 2), pick(0, 2), pick(0, 2)};
    const int64_t mode = pick(0, 5);
    if (mode == 4) cc.p.auto_pad = "SAME_UPPER";
    if (mode == 5) cc.p.auto_pad = "SAME_LOWER";
    if (mode >= 4) cc.p.pads.clear();
    cc.bias = pick(0, 1) == 1;
    cc.constant_weights = pick(0, 2) != 0;
    cc.threads = pick(0, 2) == 0 ? 3 : 1;
    // Skip geometries whose kernel does not fit.
    bool fits = true;
    for (size_t a = 0; a < 2; ++a) {
      const int64_t eff = (cc.kernel[a] - 1) * cc.p.dilations[a] + 1;
      const int64_t padded = cc.x[a + 2] + (cc.p.pads.empty() ? 0 : cc.p.pads[a] + cc.p.pads[a + 2]);
      fits = fits && (cc.p.auto_pad != "NOTSET" || padded >= eff);
    }
    if (!fits) continue;
    CheckConv(cc, 1000 + static_cast<uint32_t>(i) * 7);
  }
}

TEST(HeavyKernelsConv, OneAndThreeDimensional) {
  uint32_t seed = 500;
  for (int64_t group : {1, 2}) {
    for (int64_t stride : {1, 2}) {
      ConvCase cc;
      cc.x = {2, 4, 23};
      cc.m = 6;
      cc.kernel = {5};
      cc.p.group = group;
      cc.p.strides = {stride};
      cc.p.pads = {2, 1};
      cc.p.dilations = {stride};
      CheckConv(cc, seed++);

      ConvCase c3;
      c3.x = {1, 4, 5, 6, 7};
      c3.m = 4;
      c3.kernel = {3, 2, 3};
      c3.p.group = group;
      c3.p.strides = {stride, 1, stride};
      c3.p.pads = {1, 0, 1, 1, 1, 0};
      c3.constant_weights = stride == 1;
      CheckConv(c3, seed++);
    }
  }
  ConvCase same;
  same.x = {1, 3, 9};
  same.m = 2;
  same.kernel = {4};
  same.p.auto_pad = "SAME_LOWER";
  same.p.strides = {2};
  CheckConv(same, seed++);
}

TEST(HeavyKernelsConv, MultiThreadedBatches) {
  uint32_t seed = 600;
  for (int threads : {2, 3}) {
    for (int64_t n : {1, 2, 5, 32}) {
      ConvCase cc;
      cc.x = {n, 8, 12, 12};
      cc.m = 16;
      cc.kernel = {3, 3};
      cc.p.pads = {1, 1, 1, 1};
      cc.threads = threads;
      CheckConv(cc, seed++);
      cc.p.group = 8;
      cc.m = 8;
      CheckConv(cc, seed++);
    }
  }
}

// Shapes big enough for the kernels to split work across threads (small
// ones stay on the calling thread).
TEST(HeavyKernelsConv, ParallelPaths) {
  uint32_t seed = 650;
  for (int threads : {2, 3}) {
    ConvCase dense;  // oneDNN
    dense.x = {8, 16, 14, 14};
    dense.m = 32;
    dense.kernel = {3, 3};
    dense.p.pads = {1, 1, 1, 1};
    dense.threads = threads;
    CheckConv(dense, seed++);
    ConvCase dense_one_image = dense;  // oneDNN with OpenMP inside one call
    dense_one_image.x = {1, 64, 28, 28};
    dense_one_image.m = 64;
    CheckConv(dense_one_image, seed++);
    ConvCase first;  // few input channels
    first.x = {32, 1, 28, 28};
    first.m = 32;
    first.kernel = {3, 3};
    first.p.pads = {1, 1, 1, 1};
    first.threads = threads;
    CheckConv(first, seed++);
    ConvCase pointwise;
    pointwise.x = {16, 64, 14, 14};
    pointwise.m = 64;
    pointwise.kernel = {1, 1};
    pointwise.threads = threads;
    CheckConv(pointwise, seed++);
    pointwise.x = {1, 256, 28, 28};
    CheckConv(pointwise, seed++);
    ConvCase depthwise;
    depthwise.x = {32, 96, 14, 14};
    depthwise.m = 96;
    depthwise.p.group = 96;
    depthwise.kernel = {3, 3};
    depthwise.p.pads = {1, 1, 1, 1};
    depthwise.threads = threads;
    CheckConv(depthwise, seed++);
    depthwise.x = {8, 96, 28, 28};  // wide rows
    CheckConv(depthwise, seed++);
  }
}

TEST(HeavyKernelsConv, FusedActivations) {
  struct Act {
    const char* name;
    std::vector<float> params;
    std::function<float(float)> fn;
  };
  const std::vector<Act> acts = {
      {"Relu", {}, [](float v) { return std::max(v, 0.0f); }},
      {"Clip", {0.0f, 6.0f}, [](float v) { return std::min(std::max(v, 0.0f), 6.0f); }},
      {"Clip", {-0.5f, 0.25f}, [](float v) { return std::min(std::max(v, -0.5f), 0.25f); }},
      {"LeakyRelu", {0.1f}, [](float v) { return v >= 0 ? v : 0.1f * v; }},
      {"Sigmoid", {}, [](float v) { return 1.0f / (1.0f + std::exp(-v)); }},
      {"Tanh", {}, [](float v) { return std::tanh(v); }},
      {"HardSigmoid", {0.2f, 0.5f}, [](float v) { return std::min(std::max(0.2f * v + 0.5f, 0.0f), 1.0f); }},
  };
  struct Layer {
    const char* name;
    int64_t c, group, k;
    std::vector<int64_t> pads, strides;
  };
  // One layer per implementation: oneDNN, pointwise, depthwise, few-channel.
  const std::vector<Layer> layers = {{"dense", 8, 1, 3, {1, 1, 1, 1}, {1, 1}},
                                     {"dense strided", 8, 1, 3, {1, 0, 0, 1}, {1, 2}},
                                     {"pointwise", 8, 1, 1, {}, {}},
                                     {"depthwise", 8, 8, 3, {1, 1, 1, 1}, {1, 1}},
                                     {"depthwise strided", 8, 8, 3, {1, 0, 0, 1}, {2, 2}},
                                     {"one channel", 1, 1, 3, {1, 1, 1, 1}, {1, 1}}};
  uint32_t seed = 700;
  for (const Act& act : acts) {
    for (const Layer& layer : layers) {
      SCOPED_TRACE(std::string(act.name) + " " + layer.name);
      ref::ConvParams p;
      p.group = layer.group;
      p.pads = layer.pads;
      p.strides = layer.strides;
      std::vector<Tensor> inputs = {Random({2, layer.c, 9, 10}, seed, -3, 3),
                                    Random({8, layer.c / layer.group, layer.k, layer.k}, seed + 1),
                                    Random({8}, seed + 2)};
      ++seed;
      auto expected = ref::Conv(inputs[0], inputs[1], &inputs[2], p);
      ASSERT_TRUE(expected.ok());
      for (int64_t i = 0; i < expected->size(); ++i) expected->data<float>()[i] = act.fn(expected->data<float>()[i]);
      NodeBuilder node = ConvNode(p, 3, "FusedConv", "com.microsoft");
      node.String("activation", act.name);
      if (!act.params.empty()) node.Floats("activation_params", act.params);
      RunOptions options;
      options.opset = 1;
      options.constant = {1, 2};
      auto actual = RunKernel(node.node(), inputs, options);
      ASSERT_TRUE(actual.ok()) << actual.status().message();
      EXPECT_TRUE(Close((*actual)[0], *expected));
    }
  }
}

// One kernel fed a full batch and then smaller ones (the last batch of a
// data set): the smaller batches run on the full batch's oneDNN plan, whose
// last chunk is short of images, and must match the reference all the same.
TEST(HeavyKernelsConv, SmallerBatchesAfterAFullOne) {
  struct Layer {
    int64_t c, m, hw, stride;
  };
  uint32_t seed = 850;
  for (Layer layer : {Layer{32, 64, 14, 1}, Layer{64, 64, 7, 1}, Layer{16, 32, 15, 2}}) {
    for (bool constant_weights : {true, false}) {
      for (int threads : {1, 2}) {
        ref::ConvParams p;
        p.pads = {1, 1, 1, 1};
        p.strides = {layer.stride, layer.stride};
        const Tensor w = Random({layer.m, layer.c, 3, 3}, seed++);
        const Tensor b = Random({layer.m}, seed++);
        const onnx::NodeProto node = ConvNode(p, 3).node();
        KernelInit init{node, 13, NodeAttributes(node), {}};
        if (constant_weights) init.constant_inputs = {{1, &w}, {2, &b}};
        auto kernel = (*Registry().Find("", "Conv", 13))(init);
        ASSERT_TRUE(kernel.ok());
        for (int64_t n : {32, 20, 7, 1, 32}) {
          SCOPED_TRACE("C" + std::to_string(layer.c) + " " + std::to_string(layer.hw) + "x" + std::to_string(layer.hw) +
                       " stride " + std::to_string(layer.stride) + " batch " + std::to_string(n) +
                       (constant_weights ? " constW" : " runtimeW") + " t" + std::to_string(threads));
          const Tensor x = Random({n, layer.c, layer.hw, layer.hw}, seed++);
          auto expected = ref::Conv(x, w, &b, p);
          ASSERT_TRUE(expected.ok());
          std::vector<const Tensor*> in = {&x, &w, &b};
          std::vector<Tensor> out(1);
          TestThreadPool pool(threads);
          KernelContext ctx(in, out, pool);
          ASSERT_TRUE((*kernel)->Compute(ctx).ok());
          EXPECT_TRUE(Close(out[0], *expected));
        }
      }
    }
  }
}

TEST(HeavyKernelsConv, ConcurrentComputeOnOneKernel) {
  ref::ConvParams p;
  p.pads = {1, 1, 1, 1};
  const Tensor w = Random({16, 8, 3, 3}, 801);
  const Tensor b = Random({16}, 802);
  const onnx::NodeProto node = ConvNode(p, 3).node();
  KernelInit init{node, 13, NodeAttributes(node), {{1, &w}, {2, &b}}};
  auto kernel = (*Registry().Find("", "Conv", 13))(init);
  ASSERT_TRUE(kernel.ok());
  std::vector<std::thread> threads;
  std::vector<int> failures(6, 0);
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      const Tensor x = Random({1 + t % 3, 8, 10 + t % 2, 10}, 900 + static_cast<uint32_t>(t));
      auto expected = ref::Conv(x, w, &b, p);
      for (int rep = 0; rep < 5; ++rep) {
        std::vector<const Tensor*> in = {&x, &w, &b};
        std::vector<Tensor> out(1);
        TestThreadPool pool(1 + t % 2);
        KernelContext ctx(in, out, pool);
        if (!(*kernel)->Compute(ctx).ok() || !Close(out[0], *expected)) ++failures[static_cast<size_t>(t)];
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int f : failures) EXPECT_EQ(f, 0);
}

// The portable im2col + SGEMM path, which oneDNN normally shadows.
TEST(HeavyKernelsConv, GemmFallbackPath) {
  setenv("QUANTD_CONV_ALGO", "gemm", 1);
  std::mt19937 rng(77);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  for (int i = 0; i < 60; ++i) {
    ConvCase cc;
    const int64_t group = pick(1, 3);
    cc.p.group = group;
    cc.m = group * pick(1, 4);
    const int rank = static_cast<int>(pick(1, 3));
    cc.x = {pick(1, 2), group * pick(1, 3)};
    for (int a = 0; a < rank; ++a) {
      cc.x.push_back(pick(5, 10));
      cc.kernel.push_back(pick(1, 3));
      cc.p.strides.push_back(pick(1, 2));
      cc.p.dilations.push_back(pick(1, 2));
    }
    for (int a = 0; a < 2 * rank; ++a) cc.p.pads.push_back(pick(0, 1));
    if (i % 5 == 0) {
      cc.p.pads.clear();
      cc.p.auto_pad = i % 10 == 0 ? "SAME_UPPER" : "SAME_LOWER";
    }
    cc.bias = i % 2 == 0;
    cc.threads = i % 3 == 0 ? 2 : 1;
    CheckConv(cc, 9000 + static_cast<uint32_t>(i));
  }
  ConvCase pointwise;
  pointwise.x = {2, 8, 5, 6};
  pointwise.m = 12;
  pointwise.kernel = {1, 1};
  CheckConv(pointwise, 9999);
  unsetenv("QUANTD_CONV_ALGO");
}

// Depthwise on NCHW planes with masked vector loads, pinned so that every
// shape it suits runs through it (the per-shape choice gives some of these to
// other plans): unit and larger strides (split into phase planes), odd and
// uneven widths, dilations, symmetric, uneven and no padding, with and
// without bias, weights known at load time or only at run time, and fused
// Clip. Under QUANTD_RUNTIME_ISA=avx2|sse the plan does not apply and the
// same cases check the fallback choice.
TEST(HeavyKernelsConv, MaskedDepthwisePinned) {
  setenv("QUANTD_CONV_ALGO", "masked_depthwise", 1);
  uint32_t seed = 12000;
  for (auto [h, w] : std::vector<std::pair<int64_t, int64_t>>{{7, 7}, {14, 14}, {28, 28}, {13, 11}, {5, 33}, {1, 17}}) {
    for (auto [sh, sw] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {2, 2}, {1, 2}, {2, 1}, {3, 3}}) {
      for (auto [kh, kw] : std::vector<std::pair<int64_t, int64_t>>{{3, 3}, {5, 5}, {1, 3}}) {
        for (int pad_kind = 0; pad_kind < 3; ++pad_kind) {
          ConvCase cc;
          const int64_t c = seed % 2 ? 19 : 32;
          cc.x = {seed % 3 == 0 ? 2 : 1, c, h, w};
          cc.m = c;
          cc.p.group = c;
          cc.kernel = {kh, kw};
          cc.p.strides = {sh, sw};
          cc.p.dilations = seed % 5 == 0 ? std::vector<int64_t>{2, 2} : std::vector<int64_t>{1, 1};
          if (pad_kind == 0) cc.p.pads = {kh / 2, kw / 2, kh / 2, kw / 2};
          if (pad_kind == 1) cc.p.pads = {0, kw / 2 + 1, kh / 2, 0};
          const int64_t ekh = (kh - 1) * cc.p.dilations[0] + 1, ekw = (kw - 1) * cc.p.dilations[1] + 1;
          const int64_t ph = pad_kind == 2 ? 0 : cc.p.pads[0] + cc.p.pads[2];
          const int64_t pw = pad_kind == 2 ? 0 : cc.p.pads[1] + cc.p.pads[3];
          if (h + ph < ekh || w + pw < ekw) continue;
          cc.bias = seed % 4 != 0;
          cc.constant_weights = seed % 3 != 1;
          cc.threads = seed % 4 == 2 ? 2 : 1;
          CheckConv(cc, seed++);
        }
      }
    }
  }
  // Fused Clip (ReLU6 and a narrow range) on the MobileNet shapes.
  for (auto [hw, stride] : std::vector<std::pair<int64_t, int64_t>>{{28, 2}, {14, 1}, {14, 2}, {7, 1}, {9, 2}}) {
    for (auto [lo, hi] : std::vector<std::pair<float, float>>{{0.0f, 6.0f}, {-0.5f, 0.25f}}) {
      SCOPED_TRACE("Clip " + std::to_string(hw) + " stride " + std::to_string(stride));
      ref::ConvParams p;
      p.group = 24;
      p.pads = {1, 1, 1, 1};
      p.strides = {stride, stride};
      std::vector<Tensor> inputs = {Random({3, 24, hw, hw}, seed, -3, 3), Random({24, 1, 3, 3}, seed + 1),
                                    Random({24}, seed + 2)};
      ++seed;
      auto expected = ref::Conv(inputs[0], inputs[1], &inputs[2], p);
      ASSERT_TRUE(expected.ok());
      for (int64_t i = 0; i < expected->size(); ++i) {
        expected->data<float>()[i] = std::min(std::max(expected->data<float>()[i], lo), hi);
      }
      NodeBuilder node = ConvNode(p, 3, "FusedConv", "com.microsoft");
      node.String("activation", "Clip");
      node.Floats("activation_params", {lo, hi});
      RunOptions options;
      options.opset = 1;
      options.constant = {1, 2};
      auto actual = RunKernel(node.node(), inputs, options);
      ASSERT_TRUE(actual.ok()) << actual.status().message();
      EXPECT_TRUE(Close((*actual)[0], *expected));
    }
  }
  unsetenv("QUANTD_CONV_ALGO");
}

TEST(HeavyKernelsConv, Errors) {
  ref::ConvParams p;
  // Channel mismatch.
  auto r = RunKernel(ConvNode(p, 2).node(), {Random({1, 3, 5, 5}, 1), Random({4, 2, 3, 3}, 2)});
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  // Kernel larger than the input.
  r = RunKernel(ConvNode(p, 2).node(), {Random({1, 2, 2, 2}, 1), Random({4, 2, 3, 3}, 2)});
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  // Non-float input.
  r = RunKernel(ConvNode(p, 2).node(), {Tensor::Zeros(DataType::kInt8, {1, 2, 4, 4}), Random({4, 2, 3, 3}, 2)});
  EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented);
  // Unknown fused activation is refused when the kernel is created.
  NodeBuilder fused = ConvNode(p, 2, "FusedConv", "com.microsoft");
  fused.String("activation", "Gelu");
  RunOptions options;
  options.opset = 1;
  r = RunKernel(fused.node(), {Random({1, 2, 4, 4}, 1), Random({4, 2, 3, 3}, 2)}, options);
  EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented);
}

// ---------------------------------------------------------------------------
// ConvTranspose
// ---------------------------------------------------------------------------

void CheckConvTranspose(const Shape& x, int64_t mg, const std::vector<int64_t>& kernel, const ref::ConvParams& p,
                        bool bias, uint32_t seed, int threads = 1) {
  SCOPED_TRACE("X" + ShapeToString(x) + " Mg" + std::to_string(mg) + " k" + Join(kernel) + " s" + Join(p.strides) +
               " d" + Join(p.dilations) + " pads" + Join(p.pads) + " op" + Join(p.output_padding) + " os" +
               Join(p.output_shape) + " g" + std::to_string(p.group) + " " + p.auto_pad);
  Shape w_shape = {x[1], mg};
  w_shape.insert(w_shape.end(), kernel.begin(), kernel.end());
  std::vector<Tensor> inputs = {Random(x, seed), Random(w_shape, seed + 1)};
  if (bias) inputs.push_back(Random({mg * p.group}, seed + 2));
  auto expected = ref::ConvTranspose(inputs[0], inputs[1], bias ? &inputs[2] : nullptr, p);
  ASSERT_TRUE(expected.ok()) << expected.status().message();
  RunOptions options;
  options.threads = threads;
  options.constant = {1};
  auto actual = RunKernel(ConvNode(p, static_cast<int>(inputs.size()), "ConvTranspose").node(), inputs, options);
  ASSERT_TRUE(actual.ok()) << actual.status().message();
  EXPECT_TRUE(Close((*actual)[0], *expected));
}

TEST(HeavyKernelsConvTranspose, Combinations) {
  uint32_t seed = 2000;
  for (int64_t group : {1, 2, 4}) {
    for (int64_t stride : {1, 2, 3}) {
      for (int64_t dilation : {1, 2}) {
        for (auto pads : {std::vector<int64_t>{}, {1, 1, 1, 1}, {0, 1, 2, 0}}) {
          for (int64_t out_pad : {0, 1}) {
            if (out_pad >= stride && out_pad >= dilation) continue;
            ref::ConvParams p;
            p.group = group;
            p.strides = {stride, stride};
            p.dilations = {dilation, dilation};
            p.pads = pads;
            if (out_pad) p.output_padding = {out_pad, 0};
            CheckConvTranspose({2, 4, 5, 6}, 3, {3, 2}, p, seed % 2 == 0, seed, seed % 5 == 0 ? 3 : 1);
            ++seed;
          }
        }
      }
    }
  }
}

TEST(HeavyKernelsConvTranspose, OutputShapeAndAutoPad) {
  uint32_t seed = 2500;
  for (const char* mode : {"NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"}) {
    for (int64_t stride : {1, 2}) {
      ref::ConvParams p;
      p.auto_pad = mode;
      p.strides = {stride, stride};
      CheckConvTranspose({1, 3, 4, 5}, 2, {3, 3}, p, true, seed++);
      if (std::string(mode) != "VALID") {
        p.output_shape = {4 * stride + 1, 5 * stride};
        CheckConvTranspose({1, 3, 4, 5}, 2, {3, 3}, p, true, seed++);
        p.output_shape = {1, 2, 4 * stride, 5 * stride - 1};  // with N and C
        CheckConvTranspose({1, 3, 4, 5}, 2, {3, 3}, p, false, seed++);
      }
    }
  }
  // 1-D, and 3-D.
  ref::ConvParams p1;
  p1.strides = {2};
  p1.pads = {1, 0};
  p1.output_padding = {1};
  CheckConvTranspose({2, 3, 7}, 2, {4}, p1, true, seed++);
  ref::ConvParams p3;
  p3.strides = {2, 1, 2};
  p3.group = 3;
  CheckConvTranspose({1, 3, 3, 4, 2}, 1, {2, 2, 3}, p3, true, seed++);
}

// output_shape past the natural size: the extra rows and columns go at the
// end (ONNX's floor-division split; values from the ONNX node test).
TEST(HeavyKernelsConvTranspose, OutputShapeBeyondNaturalSize) {
  std::vector<float> xv(9);
  for (int i = 0; i < 9; ++i) xv[static_cast<size_t>(i)] = static_cast<float>(i);
  const Tensor x = Tensor::FromVector<float>({1, 1, 3, 3}, xv);
  const Tensor w = Tensor::FromVector<float>({1, 2, 3, 3}, std::vector<float>(18, 1.0f));
  ref::ConvParams p;
  p.strides = {3, 2};
  p.output_shape = {10, 8};
  auto actual = RunKernel(ConvNode(p, 2, "ConvTranspose").node(), {x, w});
  ASSERT_TRUE(actual.ok()) << actual.status().message();
  ASSERT_EQ((*actual)[0].shape(), (Shape{1, 2, 10, 8}));
  const float row_block[3][8] = {
      {0, 0, 1, 1, 3, 2, 2, 0}, {3, 3, 7, 4, 9, 5, 5, 0}, {6, 6, 13, 7, 15, 8, 8, 0}};
  for (int c = 0; c < 2; ++c) {
    for (int h = 0; h < 10; ++h) {
      for (int wi = 0; wi < 8; ++wi) {
        const float expected = h < 9 ? row_block[h / 3][wi] : 0.0f;
        EXPECT_EQ((*actual)[0].data<float>()[(c * 10 + h) * 8 + wi], expected) << c << "," << h << "," << wi;
      }
    }
  }
  auto reference = ref::ConvTranspose(x, w, nullptr, p);
  ASSERT_TRUE(reference.ok());
  EXPECT_TRUE(Close((*actual)[0], *reference));
}

// ---------------------------------------------------------------------------
// Gemm
// ---------------------------------------------------------------------------

TEST(HeavyKernelsGemm, Combinations) {
  uint32_t seed = 3000;
  struct Dims {
    int64_t m, k, n;
  };
  for (Dims d : {Dims{1, 576, 128}, Dims{32, 576, 128}, Dims{7, 5, 3}, Dims{32, 128, 10}, Dims{65, 33, 17},
                 Dims{1, 1, 1}, Dims{48, 512, 200}}) {
    for (int trans_a : {0, 1}) {
      for (int trans_b : {0, 1}) {
        for (int c_kind = 0; c_kind < 7; ++c_kind) {
          for (bool constant : {true, false}) {
            const float alpha = seed % 3 == 0 ? 0.5f : 1.0f;
            const float beta = seed % 4 == 0 ? 2.0f : seed % 7 == 0 ? 0.0f : 1.0f;
            SCOPED_TRACE("M" + std::to_string(d.m) + " K" + std::to_string(d.k) + " N" + std::to_string(d.n) +
                         " tA" + std::to_string(trans_a) + " tB" + std::to_string(trans_b) + " C" +
                         std::to_string(c_kind) + (constant ? " const" : "") + " alpha " + std::to_string(alpha) +
                         " beta " + std::to_string(beta));
            std::vector<Tensor> inputs = {Random(trans_a ? Shape{d.k, d.m} : Shape{d.m, d.k}, seed),
                                          Random(trans_b ? Shape{d.n, d.k} : Shape{d.k, d.n}, seed + 1)};
            const std::vector<Shape> c_shapes = {{}, {d.n}, {1, d.n}, {d.m, 1}, {d.m, d.n}, {1}, {}};
            const bool has_c = c_kind != 6;
            if (has_c) inputs.push_back(Random(c_shapes[static_cast<size_t>(c_kind)], seed + 2));
            ++seed;
            NodeBuilder node("Gemm", static_cast<int>(inputs.size()));
            node.Int("transA", trans_a).Int("transB", trans_b).Float("alpha", alpha).Float("beta", beta);
            auto expected = ref::Gemm(inputs[0], inputs[1], has_c ? &inputs[2] : nullptr, trans_a, trans_b, alpha,
                                      beta);
            ASSERT_TRUE(expected.ok()) << expected.status().message();
            RunOptions options;
            if (constant) options.constant = has_c ? std::set<int>{1, 2} : std::set<int>{1};
            options.threads = seed % 5 == 0 ? 2 : 1;
            auto actual = RunKernel(node.node(), inputs, options);
            ASSERT_TRUE(actual.ok()) << actual.status().message();
            EXPECT_TRUE(Close((*actual)[0], *expected));
          }
        }
      }
    }
  }
}

TEST(HeavyKernelsGemm, Errors) {
  NodeBuilder node("Gemm", 2);
  auto r = RunKernel(node.node(), {Random({2, 3}, 1), Random({4, 5}, 2)});
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  NodeBuilder with_c("Gemm", 3);
  r = RunKernel(with_c.node(), {Random({2, 3}, 1), Random({3, 5}, 2), Random({3, 5}, 3)});
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// MatMul
// ---------------------------------------------------------------------------

TEST(HeavyKernelsMatMul, Broadcasting) {
  uint32_t seed = 4000;
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{5}, {5}},
      {{5}, {5, 3}},
      {{4, 5}, {5}},
      {{4, 5}, {5, 3}},
      {{2, 4, 5}, {5, 3}},
      {{2, 4, 5}, {2, 5, 3}},
      {{2, 4, 5}, {1, 5, 3}},
      {{1, 4, 5}, {3, 5, 6}},
      {{4, 5}, {3, 5, 6}},
      {{2, 1, 4, 5}, {1, 3, 5, 6}},
      {{2, 3, 4, 5}, {3, 5, 6}},
      {{3, 1, 7}, {1, 7, 2}},
      {{6, 7}, {2, 3, 7, 9}},
      {{2, 3, 7}, {7}},
      {{32, 16, 64}, {64, 64}},
      {{32, 4, 16, 16}, {32, 4, 16, 16}},
      {{32, 49, 96}, {96, 192}},
      {{64, 8, 32, 32}, {64, 8, 32, 32}},
      {{64, 1024}, {1024, 128}},
      {{1, 100}, {100, 300}},
      {{3, 0, 4}, {4, 2}},
      {{3, 4, 0}, {0, 2}},
  };
  for (const auto& [as, bs] : cases) {
    for (bool constant : {false, true}) {
      for (int threads : {1, 2}) {
        SCOPED_TRACE("A" + ShapeToString(as) + " B" + ShapeToString(bs) + (constant ? " const" : "") + " t" +
                     std::to_string(threads));
        std::vector<Tensor> inputs = {Random(as, seed), Random(bs, seed + 1)};
        ++seed;
        auto expected = ref::MatMul(inputs[0], inputs[1]);
        ASSERT_TRUE(expected.ok()) << expected.status().message();
        RunOptions options;
        if (constant) options.constant = {1};
        options.threads = threads;
        auto actual = RunKernel(NodeBuilder("MatMul", 2).node(), inputs, options);
        ASSERT_TRUE(actual.ok()) << actual.status().message();
        EXPECT_TRUE(Close((*actual)[0], *expected));
      }
    }
  }
}

TEST(HeavyKernelsMatMul, Errors) {
  auto r = RunKernel(NodeBuilder("MatMul", 2).node(), {Random({2, 3}, 1), Random({4, 5}, 2)});
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  r = RunKernel(NodeBuilder("MatMul", 2).node(), {Random({2, 2, 3}, 1), Random({3, 3, 5}, 2)});
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------

NodeBuilder PoolNode(const std::string& op, const ref::PoolParams& p) {
  NodeBuilder b(op, 1);
  b.Ints("kernel_shape", p.kernel_shape).Ints("strides", p.strides).Ints("pads", p.pads);
  b.Ints("dilations", p.dilations);
  if (p.auto_pad != "NOTSET") b.String("auto_pad", p.auto_pad);
  if (p.ceil_mode) b.Int("ceil_mode", 1);
  if (p.count_include_pad) b.Int("count_include_pad", 1);
  if (p.storage_order) b.Int("storage_order", p.storage_order);
  return b;
}

void CheckPool(const std::string& op, const Shape& x_shape, const ref::PoolParams& p, uint32_t seed,
               int threads = 1, bool indices = false) {
  SCOPED_TRACE(op + " X" + ShapeToString(x_shape) + " k" + Join(p.kernel_shape) + " s" + Join(p.strides) + " d" +
               Join(p.dilations) + " pads" + Join(p.pads) + " " + p.auto_pad + (p.ceil_mode ? " ceil" : "") +
               (p.count_include_pad ? " include_pad" : "") + (indices ? " indices" : "") + " order" +
               std::to_string(p.storage_order));
  const Tensor x = Random(x_shape, seed);
  Tensor expected_indices;
  auto expected = op == "MaxPool" ? ref::MaxPool(x, p, indices ? &expected_indices : nullptr) : ref::AveragePool(x, p);
  ASSERT_TRUE(expected.ok()) << expected.status().message();
  NodeBuilder node = PoolNode(op, p);
  RunOptions options;
  options.threads = threads;
  if (indices) {
    node.Outputs(2);
    options.outputs = 2;
  }
  auto actual = RunKernel(node.node(), {x}, options);
  ASSERT_TRUE(actual.ok()) << actual.status().message();
  EXPECT_TRUE(Close((*actual)[0], *expected));
  if (indices) {
    ASSERT_EQ((*actual)[1].shape(), expected_indices.shape());
    for (int64_t i = 0; i < expected_indices.size(); ++i) {
      ASSERT_EQ((*actual)[1].data<int64_t>()[i], expected_indices.data<int64_t>()[i]) << "index " << i;
    }
  }
}

TEST(HeavyKernelsPool, TwoDimensionalCombinations) {
  uint32_t seed = 5000;
  for (const std::string op : {"MaxPool", "AveragePool"}) {
    for (std::vector<int64_t> kernel : {std::vector<int64_t>{2, 2}, {3, 3}, {3, 2}, {1, 1}}) {
      for (int64_t stride : {1, 2, 3}) {
        for (auto pads : {std::vector<int64_t>{}, {1, 1, 1, 1}, {0, 1, 1, 0}}) {
          for (bool ceil : {false, true}) {
            for (bool include_pad : {false, true}) {
              if (op == "MaxPool" && include_pad) continue;
              if (!pads.empty() && (pads[0] >= kernel[0] || pads[1] >= kernel[1] || pads[2] >= kernel[0] ||
                                    pads[3] >= kernel[1])) {
                continue;
              }
              ref::PoolParams p;
              p.kernel_shape = kernel;
              p.strides = {stride, stride};
              p.pads = pads;
              p.ceil_mode = ceil;
              p.count_include_pad = include_pad;
              CheckPool(op, {2, 3, 11, 8}, p, seed, seed % 3 == 0 ? 2 : 1);
              ++seed;
            }
          }
        }
      }
    }
  }
}

TEST(HeavyKernelsPool, AutoPadDilationsAndRanks) {
  uint32_t seed = 6000;
  for (const std::string op : {"MaxPool", "AveragePool"}) {
    for (const char* mode : {"SAME_UPPER", "SAME_LOWER", "VALID"}) {
      for (int64_t stride : {1, 2}) {
        ref::PoolParams p;
        p.kernel_shape = {3, 2};
        p.strides = {stride, stride};
        p.auto_pad = mode;
        CheckPool(op, {1, 2, 9, 7}, p, seed++);
      }
    }
    for (int64_t dilation : {2, 3}) {
      ref::PoolParams p;
      p.kernel_shape = {2, 3};
      p.dilations = {dilation, dilation - 1};
      p.pads = {1, 1, 0, 2};
      p.ceil_mode = dilation == 3;
      CheckPool(op, {2, 2, 12, 13}, p, seed++);
    }
    ref::PoolParams p1;
    p1.kernel_shape = {3};
    p1.strides = {2};
    p1.pads = {1, 1};
    p1.ceil_mode = true;
    CheckPool(op, {2, 3, 10}, p1, seed++);
    ref::PoolParams p3;
    p3.kernel_shape = {2, 2, 3};
    p3.strides = {2, 1, 2};
    p3.pads = {0, 1, 1, 1, 0, 1};
    CheckPool(op, {1, 2, 5, 4, 7}, p3, seed++);
  }
  // The Fashion CNN pools and a large batch on several threads.
  ref::PoolParams fashion;
  fashion.kernel_shape = {2, 2};
  fashion.strides = {2, 2};
  for (int64_t hw : {28, 14, 7}) CheckPool("MaxPool", {32, 16, hw, hw}, fashion, seed++, 2);
}

TEST(HeavyKernelsPool, MaxPoolIndices) {
  uint32_t seed = 7000;
  for (int64_t order : {0, 1}) {
    ref::PoolParams p;
    p.kernel_shape = {3, 3};
    p.strides = {2, 2};
    p.pads = {1, 1, 1, 1};
    p.storage_order = order;
    CheckPool("MaxPool", {2, 3, 7, 6}, p, seed++, 1, true);
    ref::PoolParams p3;
    p3.kernel_shape = {2, 2, 2};
    p3.storage_order = order;
    CheckPool("MaxPool", {1, 2, 4, 3, 5}, p3, seed++, 1, true);
  }
}

// MaxPool on int8, uint8 and double gives the float result (max is exact).
TEST(HeavyKernelsPool, MaxPoolOtherTypes) {
  ref::PoolParams p;
  p.kernel_shape = {3, 3};
  p.strides = {2, 2};
  p.pads = {1, 1, 1, 1};
  p.ceil_mode = true;
  const Tensor f = Random({2, 3, 9, 8}, 7100, -100, 100);
  auto expected = ref::MaxPool(f, p);
  ASSERT_TRUE(expected.ok());
  auto check = [&](DataType type, auto tag) {
    using T = decltype(tag);
    Tensor x(type, f.shape());
    for (int64_t i = 0; i < f.size(); ++i) x.data<T>()[i] = static_cast<T>(std::round(f.data<float>()[i]) + (std::is_unsigned_v<T> ? 100 : 0));
    auto actual = RunKernel(PoolNode("MaxPool", p).node(), {x});
    ASSERT_TRUE(actual.ok()) << actual.status().message();
    ASSERT_EQ((*actual)[0].dtype(), type);
    Tensor as_float(DataType::kFloat, f.shape());
    for (int64_t i = 0; i < f.size(); ++i) as_float.data<float>()[i] = static_cast<float>(x.data<T>()[i]);
    auto want = ref::MaxPool(as_float, p);
    ASSERT_TRUE(want.ok());
    for (int64_t i = 0; i < want->size(); ++i) {
      ASSERT_EQ(static_cast<float>((*actual)[0].data<T>()[i]), want->data<float>()[i]) << "element " << i;
    }
  };
  check(DataType::kInt8, int8_t{});
  check(DataType::kUint8, uint8_t{});
  check(DataType::kDouble, double{});
}

TEST(HeavyKernelsPool, GlobalPools) {
  uint32_t seed = 8000;
  for (const Shape& shape : {Shape{2, 3, 7}, Shape{2, 5, 7, 7}, Shape{1, 4, 33, 1}, Shape{3, 2, 2, 3, 4}}) {
    for (int threads : {1, 3}) {
      const Tensor x = Random(shape, seed++, -5, 5);
      RunOptions options;
      options.threads = threads;
      auto avg = RunKernel(NodeBuilder("GlobalAveragePool", 1).node(), {x}, options);
      auto max = RunKernel(NodeBuilder("GlobalMaxPool", 1).node(), {x}, options);
      ASSERT_TRUE(avg.ok() && max.ok());
      EXPECT_TRUE(Close((*avg)[0], *ref::GlobalAveragePool(x)));
      EXPECT_TRUE(Close((*max)[0], *ref::GlobalMaxPool(x)));
    }
  }
}

TEST(HeavyKernelsPool, Errors) {
  ref::PoolParams p;
  p.kernel_shape = {3, 3};
  auto r = RunKernel(PoolNode("MaxPool", p).node(), {Random({1, 1, 2, 2}, 1)});
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  p.kernel_shape = {2};
  r = RunKernel(PoolNode("MaxPool", p).node(), {Random({1, 1, 4, 4}, 1)});
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  p.kernel_shape = {2, 2};
  r = RunKernel(PoolNode("AveragePool", p).node(), {Tensor::Zeros(DataType::kUint8, {1, 1, 4, 4})});
  EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented);
  r = RunKernel(PoolNode("MaxPool", p).node(), {Tensor::Zeros(DataType::kInt32, {1, 1, 4, 4})});
  EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace quantd::runtime
