// Per-channel weight quantization: the arithmetic, 4-bit packing, which
// weights qualify, how they are stored, and that the rewritten models are
// valid ONNX.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/shape_inference/implementation.h>

#include "worker/onnx/graph_view.h"
#include "worker/onnx/model_io.h"
#include "worker/onnx/tensor_util.h"
#include "worker/quant/quant_math.h"
#include "worker/quant/weight_quant.h"

namespace quantd {
namespace {

namespace fs = std::filesystem;
using ::onnx::AttributeProto;
using ::onnx::GraphProto;
using ::onnx::ModelProto;
using ::onnx::NodeProto;
using ::onnx::TensorProto;

// ---- reference arithmetic, written independently of quant_math ------------

struct Reference {
  std::vector<int> q;
  std::vector<float> scales;
};

// Symmetric per-channel quantization straight from the definition, using
// the C library's ties-to-even rounding.
Reference ReferenceQuantize(const std::vector<float>& w, const std::vector<int64_t>& dims, int axis,
                            int bits) {
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < axis; ++i) outer *= dims[i];
  for (size_t i = axis + 1; i < dims.size(); ++i) inner *= dims[i];
  const int64_t C = dims[axis];
  auto channel_of = [&](int64_t i) { return (i / inner) % C; };
  Reference r;
  r.scales.assign(C, 0);
  r.q.assign(w.size(), 0);
  if (bits == 1) {
    std::vector<double> sum(C, 0);
    for (size_t i = 0; i < w.size(); ++i) sum[channel_of(i)] += std::fabs(w[i]);
    for (int64_t c = 0; c < C; ++c) r.scales[c] = static_cast<float>(sum[c] / (outer * inner));
    for (size_t i = 0; i < w.size(); ++i) r.q[i] = std::signbit(w[i]) && w[i] != 0 ? -1 : 1;
    return r;
  }
  const int qmax = (1 << (bits - 1)) - 1;
  std::vector<float> mx(C, 0);
  for (size_t i = 0; i < w.size(); ++i) mx[channel_of(i)] = std::max(mx[channel_of(i)], std::fabs(w[i]));
  for (int64_t c = 0; c < C; ++c) r.scales[c] = mx[c] == 0 ? 1.0f : mx[c] / static_cast<float>(qmax);
  for (size_t i = 0; i < w.size(); ++i) {
    const double v = std::nearbyint(static_cast<double>(w[i]) / r.scales[channel_of(i)]);
    r.q[i] = static_cast<int>(std::min<double>(qmax, std::max<double>(-qmax, v)));
  }
  return r;
}

std::vector<float> RandomWeights(size_t n, uint32_t seed, float range = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-range, range);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// ---- model building -------------------------------------------------------

void AddInput(GraphProto* g, const std::string& name, const std::vector<int64_t>& dims,
              int32_t elem = onnx_type::kFloat) {
  auto* v = g->add_input();
  v->set_name(name);
  auto* tt = v->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(elem);
  for (int64_t d : dims) tt->mutable_shape()->add_dim()->set_dim_value(d);
}

void AddOutput(GraphProto* g, const std::string& name, int rank) {
  auto* v = g->add_output();
  v->set_name(name);
  auto* tt = v->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx_type::kFloat);
  tt->mutable_shape();
  for (int i = 0; i < rank; ++i) tt->mutable_shape()->add_dim();
}

NodeProto* AddNode(GraphProto* g, const std::string& op, const std::vector<std::string>& in,
                   const std::vector<std::string>& out, const std::string& name) {
  NodeProto* n = g->add_node();
  n->set_op_type(op);
  n->set_name(name);
  for (const auto& s : in) n->add_input(s);
  for (const auto& s : out) n->add_output(s);
  return n;
}

void AddInt(NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(AttributeProto::INT);
  a->set_i(v);
}
void AddInts(NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
}

void AddWeight(GraphProto* g, const std::string& name, const std::vector<int64_t>& dims,
               uint32_t seed) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  const auto w = RandomWeights(static_cast<size_t>(n), seed);
  *g->add_initializer() = MakeFloatTensor(name, dims, w);
}

ModelProto NewModel(int opset, int64_t ir = 8) {
  ModelProto m;
  m.set_ir_version(ir);
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(opset);
  m.mutable_graph()->set_name("g");
  return m;
}

// X[1,3,8,8] -> Conv(32 ch) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(20) -> Y
ModelProto ConvNet(int opset = 13, int conv_channels = 32) {
  ModelProto m = NewModel(opset);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "X", {1, 3, 8, 8});
  AddWeight(g, "conv_w", {conv_channels, 3, 3, 3}, 1);
  AddWeight(g, "conv_b", {conv_channels}, 2);
  AddWeight(g, "fc_w", {conv_channels, 20}, 3);
  AddWeight(g, "fc_b", {20}, 4);
  AddInts(AddNode(g, "Conv", {"X", "conv_w", "conv_b"}, {"c"}, "conv"), "pads", {1, 1, 1, 1});
  AddNode(g, "Relu", {"c"}, {"r"}, "relu");
  AddNode(g, "GlobalAveragePool", {"r"}, {"p"}, "pool");
  AddNode(g, "Flatten", {"p"}, {"f"}, "flatten");
  AddNode(g, "Gemm", {"f", "fc_w", "fc_b"}, {"Y"}, "fc");
  AddOutput(g, "Y", 2);
  return m;
}

// X[2,24] -> MatMul(W[24,40]) -> Y
ModelProto MatMulNet(int opset = 13) {
  ModelProto m = NewModel(opset);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "X", {2, 24});
  AddWeight(g, "W", {24, 40}, 7);
  AddNode(g, "MatMul", {"X", "W"}, {"Y"}, "mm");
  AddOutput(g, "Y", 2);
  return m;
}

const TensorProto* FindInit(const GraphProto& g, const std::string& name) {
  for (const auto& t : g.initializer()) {
    if (t.name() == name) return &t;
  }
  return nullptr;
}

const NodeProto* FindNode(const GraphProto& g, const std::string& name) {
  for (const auto& n : g.node()) {
    if (n.name() == name) return &n;
  }
  return nullptr;
}

