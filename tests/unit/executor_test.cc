// CPU executor behaviour on small graphs built here: taps, kept tensors,
// memory release and in-place reuse, error texts, concurrent runs, dynamic
// batch shape subgraphs, and elementwise broadcasting against a naive
// reference.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include "worker/runtime/executor.h"
#include "worker/runtime/thread_pool.h"

namespace quantd::runtime {
namespace {

using ::onnx::ModelProto;
using ::onnx::NodeProto;

// ------------------------------------------------------------ graph helpers

class GraphBuilder {
 public:
  explicit GraphBuilder(int opset = 17) {
    model_.set_ir_version(8);
    auto* op = model_.add_opset_import();
    op->set_domain("");
    op->set_version(opset);
    model_.mutable_graph()->set_name("g");
  }

  // dims: >= 0 fixed, -1 symbolic (named by `params` in order).
  GraphBuilder& Input(const std::string& name, DataType type, std::vector<int64_t> dims,
                      std::vector<std::string> params = {}) {
    Value(model_.mutable_graph()->add_input(), name, type, dims, params);
    return *this;
  }
  GraphBuilder& Output(const std::string& name, DataType type = DataType::kFloat) {
    auto* v = model_.mutable_graph()->add_output();
    v->set_name(name);
    v->mutable_type()->mutable_tensor_type()->set_elem_type(static_cast<int>(type));
    return *this;
  }
  GraphBuilder& Initializer(const std::string& name, const Tensor& value) {
    TensorToProto(value, name, model_.mutable_graph()->add_initializer());
    return *this;
  }
  NodeProto& Node(const std::string& op, std::vector<std::string> inputs, std::vector<std::string> outputs,
                  const std::string& name = "", const std::string& domain = "") {
    auto* n = model_.mutable_graph()->add_node();
    n->set_op_type(op);
    n->set_name(name.empty() ? op + "_" + std::to_string(model_.graph().node_size()) : name);
    n->set_domain(domain);
    for (auto& i : inputs) n->add_input(i);
    for (auto& o : outputs) n->add_output(o);
    return *n;
  }
  ModelProto& model() { return model_; }

 private:
  static void Value(onnx::ValueInfoProto* v, const std::string& name, DataType type, const std::vector<int64_t>& dims,
                    const std::vector<std::string>& params) {
    v->set_name(name);
    auto* tt = v->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(static_cast<int>(type));
    auto* shape = tt->mutable_shape();
    size_t p = 0;
    for (int64_t d : dims) {
      auto* dim = shape->add_dim();
      if (d >= 0) {
        dim->set_dim_value(d);
      } else if (p < params.size()) {
        dim->set_dim_param(params[p++]);
      }
    }
  }
  ModelProto model_;
};

void IntAttr(NodeProto& node, const std::string& name, int64_t value) {
  auto* a = node.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(value);
}

void IntsAttr(NodeProto& node, const std::string& name, const std::vector<int64_t>& values) {
  auto* a = node.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t v : values) a->add_ints(v);
}

std::unique_ptr<Executor> MustCreate(const ModelProto& model, int threads = 1) {
  auto executor = Executor::Create(model, {threads, nullptr});
  EXPECT_TRUE(executor.ok()) << executor.status().message();
  return executor.ok() ? std::move(executor).value() : nullptr;
}

Tensor RandomFloats(const Shape& shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  Tensor t(DataType::kFloat, shape);
  for (int64_t i = 0; i < t.size(); ++i) t.data<float>()[i] = dist(rng);
  return t;
}

std::vector<float> Values(const Tensor& t) { return {t.data<float>(), t.data<float>() + t.size()}; }

// Relu -> a, Relu(a) -> b, Relu(b) -> c: a chain where every intermediate
// has exactly one reader.
ModelProto ReluChain() {
  GraphBuilder g;
  g.Input("x", DataType::kFloat, {2, 3});
  g.Node("Relu", {"x"}, {"a"});
  g.Node("Neg", {"a"}, {"b"});
  g.Node("Relu", {"b"}, {"c"});
  g.Node("Abs", {"c"}, {"y"});
  g.Output("y");
  return g.model();
}

// -------------------------------------------------------------------- taps

TEST(ExecutorTest, TapSeesEveryNodeOutputExactlyOnce) {
  GraphBuilder g;
  g.Input("x", DataType::kFloat, {4, 6});
  g.Initializer("w", Tensor::FromVector<float>({6}, {1, 2, 3, 4, 5, 6}));
  g.Node("Add", {"x", "w"}, {"s"});
  auto& split = g.Node("Split", {"s"}, {"p", "q"});
  IntAttr(split, "axis", 1);
  g.Node("Mul", {"p", "q"}, {"m"});
  g.Node("Constant", {}, {"k"}).add_attribute()->CopyFrom([] {
    onnx::AttributeProto a;
    a.set_name("value_float");
    a.set_type(onnx::AttributeProto::FLOAT);
    a.set_f(2.0f);
    return a;
  }());
  g.Node("Mul", {"m", "k"}, {"y"});
  g.Output("y");
  auto executor = MustCreate(g.model());
  ASSERT_TRUE(executor);

  std::map<std::string, int> seen;
  std::map<std::string, int> node_of;
  RunOptions options;
  options.tap = [&](const NodeProto& node, int index, const std::string& name, const Tensor& value) {
    ++seen[name];
    node_of[name] = index;
    EXPECT_TRUE(value.defined()) << name;
    EXPECT_EQ(node.output_size() > 0, true);
  };
  auto out = executor->Run({{"x", RandomFloats({4, 6}, 1)}}, options);
  ASSERT_TRUE(out.ok()) << out.status().message();
  std::map<std::string, int> expected = {{"s", 1}, {"p", 1}, {"q", 1}, {"m", 1}, {"k", 1}, {"y", 1}};
  EXPECT_EQ(seen, expected);
  EXPECT_EQ(node_of["s"], 0);
  EXPECT_EQ(node_of["p"], 1);
  EXPECT_EQ(node_of["q"], 1);
  EXPECT_EQ(node_of["k"], 3);
  EXPECT_EQ(node_of["y"], 4);
}

TEST(ExecutorTest, TapSeesNodesEvaluatedAtLoadTime) {
  GraphBuilder g;
  g.Input("x", DataType::kFloat, {3});
  g.Initializer("c", Tensor::FromVector<float>({3}, {1, -2, 3}));
  g.Node("Abs", {"c"}, {"c_abs"});  // constant-only: evaluated by Create()
  g.Node("Add", {"x", "c_abs"}, {"y"});
  g.Output("y");
  auto executor = MustCreate(g.model());
  ASSERT_TRUE(executor);
  std::vector<std::string> order;
  RunOptions options;
  options.tap = [&](const NodeProto&, int, const std::string& name, const Tensor& value) {
    order.push_back(name);
    if (name == "c_abs") {
      EXPECT_EQ(Values(value), (std::vector<float>{1, 2, 3}));
    }
  };
  for (int run = 0; run < 2; ++run) {
    order.clear();
    auto out = executor->Run({{"x", Tensor::FromVector<float>({3}, {1, 1, 1})}}, options);
    ASSERT_TRUE(out.ok()) << out.status().message();
    EXPECT_EQ(order, (std::vector<std::string>{"c_abs", "y"}));
    EXPECT_EQ(Values(out->at("y")), (std::vector<float>{2, 3, 4}));
  }
}

// ---------------------------------------------------------- keep & memory

TEST(ExecutorTest, KeepReturnsIntermediates) {
  auto executor = MustCreate(ReluChain());
  ASSERT_TRUE(executor);
  Tensor x = Tensor::FromVector<float>({2, 3}, {-1, 2, -3, 4, -5, 6});
  RunOptions options;
  options.keep = {"a", "b"};
  auto out = executor->Run({{"x", x}}, options);
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_EQ(out->size(), 3u);
  EXPECT_EQ(Values(out->at("a")), (std::vector<float>{0, 2, 0, 4, 0, 6}));
  EXPECT_EQ(Values(out->at("b")), (std::vector<float>{0, -2, 0, -4, 0, -6}));
  EXPECT_EQ(Values(out->at("y")), (std::vector<float>{0, 0, 0, 0, 0, 0}));

  options.keep = {"nope"};
  auto bad = executor->Run({{"x", x}}, options);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().reason(), "RUNTIME_BAD_INPUT");
  EXPECT_NE(bad.status().message().find("'nope'"), std::string::npos);
}

