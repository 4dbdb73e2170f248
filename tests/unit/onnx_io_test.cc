// Model loading, validation, external data, saving, graph lookups and opset
// upgrades, on small models built here with the protobuf API.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/shape_inference/implementation.h>

#include "worker/onnx/graph_view.h"
#include "worker/onnx/model_io.h"
#include "worker/onnx/opset_upgrade.h"
#include "worker/onnx/tensor_util.h"

namespace quantd {
namespace {

namespace fs = std::filesystem;
using ::onnx::AttributeProto;
using ::onnx::GraphProto;
using ::onnx::ModelProto;
using ::onnx::NodeProto;
using ::onnx::TensorProto;
using ::onnx::ValueInfoProto;

// ---- model building -------------------------------------------------------

void SetTensorType(ValueInfoProto* v, int32_t elem, const std::vector<int64_t>& dims) {
  auto* tt = v->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(elem);
  auto* shape = tt->mutable_shape();
  for (int64_t d : dims) shape->add_dim()->set_dim_value(d);
}

void AddInput(GraphProto* g, const std::string& name, const std::vector<int64_t>& dims,
              int32_t elem = onnx_type::kFloat) {
  SetTensorType(g->add_input(), elem, dims);
  g->mutable_input(g->input_size() - 1)->set_name(name);
}

// The ONNX checker wants a shape on graph outputs; `rank` unknown dims do.
void AddOutput(GraphProto* g, const std::string& name, int rank = -1) {
  auto* v = g->add_output();
  v->set_name(name);
  auto* tt = v->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx_type::kFloat);
  for (int i = 0; i < rank; ++i) tt->mutable_shape()->add_dim();
  if (rank == 0) tt->mutable_shape();
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

void AddInts(NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
}
void AddInt(NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(AttributeProto::INT);
  a->set_i(v);
}
void AddFloat(NodeProto* n, const std::string& name, float v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(AttributeProto::FLOAT);
  a->set_f(v);
}
void AddString(NodeProto* n, const std::string& name, const std::string& v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(AttributeProto::STRING);
  a->set_s(v);
}

TensorProto* AddFloatInit(GraphProto* g, const std::string& name, const std::vector<int64_t>& dims,
                          float start = 0.5f) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = start + 0.01f * static_cast<float>(i % 97) - 0.3f;
  *g->add_initializer() = MakeFloatTensor(name, dims, v);
  return g->mutable_initializer(g->initializer_size() - 1);
}

ModelProto NewModel(int opset, int64_t ir = 8) {
  ModelProto m;
  m.set_ir_version(ir);
  m.set_producer_name("quantd-tests");
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(opset);
  m.mutable_graph()->set_name("g");
  return m;
}

// X[1,3,8,8] -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Y[1,20]
ModelProto ConvNet(int opset = 13) {
  ModelProto m = NewModel(opset);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "X", {1, 3, 8, 8});
  AddFloatInit(g, "conv_w", {32, 3, 3, 3});
  AddFloatInit(g, "conv_b", {32});
  AddFloatInit(g, "fc_w", {32, 20});
  AddFloatInit(g, "fc_b", {20});
  auto* conv = AddNode(g, "Conv", {"X", "conv_w", "conv_b"}, {"c"}, "conv");
  AddInts(conv, "pads", {1, 1, 1, 1});
  AddNode(g, "Relu", {"c"}, {"r"}, "relu");
  AddNode(g, "GlobalAveragePool", {"r"}, {"p"}, "pool");
  AddNode(g, "Flatten", {"p"}, {"f"}, "flatten");
  AddNode(g, "Gemm", {"f", "fc_w", "fc_b"}, {"Y"}, "fc");
  AddOutput(g, "Y", 2);
  return m;
}

std::string Bytes(const ModelProto& m) {
  std::string s;
  EXPECT_TRUE(m.SerializeToString(&s));
  return s;
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

const AttributeProto* FindAttr(const NodeProto& n, const std::string& name) {
  for (const auto& a : n.attribute()) {
    if (a.name() == name) return &a;
  }
  return nullptr;
}

std::vector<int64_t> Int64Values(const TensorProto& t) {
  std::vector<int64_t> v(t.raw_data().size() / 8);
  if (!v.empty()) std::memcpy(v.data(), t.raw_data().data(), t.raw_data().size());
  if (v.empty()) v.assign(t.int64_data().begin(), t.int64_data().end());
  return v;
}

// Full validation by the ONNX library, for opsets it knows (≤ 17).
void ExpectOnnxValid(const ModelProto& m) {
  ModelProto copy = m;
  EXPECT_NO_THROW(onnx::checker::check_model(copy));
  EXPECT_NO_THROW(onnx::shape_inference::InferShapes(copy, onnx::OpSchemaRegistry::Instance(),
                                                     onnx::ShapeInferenceOptions(true, 1, false)));
}

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "quantd-onnx-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  void WriteFile(const fs::path& p, const std::string& bytes) {
    fs::create_directories(p.parent_path());
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(f.good());
  }
  fs::path dir_;
};

// ---- parsing and validation -------------------------------------------------

TEST(ParseModelBytes, AcceptsValidModel) {
  const ModelProto m = ConvNet();
  auto parsed = ParseModelBytes(Bytes(m), ModelLimits{});
  ASSERT_TRUE(parsed.ok()) << parsed.status().message();
  EXPECT_EQ(parsed->graph().node_size(), 5);
  EXPECT_EQ(DefaultOpset(*parsed), 13);
}

