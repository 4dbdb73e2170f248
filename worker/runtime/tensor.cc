#include "worker/runtime/tensor.h"

#include <bit>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>

#include <onnx/onnx_pb.h>

#include "worker/onnx/tensor_util.h"

namespace quantd::runtime {

static_assert(std::endian::native == std::endian::little,
              "raw tensor data is read and written as host byte order");

namespace {

constexpr size_t kAlignment = 64;

// Freshly mapped memory costs a page fault per 4 KiB on first touch, which
// for activation-sized tensors takes longer than the elementwise op that
// writes them; glibc returns large blocks to the kernel on free. So freed
// buffers of at least kCacheMinBytes are kept (up to a byte limit) and
// handed out again for requests of similar size.
constexpr size_t kCacheMinBytes = 64u << 10;

class BufferCache {
 public:
  static BufferCache& Get() {
    // Never destroyed: tensors may outlive static destruction.
    static BufferCache* cache = new BufferCache();
    return *cache;
  }

  std::byte* Take(size_t bytes) {
    if (bytes >= kCacheMinBytes) {
      std::lock_guard<std::mutex> lock(mutex_);
      // The smallest cached block that fits, if it is at most twice the
      // size: a model run on a smaller batch (the last, partial one of a
      // calibration set) then reuses the blocks of the full batches.
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes) {
        std::byte* p = it->second;
        const size_t size = it->first;
        cached_bytes_ -= size;
        free_.erase(it);
        if (size != bytes) sizes_[p] = size;
        return p;
      }
    }
    return static_cast<std::byte*>(::operator new[](bytes, std::align_val_t(kAlignment)));
  }

  // `bytes` is what was asked for; a reused block may be larger.
  void Give(std::byte* p, size_t bytes) {
    if (bytes >= kCacheMinBytes) {
      std::lock_guard<std::mutex> lock(mutex_);
      auto known = sizes_.find(p);
      if (known != sizes_.end()) {
        bytes = known->second;
        sizes_.erase(known);
      }
      if (cached_bytes_ + bytes <= limit_) {
        free_.emplace(bytes, p);
        cached_bytes_ += bytes;
        return;
      }
    }
    ::operator delete[](p, std::align_val_t(kAlignment));
  }

  void SetLimit(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = bytes;
    while (cached_bytes_ > limit_ && !free_.empty()) {
      auto it = std::prev(free_.end());
      cached_bytes_ -= it->first;
      ::operator delete[](it->second, std::align_val_t(kAlignment));
      free_.erase(it);
    }
  }

  size_t limit() {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_;
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_bytes_;
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, std::byte*> free_;
  // Blocks handed out larger than requested, so Give() files them by their
  // real size.
  std::unordered_map<std::byte*, size_t> sizes_;
  size_t cached_bytes_ = 0;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // Recycled blocks would hide use-after-free from the sanitizers.
  size_t limit_ = 0;
#else
  size_t limit_ = 256u << 20;
#endif
};

std::shared_ptr<std::byte> AllocateAligned(size_t bytes) {
  // Rounded up to whole cache lines so vector loops may read a full last
  // line, and never zero so data() is a valid pointer for empty tensors.
  size_t padded = (std::max<size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
  std::byte* p = BufferCache::Get().Take(padded);
  return std::shared_ptr<std::byte>(p, [padded](std::byte* q) { BufferCache::Get().Give(q, padded); });
}

Status BadTensor(const std::string& name, const std::string& why) {
  return InvalidArgument("MODEL_INVALID", "tensor '" + name + "': " + why);
}

// Copies a repeated proto field element-wise into the tensor, converting
// from the proto's storage type (e.g. int32_data for int8).
template <typename Dst, typename Field>
void CopyField(const Field& field, Tensor& tensor) {
  Dst* out = tensor.data<Dst>();
  for (int64_t i = 0; i < tensor.size(); ++i) out[i] = static_cast<Dst>(field.Get(static_cast<int>(i)));
}

template <typename Field>
void CopyBits16(const Field& field, Tensor& tensor) {
  auto* out = tensor.data<uint16_t>();
  for (int64_t i = 0; i < tensor.size(); ++i) out[i] = static_cast<uint16_t>(field.Get(static_cast<int>(i)));
}

void UnpackInt4(const uint8_t* packed, int64_t count, bool is_signed, uint8_t* out) {
  for (int64_t i = 0; i < count; ++i) {
    uint8_t byte = packed[i / 2];
    uint8_t nibble = (i % 2 == 0) ? (byte & 0x0F) : (byte >> 4);
    if (is_signed && (nibble & 0x08)) nibble |= 0xF0;
    out[i] = nibble;
  }
}

}  // namespace

void SetTensorBufferCacheLimit(size_t bytes) { BufferCache::Get().SetLimit(bytes); }
size_t TensorBufferCacheLimit() { return BufferCache::Get().limit(); }
size_t TensorBufferCacheBytes() { return BufferCache::Get().cached_bytes(); }

float HalfToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal half: value = mant * 2^-24, exactly representable in float.
    float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return (h & 0x8000) ? -v : v;
  }
  return std::bit_cast<float>(bits);
}