TEST(ExecutorTest, IntermediatesAreReleasedAfterTheirLastReader) {
  auto executor = MustCreate(ReluChain());
  ASSERT_TRUE(executor);
  Tensor x = RandomFloats({2, 3}, 7);
  for (bool keep_a : {false, true}) {
    Tensor held_a;
    long count_during_c = -1;
    RunOptions options;
    if (keep_a) options.keep = {"a"};
    options.tap = [&](const NodeProto&, int, const std::string& name, const Tensor& value) {
      if (name == "a") held_a = value;  // the tap's own reference
      if (name == "c") count_during_c = held_a.buffer_use_count();
    };
    auto out = executor->Run({{"x", x}}, options);
    ASSERT_TRUE(out.ok()) << out.status().message();
    // By the time c is produced, a's reader (Neg) has run: only the tap
    // (and `keep`, when asked) still refer to a's buffer.
    EXPECT_EQ(count_during_c, keep_a ? 2 : 1) << "keep_a=" << keep_a;
    EXPECT_EQ(held_a.buffer_use_count(), keep_a ? 2 : 1);
  }
}

TEST(ExecutorTest, ReusesDeadBuffersInPlaceButNeverFeedsOrHeldTensors) {
  auto executor = MustCreate(ReluChain());
  ASSERT_TRUE(executor);
  Tensor x = Tensor::FromVector<float>({2, 3}, {-1, 2, -3, 4, -5, 6});
  const std::vector<float> x_before = Values(x);

  std::map<std::string, const void*> where;
  RunOptions observe;
  observe.tap = [&](const NodeProto&, int, const std::string& name, const Tensor& value) { where[name] = value.raw(); };
  auto out = executor->Run({{"x", x}}, observe);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(Values(x), x_before) << "the feed was overwritten";
  EXPECT_NE(where["a"], x.raw());
  // a, b, c and y are each read once, so one buffer serves the chain.
  EXPECT_EQ(where["b"], where["a"]);
  EXPECT_EQ(where["c"], where["a"]);
  EXPECT_EQ(where["y"], where["a"]);

  // A tap that holds a tensor keeps it intact.
  Tensor held_b;
  std::vector<float> b_seen;
  RunOptions hold;
  hold.tap = [&](const NodeProto&, int, const std::string& name, const Tensor& value) {
    if (name == "b") {
      held_b = value;
      b_seen = Values(value);
    }
  };
  out = executor->Run({{"x", x}}, hold);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(Values(held_b), b_seen);
  EXPECT_FALSE(held_b.SharesBufferWith(out->at("y")));
}