int NodeIndex(const GraphProto& g, const std::string& name) {
  for (int i = 0; i < g.node_size(); ++i) {
    if (g.node(i).name() == name) return i;
  }
  return -1;
}

std::vector<float> Floats(const TensorProto& t) {
  auto v = ReadFloatTensor(t);
  EXPECT_TRUE(v.ok()) << v.status().message();
  return v.ok() ? *v : std::vector<float>{};
}

// Integer payload of a quantized initializer, widened.
std::vector<int> Ints(const TensorProto& t, int64_t count) {
  const std::string& raw = t.raw_data();
  std::vector<int> out;
  switch (t.data_type()) {
    case onnx_type::kInt4:
      for (int16_t v : UnpackInt4({reinterpret_cast<const uint8_t*>(raw.data()), raw.size()},
                                  static_cast<size_t>(count)))
        out.push_back(v);
      break;
    case onnx_type::kInt8:
      for (char c : raw) out.push_back(static_cast<int8_t>(c));
      break;
    case onnx_type::kInt16:
      for (size_t i = 0; i + 1 < raw.size(); i += 2) {
        int16_t v;
        std::memcpy(&v, raw.data() + i, 2);
        out.push_back(v);
      }
      break;
    case onnx_type::kInt32:
      for (size_t i = 0; i + 3 < raw.size(); i += 4) {
        int32_t v;
        std::memcpy(&v, raw.data() + i, 4);
        out.push_back(v);
      }
      break;
    default:
      ADD_FAILURE() << "unexpected type " << t.data_type();
  }
  return out;
}

std::vector<int64_t> Dims(const TensorProto& t) { return {t.dims().begin(), t.dims().end()}; }

// Validation by the ONNX library, for opsets it knows (≤ 17).
void ExpectOnnxValid(const ModelProto& m) {
  ModelProto copy = m;
  EXPECT_NO_THROW(onnx::checker::check_model(copy));
  EXPECT_NO_THROW(onnx::shape_inference::InferShapes(copy, onnx::OpSchemaRegistry::Instance(),
                                                     onnx::ShapeInferenceOptions(true, 1, false)));
}

// Structural checks that hold for any opset: names resolve, nodes are in
// topological order, every node's inputs exist before it.
void ExpectWellFormed(const ModelProto& m) {
  std::string bytes;
  ASSERT_TRUE(m.SerializeToString(&bytes));
  auto parsed = ParseModelBytes(bytes, ModelLimits{});
  EXPECT_TRUE(parsed.ok()) << parsed.status().message();
  auto order = GraphView(m.graph()).TopologicalOrder();
  ASSERT_TRUE(order.ok());
  for (int i = 0; i < static_cast<int>(order->size()); ++i) {
    EXPECT_EQ((*order)[i], i) << "graph is not topologically sorted";
  }
}

const SkippedWeight* FindSkip(const WeightQuantReport& r, const std::string& node) {
  for (const auto& s : r.skipped) {
    if (s.node_name == node) return &s;
  }
  return nullptr;
}

const QuantizedWeight* FindQuantized(const WeightQuantReport& r, const std::string& tensor) {
  for (const auto& q : r.quantized) {
    if (q.tensor_name == tensor) return &q;
  }
  return nullptr;
}

// ---- quant_math ------------------------------------------------------------

TEST(QuantMath, QuantMaxAndRounding) {
  EXPECT_EQ(QuantMax(1), 1);
  EXPECT_EQ(QuantMax(2), 1);
  EXPECT_EQ(QuantMax(4), 7);
  EXPECT_EQ(QuantMax(8), 127);
  EXPECT_EQ(QuantMax(16), 32767);
  EXPECT_EQ(RoundHalfToEven(0.5), 0);
  EXPECT_EQ(RoundHalfToEven(1.5), 2);
  EXPECT_EQ(RoundHalfToEven(2.5), 2);
  EXPECT_EQ(RoundHalfToEven(-0.5), 0);
  EXPECT_EQ(RoundHalfToEven(-1.5), -2);
  EXPECT_EQ(RoundHalfToEven(-2.5), -2);
  EXPECT_EQ(RoundHalfToEven(2.4999), 2);
  EXPECT_EQ(RoundHalfToEven(-2.5001), -3);
  EXPECT_EQ(RoundHalfToEven(7.0), 7);
}

TEST(QuantMath, MatchesReferenceForEveryBitWidthAndAxis) {
  const std::vector<int64_t> dims = {3, 4, 5};
  const auto w = RandomWeights(60, 11, 2.0f);
  for (int bits = 1; bits <= 16; ++bits) {
    for (int axis = 0; axis < 3; ++axis) {
      auto q = QuantizePerChannel(w, dims, axis, bits);
      ASSERT_TRUE(q.ok()) << q.status().message();
      const Reference ref = ReferenceQuantize(w, dims, axis, bits);
      ASSERT_EQ(q->scales.size(), ref.scales.size());
      for (size_t c = 0; c < ref.scales.size(); ++c) {
        EXPECT_FLOAT_EQ(q->scales[c], ref.scales[c]) << "bits " << bits << " axis " << axis;
      }
      ASSERT_EQ(q->values.size(), ref.q.size());
      for (size_t i = 0; i < ref.q.size(); ++i) {
        ASSERT_EQ(q->values[i], ref.q[i]) << "bits " << bits << " axis " << axis << " i " << i;
      }
    }
  }
}

TEST(QuantMath, HandWorkedExample) {
  // Channel 0 (axis 0): max 2.54 -> scale 0.02; 1.27/0.02 = 63.5 -> 64 (even),
  // -0.01/0.02 = -0.5 -> 0 (even). Channel 1: all zero -> scale 1, q 0.
  const std::vector<float> w = {2.54f, 1.27f, -0.01f, 0, 0, 0};
  auto q = QuantizePerChannel(w, std::vector<int64_t>{2, 3}, 0, 8);
  ASSERT_TRUE(q.ok());
  EXPECT_FLOAT_EQ(q->scales[0], 2.54f / 127);
  EXPECT_EQ(q->scales[1], 1.0f);
  EXPECT_EQ(q->values[0], 127);
  EXPECT_NEAR(q->values[1], 64, 0);
  EXPECT_EQ(q->values[2], 0);
  EXPECT_EQ((std::vector<int16_t>(q->values.begin() + 3, q->values.end())),
            (std::vector<int16_t>{0, 0, 0}));
}