TEST(ParseModelBytes, RejectsGarbage) {
  for (const std::string& bytes : {std::string("hello, this is not a model"),
                                  std::string("\xff\xff\xff\xff\xff\xff\x01", 7),
                                  std::string()}) {
    auto r = ParseModelBytes(bytes, ModelLimits{});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().reason(), "MODEL_INVALID");
    EXPECT_EQ(r.status().message().rfind("not an ONNX model:", 0), 0u) << r.status().message();
  }
}

TEST(ParseModelBytes, RejectsMissingIrVersion) {
  ModelProto m = ConvNet();
  m.clear_ir_version();
  auto r = ParseModelBytes(Bytes(m), ModelLimits{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().reason(), "MODEL_INVALID");
  EXPECT_NE(r.status().message().find("ir_version"), std::string::npos);
}

TEST(ParseModelBytes, OpsetBounds) {
  for (int opset : {6, 22}) {
    ModelProto m = ConvNet(opset);
    auto r = ParseModelBytes(Bytes(m), ModelLimits{});
    ASSERT_FALSE(r.ok()) << opset;
    EXPECT_EQ(r.status().reason(), "MODEL_UNSUPPORTED_OPSET");
    EXPECT_NE(r.status().message().find("opset " + std::to_string(opset)), std::string::npos)
        << r.status().message();
  }
  for (int opset : {7, 21}) {
    auto r = ParseModelBytes(Bytes(ConvNet(opset)), ModelLimits{});
    EXPECT_TRUE(r.ok()) << opset << ": " << r.status().message();
  }
  ModelProto m = ConvNet();
  m.mutable_opset_import(0)->set_domain("com.example");
  auto r = ParseModelBytes(Bytes(m), ModelLimits{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().reason(), "MODEL_UNSUPPORTED_OPSET");
}

TEST(ParseModelBytes, RejectsInitializerSizeMismatch) {
  {
    ModelProto m = ConvNet();
    auto* t = m.mutable_graph()->mutable_initializer(1);  // conv_b [32]
    t->mutable_raw_data()->resize(31 * 4);
    auto r = ParseModelBytes(Bytes(m), ModelLimits{});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().reason(), "MODEL_INVALID");
    EXPECT_NE(r.status().message().find("'conv_b'"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find("124 bytes"), std::string::npos) << r.status().message();
  }
  {
    ModelProto m = ConvNet();
    auto* t = m.mutable_graph()->mutable_initializer(1);
    t->clear_raw_data();
    for (int i = 0; i < 33; ++i) t->add_float_data(1.0f);
    auto r = ParseModelBytes(Bytes(m), ModelLimits{});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().reason(), "MODEL_INVALID");
    EXPECT_NE(r.status().message().find("float_data"), std::string::npos);
  }
  {
    // Typed data of the right length is fine.
    ModelProto m = ConvNet();
    auto* t = m.mutable_graph()->mutable_initializer(1);
    t->clear_raw_data();
    for (int i = 0; i < 32; ++i) t->add_float_data(1.0f);
    EXPECT_TRUE(ParseModelBytes(Bytes(m), ModelLimits{}).ok());
  }
  {
    // 4-bit data: 5 elements fit in 3 bytes.
    ModelProto m = ConvNet();
    *m.mutable_graph()->add_initializer() =
        MakeRawTensor("packed", onnx_type::kInt4, std::vector<int64_t>{5}, std::string(3, '\0'));
    EXPECT_TRUE(ParseModelBytes(Bytes(m), ModelLimits{}).ok());
    m.mutable_graph()->mutable_initializer(4)->set_raw_data(std::string(5, '\0'));
    EXPECT_EQ(ParseModelBytes(Bytes(m), ModelLimits{}).status().reason(), "MODEL_INVALID");
  }
}

// Dims are the attacker's claim; the bytes present are the fact. A tensor
// declaring 2^32 floats backed by a few bytes is refused from the counts
// alone, whichever field holds (or fails to hold) its data.
TEST(ParseModelBytes, DeclaredElementsMustMatchTheDataPresent) {
  auto with_huge_dims = [](const std::function<void(TensorProto*)>& fill) {
    ModelProto m = ConvNet();
    auto* t = m.mutable_graph()->add_initializer();
    t->set_name("huge");
    t->set_data_type(onnx_type::kFloat);
    t->add_dims(65536);
    t->add_dims(65536);
    fill(t);
    return ParseModelBytes(Bytes(m), ModelLimits{});
  };
  auto raw = with_huge_dims([](TensorProto* t) { t->set_raw_data(std::string(16, '\0')); });
  EXPECT_EQ(raw.status().reason(), "MODEL_INVALID");
  EXPECT_NE(raw.status().message().find("need 17179869184"), std::string::npos) << raw.status().message();
  auto typed = with_huge_dims([](TensorProto* t) {
    for (int i = 0; i < 4; ++i) t->add_float_data(1.0f);
  });
  EXPECT_EQ(typed.status().reason(), "MODEL_INVALID");
  EXPECT_NE(typed.status().message().find("float_data"), std::string::npos) << typed.status().message();
  auto empty = with_huge_dims([](TensorProto*) {});
  EXPECT_EQ(empty.status().reason(), "MODEL_INVALID") << empty.status().message();

  ModelLimits small;
  small.max_tensor_elements = 100;
  auto over = ParseModelBytes(Bytes(ConvNet()), small);
  EXPECT_EQ(over.status().reason(), "MODEL_TOO_LARGE");
  EXPECT_NE(over.status().message().find("limits.max_tensor_elements"), std::string::npos) << over.status().message();
}

TEST(ParseModelBytes, RejectsDanglingInput) {
  ModelProto m = ConvNet();
  m.mutable_graph()->mutable_node(1)->set_input(0, "nowhere");
  auto r = ParseModelBytes(Bytes(m), ModelLimits{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().reason(), "MODEL_INVALID");
  EXPECT_NE(r.status().message().find("'relu'"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("'nowhere'"), std::string::npos) << r.status().message();
}

TEST(ParseModelBytes, SubgraphMayReadOuterScope) {
  ModelProto m = NewModel(13);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "cond", {}, onnx_type::kBool);
  AddInput(g, "X", {4});
  auto* iff = AddNode(g, "If", {"cond"}, {"Y"}, "if");
  for (const char* branch : {"then_branch", "else_branch"}) {
    auto* a = iff->add_attribute();
    a->set_name(branch);
    a->set_type(AttributeProto::GRAPH);
    GraphProto* sub = a->mutable_g();
    sub->set_name(branch);
    AddNode(sub, "Relu", {"X"}, {std::string(branch) + "_out"}, std::string(branch) + "_relu");
    AddOutput(sub, std::string(branch) + "_out");
  }
  AddOutput(g, "Y");
  auto ok = ParseModelBytes(Bytes(m), ModelLimits{});
  EXPECT_TRUE(ok.ok()) << ok.status().message();

  // The same name read from nowhere inside the body is caught.
  m.mutable_graph()->mutable_node(0)->mutable_attribute(0)->mutable_g()->mutable_node(0)->set_input(
      0, "missing_in_body");
  auto bad = ParseModelBytes(Bytes(m), ModelLimits{});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'missing_in_body'"), std::string::npos);
}

TEST(ParseModelBytes, EnforcesLimits) {
  const std::string bytes = Bytes(ConvNet());
  {
    ModelLimits l;
    l.max_nodes = 4;
    EXPECT_EQ(ParseModelBytes(bytes, l).status().reason(), "MODEL_TOO_LARGE");
    l.max_nodes = 5;
    EXPECT_TRUE(ParseModelBytes(bytes, l).ok());
  }
  {
    ModelLimits l;
    l.max_tensor_elements = 32 * 3 * 3 * 3 - 1;
    auto r = ParseModelBytes(bytes, l);
    EXPECT_EQ(r.status().reason(), "MODEL_TOO_LARGE");
    EXPECT_NE(r.status().message().find("'conv_w'"), std::string::npos) << r.status().message();
  }
  {
    ModelLimits l;
    l.max_model_bytes = static_cast<int64_t>(bytes.size()) - 1;
    EXPECT_EQ(ParseModelBytes(bytes, l).status().reason(), "MODEL_TOO_LARGE");
  }
  {
    // Loop bodies nested three deep: depth 4 counting the main graph.
    ModelProto m = NewModel(13);
    GraphProto* g = m.mutable_graph();
    AddInput(g, "X", {1});
    GraphProto* cur = g;
    for (int level = 0; level < 3; ++level) {
      auto* n = AddNode(cur, "Identity", {"X"}, {"y" + std::to_string(level)},
                        "n" + std::to_string(level));
      n->set_op_type("If");
      n->set_input(0, "X");
      auto* a = n->add_attribute();
      a->set_name("then_branch");
      a->set_type(AttributeProto::GRAPH);
      cur = a->mutable_g();
    }
    ModelLimits l;
    l.max_graph_depth = 3;
    auto r = ParseModelBytes(Bytes(m), l);
    EXPECT_EQ(r.status().reason(), "MODEL_TOO_LARGE") << r.status().message();
    l.max_graph_depth = 4;
    EXPECT_NE(ParseModelBytes(Bytes(m), l).status().reason(), "MODEL_TOO_LARGE");
  }
}

TEST(ParseModelBytes, RefusesExternalData) {
  ModelProto m = ConvNet();
  auto* t = m.mutable_graph()->mutable_initializer(1);
  t->clear_raw_data();
  t->set_data_location(TensorProto::EXTERNAL);
  auto* kv = t->add_external_data();
  kv->set_key("location");
  kv->set_value("conv_b.bin");
  auto r = ParseModelBytes(Bytes(m), ModelLimits{});
  EXPECT_EQ(r.status().reason(), "MODEL_EXTERNAL_DATA_UNSAFE");
}

// ---- files -----------------------------------------------------------------

using LoadModelTest = TempDir;

TEST_F(LoadModelTest, SaveThenLoad) {
  const ModelProto m = ConvNet();
  const fs::path file = dir_ / "m.onnx";
  ASSERT_TRUE(SaveModel(m, file).ok());
  auto r = LoadModel(file, ModelLimits{});
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(Bytes(*r), Bytes(m));
  // Overwriting works and leaves no temporary files behind.
  ASSERT_TRUE(SaveModel(ConvNet(17), file).ok());
  EXPECT_EQ(DefaultOpset(*LoadModel(file, ModelLimits{})), 17);
  int entries = 0;
  for (const auto& e : fs::directory_iterator(dir_)) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1);
  struct stat st {};
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
}

TEST_F(LoadModelTest, SaveIntoMissingFolderFails) {
  Status s = SaveModel(ConvNet(), dir_ / "no" / "such" / "m.onnx");
  EXPECT_EQ(s.reason(), "MODEL_WRITE_FAILED");
}

TEST_F(LoadModelTest, MissingFile) {
  EXPECT_EQ(LoadModel(dir_ / "absent.onnx", ModelLimits{}).status().reason(), "MODEL_NOT_FOUND");
}

TEST_F(LoadModelTest, GarbageFile) {
  WriteFile(dir_ / "g.onnx", "PK\x03\x04 this is a zip, not a model");
  auto r = LoadModel(dir_ / "g.onnx", ModelLimits{});
  EXPECT_EQ(r.status().reason(), "MODEL_INVALID");
  EXPECT_EQ(r.status().message().rfind("not an ONNX model:", 0), 0u) << r.status().message();
}

TEST_F(LoadModelTest, TruncatedFile) {
  const std::string bytes = Bytes(ConvNet());
  for (size_t cut : {bytes.size() / 2, bytes.size() - 3, size_t{10}}) {
    WriteFile(dir_ / "t.onnx", bytes.substr(0, cut));
    auto r = LoadModel(dir_ / "t.onnx", ModelLimits{});
    ASSERT_FALSE(r.ok()) << cut;
    EXPECT_EQ(r.status().reason(), "MODEL_INVALID") << cut;
  }
}

TEST_F(LoadModelTest, FileOverLimit) {
  const std::string bytes = Bytes(ConvNet());
  WriteFile(dir_ / "m.onnx", bytes);
  ModelLimits l;
  l.max_model_bytes = 100;
  EXPECT_EQ(LoadModel(dir_ / "m.onnx", l).status().reason(), "MODEL_TOO_LARGE");
}

// ---- external data -----------------------------------------------------------

class ExternalDataTest : public TempDir {
 protected:
  void SetUp() override {
    TempDir::SetUp();
    expected_ = ConvNet().graph().initializer(0).raw_data();
    ASSERT_EQ(expected_.size(), 32u * 27 * 4);
  }
  // A model whose conv_w lives in `location` at `offset` (length set when
  // length >= 0), next to `dir_/model.onnx`.
  ModelProto ModelWithExternal(const std::string& location, int64_t offset, int64_t length) {
    ModelProto m = ConvNet();
    auto* t = m.mutable_graph()->mutable_initializer(0);
    t->clear_raw_data();
    t->set_data_location(TensorProto::EXTERNAL);
    auto add = [&](const std::string& k, const std::string& v) {
      auto* kv = t->add_external_data();
      kv->set_key(k);
      kv->set_value(v);
    };
    add("location", location);
    add("offset", std::to_string(offset));
    if (length >= 0) add("length", std::to_string(length));
    return m;
  }
  StatusOr<ModelProto> Load(const ModelProto& m) {
    WriteFile(dir_ / "model.onnx", Bytes(m));
    return LoadModel(dir_ / "model.onnx", ModelLimits{});
  }
  std::string Blob(int64_t offset) { return std::string(offset, 'x') + expected_ + "tail"; }
  std::string expected_;
};

TEST_F(ExternalDataTest, SafeRelativeFileLoads) {
  ModelProto m = ModelWithExternal("weights/conv_w.bin", 16, 32 * 27 * 4);
  WriteFile(dir_ / "weights" / "conv_w.bin", Blob(16));
  auto r = Load(m);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const TensorProto* t = FindInit(r->graph(), "conv_w");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->raw_data(), expected_);
  EXPECT_NE(t->data_location(), TensorProto::EXTERNAL);
  EXPECT_EQ(t->external_data_size(), 0);
}

