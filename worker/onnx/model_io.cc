#include "worker/onnx/model_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <string>
#include <unordered_set>
#include <vector>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include "worker/onnx/graph_view.h"
#include "worker/onnx/tensor_util.h"

namespace quantd {

namespace {

namespace fs = std::filesystem;

Status Invalid(std::string message) {
  return InvalidArgument("MODEL_INVALID", std::move(message));
}
Status TooLarge(std::string message) {
  return ResourceExhausted("MODEL_TOO_LARGE", std::move(message));
}
Status Unsafe(std::string message) {
  return InvalidArgument("MODEL_EXTERNAL_DATA_UNSAFE", std::move(message));
}
Status WriteFailed(const std::string& what, const fs::path& path, int err) {
  return Internal("MODEL_WRITE_FAILED",
                  what + " '" + path.string() + "': " + std::strerror(err));
}

std::string Quote(const std::string& s) { return "'" + s + "'"; }

// Closes a descriptor on every return path.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int Release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }

 private:
  int fd_;
};

// Where external data may come from, and how many bytes are still allowed.
struct ExternalDataSource {
  bool allowed = false;
  fs::path folder;
  int64_t budget = 0;
};

bool ParseDecimal(const std::string& s, int64_t* out) {
  if (s.empty() || s.size() > 18) return false;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return true;
}

// Opens `relative` below `folder` without following any symlink on the way,
// so the file we read is exactly the one the checks looked at.
StatusOr<Fd> OpenInsideFolder(const fs::path& folder, const fs::path& relative,
                              const std::string& context) {
  Fd dir(::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid()) {
    return Invalid(context + ": cannot open the model's folder: " + std::strerror(errno));
  }
  std::vector<std::string> parts;
  for (const auto& part : relative) {
    const std::string p = part.string();
    if (p.empty() || p == ".") continue;
    parts.push_back(p);
  }
  if (parts.empty()) return Unsafe(context + ": the location names the model's folder itself");
  for (size_t i = 0; i < parts.size(); ++i) {
    const bool last = i + 1 == parts.size();
    struct stat st {};
    if (::fstatat(dir.get(), parts[i].c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) return Invalid(context + ": the file does not exist");
      return Invalid(context + ": " + std::strerror(errno));
    }
    if (S_ISLNK(st.st_mode)) {
      return Unsafe(context + ": '" + parts[i] + "' on the path is a symlink");
    }
    if (!last && !S_ISDIR(st.st_mode)) {
      return Unsafe(context + ": '" + parts[i] + "' on the path is not a folder");
    }
    if (last && !S_ISREG(st.st_mode)) {
      return Unsafe(context + ": it is not a regular file");
    }
    const int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | (last ? O_NOCTTY : O_DIRECTORY);
    Fd next(::openat(dir.get(), parts[i].c_str(), flags));
    if (!next.valid()) {
      // ELOOP: a symlink was swapped in after the check above.
      if (errno == ELOOP) return Unsafe(context + ": '" + parts[i] + "' on the path is a symlink");
      return Invalid(context + ": " + std::strerror(errno));
    }
    struct stat opened {};
    if (::fstat(next.get(), &opened) != 0 || opened.st_dev != st.st_dev ||
        opened.st_ino != st.st_ino) {
      return Unsafe(context + ": the path changed while it was being opened");
    }
    dir = std::move(next);
  }
  return dir;
}

Status ReadExact(int fd, int64_t offset, int64_t length, std::string* out) {
  out->resize(static_cast<size_t>(length));
  int64_t done = 0;
  while (done < length) {
    const size_t chunk = static_cast<size_t>(std::min<int64_t>(length - done, 1 << 30));
    ssize_t n = ::pread(fd, out->data() + done, chunk, offset + done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Invalid(n == 0 ? "unexpected end of file" : std::strerror(errno));
    done += n;
  }
  return Status::Ok();
}

// Replaces an EXTERNAL tensor's reference by its bytes.
Status LoadExternalData(onnx::TensorProto& tensor, ExternalDataSource& src,
                        const ModelLimits& limits) {
  std::string location;
  std::string offset_text;
  std::string length_text;
  bool has_location = false;
  for (const auto& kv : tensor.external_data()) {
    if (kv.key() == "location") {
      location = kv.value();
      has_location = true;
    } else if (kv.key() == "offset") {
      offset_text = kv.value();
    } else if (kv.key() == "length") {
      length_text = kv.value();
    }
  }
  const std::string context = "external data of tensor " + Quote(tensor.name()) +
                              " at " + Quote(location);
  if (!src.allowed) {
    return Unsafe(context + ": external data is not allowed for a model given as bytes");
  }
  if (!has_location || location.empty()) {
    return Invalid("tensor " + Quote(tensor.name()) + " is EXTERNAL but has no location");
  }
  if (location.find('\0') != std::string::npos) {
    return Unsafe(context + ": the location contains a NUL byte");
  }
  const fs::path rel(location);
  if (rel.is_absolute() || location.front() == '/' || rel.has_root_name()) {
    return Unsafe(context + ": the location is an absolute path");
  }
  for (const auto& part : rel) {
    if (part == "..") return Unsafe(context + ": the location has a '..' component");
  }
  const fs::path normal = rel.lexically_normal();
  const fs::path full = (src.folder / normal).lexically_normal();
  const fs::path within = full.lexically_relative(src.folder.lexically_normal());
  if (within.empty() || *within.begin() == "..") {
    return Unsafe(context + ": the location leaves the model's folder");
  }

  int64_t offset = 0;
  if (!offset_text.empty() && !ParseDecimal(offset_text, &offset)) {
    return Invalid(context + ": offset " + Quote(offset_text) + " is not a non-negative integer");
  }
  int64_t length = -1;
  if (!length_text.empty() && !ParseDecimal(length_text, &length)) {
    return Invalid(context + ": length " + Quote(length_text) + " is not a non-negative integer");
  }

  QUANTD_ASSIGN_OR_RETURN(Fd fd, OpenInsideFolder(src.folder, normal, context));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return Invalid(context + ": " + std::strerror(errno));
  const int64_t file_size = st.st_size;
  if (offset > file_size) {
    return Unsafe(context + ": offset " + std::to_string(offset) + " is beyond the end of the " +
                  std::to_string(file_size) + "-byte file");
  }
  if (length < 0) length = file_size - offset;
  if (length > file_size - offset) {
    return Unsafe(context + ": offset " + std::to_string(offset) + " + length " +
                  std::to_string(length) + " runs past the end of the " +
                  std::to_string(file_size) + "-byte file");
  }

  // Size against dims before reading, so a tiny tensor cannot pull in a
  // huge file.
  const auto count = ElementCount(tensor, limits.max_tensor_elements);
  if (!count) {
    return TooLarge("tensor " + Quote(tensor.name()) + " has invalid dims or more than " +
                    std::to_string(limits.max_tensor_elements) + " elements (limits.max_tensor_elements)");
  }
  const auto expected = RawByteSize(tensor.data_type(), *count);
  if (!expected) {
    return Invalid("tensor " + Quote(tensor.name()) + " of type " +
                   DataTypeName(tensor.data_type()) + " cannot be stored as external data");
  }
  if (*expected != length) {
    return Invalid(context + ": " + std::to_string(length) + " bytes, but dims " +
                   DimsToString(DimsOf(tensor)) + " of " + DataTypeName(tensor.data_type()) +
                   " need " + std::to_string(*expected));
  }
  if (length > src.budget) {
    return TooLarge("model and external data exceed " + std::to_string(limits.max_model_bytes) +
                    " bytes (limits.max_model_bytes; at tensor " + Quote(tensor.name()) + ")");
  }
  src.budget -= length;

  std::string bytes;
  Status read = ReadExact(fd.get(), offset, length, &bytes);
  if (!read.ok()) return Invalid(context + ": " + read.message());
  tensor.clear_external_data();
  tensor.clear_data_location();
  tensor.set_raw_data(std::move(bytes));
  return Status::Ok();
}

// The typed repeated field a tensor's data lives in, with the number of
// entries it must hold.
Status CheckTypedPayload(const onnx::TensorProto& t, int64_t n, const std::string& what) {
  using namespace onnx_type;
  int64_t have = 0;
  int64_t want = n;
  const char* field = "";
  bool also_ok_packed = false;
  switch (t.data_type()) {
    case kFloat:
      have = t.float_data_size(), field = "float_data";
      break;
    case kComplex64:
      have = t.float_data_size(), field = "float_data", want = 2 * n;
      break;
    case kInt32: case kInt16: case kInt8: case kUint16: case kUint8: case kBool:
    case kFloat16: case kBfloat16: case kFloat8E4M3FN: case kFloat8E4M3FNUZ:
    case kFloat8E5M2: case kFloat8E5M2FNUZ:
      have = t.int32_data_size(), field = "int32_data";
      break;
    case kInt4: case kUint4:
      // Writers disagree on whether int32_data holds one or two 4-bit values
      // per entry; either count is accepted.
      have = t.int32_data_size(), field = "int32_data", want = n / 2 + n % 2;
      also_ok_packed = true;
      break;
    case kInt64:
      have = t.int64_data_size(), field = "int64_data";
      break;
    case kString:
      have = t.string_data_size(), field = "string_data";
      break;
    case kDouble:
      have = t.double_data_size(), field = "double_data";
      break;
    case kComplex128:
      have = t.double_data_size(), field = "double_data", want = 2 * n;
      break;
    case kUint32: case kUint64:
      have = t.uint64_data_size(), field = "uint64_data";
      break;
    default:
      return Invalid(what + " has unknown " + DataTypeName(t.data_type()));
  }
  if (have == want || (also_ok_packed && have == n)) return Status::Ok();
  return Invalid(what + " holds " + std::to_string(have) + " values in " + field + ", but dims " +
                 DimsToString(DimsOf(t)) + " of " + DataTypeName(t.data_type()) + " need " +
                 std::to_string(want));
}

Status CheckTensor(onnx::TensorProto& t, const std::string& what, ExternalDataSource& src,
                   const ModelLimits& limits) {
  if (!IsKnownDataType(t.data_type())) {
    return Invalid(what + " has unknown " + DataTypeName(t.data_type()));
  }
  if (t.has_segment()) return Invalid(what + " is segmented, which is not supported");
  for (int64_t d : t.dims()) {
    if (d < 0) return Invalid(what + " has a negative dim in " + DimsToString(DimsOf(t)));
  }
  const auto count = ElementCount(t, limits.max_tensor_elements);
  if (!count) {
    return TooLarge(what + " has dims " + DimsToString(DimsOf(t)) + ", more than " +
                    std::to_string(limits.max_tensor_elements) + " elements (limits.max_tensor_elements)");
  }
  if (t.data_location() == onnx::TensorProto::EXTERNAL) {
    QUANTD_RETURN_IF_ERROR(LoadExternalData(t, src, limits));
  } else if (t.external_data_size() > 0) {
    return Invalid(what + " has external_data entries but is not marked EXTERNAL");
  }
  if (t.has_raw_data()) {
    const auto expected = RawByteSize(t.data_type(), *count);
    if (!expected) return Invalid(what + " of type STRING cannot use raw_data");
    if (static_cast<int64_t>(t.raw_data().size()) != *expected) {
      return Invalid(what + " holds " + std::to_string(t.raw_data().size()) +
                     " bytes of raw_data, but dims " + DimsToString(DimsOf(t)) + " of " +
                     DataTypeName(t.data_type()) + " need " + std::to_string(*expected));
    }
    return Status::Ok();
  }
  return CheckTypedPayload(t, *count, what);
}

std::string NodeLabel(const onnx::NodeProto& node, int index) {
  std::string label = node.name().empty() ? "#" + std::to_string(index) : Quote(node.name());
  return "node " + label + " (" + node.op_type() + ")";
}

struct Walk {
  const ModelLimits& limits;
  ExternalDataSource& src;
  int64_t nodes = 0;
};

using Scope = std::unordered_set<std::string>;

Status CheckGraph(onnx::GraphProto& g, int depth, std::vector<const Scope*>& outer, Walk& w) {
  if (depth > w.limits.max_graph_depth) {
    return TooLarge("subgraphs nest " + std::to_string(depth) + " deep; the limit is " +
                    std::to_string(w.limits.max_graph_depth) + " (limits.max_graph_depth)");
  }
  w.nodes += g.node_size();
  if (w.nodes > w.limits.max_nodes) {
    return TooLarge("the model has more than " + std::to_string(w.limits.max_nodes) +
                    " nodes (limits.max_graph_nodes)");
  }

  Scope local;
  for (const auto& v : g.input()) local.insert(v.name());
  std::unordered_set<std::string> initializer_names;
  for (auto& t : *g.mutable_initializer()) {
    if (!initializer_names.insert(t.name()).second) {
      return Invalid("initializer " + Quote(t.name()) + " is defined twice");
    }
    local.insert(t.name());
    QUANTD_RETURN_IF_ERROR(CheckTensor(t, "initializer " + Quote(t.name()), w.src, w.limits));
  }
  for (auto& s : *g.mutable_sparse_initializer()) {
    local.insert(s.values().name());
    const std::string what = "sparse initializer " + Quote(s.values().name());
    QUANTD_RETURN_IF_ERROR(CheckTensor(*s.mutable_values(), what + " values", w.src, w.limits));
    QUANTD_RETURN_IF_ERROR(CheckTensor(*s.mutable_indices(), what + " indices", w.src, w.limits));
  }
  std::unordered_set<std::string> produced;
  for (int i = 0; i < g.node_size(); ++i) {
    for (const auto& o : g.node(i).output()) {
      if (o.empty()) continue;
      if (!produced.insert(o).second || initializer_names.count(o)) {
        return Invalid(NodeLabel(g.node(i), i) + " writes tensor " + Quote(o) +
                       ", which already has another producer");
      }
      local.insert(o);
    }
  }

  auto visible = [&](const std::string& name) {
    if (local.count(name)) return true;
    for (const Scope* s : outer) {
      if (s->count(name)) return true;
    }
    return false;
  };

  outer.push_back(&local);
  for (int i = 0; i < g.node_size(); ++i) {
    auto& node = *g.mutable_node(i);
    for (const auto& in : node.input()) {
      if (!in.empty() && !visible(in)) {
        outer.pop_back();
        return Invalid(NodeLabel(node, i) + " reads tensor " + Quote(in) +
                       ", which is not a graph input, initializer or node output");
      }
    }
    for (auto& attr : *node.mutable_attribute()) {
      const std::string what = NodeLabel(node, i) + " attribute " + Quote(attr.name());
      Status s;
      if (attr.has_t()) s = CheckTensor(*attr.mutable_t(), what, w.src, w.limits);
      for (int k = 0; s.ok() && k < attr.tensors_size(); ++k) {
        s = CheckTensor(*attr.mutable_tensors(k), what, w.src, w.limits);
      }
      if (s.ok() && attr.has_sparse_tensor()) {
        s = CheckTensor(*attr.mutable_sparse_tensor()->mutable_values(), what, w.src, w.limits);
      }
      if (s.ok() && attr.has_g()) s = CheckGraph(*attr.mutable_g(), depth + 1, outer, w);
      for (int k = 0; s.ok() && k < attr.graphs_size(); ++k) {
        s = CheckGraph(*attr.mutable_graphs(k), depth + 1, outer, w);
      }
      if (!s.ok()) {
        outer.pop_back();
        return s;
      }
    }
  }
  outer.pop_back();
  for (const auto& o : g.output()) {
    if (!visible(o.name())) {
      return Invalid("graph output " + Quote(o.name()) +
                     " is not a graph input, initializer or node output");
    }
  }
  return Status::Ok();
}

Status ValidateModel(onnx::ModelProto& model, const ModelLimits& limits,
                     ExternalDataSource& src) {
  if (!model.has_graph()) {
    return Invalid(model.ByteSizeLong() == 0
                       ? "not an ONNX model: the input holds no ONNX fields"
                       : "not an ONNX model: it has no graph");
  }
  if (!model.has_ir_version() || model.ir_version() <= 0) {
    return Invalid("the model has no ir_version");
  }
  int opset = -1;
  for (const auto& op : model.opset_import()) {
    if (!IsDefaultDomain(op.domain())) continue;
    if (opset >= 0 && opset != op.version()) {
      return Invalid("the model imports the default ONNX domain twice, at opsets " +
                     std::to_string(opset) + " and " + std::to_string(op.version()));
    }
    opset = static_cast<int>(op.version());
  }
  if (opset < 0) {
    return Status(StatusCode::kInvalidArgument, "MODEL_UNSUPPORTED_OPSET",
                  "the model has no opset import for the default ONNX domain");
  }
  if (opset < kMinSupportedOpset || opset > kMaxSupportedOpset) {
    return Status(StatusCode::kInvalidArgument, "MODEL_UNSUPPORTED_OPSET",
                  "opset " + std::to_string(opset) + " is not supported (supported: " +
                      std::to_string(kMinSupportedOpset) + ".." +
                      std::to_string(kMaxSupportedOpset) + ")");
  }
  Walk w{limits, src};
  std::vector<const Scope*> outer;
  return CheckGraph(*model.mutable_graph(), 1, outer, w);
}

int ClampToInt(int64_t v) {
  if (v < 0) return 0;
  return v > INT_MAX ? INT_MAX : static_cast<int>(v);
}

Status ParseFrom(google::protobuf::io::ZeroCopyInputStream* stream, int64_t size,
                 const ModelLimits& limits, onnx::ModelProto* model) {
  google::protobuf::io::CodedInputStream coded(stream);
  // Protobuf refuses messages over 64 MiB unless told otherwise; the hard
  // ceiling is INT_MAX bytes.
  coded.SetTotalBytesLimit(ClampToInt(limits.max_model_bytes));
  if (!model->ParseFromCodedStream(&coded) || !coded.ConsumedEntireMessage()) {
    return Invalid("not an ONNX model: the " + std::to_string(size) +
                   " bytes do not parse as an ONNX ModelProto (damaged, truncated or another "
                   "format)");
  }
  return Status::Ok();
}

}  // namespace

StatusOr<onnx::ModelProto> LoadModel(const fs::path& file, const ModelLimits& limits) {
  Fd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd.valid()) {
    if (errno == ENOENT) {
      return NotFound("MODEL_NOT_FOUND", "model file '" + file.string() + "' does not exist");
    }
    return Invalid("cannot open model file '" + file.string() + "': " + std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return Invalid("model file '" + file.string() + "' is not a regular file");
  }
  const int64_t size = st.st_size;
  if (size > limits.max_model_bytes || size > INT_MAX) {
    return TooLarge("model file is " + std::to_string(size) + " bytes; the limit is " +
                    std::to_string(std::min<int64_t>(limits.max_model_bytes, INT_MAX)) + " (limits.max_model_bytes)");
  }
  onnx::ModelProto model;
  {
    google::protobuf::io::FileInputStream in(fd.get());
    QUANTD_RETURN_IF_ERROR(ParseFrom(&in, size, limits, &model));
    if (in.GetErrno() != 0) {
      return Invalid("cannot read model file '" + file.string() + "': " +
                     std::strerror(in.GetErrno()));
    }
  }
  fd.Reset();
  ExternalDataSource src;
  src.allowed = true;
  src.folder = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  src.budget = limits.max_model_bytes - size;
  QUANTD_RETURN_IF_ERROR(ValidateModel(model, limits, src));
  return model;
}

StatusOr<onnx::ModelProto> ParseModelBytes(std::string_view bytes, const ModelLimits& limits) {
  const int64_t size = static_cast<int64_t>(bytes.size());
  if (size > limits.max_model_bytes || size > INT_MAX) {
    return TooLarge("model is " + std::to_string(size) + " bytes; the limit is " +
                    std::to_string(std::min<int64_t>(limits.max_model_bytes, INT_MAX)) + " (limits.max_model_bytes)");
  }
  onnx::ModelProto model;
  google::protobuf::io::ArrayInputStream in(bytes.data(), static_cast<int>(size));
  QUANTD_RETURN_IF_ERROR(ParseFrom(&in, size, limits, &model));
  ExternalDataSource src;  // not allowed
  QUANTD_RETURN_IF_ERROR(ValidateModel(model, limits, src));
  return model;
}

Status SaveModel(const onnx::ModelProto& model, const fs::path& file) {
  const size_t bytes = model.ByteSizeLong();
  if (bytes >= (size_t{1} << 31)) {
    return TooLarge("the model serialises to " + std::to_string(bytes) +
                    " bytes; models of 2 GiB or more would need external data, which saving "
                    "does not support");
  }
  const fs::path folder = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  std::string tmpl = (folder / ("." + file.filename().string() + ".tmp-XXXXXX")).string();
  Fd fd(::mkstemp(tmpl.data()));
  if (!fd.valid()) return WriteFailed("cannot create a temporary file in", folder, errno);
  const fs::path tmp(tmpl);
  auto fail = [&](const std::string& what, int err) {
    ::unlink(tmp.c_str());
    return WriteFailed(what, tmp, err);
  };
  // mkstemp creates 0600; a model is not secret and others read it.
  if (::fchmod(fd.get(), 0644) != 0) return fail("cannot set permissions of", errno);
  {
    google::protobuf::io::FileOutputStream out(fd.get());
    const bool ok = model.SerializeToZeroCopyStream(&out) && out.Flush();
    if (!ok) return fail("cannot write", out.GetErrno() ? out.GetErrno() : EIO);
  }
  if (::fsync(fd.get()) != 0) return fail("cannot fsync", errno);
  if (::close(fd.Release()) != 0) return fail("cannot close", errno);
  if (::rename(tmp.c_str(), file.c_str()) != 0) return fail("cannot rename to " + file.string() + " from", errno);
  // The rename itself is durable only once the folder is synced.
  Fd dir(::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.valid()) ::fsync(dir.get());
  return Status::Ok();
}

}  // namespace quantd