TEST(QuantMath, BinaryWeights) {
  const std::vector<float> w = {0.5f, -1.5f, 0.0f, 0, 0, 0};
  auto q = QuantizePerChannel(w, std::vector<int64_t>{2, 3}, 0, 1);
  ASSERT_TRUE(q.ok());
  EXPECT_FLOAT_EQ(q->scales[0], (0.5f + 1.5f + 0.0f) / 3);
  EXPECT_EQ((std::vector<int16_t>(q->values.begin(), q->values.begin() + 3)),
            (std::vector<int16_t>{1, -1, 1}));
  EXPECT_GT(q->scales[1], 0.0f);  // all-zero channel still has a usable scale
  EXPECT_LT(q->scales[1], 1e-30f);
}

TEST(QuantMath, ErrorsAndMeasurement) {
  const std::vector<int64_t> dims = {8, 16};
  const auto w = RandomWeights(128, 5);
  EXPECT_EQ(QuantizePerChannel(w, dims, 0, 0).status().reason(), "QUANT_BITS_OUT_OF_RANGE");
  EXPECT_EQ(QuantizePerChannel(w, dims, 0, 17).status().reason(), "QUANT_BITS_OUT_OF_RANGE");
  EXPECT_EQ(QuantizePerChannel(w, dims, 2, 8).status().reason(), "QUANT_AXIS_OUT_OF_RANGE");
  EXPECT_EQ(QuantizePerChannel(w, std::vector<int64_t>{8, 15}, 0, 8).status().reason(),
            "QUANT_SIZE_MISMATCH");
  auto nan = w;
  nan[17] = std::nanf("");
  EXPECT_EQ(QuantizePerChannel(nan, dims, 0, 8).status().reason(), "WEIGHT_NOT_FINITE");

  auto q = QuantizePerChannel(w, dims, 1, 8);
  ASSERT_TRUE(q.ok());
  const ChannelLayout layout = *MakeChannelLayout(dims, 1);
  EXPECT_EQ(layout.outer, 8);
  EXPECT_EQ(layout.channels, 16);
  EXPECT_EQ(layout.inner, 1);
  const auto deq = DequantizePerChannel(q->values, q->scales, layout);
  double max_err = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    const float scale = q->scales[i % 16];
    EXPECT_LE(std::fabs(deq[i] - w[i]), scale / 2 + 1e-6f) << i;
    max_err = std::max(max_err, static_cast<double>(std::fabs(deq[i] - w[i])));
  }
  const QuantError e = MeasureQuantError(w, q->values, q->scales, layout);
  EXPECT_NEAR(e.max_abs_error, max_err, 1e-7);
  EXPECT_GT(e.cosine_similarity, 0.999);
  EXPECT_LE(e.cosine_similarity, 1.0 + 1e-12);
  // A sign flip is as far from the original as it gets.
  std::vector<int16_t> flipped = q->values;
  for (auto& v : flipped) v = static_cast<int16_t>(-v);
  EXPECT_LT(MeasureQuantError(w, flipped, q->scales, layout).cosine_similarity, -0.999);
}

TEST(QuantMath, Int4PackingNibbleOrder) {
  const std::vector<int16_t> v = {1, -2, 7, -8, 3};
  const auto packed = PackInt4(v);
  ASSERT_EQ(packed.size(), 3u);
  EXPECT_EQ(packed[0], 0xE1);  // first element in the low nibble
  EXPECT_EQ(packed[1], 0x87);
  EXPECT_EQ(packed[2], 0x03);  // odd count: high nibble left zero
  EXPECT_EQ(UnpackInt4(packed, 5), v);
}

TEST(QuantMath, Int4RoundTripAllPairs) {
  std::vector<int16_t> v;
  for (int a = -8; a <= 7; ++a) {
    for (int b = -8; b <= 7; ++b) {
      v.push_back(static_cast<int16_t>(a));
      v.push_back(static_cast<int16_t>(b));
    }
  }
  v.push_back(-5);
  const auto packed = PackInt4(v);
  EXPECT_EQ(packed.size(), (v.size() + 1) / 2);
  EXPECT_EQ(UnpackInt4(packed, v.size()), v);
}

// ---- QuantizeWeights: values ------------------------------------------------------