TEST_F(ExternalDataTest, LengthDefaultsToRestOfFile) {
  ModelProto m = ModelWithExternal("./conv_w.bin", 0, -1);
  WriteFile(dir_ / "conv_w.bin", expected_);
  auto r = Load(m);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(FindInit(r->graph(), "conv_w")->raw_data(), expected_);
}

TEST_F(ExternalDataTest, AbsolutePathRejected) {
  WriteFile(dir_ / "conv_w.bin", expected_);
  auto r = Load(ModelWithExternal((dir_ / "conv_w.bin").string(), 0, -1));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().reason(), "MODEL_EXTERNAL_DATA_UNSAFE");
  EXPECT_NE(r.status().message().find("'conv_w'"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find((dir_ / "conv_w.bin").string()), std::string::npos);
  EXPECT_NE(r.status().message().find("absolute"), std::string::npos);
}

TEST_F(ExternalDataTest, DotDotRejected) {
  // Even when the file exists and ".." would land back inside the folder.
  WriteFile(dir_ / "sub" / "conv_w.bin", Blob(0));
  for (const char* loc_text : {"../conv_w.bin", "sub/../sub/conv_w.bin", "sub/.."}) {
    const std::string loc = loc_text;
    auto r = Load(ModelWithExternal(loc, 0, 32 * 27 * 4));
    ASSERT_FALSE(r.ok()) << loc;
    EXPECT_EQ(r.status().reason(), "MODEL_EXTERNAL_DATA_UNSAFE") << loc;
    EXPECT_NE(r.status().message().find("'" + loc + "'"), std::string::npos);
    EXPECT_NE(r.status().message().find("'..' component"), std::string::npos)
        << r.status().message();
  }
}