uint16_t FloatToHalf(float value) {
  uint32_t f = std::bit_cast<uint32_t>(value);
  uint16_t sign = static_cast<uint16_t>((f >> 16) & 0x8000);
  uint32_t abs = f & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // inf or nan
    return static_cast<uint16_t>(sign | 0x7C00 | (abs > 0x7F800000u ? 0x200 : 0));
  }
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00);  // rounds to inf
  if (abs < 0x38800000u) {
    // Subnormal or zero in half: scale so that the float adder rounds to
    // nearest even at the half subnormal quantum (2^-24).
    float a = std::bit_cast<float>(abs);
    float r = a + 0.5f;  // 0.5 has quantum 2^-24 in [0.5, 1)
    uint32_t rb = std::bit_cast<uint32_t>(r) - std::bit_cast<uint32_t>(0.5f);
    return static_cast<uint16_t>(sign | rb);
  }
  uint32_t mant_odd = (abs >> 13) & 1;
  abs += 0xC8000FFFu + mant_odd;  // rebias exponent (-112 << 23) and round
  return static_cast<uint16_t>(sign | (abs >> 13));
}

float Bfloat16ToFloat(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

uint16_t FloatToBfloat16(float value) {
  uint32_t f = std::bit_cast<uint32_t>(value);
  if ((f & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((f >> 16) | 0x40);
  uint32_t rounding = 0x7FFF + ((f >> 16) & 1);
  return static_cast<uint16_t>((f + rounding) >> 16);
}

size_t ElementSize(DataType type) {
  switch (type) {
    case DataType::kBool:
    case DataType::kUint8:
    case DataType::kInt8:
    case DataType::kUint4:
    case DataType::kInt4:
      return 1;
    case DataType::kUint16:
    case DataType::kInt16:
    case DataType::kFloat16:
    case DataType::kBfloat16:
      return 2;
    case DataType::kFloat:
    case DataType::kInt32:
    case DataType::kUint32:
      return 4;
    case DataType::kInt64:
    case DataType::kUint64:
    case DataType::kDouble:
      return 8;
    default:
      return 0;
  }
}

std::string ToString(DataType type) {
  switch (type) {
    case DataType::kUndefined: return "undefined";
    case DataType::kFloat: return "float32";
    case DataType::kUint8: return "uint8";
    case DataType::kInt8: return "int8";
    case DataType::kUint16: return "uint16";
    case DataType::kInt16: return "int16";
    case DataType::kInt32: return "int32";
    case DataType::kInt64: return "int64";
    case DataType::kString: return "string";
    case DataType::kBool: return "bool";
    case DataType::kFloat16: return "float16";
    case DataType::kDouble: return "float64";
    case DataType::kUint32: return "uint32";
    case DataType::kUint64: return "uint64";
    case DataType::kBfloat16: return "bfloat16";
    case DataType::kUint4: return "uint4";
    case DataType::kInt4: return "int4";
  }
  return "data_type " + std::to_string(static_cast<int>(type));
}

bool IsSupported(DataType type) { return ElementSize(type) != 0; }

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeToString(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Tensor::Tensor(DataType type, Shape shape) : dtype_(type), shape_(std::move(shape)), size_(NumElements(shape_)) {
  buffer_ = AllocateAligned(static_cast<size_t>(size_) * ElementSize(dtype_));
  data_ = buffer_.get();
}

Tensor Tensor::Zeros(DataType type, Shape shape) {
  Tensor t(type, std::move(shape));
  std::memset(t.data_, 0, t.bytes());
  return t;
}

Tensor Tensor::Reshaped(Shape shape) const {
  Tensor t = *this;
  t.shape_ = std::move(shape);
  t.size_ = NumElements(t.shape_);
  return t;
}

Tensor Tensor::Clone() const {
  if (!defined()) return {};
  Tensor t(dtype_, shape_);
  if (bytes()) std::memcpy(t.data_, data_, bytes());
  return t;
}

StatusOr<Tensor> TensorFromProto(const onnx::TensorProto& proto) {
  const std::string& name = proto.name();
  if (proto.data_location() == onnx::TensorProto::EXTERNAL) {
    return BadTensor(name, "external data was not loaded");
  }
  auto dtype = static_cast<DataType>(proto.data_type());
  if (!IsSupported(dtype)) {
    return Status(StatusCode::kUnimplemented, "RUNTIME_UNSUPPORTED_TYPE",
                  "tensor '" + name + "' has element type " + DataTypeName(proto.data_type()) +
                      ", which the CPU executor does not support");
  }
  Shape shape(proto.dims().begin(), proto.dims().end());
  for (int64_t d : shape) {
    if (d < 0) return BadTensor(name, "negative dimension in " + ShapeToString(shape));
  }
  auto count = ElementCount(shape);
  if (!count) return BadTensor(name, "element count overflows");
  const int64_t n = *count;
  const bool four_bit = dtype == DataType::kInt4 || dtype == DataType::kUint4;

  // Sizes are checked before anything is allocated, so a corrupt proto
  // cannot ask for an absurd buffer.
  if (proto.has_raw_data()) {
    const std::string& raw = proto.raw_data();
    auto expected = RawByteSize(proto.data_type(), n);
    if (!expected || static_cast<int64_t>(raw.size()) != *expected) {
      return BadTensor(name, "raw_data holds " + std::to_string(raw.size()) + " bytes, expected " +
                                 (expected ? std::to_string(*expected) : std::string("?")) + " for " +
                                 ShapeToString(shape));
    }
    Tensor tensor(dtype, shape);
    if (four_bit) {
      UnpackInt4(reinterpret_cast<const uint8_t*>(raw.data()), n, dtype == DataType::kInt4,
                 tensor.data<uint8_t>());
    } else if (!raw.empty()) {
      std::memcpy(tensor.raw(), raw.data(), raw.size());
    }
    if (dtype == DataType::kBool) {
      auto* b = tensor.data<uint8_t>();
      for (int64_t i = 0; i < n; ++i) b[i] = b[i] != 0;
    }
    return tensor;
  }

  int64_t have = 0;
  int64_t want = four_bit ? (n + 1) / 2 : n;
  switch (dtype) {
    case DataType::kFloat: have = proto.float_data_size(); break;
    case DataType::kDouble: have = proto.double_data_size(); break;
    case DataType::kInt64: have = proto.int64_data_size(); break;
    case DataType::kUint32:
    case DataType::kUint64: have = proto.uint64_data_size(); break;
    default: have = proto.int32_data_size(); break;
  }
  if (have != want) {
    return BadTensor(name, "holds " + std::to_string(have) + " values, expected " + std::to_string(want) + " for " +
                               ShapeToString(shape));
  }
  Tensor tensor(dtype, shape);
  switch (dtype) {
    case DataType::kFloat:
      CopyField<float>(proto.float_data(), tensor);
      break;
    case DataType::kDouble:
      CopyField<double>(proto.double_data(), tensor);
      break;
    case DataType::kInt64:
      CopyField<int64_t>(proto.int64_data(), tensor);
      break;
    case DataType::kUint32:
      CopyField<uint32_t>(proto.uint64_data(), tensor);
      break;
    case DataType::kUint64:
      CopyField<uint64_t>(proto.uint64_data(), tensor);
      break;
    case DataType::kInt32:
      CopyField<int32_t>(proto.int32_data(), tensor);
      break;
    case DataType::kInt16:
      CopyField<int16_t>(proto.int32_data(), tensor);
      break;
    case DataType::kUint16:
    case DataType::kFloat16:
    case DataType::kBfloat16:
      CopyBits16(proto.int32_data(), tensor);
      break;
    case DataType::kInt8:
      CopyField<int8_t>(proto.int32_data(), tensor);
      break;
    case DataType::kUint8:
      CopyField<uint8_t>(proto.int32_data(), tensor);
      break;
    case DataType::kBool: {
      auto* out = tensor.data<uint8_t>();
      for (int64_t i = 0; i < n; ++i) out[i] = proto.int32_data(static_cast<int>(i)) != 0;
      break;
    }
    case DataType::kInt4:
    case DataType::kUint4: {
      // int32_data holds the packed bytes, one per entry.
      std::vector<uint8_t> packed(static_cast<size_t>((n + 1) / 2));
      for (size_t i = 0; i < packed.size(); ++i) packed[i] = static_cast<uint8_t>(proto.int32_data(static_cast<int>(i)));
      UnpackInt4(packed.data(), n, dtype == DataType::kInt4, tensor.data<uint8_t>());
      break;
    }
    default:
      return BadTensor(name, "unsupported element type");
  }
  return tensor;
}

void TensorToProto(const Tensor& tensor, const std::string& name, onnx::TensorProto* proto) {
  proto->Clear();
  proto->set_name(name);
  proto->set_data_type(static_cast<int32_t>(tensor.dtype()));
  for (int64_t d : tensor.shape()) proto->add_dims(d);
  if (tensor.dtype() == DataType::kInt4 || tensor.dtype() == DataType::kUint4) {
    std::string packed(static_cast<size_t>((tensor.size() + 1) / 2), '\0');
    const auto* in = tensor.data<uint8_t>();
    for (int64_t i = 0; i < tensor.size(); ++i) {
      uint8_t nibble = in[i] & 0x0F;
      packed[static_cast<size_t>(i / 2)] |= static_cast<char>(i % 2 == 0 ? nibble : nibble << 4);
    }
    proto->set_raw_data(std::move(packed));
    return;
  }
  proto->set_raw_data(std::string(static_cast<const char*>(tensor.raw()), tensor.bytes()));
}

}  // namespace quantd::runtime