TEST(QuantizeWeights, ConvAndGemmInt8) {
  ModelProto m = ConvNet(13);
  const auto conv_w = Floats(*FindInit(m.graph(), "conv_w"));
  const auto fc_w = Floats(*FindInit(m.graph(), "fc_w"));
  auto report = QuantizeWeights(m, WeightQuantOptions{});
  ASSERT_TRUE(report.ok()) << report.status().message();
  EXPECT_EQ(report->input_opset, 13);
  EXPECT_EQ(report->output_opset, 13);
  EXPECT_EQ(report->storage_note, "");
  ASSERT_EQ(report->quantized.size(), 2u);
  const GraphProto& g = m.graph();

  // Conv: axis 0, 32 channels.
  const QuantizedWeight* qc = FindQuantized(*report, "conv_w");
  ASSERT_NE(qc, nullptr);
  EXPECT_EQ(qc->node_name, "conv");
  EXPECT_EQ(qc->node_type, "Conv");
  EXPECT_EQ(qc->axis, 0);
  EXPECT_EQ(qc->storage, WeightStorage::kInt8);
  EXPECT_EQ(qc->dims, (std::vector<int64_t>{32, 3, 3, 3}));
  EXPECT_EQ(qc->float_bytes, 32 * 27 * 4);
  EXPECT_EQ(qc->stored_bytes, 32 * 27 + 32 * 4 + 32);
  const Reference ref_c = ReferenceQuantize(conv_w, {32, 3, 3, 3}, 0, 8);
  const TensorProto* q = FindInit(g, "conv_w_quantized");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->data_type(), onnx_type::kInt8);
  EXPECT_EQ(Dims(*q), (std::vector<int64_t>{32, 3, 3, 3}));
  EXPECT_EQ(Ints(*q, 864), ref_c.q);
  const TensorProto* s = FindInit(g, "conv_w_scale");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(Dims(*s), std::vector<int64_t>{32});
  EXPECT_EQ(Floats(*s), ref_c.scales);
  EXPECT_EQ(qc->scales, ref_c.scales);
  const TensorProto* zp = FindInit(g, "conv_w_zero_point");
  ASSERT_NE(zp, nullptr);
  EXPECT_EQ(zp->data_type(), onnx_type::kInt8);
  EXPECT_EQ(Ints(*zp, 32), std::vector<int>(32, 0));
  float worst = 0;
  for (float sc : ref_c.scales) worst = std::max(worst, sc);
  EXPECT_LE(qc->max_abs_error, worst / 2 + 1e-6);
  EXPECT_GT(qc->cosine_similarity, 0.999);

  // Gemm with transB = 0: B is [K, N], channels on axis 1.
  const QuantizedWeight* qf = FindQuantized(*report, "fc_w");
  ASSERT_NE(qf, nullptr);
  EXPECT_EQ(qf->axis, 1);
  EXPECT_EQ(qf->scales.size(), 20u);
  EXPECT_EQ(Ints(*FindInit(g, "fc_w_quantized"), 640), ReferenceQuantize(fc_w, {32, 20}, 1, 8).q);

  // Graph shape: DQ right before its reader, readers rewired, floats gone.
  const int dq = NodeIndex(g, "conv_w_DequantizeLinear");
  ASSERT_GE(dq, 0);
  EXPECT_EQ(dq + 1, NodeIndex(g, "conv"));
  const NodeProto& dq_node = g.node(dq);
  EXPECT_EQ(dq_node.op_type(), "DequantizeLinear");
  EXPECT_EQ(dq_node.input(0), "conv_w_quantized");
  EXPECT_EQ(dq_node.input(1), "conv_w_scale");
  EXPECT_EQ(dq_node.input(2), "conv_w_zero_point");
  EXPECT_EQ(dq_node.attribute(0).name(), "axis");
  EXPECT_EQ(dq_node.attribute(0).i(), 0);
  EXPECT_EQ(FindNode(g, "conv")->input(1), "conv_w_dequantized");
  EXPECT_EQ(FindNode(g, "fc")->input(1), "fc_w_dequantized");
  EXPECT_EQ(FindInit(g, "conv_w"), nullptr);
  EXPECT_EQ(FindInit(g, "fc_w"), nullptr);
  // Biases are not weights and stay float.
  ASSERT_NE(FindInit(g, "conv_b"), nullptr);
  EXPECT_EQ(FindInit(g, "conv_b")->data_type(), onnx_type::kFloat);
  ExpectWellFormed(m);
  ExpectOnnxValid(m);
}

TEST(QuantizeWeights, GemmTransposedAndConvTranspose) {
  ModelProto m = NewModel(13);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "X", {1, 4, 5, 5});
  AddInput(g, "V", {2, 24});
  AddWeight(g, "ct_w", {4, 18, 3, 3}, 21);  // [C_in, C_out/group, kH, kW]
  AddWeight(g, "gt_w", {30, 24}, 22);       // transB = 1: [N, K]
  AddNode(g, "ConvTranspose", {"X", "ct_w"}, {"Y"}, "deconv");
  AddInt(AddNode(g, "Gemm", {"V", "gt_w"}, {"Z"}, "gemm_t"), "transB", 1);
  AddOutput(g, "Y", 4);
  AddOutput(g, "Z", 2);
  auto report = QuantizeWeights(m, WeightQuantOptions{});
  ASSERT_TRUE(report.ok()) << report.status().message();
  ASSERT_EQ(report->quantized.size(), 2u);
  EXPECT_EQ(FindQuantized(*report, "ct_w")->axis, 1);
  EXPECT_EQ(FindQuantized(*report, "ct_w")->scales.size(), 18u);
  EXPECT_EQ(FindQuantized(*report, "gt_w")->axis, 0);
  EXPECT_EQ(FindQuantized(*report, "gt_w")->scales.size(), 30u);
  ExpectWellFormed(m);
  ExpectOnnxValid(m);
}

// ---- QuantizeWeights: skip rules ----------------------------------------------------

TEST(QuantizeWeights, ChannelThreshold) {
  ModelProto m = ConvNet(13, /*conv_channels=*/10);
  auto r = QuantizeWeights(m, WeightQuantOptions{});
  ASSERT_TRUE(r.ok());
  const SkippedWeight* s = FindSkip(*r, "conv");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->node_type, "Conv");
  EXPECT_EQ(s->tensor_name, "conv_w");
  EXPECT_EQ(s->reason, "10 output channels ≤ min_quant_weight_channel 16");
  EXPECT_NE(FindInit(m.graph(), "conv_w"), nullptr);
  EXPECT_NE(FindQuantized(*r, "fc_w"), nullptr);  // 20 > 16

  // "Greater than": 16 channels with threshold 16 stays float, 17 does not.
  for (int64_t channels : {16, 17}) {
    ModelProto mm = NewModel(13);
    GraphProto* g = mm.mutable_graph();
    AddInput(g, "X", {1, 8});
    AddWeight(g, "W", {8, channels}, 3);
    AddNode(g, "MatMul", {"X", "W"}, {"Y"}, "mm");
    AddOutput(g, "Y", 2);
    auto rr = QuantizeWeights(mm, WeightQuantOptions{});
    ASSERT_TRUE(rr.ok());
    EXPECT_EQ(rr->quantized.size(), channels == 17 ? 1u : 0u) << channels;
  }
}

TEST(QuantizeWeights, SizeThreshold) {
  WeightQuantOptions opts;
  opts.min_quant_weight_size = 24 * 40;  // exactly W's size: not greater
  ModelProto m = MatMulNet();
  auto r = QuantizeWeights(m, opts);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->skipped.size(), 1u);
  EXPECT_EQ(r->skipped[0].reason, "960 elements ≤ min_quant_weight_size 960");
  EXPECT_TRUE(r->quantized.empty());
  opts.min_quant_weight_size = 959;
  ModelProto m2 = MatMulNet();
  auto r2 = QuantizeWeights(m2, opts);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->quantized.size(), 1u);
}