TEST_F(ExternalDataTest, SymlinkedFileRejected) {
  WriteFile(dir_ / "real.bin", Blob(0));
  fs::create_symlink(dir_ / "real.bin", dir_ / "link.bin");
  ASSERT_TRUE(Load(ModelWithExternal("real.bin", 0, 32 * 27 * 4)).ok());
  auto r = Load(ModelWithExternal("link.bin", 0, 32 * 27 * 4));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().reason(), "MODEL_EXTERNAL_DATA_UNSAFE");
  EXPECT_NE(r.status().message().find("symlink"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("'link.bin'"), std::string::npos);
}

TEST_F(ExternalDataTest, SymlinkedFolderRejected) {
  WriteFile(dir_ / "real" / "w.bin", Blob(0));
  fs::create_directory_symlink(dir_ / "real", dir_ / "alias");
  ASSERT_TRUE(Load(ModelWithExternal("real/w.bin", 0, 32 * 27 * 4)).ok());
  auto r = Load(ModelWithExternal("alias/w.bin", 0, 32 * 27 * 4));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().reason(), "MODEL_EXTERNAL_DATA_UNSAFE");
  EXPECT_NE(r.status().message().find("symlink"), std::string::npos) << r.status().message();
}

TEST_F(ExternalDataTest, OffsetBeyondFileRejected) {
  WriteFile(dir_ / "w.bin", Blob(0));
  const int64_t size = static_cast<int64_t>(Blob(0).size());
  auto r = Load(ModelWithExternal("w.bin", size + 1, 32 * 27 * 4));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().reason(), "MODEL_EXTERNAL_DATA_UNSAFE");
  EXPECT_NE(r.status().message().find("beyond the end"), std::string::npos)
      << r.status().message();
  // Offset inside, but offset + length past the end.
  auto r2 = Load(ModelWithExternal("w.bin", 8, 32 * 27 * 4));
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.status().reason(), "MODEL_EXTERNAL_DATA_UNSAFE");
  EXPECT_NE(r2.status().message().find("runs past the end"), std::string::npos)
      << r2.status().message();
  // The same offset with the right length is fine: the file itself is sound.
  EXPECT_TRUE(Load(ModelWithExternal("w.bin", 0, 32 * 27 * 4)).ok());
}

