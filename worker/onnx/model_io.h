// Loading and saving ONNX models with the checks an untrusted upload needs.
//
// Failure reasons:
//   MODEL_NOT_FOUND             the model file does not exist
//   MODEL_INVALID               not a ModelProto, or structurally broken
//   MODEL_TOO_LARGE             beyond ModelLimits (or ≥ 2 GiB when saving)
//   MODEL_UNSUPPORTED_OPSET     default-domain opset outside 7..21 or absent
//   MODEL_EXTERNAL_DATA_UNSAFE  external tensor data that could read outside
//                               the model's folder or outside its file
//   MODEL_WRITE_FAILED          I/O error while saving
#pragma once

#include <cstdint>
#include <filesystem>
#include <string_view>

#include <onnx/onnx_pb.h>

#include "common/input_limits.h"
#include "common/status.h"

namespace quantd {

inline constexpr int kMinSupportedOpset = 7;
inline constexpr int kMaxSupportedOpset = 21;

// Parses and validates `file`. Tensors stored as external data are read into
// raw_data, so the returned model is self-contained.
StatusOr<onnx::ModelProto> LoadModel(const std::filesystem::path& file, const ModelLimits& limits);

// Same checks for an in-memory model; external data is refused since there
// is no folder it could be relative to.
StatusOr<onnx::ModelProto> ParseModelBytes(std::string_view bytes, const ModelLimits& limits);

// Writes `model` to `file` atomically: a temporary file in the same folder is
// written, fsynced and renamed over `file`. Models whose serialised size is
// 2 GiB or more are refused (they would need external data).
Status SaveModel(const onnx::ModelProto& model, const std::filesystem::path& file);

}  // namespace quantd