TEST(QuantizeWeights, SkipListNonConstantAndDtype) {
  ModelProto m = NewModel(13);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "X", {2, 24});
  AddInput(g, "runtime_w", {24, 40});
  AddWeight(g, "W", {24, 40}, 1);
  *g->add_initializer() =
      MakeRawTensor("W16", onnx_type::kFloat16, std::vector<int64_t>{24, 40}, std::string(24 * 40 * 2, '\0'));
  *g->add_initializer() = MakeFloatTensor("v", std::vector<int64_t>{24}, RandomWeights(24, 3));
  AddNode(g, "MatMul", {"X", "W"}, {"a"}, "skipped_by_name");
  AddNode(g, "MatMul", {"X", "runtime_w"}, {"b"}, "dynamic");
  AddNode(g, "Cast", {"X"}, {"X16"}, "cast");
  AddInt(g->mutable_node(2), "to", onnx_type::kFloat16);
  AddNode(g, "MatMul", {"X16", "W16"}, {"c"}, "half");
  AddNode(g, "MatMul", {"X", "v"}, {"d"}, "vector");
  AddNode(g, "MatMul", {"W", "X"}, {"e"}, "weight_first");  // W as input 0 is not a weight
  for (const char* o : {"a", "b", "c", "e"}) AddOutput(g, o, 2);
  AddOutput(g, "d", 1);
  g->mutable_output(2)->mutable_type()->mutable_tensor_type()->set_elem_type(onnx_type::kFloat16);

  WeightQuantOptions opts;
  opts.skip_quant_node = {"skipped_by_name"};
  auto r = QuantizeWeights(m, opts);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->quantized.empty());
  EXPECT_EQ(FindSkip(*r, "skipped_by_name")->reason, "in skip_quant_node");
  EXPECT_EQ(FindSkip(*r, "dynamic")->reason, "weight is not a constant initializer");
  EXPECT_EQ(FindSkip(*r, "half")->reason, "weight dtype is FLOAT16, only FLOAT is quantized");
  EXPECT_EQ(FindSkip(*r, "vector")->reason,
            "weight has rank 1, per-channel quantization needs rank ≥ 2");
  EXPECT_EQ(FindSkip(*r, "weight_first")->reason, "weight is not a constant initializer");
  EXPECT_EQ(FindSkip(*r, "cast"), nullptr);  // not a weight-carrying op
  EXPECT_EQ(r->skipped.size(), 5u);
  EXPECT_NE(FindInit(m.graph(), "W"), nullptr);
}

TEST(QuantizeWeights, NothingToDoLeavesModelAlone) {
  ModelProto m = ConvNet(11, 8);  // 8 conv channels; fc has 20 but is skipped by name
  WeightQuantOptions opts;
  opts.skip_quant_node = {"fc"};
  std::string before;
  ASSERT_TRUE(m.SerializeToString(&before));
  auto r = QuantizeWeights(m, opts);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->output_opset, 11);
  std::string after;
  ASSERT_TRUE(m.SerializeToString(&after));
  EXPECT_EQ(after, before);
}

TEST(QuantizeWeights, RejectsBadBits) {
  ModelProto m = MatMulNet();
  WeightQuantOptions opts;
  opts.bits = -1;
  EXPECT_EQ(QuantizeWeights(m, opts).status().reason(), "QUANT_BITS_OUT_OF_RANGE");
  opts.bits = 0;  // mixed bits need an init_scale in (0, 1)
  opts.mixed_bit_init_scale = 1;
  EXPECT_EQ(QuantizeWeights(m, opts).status().reason(), "QUANT_BITS_OUT_OF_RANGE");
  opts.bits = 17;
  EXPECT_EQ(QuantizeWeights(m, opts).status().reason(), "QUANT_BITS_OUT_OF_RANGE");
}

TEST(QuantizeWeights, NonFiniteWeightIsSkipped) {
  ModelProto m = MatMulNet();
  auto* w = m.mutable_graph()->mutable_initializer(0);
  float inf = INFINITY;
  std::memcpy(w->mutable_raw_data()->data() + 8, &inf, 4);
  auto r = QuantizeWeights(m, WeightQuantOptions{});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->quantized.empty());
  ASSERT_NE(FindSkip(*r, "mm"), nullptr);
  EXPECT_EQ(FindSkip(*r, "mm")->reason, "weight contains NaN or infinity");
  EXPECT_EQ(FindNode(m.graph(), "mm")->input(1), "W");
}

// ---- QuantizeWeights: storage -----------------------------------------------------

TEST(QuantizeWeights, StoragePerBitWidth) {
  struct Case {
    int bits;
    int32_t type;
    WeightStorage storage;
    int opset;
  };
  for (const Case& c : {Case{1, onnx_type::kInt4, WeightStorage::kInt4Packed, 21},
                        Case{2, onnx_type::kInt4, WeightStorage::kInt4Packed, 21},
                        Case{4, onnx_type::kInt4, WeightStorage::kInt4Packed, 21},
                        Case{5, onnx_type::kInt8, WeightStorage::kInt8, 13},
                        Case{8, onnx_type::kInt8, WeightStorage::kInt8, 13},
                        Case{9, onnx_type::kInt16, WeightStorage::kInt16, 21},
                        Case{16, onnx_type::kInt16, WeightStorage::kInt16, 21}}) {
    SCOPED_TRACE("bits " + std::to_string(c.bits));
    ModelProto m = MatMulNet(13);
    const auto w = Floats(m.graph().initializer(0));
    WeightQuantOptions opts;
    opts.bits = c.bits;
    auto r = QuantizeWeights(m, opts);
    ASSERT_TRUE(r.ok()) << r.status().message();
    ASSERT_EQ(r->quantized.size(), 1u);
    EXPECT_EQ(r->quantized[0].storage, c.storage);
    EXPECT_EQ(r->quantized[0].bits, c.bits);
    EXPECT_EQ(r->output_opset, c.opset);
    EXPECT_EQ(DefaultOpset(m), c.opset);
    EXPECT_EQ(r->storage_note, "");
    if (c.opset == 21) {
      EXPECT_GE(m.ir_version(), 10);
    }
    const TensorProto* q = FindInit(m.graph(), "W_quantized");
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(q->data_type(), c.type);
    const int64_t bytes_per = c.type == onnx_type::kInt16 ? 2 : 1;
    const int64_t payload = c.type == onnx_type::kInt4 ? 480 : 960 * bytes_per;
    EXPECT_EQ(static_cast<int64_t>(q->raw_data().size()), payload);
    EXPECT_EQ(Ints(*q, 960), ReferenceQuantize(w, {24, 40}, 1, c.bits).q);
    const TensorProto* zp = FindInit(m.graph(), "W_zero_point");
    ASSERT_NE(zp, nullptr);
    EXPECT_EQ(zp->data_type(), c.type);
    EXPECT_EQ(Ints(*zp, 40), std::vector<int>(40, 0));
    if (c.bits == 1) {
      for (int v : Ints(*q, 960)) EXPECT_TRUE(v == 1 || v == -1) << v;
    }
    ExpectWellFormed(m);
    if (c.opset == 13) {
      ExpectOnnxValid(m);
    }
  }
}