TEST_F(ExternalDataTest, NonRegularFileRejected) {
  fs::create_directories(dir_ / "adir");
  auto r = Load(ModelWithExternal("adir", 0, 32 * 27 * 4));
  EXPECT_EQ(r.status().reason(), "MODEL_EXTERNAL_DATA_UNSAFE");
  EXPECT_NE(r.status().message().find("not a regular file"), std::string::npos)
      << r.status().message();
}

TEST_F(ExternalDataTest, MissingFileOrWrongLength) {
  auto missing = Load(ModelWithExternal("nope.bin", 0, 32 * 27 * 4));
  EXPECT_EQ(missing.status().reason(), "MODEL_INVALID");
  EXPECT_NE(missing.status().message().find("'nope.bin'"), std::string::npos);
  WriteFile(dir_ / "w.bin", Blob(0));
  auto short_len = Load(ModelWithExternal("w.bin", 0, 100));
  EXPECT_EQ(short_len.status().reason(), "MODEL_INVALID");
  EXPECT_NE(short_len.status().message().find("need 3456"), std::string::npos)
      << short_len.status().message();
}

// ---- graph view ----------------------------------------------------------------

TEST(GraphView, Lookups) {
  const ModelProto m = ConvNet();
  GraphView v(m.graph());
  EXPECT_EQ(v.InitializerIndex("fc_w"), 2);
  EXPECT_EQ(v.InitializerIndex("c"), -1);
  EXPECT_EQ(v.ProducerIndex("r"), 1);
  EXPECT_EQ(v.ProducerIndex("X"), -1);
  EXPECT_EQ(v.ConsumerIndices("conv_w"), std::vector<int>{0});
  EXPECT_TRUE(v.ConsumerIndices("Y").empty());
  EXPECT_TRUE(v.IsGraphInput("X"));
  EXPECT_TRUE(v.IsGraphOutput("Y"));
  auto order = v.TopologicalOrder();
  ASSERT_TRUE(order.ok());
  EXPECT_EQ(*order, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(GraphView, TopologicalOrderOfUnsortedGraphAndCycle) {
  ModelProto m = ConvNet();
  auto* nodes = m.mutable_graph()->mutable_node();
  nodes->SwapElements(0, 4);  // Gemm first, Conv last
  GraphView v(m.graph());
  auto order = v.TopologicalOrder();
  ASSERT_TRUE(order.ok());
  EXPECT_EQ(*order, (std::vector<int>{4, 1, 2, 3, 0}));

  ModelProto cyc = NewModel(13);
  AddNode(cyc.mutable_graph(), "Relu", {"b"}, {"a"}, "n1");
  AddNode(cyc.mutable_graph(), "Relu", {"a"}, {"b"}, "n2");
  auto bad = GraphView(cyc.graph()).TopologicalOrder();
  EXPECT_EQ(bad.status().reason(), "MODEL_INVALID");
}

TEST(GraphView, SubgraphReadsCountAsConsumers) {
  ModelProto m = NewModel(13);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "cond", {}, onnx_type::kBool);
  AddFloatInit(g, "W", {4});
  auto* iff = AddNode(g, "If", {"cond"}, {"Y"}, "if");
  auto* a = iff->add_attribute();
  a->set_name("then_branch");
  a->set_type(AttributeProto::GRAPH);
  AddNode(a->mutable_g(), "Relu", {"W"}, {"t"}, "inner");
  GraphView v(*g);
  EXPECT_EQ(v.ConsumerIndices("W"), std::vector<int>{0});
  EXPECT_EQ(OuterScopeReads(a->g()), (std::set<std::string>{"W"}));
}

TEST(GraphView, NameAllocatorAvoidsCollisions) {
  const ModelProto m = ConvNet();
  NameAllocator names(m);
  EXPECT_EQ(names.Make("conv_w"), "conv_w_1");
  EXPECT_EQ(names.Make("conv_w"), "conv_w_2");
  EXPECT_EQ(names.Make("fresh"), "fresh");
  EXPECT_EQ(names.Make("fresh"), "fresh_1");
}

// ---- opset upgrade ---------------------------------------------------------------

// Opset 11: X[2,3,4,1] -> Squeeze(axes=[3]) -> ReduceSum(axes=[1], keepdims)
//   -> ReduceMean(axes=[2]) -> Split(axis=0, split=[1,1]) -> Softmax(axis=-1)
//   and Unsqueeze(axes=[0]).
ModelProto Opset11Model() {
  ModelProto m = NewModel(11, 6);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "X", {2, 3, 4, 1});
  AddInts(AddNode(g, "Squeeze", {"X"}, {"sq"}, "squeeze"), "axes", {3});
  AddInts(AddNode(g, "ReduceSum", {"sq"}, {"rs"}, "rsum"), "axes", {1});
  AddInts(AddNode(g, "ReduceMean", {"rs"}, {"rm"}, "rmean"), "axes", {2});
  auto* split = AddNode(g, "Split", {"rm"}, {"s0", "s1"}, "split");
  AddInt(split, "axis", 0);
  AddInts(split, "split", {1, 1});
  AddNode(g, "Split", {"rm"}, {"e0", "e1"}, "split_even");
  AddInt(AddNode(g, "Softmax", {"s0"}, {"sm"}, "softmax"), "axis", -1);
  AddInts(AddNode(g, "Unsqueeze", {"sm"}, {"Y"}, "unsqueeze"), "axes", {0});
  AddOutput(g, "Y", 4);
  AddOutput(g, "s1", 3);
  AddOutput(g, "e0", 3);
  AddOutput(g, "e1", 3);
  return m;
}

