// Dense tensors for the executor. Buffers are 64-byte aligned and shared
// (reshapes and views do not copy); a tensor's memory is freed when the last
// Tensor referring to it goes away.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "common/status.h"

namespace onnx {
class TensorProto;
}

namespace quantd::runtime {

// ONNX TensorProto.DataType numbering.
enum class DataType : int32_t {
  kUndefined = 0,
  kFloat = 1,
  kUint8 = 2,
  kInt8 = 3,
  kUint16 = 4,
  kInt16 = 5,
  kInt32 = 6,
  kInt64 = 7,
  kString = 8,
  kBool = 9,
  kFloat16 = 10,
  kDouble = 11,
  kUint32 = 12,
  kUint64 = 13,
  kBfloat16 = 16,
  // 4-bit integers are held unpacked, one element per byte (sign-extended
  // for kInt4), so kernels index them like int8/uint8. Packing to two per
  // byte happens only at the TensorProto boundary.
  kUint4 = 21,
  kInt4 = 22,
};

size_t ElementSize(DataType type);  // 0 for unsupported types
std::string ToString(DataType type);
bool IsSupported(DataType type);  // every type above except kString

template <typename T>
constexpr DataType DataTypeOf();
template <> constexpr DataType DataTypeOf<float>() { return DataType::kFloat; }
template <> constexpr DataType DataTypeOf<double>() { return DataType::kDouble; }
template <> constexpr DataType DataTypeOf<uint8_t>() { return DataType::kUint8; }
template <> constexpr DataType DataTypeOf<int8_t>() { return DataType::kInt8; }
template <> constexpr DataType DataTypeOf<uint16_t>() { return DataType::kUint16; }
template <> constexpr DataType DataTypeOf<int16_t>() { return DataType::kInt16; }
template <> constexpr DataType DataTypeOf<int32_t>() { return DataType::kInt32; }
template <> constexpr DataType DataTypeOf<int64_t>() { return DataType::kInt64; }
template <> constexpr DataType DataTypeOf<uint32_t>() { return DataType::kUint32; }
template <> constexpr DataType DataTypeOf<uint64_t>() { return DataType::kUint64; }
template <> constexpr DataType DataTypeOf<bool>() { return DataType::kBool; }

// IEEE binary16 and bfloat16 <-> float32 (round to nearest even).
float HalfToFloat(uint16_t bits);
uint16_t FloatToHalf(float value);
float Bfloat16ToFloat(uint16_t bits);
uint16_t FloatToBfloat16(float value);

// Freed tensor buffers of 64 KiB and more are cached for reuse (fresh
// pages fault on first touch, which costs more than most ops). The cache
// holds at most `bytes` (default 256 MiB); 0 frees it and disables caching.
void SetTensorBufferCacheLimit(size_t bytes);
size_t TensorBufferCacheLimit();
size_t TensorBufferCacheBytes();

using Shape = std::vector<int64_t>;
int64_t NumElements(const Shape& shape);
std::string ShapeToString(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  // Allocates an uninitialised buffer.
  Tensor(DataType type, Shape shape);
  static Tensor Zeros(DataType type, Shape shape);
  template <typename T>
  static Tensor FromVector(Shape shape, const std::vector<T>& values);
  template <typename T>
  static Tensor Scalar(T value) {
    return FromVector<T>({}, {value});
  }

  bool defined() const { return dtype_ != DataType::kUndefined; }
  DataType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[static_cast<size_t>(i)]; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t size() const { return size_; }
  size_t bytes() const { return static_cast<size_t>(size_) * ElementSize(dtype_); }

  void* raw() { return data_; }
  const void* raw() const { return data_; }
  template <typename T>
  T* data() {
    return static_cast<T*>(data_);
  }
  template <typename T>
  const T* data() const {
    return static_cast<const T*>(data_);
  }

  // Same buffer, new shape with the same element count.
  Tensor Reshaped(Shape shape) const;
  // Deep copy.
  Tensor Clone() const;
  // True if both refer to the same buffer.
  bool SharesBufferWith(const Tensor& other) const { return buffer_ && buffer_ == other.buffer_; }
  // How many Tensors refer to this buffer (0 when undefined); 1 means this
  // one is the only owner, so the buffer may be overwritten in place.
  long buffer_use_count() const { return buffer_.use_count(); }

 private:
  DataType dtype_ = DataType::kUndefined;
  Shape shape_;
  int64_t size_ = 0;
  std::shared_ptr<std::byte> buffer_;
  void* data_ = nullptr;
};

template <typename T>
Tensor Tensor::FromVector(Shape shape, const std::vector<T>& values) {
  Tensor tensor(DataTypeOf<T>(), std::move(shape));
  if constexpr (std::is_same_v<T, bool>) {
    for (size_t i = 0; i < values.size(); ++i) tensor.data<bool>()[i] = values[i];
  } else {
    std::copy(values.begin(), values.end(), tensor.data<T>());
  }
  return tensor;
}

// Reads an initializer / Constant value (raw_data or the typed fields).
// External data must already have been loaded into raw_data.
StatusOr<Tensor> TensorFromProto(const onnx::TensorProto& proto);
void TensorToProto(const Tensor& tensor, const std::string& name, onnx::TensorProto* proto);

}  // namespace quantd::runtime