// Opset 13 with a training-mode BatchNormalization cannot go to 21, so wide
// and narrow bit widths fall back to containers opset 13 has.
ModelProto StuckAt13() {
  ModelProto m = MatMulNet(13);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "I", {1, 2, 2, 2});
  for (const char* n : {"sc", "bi", "mu", "va"}) AddWeight(g, n, {2}, 9);
  AddNode(g, "BatchNormalization", {"I", "sc", "bi", "mu", "va"}, {"J", "rm", "rv", "sm", "sv"}, "bn");
  AddOutput(g, "J", 4);
  return m;
}

TEST(QuantizeWeights, FallbackWhenOpset21Refused) {
  {
    ModelProto m = StuckAt13();
    const auto w = Floats(*FindInit(m.graph(), "W"));
    WeightQuantOptions opts;
    opts.bits = 4;
    auto r = QuantizeWeights(m, opts);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->output_opset, 13);
    EXPECT_EQ(r->quantized[0].storage, WeightStorage::kInt8);
    EXPECT_EQ(r->storage_note.rfind("kept opset 13: ", 0), 0u) << r->storage_note;
    EXPECT_NE(r->storage_note.find("BatchNormalization"), std::string::npos);
    const std::string tail = "; 4-bit weights stored in INT8 containers";
    ASSERT_GE(r->storage_note.size(), tail.size());
    EXPECT_EQ(r->storage_note.substr(r->storage_note.size() - tail.size()), tail);
    const TensorProto* q = FindInit(m.graph(), "W_quantized");
    EXPECT_EQ(q->data_type(), onnx_type::kInt8);
    const auto values = Ints(*q, 960);
    EXPECT_EQ(values, ReferenceQuantize(w, {24, 40}, 1, 4).q);
    for (int v : values) EXPECT_LE(std::abs(v), 7);  // still 4-bit values
    ExpectOnnxValid(m);
  }
  {
    ModelProto m = StuckAt13();
    WeightQuantOptions opts;
    opts.bits = 12;
    auto r = QuantizeWeights(m, opts);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->quantized[0].storage, WeightStorage::kInt32);
    EXPECT_NE(r->storage_note.find("12-bit weights stored in INT32 containers"), std::string::npos);
    const TensorProto* q = FindInit(m.graph(), "W_quantized");
    EXPECT_EQ(q->data_type(), onnx_type::kInt32);
    for (int v : Ints(*q, 960)) EXPECT_LE(std::abs(v), 2047);
    // int32 DequantizeLinear takes no zero point.
    EXPECT_EQ(FindInit(m.graph(), "W_zero_point"), nullptr);
    EXPECT_EQ(FindNode(m.graph(), "W_DequantizeLinear")->input_size(), 2);
    ExpectOnnxValid(m);
  }
}

// ---- QuantizeWeights: mixed bits ---------------------------------------------------

// X[1,24] -> MatMul(A[24,40]) -> MatMul(B[40,40]) -> Y. A holds integers in
// -1..1 (exact at 2 bits, so INT4 under any budget); every column of B is
// [127, 1, 0, ...], which only 8 bits keep exact (e(2..7) = 1/sqrt(127^2+1)).
ModelProto MixedNet() {
  ModelProto m = NewModel(13);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "X", {1, 24});
  std::vector<float> a(24 * 40), b(40 * 40, 0.0f);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(static_cast<int>(i % 3) - 1);
  for (int col = 0; col < 40; ++col) {
    b[col] = 127;
    b[40 + col] = 1;
  }
  *g->add_initializer() = MakeFloatTensor("A", std::vector<int64_t>{24, 40}, a);
  *g->add_initializer() = MakeFloatTensor("B", std::vector<int64_t>{40, 40}, b);
  AddNode(g, "MatMul", {"X", "A"}, {"H"}, "mm_a");
  AddNode(g, "MatMul", {"H", "B"}, {"Y"}, "mm_b");
  AddOutput(g, "Y", 2);
  return m;
}