TEST(UpgradeOpset, From11To13) {
  ModelProto m = Opset11Model();
  ExpectOnnxValid(m);
  Status s = UpgradeOpset(m, 13);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(DefaultOpset(m), 13);
  EXPECT_EQ(m.ir_version(), 7);
  const GraphProto& g = m.graph();

  const NodeProto* sq = FindNode(g, "squeeze");
  ASSERT_EQ(sq->input_size(), 2);
  EXPECT_EQ(FindAttr(*sq, "axes"), nullptr);
  ASSERT_NE(FindInit(g, sq->input(1)), nullptr);
  EXPECT_EQ(Int64Values(*FindInit(g, sq->input(1))), std::vector<int64_t>{3});
  EXPECT_EQ(FindInit(g, sq->input(1))->data_type(), onnx_type::kInt64);

  const NodeProto* rs = FindNode(g, "rsum");
  ASSERT_EQ(rs->input_size(), 2);
  EXPECT_EQ(Int64Values(*FindInit(g, rs->input(1))), std::vector<int64_t>{1});

  // ReduceMean keeps its attribute until 18.
  const NodeProto* rm = FindNode(g, "rmean");
  EXPECT_EQ(rm->input_size(), 1);
  ASSERT_NE(FindAttr(*rm, "axes"), nullptr);

  const NodeProto* split = FindNode(g, "split");
  ASSERT_EQ(split->input_size(), 2);
  EXPECT_EQ(Int64Values(*FindInit(g, split->input(1))), (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(FindAttr(*split, "split"), nullptr);
  EXPECT_EQ(FindAttr(*FindNode(g, "split_even"), "num_outputs"), nullptr);

  const NodeProto* sm = FindNode(g, "softmax");
  ASSERT_NE(FindAttr(*sm, "axis"), nullptr);
  EXPECT_EQ(FindAttr(*sm, "axis")->i(), -1);

  const NodeProto* un = FindNode(g, "unsqueeze");
  EXPECT_EQ(Int64Values(*FindInit(g, un->input(1))), std::vector<int64_t>{0});

  ExpectOnnxValid(m);
}

TEST(UpgradeOpset, From11To21) {
  ModelProto m = Opset11Model();
  Status s = UpgradeOpset(m, 21);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(DefaultOpset(m), 21);
  EXPECT_EQ(m.ir_version(), 10);
  const GraphProto& g = m.graph();
  const NodeProto* rm = FindNode(g, "rmean");
  ASSERT_EQ(rm->input_size(), 2);
  EXPECT_EQ(FindAttr(*rm, "axes"), nullptr);
  EXPECT_EQ(Int64Values(*FindInit(g, rm->input(1))), std::vector<int64_t>{2});
  // With a split input, no num_outputs; without one, num_outputs appears.
  EXPECT_EQ(FindAttr(*FindNode(g, "split"), "num_outputs"), nullptr);
  const AttributeProto* n = FindAttr(*FindNode(g, "split_even"), "num_outputs");
  ASSERT_NE(n, nullptr);
  EXPECT_EQ(n->i(), 2);
  // Every new initializer name is distinct.
  std::set<std::string> names;
  for (const auto& t : g.initializer()) EXPECT_TRUE(names.insert(t.name()).second) << t.name();
  EXPECT_TRUE(ParseModelBytes(Bytes(m), ModelLimits{}).ok());
}

TEST(UpgradeOpset, ReduceMeanAt13To21) {
  ModelProto m = NewModel(13, 7);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "X", {2, 3});
  auto* n = AddNode(g, "ReduceMean", {"X"}, {"Y"}, "mean");
  AddInts(n, "axes", {1});
  AddInt(n, "keepdims", 0);
  AddNode(g, "ReduceMax", {"X"}, {"Z"}, "max_all");
  AddOutput(g, "Y");
  AddOutput(g, "Z");
  // At 13 nothing changes for ReduceMean.
  ModelProto same = m;
  ASSERT_TRUE(UpgradeOpset(same, 13).ok());
  EXPECT_EQ(Bytes(same), Bytes(m));

  ASSERT_TRUE(UpgradeOpset(m, 21).ok());
  const NodeProto* mean = FindNode(m.graph(), "mean");
  ASSERT_EQ(mean->input_size(), 2);
  EXPECT_EQ(Int64Values(*FindInit(m.graph(), mean->input(1))), std::vector<int64_t>{1});
  EXPECT_EQ(FindAttr(*mean, "axes"), nullptr);
  ASSERT_NE(FindAttr(*mean, "keepdims"), nullptr);
  // No axes attribute: reduce over everything, which needs no input.
  EXPECT_EQ(FindNode(m.graph(), "max_all")->input_size(), 1);
}

TEST(UpgradeOpset, SoftmaxNotOnLastAxisRefused) {
  ModelProto m = NewModel(11, 6);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "X", {2, 3, 4, 5});
  AddNode(g, "Softmax", {"X"}, {"Y"}, "probs");  // default axis 1 of rank 4
  AddOutput(g, "Y");
  const std::string before = Bytes(m);
  Status s = UpgradeOpset(m, 13);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.reason(), "MODEL_OPSET_UPGRADE_UNSUPPORTED");
  EXPECT_NE(s.message().find("Softmax"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("'probs'"), std::string::npos) << s.message();
  EXPECT_EQ(Bytes(m), before);  // untouched
}