// Every kernel that may write over its input must give the same result as
// when the input is held elsewhere (a tap copy disables reuse).
TEST(ExecutorTest, InPlaceExecutionMatchesOutOfPlace) {
  GraphBuilder g;
  g.Input("x", DataType::kFloat, {2, 3, 4, 5});
  g.Initializer("bias", RandomFloats({4, 1}, 5));
  g.Initializer("slope", RandomFloats({3, 1, 1}, 6));
  g.Initializer("lo", Tensor::Scalar<float>(-0.5f));
  g.Initializer("hi", Tensor::Scalar<float>(0.75f));
  g.Initializer("two", Tensor::Scalar<float>(2.0f));
  g.Initializer("bn_scale", RandomFloats({3}, 7));
  g.Initializer("bn_bias", RandomFloats({3}, 8));
  g.Initializer("bn_mean", RandomFloats({3}, 9));
  g.Initializer("bn_var", Tensor::FromVector<float>({3}, {0.5f, 1.0f, 2.0f}));
  g.Node("Neg", {"x"}, {"t0"});
  g.Node("Add", {"t0", "bias"}, {"t1"});
  auto& ls = g.Node("LogSoftmax", {"t1"}, {"t2"});
  IntAttr(ls, "axis", -1);
  auto& sm = g.Node("Softmax", {"t2"}, {"t3"});
  IntAttr(sm, "axis", 1);
  g.Node("PRelu", {"t3", "slope"}, {"t4"});
  g.Node("Sigmoid", {"t4"}, {"t5"});
  g.Node("Tanh", {"t5"}, {"t6"});
  g.Node("Erf", {"t6"}, {"t7"});
  g.Node("Clip", {"t7", "lo", "hi"}, {"t8"});
  g.Node("Pow", {"t8", "two"}, {"t9"});
  g.Node("BatchNormalization", {"t9", "bn_scale", "bn_bias", "bn_mean", "bn_var"}, {"t10"});
  auto& ls2 = g.Node("LogSoftmax", {"t10"}, {"t11"});
  IntAttr(ls2, "axis", 1);
  g.Node("Sub", {"t11", "x"}, {"y"});
  g.Output("y");
  auto executor = MustCreate(g.model());
  ASSERT_TRUE(executor);
  Tensor x = RandomFloats({2, 3, 4, 5}, 10);
  std::map<std::string, const void*> where;
  RunOptions observe;
  observe.tap = [&](const NodeProto&, int, const std::string& name, const Tensor& value) { where[name] = value.raw(); };
  auto reused = executor->Run({{"x", x}}, observe);
  ASSERT_TRUE(reused.ok()) << reused.status().message();
  EXPECT_EQ(where["t11"], where["t1"]) << "expected the chain to run in one buffer";
  std::vector<Tensor> held;
  RunOptions hold;
  hold.tap = [&](const NodeProto&, int, const std::string&, const Tensor& value) { held.push_back(value); };
  auto fresh = executor->Run({{"x", x}}, hold);
  ASSERT_TRUE(fresh.ok()) << fresh.status().message();
  EXPECT_EQ(Values(reused->at("y")), Values(fresh->at("y")));
}

// ------------------------------------------------------------- error texts