TEST(QuantizeWeights, MixedBitsStoreInt4AndInt8InOneModel) {
  ModelProto m = MixedNet();
  WeightQuantOptions opts;
  opts.bits = 0;
  opts.mixed_bit_init_scale = 0.005;  // below B's 7-bit error 0.00787
  auto r = QuantizeWeights(m, opts);
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_EQ(r->quantized.size(), 2u);
  const QuantizedWeight* a = FindQuantized(*r, "A");
  const QuantizedWeight* b = FindQuantized(*r, "B");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->searched_bits, 2);
  EXPECT_EQ(a->bits, 4);  // the container's width: same bytes, more accurate
  EXPECT_EQ(a->storage, WeightStorage::kInt4Packed);
  EXPECT_EQ(b->searched_bits, 8);
  EXPECT_EQ(b->bits, 8);
  EXPECT_EQ(b->storage, WeightStorage::kInt8);
  EXPECT_TRUE(a->budget_met && b->budget_met);
  EXPECT_EQ(a->relative_error_by_bits.size(), 7u);
  EXPECT_NEAR(b->relative_error_by_bits[7 - 2], 1 / std::sqrt(127.0 * 127 + 1), 1e-6);
  EXPECT_NEAR(b->relative_error, 0.0, 1e-6);
  EXPECT_EQ(r->output_opset, 21);
  EXPECT_GE(m.ir_version(), 10);
  EXPECT_EQ(r->storage_note, "");
  const TensorProto* qa = FindInit(m.graph(), "A_quantized");
  const TensorProto* qb = FindInit(m.graph(), "B_quantized");
  ASSERT_NE(qa, nullptr);
  ASSERT_NE(qb, nullptr);
  EXPECT_EQ(qa->data_type(), onnx_type::kInt4);
  EXPECT_EQ(qa->raw_data().size(), 480u);
  EXPECT_EQ(qb->data_type(), onnx_type::kInt8);
  EXPECT_EQ(FindInit(m.graph(), "A_zero_point")->data_type(), onnx_type::kInt4);
  EXPECT_EQ(FindInit(m.graph(), "B_zero_point")->data_type(), onnx_type::kInt8);
  EXPECT_EQ(Ints(*qb, 1600)[40], 1);  // the 1 below each 127 survives
  ExpectWellFormed(m);

  // A budget above B's narrow-width error moves B to INT4 too.
  ModelProto loose = MixedNet();
  opts.mixed_bit_init_scale = 0.01;
  auto r2 = QuantizeWeights(loose, opts);
  ASSERT_TRUE(r2.ok()) << r2.status().message();
  EXPECT_EQ(FindQuantized(*r2, "B")->searched_bits, 2);
  EXPECT_EQ(FindQuantized(*r2, "B")->storage, WeightStorage::kInt4Packed);
}

TEST(QuantizeWeights, MixedBitsReportSearchAndWritingAsProgress) {
  ModelProto m = MixedNet();
  WeightQuantOptions opts;
  opts.bits = 0;
  std::vector<std::pair<size_t, size_t>> calls;
  opts.on_progress = [&](size_t done, size_t total) {
    calls.emplace_back(done, total);
    return true;
  };
  ASSERT_TRUE(QuantizeWeights(m, opts).ok());
  EXPECT_EQ(calls, (std::vector<std::pair<size_t, size_t>>{{0, 4}, {1, 4}, {2, 4}, {3, 4}}));

  ModelProto stopped = MixedNet();
  opts.on_progress = [](size_t, size_t) { return false; };
  EXPECT_EQ(QuantizeWeights(stopped, opts).status().code(), StatusCode::kCancelled);
}

TEST(QuantizeWeights, MixedBitsFallBackToInt8WhenOpset21Refused) {
  ModelProto m = StuckAt13();
  WeightQuantOptions opts;
  opts.bits = 0;
  opts.mixed_bit_init_scale = 0.9;  // 2 bits would do
  auto r = QuantizeWeights(m, opts);
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_EQ(r->quantized.size(), 1u);
  EXPECT_EQ(r->output_opset, 13);
  EXPECT_EQ(r->quantized[0].storage, WeightStorage::kInt8);
  EXPECT_EQ(r->quantized[0].searched_bits, 2);
  EXPECT_EQ(r->quantized[0].bits, 8);  // an INT8 container holds 8 bits at no extra cost
  EXPECT_NE(r->storage_note.find("mixed-bit weights stored as 8 bits in INT8 containers"), std::string::npos)
      << r->storage_note;
  ExpectOnnxValid(m);
}

// ---- QuantizeWeights: opset handling ------------------------------------------------

// Opset 11: X[2,1,24] -> Squeeze(axes=[1]) -> MatMul(W) -> Softmax(axis=1, last of rank 2)
ModelProto Opset11Net(int64_t softmax_axis = 1) {
  ModelProto m = NewModel(11, 6);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "X", {2, 1, 24});
  AddWeight(g, "W", {24, 40}, 4);
  AddInts(AddNode(g, "Squeeze", {"X"}, {"s"}, "squeeze"), "axes", {1});
  AddNode(g, "MatMul", {"s", "W"}, {"mm"}, "matmul");
  AddInt(AddNode(g, "Softmax", {"mm"}, {"Y"}, "softmax"), "axis", softmax_axis);
  AddOutput(g, "Y", 2);
  return m;
}

TEST(QuantizeWeights, UpgradesOldOpsetTo13) {
  ModelProto m = Opset11Net();
  auto r = QuantizeWeights(m, WeightQuantOptions{});
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->input_opset, 11);
  EXPECT_EQ(r->output_opset, 13);
  EXPECT_GE(m.ir_version(), 7);
  EXPECT_EQ(FindNode(m.graph(), "squeeze")->input_size(), 2);
  ExpectWellFormed(m);
  ExpectOnnxValid(m);
}

TEST(QuantizeWeights, OldOpsetThatCannotBeUpgradedFails) {
  ModelProto m = Opset11Net(0);  // axis 0 of rank 2: old and new Softmax differ
  auto r = QuantizeWeights(m, WeightQuantOptions{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().reason(), "MODEL_OPSET_UPGRADE_UNSUPPORTED");
  EXPECT_NE(r.status().message().find("'softmax'"), std::string::npos);
  EXPECT_NE(FindInit(m.graph(), "W"), nullptr);
}

TEST(QuantizeWeights, Opset11To21For4Bit) {
  ModelProto m = Opset11Net();
  WeightQuantOptions opts;
  opts.bits = 4;
  auto r = QuantizeWeights(m, opts);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->output_opset, 21);
  EXPECT_EQ(m.ir_version(), 10);
  EXPECT_EQ(FindInit(m.graph(), "W_quantized")->data_type(), onnx_type::kInt4);
  ExpectWellFormed(m);
}

// ---- QuantizeWeights: graph surgery -------------------------------------------------