TEST(UpgradeOpset, SoftmaxOfUnknownRankRefused) {
  ModelProto m = NewModel(11, 6);
  GraphProto* g = m.mutable_graph();
  auto* in = g->add_input();
  in->set_name("X");
  in->mutable_type()->mutable_tensor_type()->set_elem_type(onnx_type::kFloat);  // no shape
  AddInt(AddNode(g, "LogSoftmax", {"X"}, {"Y"}, "lsm"), "axis", 1);
  AddOutput(g, "Y");
  Status s = UpgradeOpset(m, 13);
  EXPECT_EQ(s.reason(), "MODEL_OPSET_UPGRADE_UNSUPPORTED");
  EXPECT_NE(s.message().find("LogSoftmax"), std::string::npos);
  EXPECT_NE(s.message().find("unknown rank"), std::string::npos) << s.message();
}

TEST(UpgradeOpset, SoftmaxRankFromShapeInference) {
  // Flatten makes the input rank 2, so the default axis 1 is the last one;
  // only shape inference can tell.
  ModelProto m = NewModel(11, 6);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "X", {2, 3, 4, 5});
  AddNode(g, "Flatten", {"X"}, {"f"}, "flatten");
  AddNode(g, "Hardmax", {"f"}, {"Y"}, "hm");
  AddOutput(g, "Y", 2);
  Status s = UpgradeOpset(m, 13);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(FindAttr(*FindNode(m.graph(), "hm"), "axis")->i(), -1);
  // Shape inference results are not left in the model.
  EXPECT_EQ(m.graph().value_info_size(), 0);
  ExpectOnnxValid(m);
}

TEST(UpgradeOpset, OtherRewrites) {
  ModelProto m = NewModel(11, 6);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "X", {1, 2, 8, 8});
  AddInput(g, "rois", {3, 4});
  AddInput(g, "idx", {3}, onnx_type::kInt64);
  AddInput(g, "grid", {1, 8, 8, 2});
  AddFloat(AddNode(g, "Dropout", {"X"}, {"d"}, "drop"), "ratio", 0.25f);
  AddNode(g, "RoiAlign", {"d", "rois", "idx"}, {"ra"}, "roi");
  auto* gs = AddNode(g, "GridSample", {"X", "grid"}, {"gs"}, "sample");
  AddString(gs, "mode", "bilinear");
  auto* custom = AddNode(g, "ReduceSum", {"X"}, {"cs"}, "custom_sum");
  custom->set_domain("com.example");
  AddInts(custom, "axes", {1});
  AddOutput(g, "ra");
  AddOutput(g, "gs");
  AddOutput(g, "cs");
  ASSERT_TRUE(UpgradeOpset(m, 21).ok());
  const GraphProto& out = m.graph();
  const NodeProto* drop = FindNode(out, "drop");
  ASSERT_EQ(drop->input_size(), 2);
  EXPECT_EQ(FindAttr(*drop, "ratio"), nullptr);
  const TensorProto* ratio = FindInit(out, drop->input(1));
  ASSERT_NE(ratio, nullptr);
  EXPECT_EQ(ratio->dims_size(), 0);
  EXPECT_EQ(*ReadFloatTensor(*ratio), std::vector<float>{0.25f});
  EXPECT_EQ(FindAttr(*FindNode(out, "roi"), "coordinate_transformation_mode")->s(),
            "output_half_pixel");
  EXPECT_EQ(FindAttr(*FindNode(out, "sample"), "mode")->s(), "linear");
  // Other domains are left alone.
  EXPECT_NE(FindAttr(*FindNode(out, "custom_sum"), "axes"), nullptr);
  EXPECT_EQ(FindNode(out, "custom_sum")->input_size(), 1);
}

TEST(UpgradeOpset, BicubicAndDft) {
  ModelProto m = NewModel(17, 8);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "X", {1, 2, 8, 8});
  AddInput(g, "grid", {1, 8, 8, 2});
  AddInput(g, "S", {1, 16, 2});
  AddString(AddNode(g, "GridSample", {"X", "grid"}, {"gs"}, "sample"), "mode", "bicubic");
  AddNode(g, "DFT", {"S"}, {"F"}, "dft");
  AddOutput(g, "gs");
  AddOutput(g, "F");
  ASSERT_TRUE(UpgradeOpset(m, 21).ok());
  EXPECT_EQ(FindAttr(*FindNode(m.graph(), "sample"), "mode")->s(), "cubic");
  const NodeProto* dft = FindNode(m.graph(), "dft");
  ASSERT_EQ(dft->input_size(), 3);
  EXPECT_EQ(dft->input(1), "");
  EXPECT_EQ(Int64Values(*FindInit(m.graph(), dft->input(2))), std::vector<int64_t>{1});
}

