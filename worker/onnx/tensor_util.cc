#include "worker/onnx/tensor_util.h"

#include <bit>
#include <cstring>

namespace quantd {

// raw_data is little-endian by definition; copying it straight into host
// arrays is only right on little-endian hosts.
static_assert(std::endian::native == std::endian::little,
              "raw tensor data is read and written as host byte order");

namespace {

// Bits per element; 0 for STRING and unknown types.
int BitsPerElement(int32_t t) {
  using namespace onnx_type;
  switch (t) {
    case kBool:
    case kUint8:
    case kInt8:
    case kFloat8E4M3FN:
    case kFloat8E4M3FNUZ:
    case kFloat8E5M2:
    case kFloat8E5M2FNUZ:
      return 8;
    case kUint16:
    case kInt16:
    case kFloat16:
    case kBfloat16:
      return 16;
    case kFloat:
    case kInt32:
    case kUint32:
      return 32;
    case kInt64:
    case kUint64:
    case kDouble:
    case kComplex64:
      return 64;
    case kComplex128:
      return 128;
    case kUint4:
    case kInt4:
      return 4;
    default:
      return 0;
  }
}

}  // namespace

std::string DataTypeName(int32_t t) {
  using namespace onnx_type;
  switch (t) {
    case kUndefined: return "UNDEFINED";
    case kFloat: return "FLOAT";
    case kUint8: return "UINT8";
    case kInt8: return "INT8";
    case kUint16: return "UINT16";
    case kInt16: return "INT16";
    case kInt32: return "INT32";
    case kInt64: return "INT64";
    case kString: return "STRING";
    case kBool: return "BOOL";
    case kFloat16: return "FLOAT16";
    case kDouble: return "DOUBLE";
    case kUint32: return "UINT32";
    case kUint64: return "UINT64";
    case kComplex64: return "COMPLEX64";
    case kComplex128: return "COMPLEX128";
    case kBfloat16: return "BFLOAT16";
    case kFloat8E4M3FN: return "FLOAT8E4M3FN";
    case kFloat8E4M3FNUZ: return "FLOAT8E4M3FNUZ";
    case kFloat8E5M2: return "FLOAT8E5M2";
    case kFloat8E5M2FNUZ: return "FLOAT8E5M2FNUZ";
    case kUint4: return "UINT4";
    case kInt4: return "INT4";
    default: return "data_type " + std::to_string(t);
  }
}

bool IsKnownDataType(int32_t t) {
  return t == onnx_type::kString || BitsPerElement(t) > 0;
}

std::optional<int64_t> RawByteSize(int32_t data_type, int64_t count) {
  const int bits = BitsPerElement(data_type);
  if (bits == 0 || count < 0) return std::nullopt;
  if (bits == 4) return count / 2 + count % 2;
  int64_t bytes = 0;
  if (__builtin_mul_overflow(count, static_cast<int64_t>(bits / 8), &bytes)) {
    return std::nullopt;
  }
  return bytes;
}

std::optional<int64_t> ElementCount(std::span<const int64_t> dims, int64_t limit) {
  bool has_zero = false;
  for (int64_t d : dims) {
    if (d < 0) return std::nullopt;
    has_zero = has_zero || d == 0;
  }
  // An empty dimension makes the tensor empty however large the others are.
  if (has_zero) return 0;
  int64_t n = 1;
  for (int64_t d : dims) {
    if (__builtin_mul_overflow(n, d, &n) || n > limit) return std::nullopt;
  }
  return n;
}

std::optional<int64_t> ElementCount(const onnx::TensorProto& tensor, int64_t limit) {
  return ElementCount(std::span<const int64_t>(tensor.dims().data(),
                                               static_cast<size_t>(tensor.dims_size())),
                      limit);
}

std::vector<int64_t> DimsOf(const onnx::TensorProto& tensor) {
  return {tensor.dims().begin(), tensor.dims().end()};
}

StatusOr<std::vector<float>> ReadFloatTensor(const onnx::TensorProto& tensor) {
  if (tensor.data_type() != onnx_type::kFloat) {
    return InvalidArgument("TENSOR_TYPE_MISMATCH",
                           "tensor '" + tensor.name() + "' is " +
                               DataTypeName(tensor.data_type()) + ", not FLOAT");
  }
  if (tensor.data_location() == onnx::TensorProto::EXTERNAL) {
    return FailedPrecondition("TENSOR_DATA_EXTERNAL",
                              "tensor '" + tensor.name() + "' keeps its data in an external file");
  }
  const auto count = ElementCount(tensor);
  if (!count) {
    return InvalidArgument("TENSOR_SHAPE_INVALID",
                           "tensor '" + tensor.name() + "' has invalid dims");
  }
  std::vector<float> out;
  if (tensor.has_raw_data()) {
    const std::string& raw = tensor.raw_data();
    if (static_cast<int64_t>(raw.size()) != *count * 4) {
      return InvalidArgument("TENSOR_SIZE_MISMATCH",
                             "tensor '" + tensor.name() + "' has " + std::to_string(raw.size()) +
                                 " bytes of raw_data for " + std::to_string(*count) +
                                 " FLOAT elements");
    }
    out.resize(static_cast<size_t>(*count));
    if (!raw.empty()) std::memcpy(out.data(), raw.data(), raw.size());
    return out;
  }
  if (tensor.float_data_size() != *count) {
    return InvalidArgument("TENSOR_SIZE_MISMATCH",
                           "tensor '" + tensor.name() + "' has " +
                               std::to_string(tensor.float_data_size()) + " float_data values for " +
                               std::to_string(*count) + " elements");
  }
  out.assign(tensor.float_data().begin(), tensor.float_data().end());
  return out;
}

onnx::TensorProto MakeRawTensor(const std::string& name, int32_t data_type,
                                std::span<const int64_t> dims, std::string raw) {
  onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(data_type);
  for (int64_t d : dims) t.add_dims(d);
  t.set_raw_data(std::move(raw));
  return t;
}

onnx::TensorProto MakeFloatTensor(const std::string& name, std::span<const int64_t> dims,
                                  std::span<const float> values) {
  std::string raw(values.size() * sizeof(float), '\0');
  if (!values.empty()) std::memcpy(raw.data(), values.data(), raw.size());
  return MakeRawTensor(name, onnx_type::kFloat, dims, std::move(raw));
}

onnx::TensorProto MakeInt64Tensor(const std::string& name, std::span<const int64_t> dims,
                                  std::span<const int64_t> values) {
  std::string raw(values.size() * sizeof(int64_t), '\0');
  if (!values.empty()) std::memcpy(raw.data(), values.data(), raw.size());
  return MakeRawTensor(name, onnx_type::kInt64, dims, std::move(raw));
}

std::string DimsToString(std::span<const int64_t> dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

}  // namespace quantd