TEST(QuantizeWeights, SharedWeightQuantizedOnce) {
  ModelProto m = NewModel(13);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "X", {2, 24});
  AddWeight(g, "W", {24, 40}, 8);
  AddNode(g, "Relu", {"X"}, {"x1"}, "relu");
  AddNode(g, "MatMul", {"x1", "W"}, {"a"}, "mm1");
  AddNode(g, "MatMul", {"X", "W"}, {"b"}, "mm2");
  AddNode(g, "Add", {"a", "b"}, {"Y"}, "add");
  AddOutput(g, "Y", 2);
  auto r = QuantizeWeights(m, WeightQuantOptions{});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->quantized.size(), 1u);
  EXPECT_EQ(r->quantized[0].node_name, "mm1");
  int dq_count = 0;
  for (const auto& n : m.graph().node()) dq_count += n.op_type() == "DequantizeLinear";
  EXPECT_EQ(dq_count, 1);
  EXPECT_EQ(FindNode(m.graph(), "mm1")->input(1), "W_dequantized");
  EXPECT_EQ(FindNode(m.graph(), "mm2")->input(1), "W_dequantized");
  EXPECT_LT(NodeIndex(m.graph(), "W_DequantizeLinear"), NodeIndex(m.graph(), "mm1"));
  EXPECT_EQ(FindInit(m.graph(), "W"), nullptr);
  ExpectWellFormed(m);
  ExpectOnnxValid(m);
}

TEST(QuantizeWeights, SharedWeightWithDifferentAxes) {
  // MatMul wants W[24,40] along axis 1, Gemm(transB=1) along axis 0.
  ModelProto m = NewModel(13);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "X", {2, 24});
  AddInput(g, "V", {2, 40});
  AddWeight(g, "W", {24, 40}, 8);
  AddNode(g, "MatMul", {"X", "W"}, {"a"}, "mm");
  AddInt(AddNode(g, "Gemm", {"V", "W"}, {"b"}, "gemm"), "transB", 1);
  AddOutput(g, "a", 2);
  AddOutput(g, "b", 2);
  auto r = QuantizeWeights(m, WeightQuantOptions{});
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->quantized.size(), 1u);
  EXPECT_EQ(r->quantized[0].axis, 1);
  const SkippedWeight* s = FindSkip(*r, "gemm");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->reason,
            "weight is shared with node 'mm', which quantizes it along axis 1; this node needs "
            "axis 0");
  // The float original stays for the Gemm.
  EXPECT_NE(FindInit(m.graph(), "W"), nullptr);
  EXPECT_EQ(FindNode(m.graph(), "gemm")->input(1), "W");
  ExpectWellFormed(m);
  ExpectOnnxValid(m);
}

TEST(QuantizeWeights, OtherReadersKeepTheFloatWeight) {
  ModelProto m = MatMulNet();
  GraphProto* g = m.mutable_graph();
  AddNode(g, "ReduceSum", {"W"}, {"wsum"}, "wsum");
  AddOutput(g, "wsum", 2);
  auto r = QuantizeWeights(m, WeightQuantOptions{});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->quantized.size(), 1u);
  EXPECT_NE(FindInit(m.graph(), "W"), nullptr);
  EXPECT_EQ(FindNode(m.graph(), "wsum")->input(0), "W");
  EXPECT_EQ(FindNode(m.graph(), "mm")->input(1), "W_dequantized");
  ExpectOnnxValid(m);
}

TEST(QuantizeWeights, InitializerListedAsGraphInput) {
  ModelProto m = ConvNet(11);
  m.set_ir_version(3);  // IR 3 lists every initializer among the inputs
  GraphProto* g = m.mutable_graph();
  for (const auto& t : std::vector<TensorProto>(g->initializer().begin(), g->initializer().end())) {
    AddInput(g, t.name(), Dims(t));
  }
  auto r = QuantizeWeights(m, WeightQuantOptions{});
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->quantized.size(), 2u);
  std::set<std::string> inputs;
  for (const auto& v : m.graph().input()) inputs.insert(v.name());
  EXPECT_EQ(inputs, (std::set<std::string>{"X", "conv_b", "fc_b"}));
  EXPECT_GE(m.ir_version(), 7);
  ExpectWellFormed(m);
  ExpectOnnxValid(m);
}

TEST(QuantizeWeights, NameCollisionsAreAvoided) {
  ModelProto m = MatMulNet();
  // A tensor already called W_quantized must not be overwritten.
  *m.mutable_graph()->add_initializer() =
      MakeFloatTensor("W_quantized", std::vector<int64_t>{1}, std::vector<float>{3.0f});
  AddNode(m.mutable_graph(), "Identity", {"W_quantized"}, {"keep"}, "keep");
  AddOutput(m.mutable_graph(), "keep", 1);
  auto r = QuantizeWeights(m, WeightQuantOptions{});
  ASSERT_TRUE(r.ok());
  const NodeProto* dq = FindNode(m.graph(), "W_DequantizeLinear");
  ASSERT_NE(dq, nullptr);
  EXPECT_EQ(dq->input(0), "W_quantized_1");
  EXPECT_EQ(FindInit(m.graph(), "W_quantized")->data_type(), onnx_type::kFloat);
  ExpectWellFormed(m);
  ExpectOnnxValid(m);
}

class SaveReload : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "quantd-wq-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  fs::path dir_;
};

TEST_F(SaveReload, QuantizedModelRoundTripsAndChecks) {
  ModelProto m = ConvNet(13);
  auto r = QuantizeWeights(m, WeightQuantOptions{});
  ASSERT_TRUE(r.ok());
  const fs::path file = dir_ / "q.onnx";
  ASSERT_TRUE(SaveModel(m, file).ok());
  auto back = LoadModel(file, ModelLimits{});
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->graph().node_size(), 7);
  EXPECT_NO_THROW(onnx::checker::check_model(file.string()));
  ExpectOnnxValid(*back);
}

TEST_F(SaveReload, Int4ModelRoundTrips) {
  ModelProto m = ConvNet(13);
  WeightQuantOptions opts;
  opts.bits = 3;
  auto r = QuantizeWeights(m, opts);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->output_opset, 21);
  const fs::path file = dir_ / "q4.onnx";
  ASSERT_TRUE(SaveModel(m, file).ok());
  auto back = LoadModel(file, ModelLimits{});
  ASSERT_TRUE(back.ok()) << back.status().message();
  const TensorProto* q = FindInit(back->graph(), "conv_w_quantized");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->data_type(), onnx_type::kInt4);
  EXPECT_EQ(q->raw_data().size(), 432u);
  for (int v : Ints(*q, 864)) EXPECT_LE(std::abs(v), 3);
}

}  // namespace
}  // namespace quantd