TEST(UpgradeOpset, Refusals) {
  auto expect_refused = [](ModelProto m, int target, const std::string& op,
                           const std::string& node) {
    const std::string before = Bytes(m);
    Status s = UpgradeOpset(m, target);
    ASSERT_FALSE(s.ok()) << op;
    EXPECT_EQ(s.reason(), "MODEL_OPSET_UPGRADE_UNSUPPORTED");
    EXPECT_NE(s.message().find(op), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("'" + node + "'"), std::string::npos) << s.message();
    EXPECT_EQ(Bytes(m), before);
  };
  {
    ModelProto m = NewModel(18, 8);
    AddInput(m.mutable_graph(), "X", {1, 4, 2, 2});
    AddFloatInit(m.mutable_graph(), "s", {2});
    AddFloatInit(m.mutable_graph(), "b", {2});
    AddInt(AddNode(m.mutable_graph(), "GroupNormalization", {"X", "s", "b"}, {"Y"}, "gn"),
           "num_groups", 2);
    expect_refused(m, 21, "GroupNormalization", "gn");
  }
  {
    ModelProto m = NewModel(11, 6);
    AddInput(m.mutable_graph(), "X", {1, 1, 2, 2});
    AddInput(m.mutable_graph(), "roi", {0});
    AddInput(m.mutable_graph(), "scales", {4});
    AddString(AddNode(m.mutable_graph(), "Resize", {"X", "roi", "scales"}, {"Y"}, "up"),
              "coordinate_transformation_mode", "tf_half_pixel_for_nn");
    expect_refused(m, 13, "Resize", "up");
  }
  {
    ModelProto m = NewModel(13, 7);
    GraphProto* g = m.mutable_graph();
    AddInput(g, "X", {1, 2, 2, 2});
    for (const char* n : {"sc", "bi", "mu", "va"}) AddFloatInit(g, n, {2});
    AddNode(g, "BatchNormalization", {"X", "sc", "bi", "mu", "va"}, {"Y", "rm", "rv", "sm", "sv"}, "bn");
    expect_refused(m, 21, "BatchNormalization", "bn");
  }
  {
    // Nested in a Loop body.
    ModelProto m = NewModel(11, 6);
    GraphProto* g = m.mutable_graph();
    AddInput(g, "X", {2, 3, 4});
    auto* iff = AddNode(g, "If", {"c"}, {"Y"}, "if");
    AddInput(g, "c", {}, onnx_type::kBool);
    auto* a = iff->add_attribute();
    a->set_name("then_branch");
    a->set_type(AttributeProto::GRAPH);
    AddInt(AddNode(a->mutable_g(), "Softmax", {"X"}, {"t"}, "inner_softmax"), "axis", 1);
    expect_refused(m, 13, "Softmax", "inner_softmax");
  }
  ModelProto old = ConvNet(10);
  EXPECT_EQ(UpgradeOpset(old, 13).reason(), "MODEL_OPSET_UPGRADE_UNSUPPORTED");
  ModelProto any = ConvNet(11);
  EXPECT_EQ(UpgradeOpset(any, 15).reason(), "OPSET_TARGET_UNSUPPORTED");
}

TEST(UpgradeOpset, RewritesInsideSubgraphs) {
  ModelProto m = NewModel(11, 6);
  GraphProto* g = m.mutable_graph();
  AddInput(g, "c", {}, onnx_type::kBool);
  AddInput(g, "X", {1, 3});
  auto* iff = AddNode(g, "If", {"c"}, {"Y"}, "if");
  for (const char* branch : {"then_branch", "else_branch"}) {
    auto* a = iff->add_attribute();
    a->set_name(branch);
    a->set_type(AttributeProto::GRAPH);
    GraphProto* sub = a->mutable_g();
    sub->set_name(branch);
    const std::string out = std::string(branch) + "_out";
    AddInts(AddNode(sub, "Squeeze", {"X"}, {out}, std::string(branch) + "_sq"), "axes", {0});
    AddOutput(sub, out, 1);
  }
  AddOutput(g, "Y", 1);
  ASSERT_TRUE(UpgradeOpset(m, 13).ok());
  for (const auto& a : m.graph().node(0).attribute()) {
    const GraphProto& sub = a.g();
    ASSERT_EQ(sub.node(0).input_size(), 2);
    const TensorProto* axes = FindInit(sub, sub.node(0).input(1));
    ASSERT_NE(axes, nullptr) << "axes must live in the body that reads them";
    EXPECT_EQ(Int64Values(*axes), std::vector<int64_t>{0});
  }
  EXPECT_NE(m.graph().node(0).attribute(0).g().node(0).input(1),
            m.graph().node(0).attribute(1).g().node(0).input(1));
  ExpectOnnxValid(m);
}

TEST(UpgradeOpset, AlreadyAtTargetIsNoop) {
  ModelProto m = ConvNet(17);
  const std::string before = Bytes(m);
  ASSERT_TRUE(UpgradeOpset(m, 13).ok());
  EXPECT_EQ(Bytes(m), before);
}

}  // namespace
}  // namespace quantd
