// Element types, sizes and construction of ONNX tensors.
//
// The installed ONNX headers (1.12) predate FLOAT8 and the 4-bit types, so
// their numbers are spelled out here; TensorProto.data_type is a plain int32
// field and accepts them.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <onnx/onnx_pb.h>

#include "common/status.h"

namespace quantd {

namespace onnx_type {
inline constexpr int32_t kUndefined = 0;
inline constexpr int32_t kFloat = 1;
inline constexpr int32_t kUint8 = 2;
inline constexpr int32_t kInt8 = 3;
inline constexpr int32_t kUint16 = 4;
inline constexpr int32_t kInt16 = 5;
inline constexpr int32_t kInt32 = 6;
inline constexpr int32_t kInt64 = 7;
inline constexpr int32_t kString = 8;
inline constexpr int32_t kBool = 9;
inline constexpr int32_t kFloat16 = 10;
inline constexpr int32_t kDouble = 11;
inline constexpr int32_t kUint32 = 12;
inline constexpr int32_t kUint64 = 13;
inline constexpr int32_t kComplex64 = 14;
inline constexpr int32_t kComplex128 = 15;
inline constexpr int32_t kBfloat16 = 16;
inline constexpr int32_t kFloat8E4M3FN = 17;
inline constexpr int32_t kFloat8E4M3FNUZ = 18;
inline constexpr int32_t kFloat8E5M2 = 19;
inline constexpr int32_t kFloat8E5M2FNUZ = 20;
inline constexpr int32_t kUint4 = 21;
inline constexpr int32_t kInt4 = 22;
}  // namespace onnx_type

// "FLOAT", "INT4", ...; "data_type N" for numbers this code does not know.
std::string DataTypeName(int32_t data_type);

// True for the element types of IR version 10 (data types 1..22).
bool IsKnownDataType(int32_t data_type);

// Bytes that `count` elements of `data_type` take in raw_data (4-bit types
// pack two to a byte, rounded up). nullopt for STRING, unknown types and
// overflow.
std::optional<int64_t> RawByteSize(int32_t data_type, int64_t count);

// Product of the dims; nullopt if a dim is negative or the product exceeds
// `limit`.
std::optional<int64_t> ElementCount(std::span<const int64_t> dims,
                                    int64_t limit = INT64_MAX);
std::optional<int64_t> ElementCount(const onnx::TensorProto& tensor,
                                    int64_t limit = INT64_MAX);

std::vector<int64_t> DimsOf(const onnx::TensorProto& tensor);

// Reads a FLOAT tensor held inline (raw_data or float_data).
StatusOr<std::vector<float>> ReadFloatTensor(const onnx::TensorProto& tensor);

// A tensor whose payload is `raw` (little-endian, packed as ONNX expects).
onnx::TensorProto MakeRawTensor(const std::string& name, int32_t data_type,
                                std::span<const int64_t> dims, std::string raw);

onnx::TensorProto MakeFloatTensor(const std::string& name,
                                  std::span<const int64_t> dims,
                                  std::span<const float> values);
onnx::TensorProto MakeInt64Tensor(const std::string& name,
                                  std::span<const int64_t> dims,
                                  std::span<const int64_t> values);

// "[2,3,4]" for messages.
std::string DimsToString(std::span<const int64_t> dims);

}  // namespace quantd