TEST(ExecutorTest, UnsupportedOpsAreListedOnce) {
  GraphBuilder g(13);
  g.Input("x", DataType::kFloat, {1});
  g.Node("Loop", {"", "", "x"}, {"l1"}, "loop_a");
  g.Node("Loop", {"", "", "l1"}, {"l2"}, "loop_b");
  g.Node("FancyOp", {"l2"}, {"f"}, "fancy", "com.example");
  g.Node("Relu", {"f"}, {"y"});
  g.Output("y");
  auto* op = g.model().add_opset_import();
  op->set_domain("com.example");
  op->set_version(1);
  auto executor = Executor::Create(g.model(), {});
  ASSERT_FALSE(executor.ok());
  EXPECT_EQ(executor.status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(executor.status().reason(), "RUNTIME_UNSUPPORTED_OP");
  const std::string& msg = executor.status().message();
  EXPECT_NE(msg.find("Loop (domain 'ai.onnx', opset 13, first at node 'loop_a')"), std::string::npos) << msg;
  EXPECT_NE(msg.find("FancyOp (domain 'com.example', opset 1, first at node 'fancy')"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("loop_b"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("Relu"), std::string::npos) << msg;
}

TEST(ExecutorTest, BadInputsAreRejectedWithTheExpectedShape) {
  GraphBuilder g;
  g.Input("input", DataType::kFloat, {-1, 1, 28, 28}, {"batch"});
  g.Input("scale", DataType::kFloat, {1});
  g.Initializer("scale", Tensor::FromVector<float>({1}, {2.0f}));
  g.Node("Mul", {"input", "scale"}, {"y"});
  g.Output("y");
  auto executor = MustCreate(g.model());
  ASSERT_TRUE(executor);
  // What must be fed, from the model alone, as the executor lists it.
  const auto fed = FedInputs(g.model());
  ASSERT_EQ(fed.size(), 1u);
  EXPECT_EQ(fed[0].name, "input");
  EXPECT_EQ(fed[0].shape, (Shape{-1, 1, 28, 28}));
  EXPECT_FALSE(executor->inputs()[0].optional);
  EXPECT_TRUE(executor->inputs()[1].optional);

  auto expect_error = [&](const std::map<std::string, Tensor>& feeds, const std::string& text) {
    auto out = executor->Run(feeds);
    ASSERT_FALSE(out.ok()) << text;
    EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(out.status().reason(), "RUNTIME_BAD_INPUT");
    EXPECT_EQ(out.status().message(), text);
  };
  expect_error({{"input", Tensor(DataType::kFloat, {1, 3, 28, 28})}},
               "input 'input' expects float32 [batch,1,28,28], got float32 [1,3,28,28]");
  expect_error({{"input", Tensor(DataType::kInt64, {1, 1, 28, 28})}},
               "input 'input' expects float32 [batch,1,28,28], got int64 [1,1,28,28]");
  expect_error({{"input", Tensor(DataType::kFloat, {1, 28, 28})}},
               "input 'input' expects float32 [batch,1,28,28], got float32 [1,28,28]");
  expect_error({}, "input 'input' (float32 [batch,1,28,28]) is missing");
  expect_error({{"input", Tensor(DataType::kFloat, {2, 1, 28, 28})}, {"other", Tensor(DataType::kFloat, {1})}},
               "'other' is not an input of the model (inputs: input, scale)");

  // Any batch works; the initializer-backed input is optional and may be
  // overridden.
  Tensor x = RandomFloats({3, 1, 28, 28}, 3);
  auto out = executor->Run({{"input", x}});
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_FLOAT_EQ(out->at("y").data<float>()[5], 2.0f * x.data<float>()[5]);
  out = executor->Run({{"input", x}, {"scale", Tensor::FromVector<float>({1}, {-1.0f})}});
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_FLOAT_EQ(out->at("y").data<float>()[5], -x.data<float>()[5]);
}

TEST(ExecutorTest, OldIrInitializersListedAsInputsAreConstants) {
  GraphBuilder g(9);
  g.model().set_ir_version(3);
  g.Input("x", DataType::kFloat, {2});
  g.Input("w", DataType::kFloat, {2});
  g.Initializer("w", Tensor::FromVector<float>({2}, {3, 4}));
  g.Node("Neg", {"w"}, {"nw"});  // constant: evaluated by Create()
  g.Node("Mul", {"x", "nw"}, {"y"});
  g.Output("y");
  auto executor = MustCreate(g.model());
  ASSERT_TRUE(executor);
  ASSERT_EQ(executor->inputs().size(), 1u);
  EXPECT_EQ(executor->inputs()[0].name, "x");
  ASSERT_EQ(FedInputs(g.model()).size(), 1u);
  EXPECT_EQ(FedInputs(g.model())[0].name, "x");
  auto out = executor->Run({{"x", Tensor::FromVector<float>({2}, {1, 2})}});
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_EQ(Values(out->at("y")), (std::vector<float>{-3, -8}));
}

TEST(ExecutorTest, ExposesInputAndOutputMetadata) {
  GraphBuilder g;
  g.Input("input", DataType::kFloat, {-1, 3, -1, 4}, {"batch", "height"});
  g.Node("Relu", {"input"}, {"y"});
  g.Output("y");
  auto executor = MustCreate(g.model());
  ASSERT_TRUE(executor);
  ASSERT_EQ(executor->inputs().size(), 1u);
  const TensorInfo& in = executor->inputs()[0];
  EXPECT_EQ(in.name, "input");
  EXPECT_EQ(in.dtype, DataType::kFloat);
  EXPECT_TRUE(in.has_shape);
  EXPECT_EQ(in.shape, (Shape{-1, 3, -1, 4}));
  EXPECT_EQ(in.dim_params, (std::vector<std::string>{"batch", "", "height", ""}));
  EXPECT_FALSE(in.optional);
  ASSERT_EQ(executor->outputs().size(), 1u);
  EXPECT_EQ(executor->outputs()[0].name, "y");
}

TEST(ExecutorTest, KernelErrorsNameTheNode) {
  GraphBuilder g;
  g.Input("a", DataType::kFloat, {2, 3});
  g.Input("b", DataType::kFloat, {4});
  g.Node("Add", {"a", "b"}, {"y"}, "the_add");
  g.Output("y");
  auto executor = MustCreate(g.model());
  ASSERT_TRUE(executor);
  auto out = executor->Run({{"a", Tensor::Zeros(DataType::kFloat, {2, 3})}, {"b", Tensor::Zeros(DataType::kFloat, {4})}});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().message(), "node 'the_add' (Add): shapes [2,3] and [4] cannot be broadcast");
}

// ------------------------------------------------------------ concurrency

TEST(ExecutorTest, ConcurrentRunsAreIndependent) {
  // Big enough that kernels split work across the pool.
  GraphBuilder g;
  g.Input("x", DataType::kFloat, {-1, 64, 1024}, {"n"});
  g.Initializer("b", RandomFloats({1024}, 11));
  g.Node("Add", {"x", "b"}, {"s"});
  g.Node("Sigmoid", {"s"}, {"t"});
  auto& sm = g.Node("Softmax", {"t"}, {"u"});
  IntAttr(sm, "axis", -1);
  auto& r = g.Node("ReduceMean", {"u"}, {"y"});
  IntsAttr(r, "axes", {1});
  g.Output("y");
  auto executor = MustCreate(g.model(), 2);
  ASSERT_TRUE(executor);

  constexpr int kThreads = 6;
  std::vector<Tensor> inputs;
  std::vector<std::vector<float>> expected;
  for (int i = 0; i < kThreads; ++i) {
    inputs.push_back(RandomFloats({1 + i % 3, 64, 1024}, 100 + i));
    auto out = executor->Run({{"x", inputs.back()}});
    ASSERT_TRUE(out.ok()) << out.status().message();
    expected.push_back(Values(out->at("y")));
  }
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int iter = 0; iter < 20; ++iter) {
        int k = (t + iter) % kThreads;
        std::atomic<int> taps{0};
        RunOptions options;
        options.tap = [&](const NodeProto&, int, const std::string&, const Tensor&) { ++taps; };
        auto out = executor->Run({{"x", inputs[static_cast<size_t>(k)]}}, options);
        if (!out.ok() || Values(out->at("y")) != expected[static_cast<size_t>(k)] || taps != 4) ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(ThreadPoolTest, ParallelForCoversEachIndexOnce) {
  for (int threads : {1, 2, 4}) {
    FixedThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (int64_t n : {0, 1, 7, 1000, 100003}) {
      for (int64_t grain : {1, 16, 5000}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        pool.ParallelFor(n, grain, [&](int64_t b, int64_t e) {
          EXPECT_LE(0, b);
          EXPECT_LE(e, n);
          for (int64_t i = b; i < e; ++i) ++hits[static_cast<size_t>(i)];
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << n << " " << grain;
      }
    }
    // Several callers at once, each with nested calls (run inline).
    std::vector<std::thread> callers;
    std::atomic<int64_t> total{0};
    for (int c = 0; c < 4; ++c) {
      callers.emplace_back([&] {
        for (int rep = 0; rep < 50; ++rep) {
          pool.ParallelFor(64, 1, [&](int64_t b, int64_t e) {
            pool.ParallelFor(e - b, 1, [&](int64_t bb, int64_t ee) { total += ee - bb; });
          });
        }
      });
    }
    for (auto& c : callers) c.join();
    EXPECT_EQ(total.load(), 4 * 50 * 64);
  }
}

// ------------------------------------------------- dynamic batch reshapes

// y = x reshaped to [N, -1] the way torch.onnx exports x.view(x.size(0), -1):
// Shape -> Gather(0) -> Unsqueeze -> Concat([-1]) -> Reshape.
void AddTorchFlatten(GraphBuilder& g, const std::string& x, const std::string& y) {
  g.Initializer("zero", Tensor::Scalar<int64_t>(0));
  g.Initializer("axes0", Tensor::FromVector<int64_t>({1}, {0}));
  g.Initializer("minus1", Tensor::FromVector<int64_t>({1}, {-1}));
  g.Node("Shape", {x}, {"shape"});
  auto& gather = g.Node("Gather", {"shape", "zero"}, {"n"});
  IntAttr(gather, "axis", 0);
  g.Node("Unsqueeze", {"n", "axes0"}, {"n1"});
  auto& concat = g.Node("Concat", {"n1", "minus1"}, {"target"});
  IntAttr(concat, "axis", 0);
  g.Node("Reshape", {x, "target"}, {y});
}

TEST(ExecutorTest, TorchStyleDynamicBatchReshape) {
  GraphBuilder g(13);
  g.Input("x", DataType::kFloat, {-1, 2, 3, 4}, {"batch"});
  AddTorchFlatten(g, "x", "y");
  g.Output("y");
  auto executor = MustCreate(g.model());
  ASSERT_TRUE(executor);
  for (int64_t batch : {1, 3}) {
    Tensor x = RandomFloats({batch, 2, 3, 4}, static_cast<uint32_t>(batch));
    auto out = executor->Run({{"x", x}});
    ASSERT_TRUE(out.ok()) << out.status().message();
    EXPECT_EQ(out->at("y").shape(), (Shape{batch, 24}));
    EXPECT_EQ(Values(out->at("y")), Values(x));
  }
}

// ------------------------------------------------ preparing for a batch

// x [N,3,32,32] -> Conv(16, 3x3) -> Relu -> MaxPool 2x2 -> the torch-style
// Reshape to [N, -1]: activations big enough for the buffer cache, and
// shape arithmetic the empty-batch probe has to get through.
ModelProto ConvPoolFlatten() {
  GraphBuilder g(13);
  g.Input("x", DataType::kFloat, {-1, 3, 32, 32}, {"batch"});
  g.Initializer("w", RandomFloats({16, 3, 3, 3}, 21));
  g.Initializer("b", RandomFloats({16}, 22));
  auto& conv = g.Node("Conv", {"x", "w", "b"}, {"c"}, "conv");
  IntsAttr(conv, "pads", {1, 1, 1, 1});
  g.Node("Relu", {"c"}, {"r"}, "relu");
  auto& pool = g.Node("MaxPool", {"r"}, {"p"}, "pool");
  IntsAttr(pool, "kernel_shape", {2, 2});
  IntsAttr(pool, "strides", {2, 2});
  AddTorchFlatten(g, "p", "y");
  g.Output("y");
  return g.model();
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
// The sanitizers' allocators hand out recycled memory, so page faults say
// nothing about the executor there.
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

long MinorFaultsOfThisThread() {
  rusage usage{};
  getrusage(RUSAGE_THREAD, &usage);
  return usage.ru_minflt;
}

// Restores the process-wide buffer cache's limit when a test ends.
class BufferCacheScope {
 public:
  explicit BufferCacheScope(size_t limit) : saved_(TensorBufferCacheLimit()) {
    SetTensorBufferCacheLimit(0);  // empties it
    SetTensorBufferCacheLimit(limit);
  }
  ~BufferCacheScope() { SetTensorBufferCacheLimit(saved_); }

 private:
  size_t saved_;
};

TEST(ExecutorTest, PreparedBatchFindsEveryBufferOfItsFirstRunInTheCache) {
  const ModelProto model = ConvPoolFlatten();
  const Tensor x = RandomFloats({8, 3, 32, 32}, 23);
  for (int64_t prepare_batch : {int64_t{0}, int64_t{8}}) {
    SCOPED_TRACE("prepare_batch " + std::to_string(prepare_batch));
    BufferCacheScope cache(256u << 20);
    ExecutorOptions options;
    options.prepare_batch = prepare_batch;
    auto executor = Executor::Create(model, options);
    ASSERT_TRUE(executor.ok()) << executor.status().message();
    const size_t after_create = TensorBufferCacheBytes();
    const long faults_before = MinorFaultsOfThisThread();
    {
      auto out = (*executor)->Run({{"x", x}});
      ASSERT_TRUE(out.ok()) << out.status().message();
      ASSERT_EQ(out->at("y").shape(), (Shape{8, 16 * 16 * 16}));
    }
    const long run_faults = MinorFaultsOfThisThread() - faults_before;
    const size_t after_run = TensorBufferCacheBytes();
    // Conv/Relu output (Relu in place) and the pooled output.
    constexpr size_t kActivationBytes = (8u * 16 * 32 * 32 + 8u * 16 * 16 * 16) * sizeof(float);
    constexpr long kActivationPages = static_cast<long>(kActivationBytes / 4096);
    if (prepare_batch == 0) {
      // Unprepared, the first run allocates its buffers afresh and faults
      // their pages in.
      EXPECT_EQ(after_create, 0u);
      EXPECT_GE(after_run, kActivationBytes);
      if (!kSanitized) {
        EXPECT_GE(run_faults, kActivationPages);
      }
    } else {
      // Prepared, they were in the cache with their pages faulted in; the
      // run took them and gave them back.
      EXPECT_GE(after_create, kActivationBytes);
      EXPECT_EQ(after_run, after_create);
      if (!kSanitized) {
        EXPECT_LT(run_faults, kActivationPages / 4);
      }
    }
  }
}

// The allocation replay gives no buffer to an output its kernel declares a
// view, so the declaration must match what Compute does.
TEST(ExecutorTest, KernelsDeclareExactlyTheViewsTheyReturn) {
  FixedThreadPool pool(1);
  Tensor x(DataType::kFloat, {2, 1, 3});
  for (int64_t i = 0; i < x.size(); ++i) x.data<float>()[i] = static_cast<float>(i) - 2.5f;
  Tensor shape(DataType::kInt64, {2});
  shape.data<int64_t>()[0] = 3;
  shape.data<int64_t>()[1] = 2;
  Tensor axes(DataType::kInt64, {1});
  axes.data<int64_t>()[0] = 1;
  struct Case {
    const char* op;
    const Tensor* second_input;
    bool view;
  };
  for (const Case& c : {Case{"Reshape", &shape, true}, Case{"Flatten", nullptr, true}, Case{"Squeeze", &axes, true},
                        Case{"Unsqueeze", &axes, true}, Case{"Identity", nullptr, true}, Case{"Dropout", nullptr, true},
                        Case{"Relu", nullptr, false}, Case{"Transpose", nullptr, false}, Case{"Neg", nullptr, false}}) {
    SCOPED_TRACE(c.op);
    NodeProto node;
    node.set_op_type(c.op);
    node.add_input("x");
    if (c.second_input) node.add_input("second");
    node.add_output("y");
    const KernelFactory* factory = KernelRegistry::Default().Find("", c.op, 13);
    ASSERT_NE(factory, nullptr);
    auto kernel = (*factory)(KernelInit{node, 13, NodeAttributes(node), {}});
    ASSERT_TRUE(kernel.ok()) << kernel.status().message();
    std::vector<const Tensor*> inputs = {&x};
    if (c.second_input) inputs.push_back(c.second_input);
    std::vector<Tensor> outputs(1);
    KernelContext ctx(inputs, outputs, pool);
    ASSERT_TRUE((*kernel)->Compute(ctx).ok());
    EXPECT_EQ((*kernel)->OutputIsInputView(), c.view);
    EXPECT_EQ(outputs[0].data<float>() == x.data<float>(), c.view) << "whether Compute returned a view";
  }
}

TEST(ExecutorTest, PreparationMatchesUnpreparedRunsAndSurvivesModelsItCannotProbe) {
  const ModelProto model = ConvPoolFlatten();
  ExecutorOptions prepared_options;
  prepared_options.prepare_batch = 8;
  auto prepared = Executor::Create(model, prepared_options);
  auto plain = MustCreate(model);
  ASSERT_TRUE(prepared.ok() && plain);
  // Full batches and the smaller last one give the same values either way.
  for (int64_t batch : {8, 5, 8}) {
    const Tensor x = RandomFloats({batch, 3, 32, 32}, static_cast<uint32_t>(30 + batch));
    auto expected = plain->Run({{"x", x}});
    auto actual = (*prepared)->Run({{"x", x}});
    ASSERT_TRUE(expected.ok() && actual.ok());
    EXPECT_EQ(Values(actual->at("y")), Values(expected->at("y")));
  }
  // A Reshape to a fixed batch refuses the empty probe batch: Create() still
  // succeeds and runs are unaffected.
  GraphBuilder g(13);
  g.Input("x", DataType::kFloat, {-1, 4, 8}, {"batch"});
  g.Initializer("fixed", Tensor::FromVector<int64_t>({2}, {2, 32}));
  g.Node("Reshape", {"x", "fixed"}, {"y"});
  g.Output("y");
  auto fixed = Executor::Create(g.model(), prepared_options);
  ASSERT_TRUE(fixed.ok()) << fixed.status().message();
  const Tensor x = RandomFloats({2, 4, 8}, 40);
  auto out = (*fixed)->Run({{"x", x}});
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_EQ(Values(out->at("y")), Values(x));
}

// The empty-batch run that prepare_batch makes reaches every kernel with
// zero-size inputs; the softmax family over the emptied axis read past them.
TEST(ExecutorTest, SoftmaxFamilyTakesAnEmptyBatch) {
  for (const std::string op : {"Softmax", "LogSoftmax", "Hardmax"}) {
    for (int64_t axis : {0, 1}) {
      SCOPED_TRACE(op + " axis " + std::to_string(axis));
      GraphBuilder g(13);
      g.Input("x", DataType::kFloat, {-1, 40}, {"batch"});
      IntAttr(g.Node(op, {"x"}, {"y"}), "axis", axis);
      g.Output("y");
      auto executor = MustCreate(g.model());
      ASSERT_TRUE(executor);
      auto out = executor->Run({{"x", Tensor(DataType::kFloat, {0, 40})}});
      ASSERT_TRUE(out.ok()) << out.status().message();
      EXPECT_EQ(out->at("y").shape(), (Shape{0, 40}));
    }
  }
}

// ------------------------------------------------- broadcasting reference

int64_t BroadcastIndex(const Shape& in, const Shape& out, int64_t flat) {
  // Multi-index in `out`, mapped to `in` right-aligned with size-1 dims
  // pinned to 0.
  int64_t index = 0, stride = 1;
  for (size_t k = 0; k < in.size(); ++k) {
    size_t d_in = in.size() - 1 - k;
    size_t d_out = out.size() - 1 - k;
    int64_t coord = 0;
    int64_t rem = flat;
    for (size_t j = out.size(); j-- > d_out + 1;) rem /= out[j];
    coord = rem % out[d_out];
    if (in[d_in] != 1) index += coord * stride;
    stride *= in[d_in];
  }
  return index;
}

TEST(ExecutorTest, BroadcastingMatchesNaiveReference) {
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{}, {}},
      {{3}, {}},
      {{}, {3}},
      {{1}, {4, 5}},
      {{2, 3, 4}, {4}},
      {{2, 3, 4}, {3, 1}},
      {{3, 1, 5}, {1, 4, 1}},
      {{2, 1, 4, 1}, {3, 1, 6}},
      {{8, 16, 300}, {16, 1}},  // big: split across threads
      {{8, 16, 300}, {8, 16, 300}},
      {{8, 1, 300}, {8, 16, 1}},
      {{0, 3}, {1, 3}},
      {{2, 0, 3}, {3}},
  };
  struct Op {
    const char* name;
    float (*ref)(float, float);
  };
  const Op ops[] = {
      {"Add", [](float a, float b) { return a + b; }},
      {"Sub", [](float a, float b) { return a - b; }},
      {"Mul", [](float a, float b) { return a * b; }},
      {"Div", [](float a, float b) { return a / b; }},
      {"Max", [](float a, float b) { return std::max(a, b); }},
  };
  uint32_t seed = 1;
  for (const auto& [sa, sb] : cases) {
    for (const Op& op : ops) {
      GraphBuilder g;
      g.Input("a", DataType::kFloat, sa);
      g.Input("b", DataType::kFloat, sb);
      g.Node(op.name, {"a", "b"}, {"y"});
      g.Output("y");
      auto executor = MustCreate(g.model(), 2);
      ASSERT_TRUE(executor);
      Tensor a = RandomFloats(sa, seed++), b = RandomFloats(sb, seed++);
      auto out = executor->Run({{"a", a}, {"b", b}});
      ASSERT_TRUE(out.ok()) << op.name << " " << ShapeToString(sa) << " " << ShapeToString(sb) << ": "
                            << out.status().message();
      const Tensor& y = out->at("y");
      auto shape = BroadcastShapes(sa, sb);
      ASSERT_TRUE(shape.ok());
      ASSERT_EQ(y.shape(), *shape) << op.name;
      for (int64_t i = 0; i < y.size(); ++i) {
        float want = op.ref(a.data<float>()[BroadcastIndex(sa, *shape, i)], b.data<float>()[BroadcastIndex(sb, *shape, i)]);
        ASSERT_FLOAT_EQ(y.data<float>()[i], want)
            << op.name << " " << ShapeToString(sa) << " " << ShapeToString(sb) << " at " << i;
      }
    }
  }
}

TEST(ExecutorTest, WhereAndComparisonsBroadcastAcrossTypes) {
  GraphBuilder g;
  g.Input("a", DataType::kInt64, {2, 1, 3});
  g.Input("b", DataType::kInt64, {4, 1});
  g.Node("Less", {"a", "b"}, {"c"});
  g.Node("Where", {"c", "a", "b"}, {"y"});
  g.Output("y", DataType::kInt64);
  auto executor = MustCreate(g.model());
  ASSERT_TRUE(executor);
  Tensor a = Tensor::FromVector<int64_t>({2, 1, 3}, {0, 5, 10, -3, 2, 7});
  Tensor b = Tensor::FromVector<int64_t>({4, 1}, {1, 3, 6, 9});
  RunOptions options;
  options.keep = {"c"};
  auto out = executor->Run({{"a", a}, {"b", b}}, options);
  ASSERT_TRUE(out.ok()) << out.status().message();
  const Tensor& y = out->at("y");
  ASSERT_EQ(y.shape(), (Shape{2, 4, 3}));
  EXPECT_EQ(out->at("c").dtype(), DataType::kBool);
  for (int64_t i = 0; i < y.size(); ++i) {
    int64_t av = a.data<int64_t>()[BroadcastIndex(a.shape(), y.shape(), i)];
    int64_t bv = b.data<int64_t>()[BroadcastIndex(b.shape(), y.shape(), i)];
    EXPECT_EQ(y.data<int64_t>()[i], std::min(av, bv)) << i;
  }
}

// ------------------------------------------------------- tensors & quant

TEST(TensorTest, Int4RoundTripsThroughProtoPacking) {
  Tensor t(DataType::kInt4, {5});
  const int8_t values[] = {-8, 7, -1, 0, 3};
  for (int i = 0; i < 5; ++i) t.data<int8_t>()[i] = values[i];
  onnx::TensorProto proto;
  TensorToProto(t, "w", &proto);
  EXPECT_EQ(proto.data_type(), 22);
  ASSERT_EQ(proto.raw_data().size(), 3u);
  EXPECT_EQ(static_cast<uint8_t>(proto.raw_data()[0]), 0x78);  // low nibble first
  auto back = TensorFromProto(proto);
  ASSERT_TRUE(back.ok());
  for (int i = 0; i < 5; ++i) EXPECT_EQ(back->data<int8_t>()[i], values[i]);
}

TEST(TensorTest, HalfConversionsRoundToNearestEven) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7C00);
  EXPECT_EQ(FloatToHalf(5.9604644775390625e-8f), 0x0001);
  EXPECT_EQ(HalfToFloat(0x3555), 0.333251953125f);
  EXPECT_EQ(FloatToHalf(1.0f + 1.0f / 2048), 0x3C00);  // tie -> even
  EXPECT_EQ(FloatToBfloat16(1.0f), 0x3F80);
  EXPECT_EQ(Bfloat16ToFloat(0xC000), -2.0f);
}

TEST(ExecutorTest, DequantizesPackedInt4PerAxisWeights) {
  GraphBuilder g(21);
  g.Input("x", DataType::kFloat, {1, 3});
  Tensor w(DataType::kInt4, {2, 3});
  const int8_t q[] = {-8, 0, 7, 1, -1, 2};
  for (int i = 0; i < 6; ++i) w.data<int8_t>()[i] = q[i];
  g.Initializer("w_q", w);
  g.Initializer("w_scale", Tensor::FromVector<float>({2}, {0.5f, 0.25f}));
  auto& dq = g.Node("DequantizeLinear", {"w_q", "w_scale"}, {"w"});
  IntAttr(dq, "axis", 0);
  g.Node("Mul", {"x", "w"}, {"y"});
  g.Output("y");
  auto executor = MustCreate(g.model());
  ASSERT_TRUE(executor);
  auto out = executor->Run({{"x", Tensor::FromVector<float>({1, 3}, {1, 1, 1})}});
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_EQ(Values(out->at("y")), (std::vector<float>{-4, 0, 3.5f, 0.25f, -0.25f, 0.5f}));
}

TEST(ExecutorTest, QuantizeLinearRoundsHalfToEvenAndSaturates) {
  GraphBuilder g(13);
  g.Input("x", DataType::kFloat, {6});
  g.Initializer("s", Tensor::Scalar<float>(1.0f));
  g.Initializer("z", Tensor::Scalar<int8_t>(1));
  g.Node("QuantizeLinear", {"x", "s", "z"}, {"y"});
  g.Output("y", DataType::kInt8);
  auto executor = MustCreate(g.model());
  ASSERT_TRUE(executor);
  auto out = executor->Run({{"x", Tensor::FromVector<float>({6}, {0.5f, 1.5f, -2.5f, 300.0f, -300.0f, 2.4f})}});
  ASSERT_TRUE(out.ok()) << out.status().message();
  const int8_t* y = out->at("y").data<int8_t>();
  EXPECT_EQ(std::vector<int>(y, y + 6), (std::vector<int>{1, 3, -1, 127, -128, 3}));
}

// ------------------------------------------------------------------ fusion

// x -> Conv(3x3, pad 1) -> c1 -> act -> a1 -> Conv -> c2 -> Clip(0, 6) -> y,
// plus a Conv whose output is both a graph output and activated.
ModelProto ConvActivationChain(const std::string& first_activation) {
  GraphBuilder g(13);
  g.Input("x", DataType::kFloat, {2, 3, 8, 8});
  g.Initializer("w1", RandomFloats({4, 3, 3, 3}, 11));
  g.Initializer("b1", RandomFloats({4}, 12));
  g.Initializer("w2", RandomFloats({5, 4, 1, 1}, 13));
  g.Initializer("lo", Tensor::Scalar<float>(0.0f));
  g.Initializer("hi", Tensor::Scalar<float>(6.0f));
  auto& conv1 = g.Node("Conv", {"x", "w1", "b1"}, {"c1"}, "conv1");
  IntsAttr(conv1, "pads", {1, 1, 1, 1});
  auto& act = g.Node(first_activation, {"c1"}, {"a1"}, "act1");
  if (first_activation == "LeakyRelu") {
    auto* alpha = act.add_attribute();
    alpha->set_name("alpha");
    alpha->set_type(onnx::AttributeProto::FLOAT);
    alpha->set_f(0.3f);
  }
  g.Node("Conv", {"a1", "w2"}, {"c2"}, "conv2");
  g.Node("Clip", {"c2", "lo", "hi"}, {"y"}, "clip2");
  g.Node("Conv", {"a1", "w2"}, {"c3"}, "conv3");
  g.Node("Relu", {"c3"}, {"r3"}, "relu3");
  g.Output("y").Output("c3").Output("r3");
  return g.model();
}

std::vector<std::string> OpTypes(const Executor& executor) {
  std::vector<std::string> ops;
  for (int index : executor.execution_order()) ops.push_back(executor.nodes()[static_cast<size_t>(index)].op_type());
  return ops;
}

TEST(ExecutorFusionTest, FusedConvActivationsMatchSeparateNodes) {
  for (const std::string activation : {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid"}) {
    SCOPED_TRACE(activation);
    const ModelProto model = ConvActivationChain(activation);
    auto plain = MustCreate(model);
    ExecutorOptions options;
    options.fuse_activations = true;
    auto fused = Executor::Create(model, options);
    ASSERT_TRUE(plain && fused.ok()) << fused.status().message();
    // conv3's output is a graph output, so only the other two pairs fuse.
    EXPECT_EQ(OpTypes(**fused), (std::vector<std::string>{"FusedConv", "FusedConv", "Conv", "Relu"}));
    const Tensor x = RandomFloats({2, 3, 8, 8}, 7);
    auto expected = plain->Run({{"x", x}});
    auto actual = (*fused)->Run({{"x", x}});
    ASSERT_TRUE(expected.ok() && actual.ok());
    for (const std::string name : {"y", "c3", "r3"}) {
      const auto want = Values(expected->at(name));
      const auto got = Values(actual->at(name));
      ASSERT_EQ(want.size(), got.size());
      for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-4f * (1.0f + std::fabs(want[i])));
    }
    // The clamp really ran: ReLU6 bounds hold and are reached.
    const auto y = Values(actual->at("y"));
    EXPECT_EQ(*std::min_element(y.begin(), y.end()), 0.0f);
  }
}

TEST(ExecutorFusionTest, KeptAndSharedTensorsAreNotFusedAway) {
  ModelProto model = ConvActivationChain("Relu");
  // A second reader of c1 makes the conv1 -> act1 pair unfusable.
  auto* extra = model.mutable_graph()->add_node();
  extra->set_op_type("Neg");
  extra->add_input("c1");
  extra->add_output("n1");
  auto* n1 = model.mutable_graph()->add_output();
  n1->set_name("n1");
  n1->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  ExecutorOptions options;
  options.fuse_activations = true;
  options.keep_unfused = {"c2"};
  auto executor = Executor::Create(model, options);
  ASSERT_TRUE(executor.ok()) << executor.status().message();
  const auto ops = OpTypes(**executor);
  EXPECT_EQ(std::count(ops.begin(), ops.end(), "FusedConv"), 0);

  // Without the fusion, a tap sees the pre-activation tensors.
  std::set<std::string> seen;
  RunOptions run;
  run.tap = [&](const NodeProto&, int, const std::string& name, const Tensor&) { seen.insert(name); };
  ASSERT_TRUE((*executor)->Run({{"x", RandomFloats({2, 3, 8, 8}, 3)}}, run).ok());
  EXPECT_TRUE(seen.count("c1") && seen.count("c2"));
}

}  // namespace
}  // namespace quantd::runtime
