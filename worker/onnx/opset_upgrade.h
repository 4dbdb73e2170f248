// Moving a model's default-domain opset forward while keeping its meaning.
#pragma once

#include <onnx/onnx_pb.h>

#include "common/status.h"

namespace quantd {

// Brings the default-domain opset of `model` to `target` (13 or 21) from a
// source opset in 11..21, rewriting nodes (main graph and If/Loop/Scan
// bodies) whose operator changed incompatibly on the way:
//   - axes / split / ratio / DFT axis attributes become initializer inputs
//     (ReduceSum and Squeeze/Unsqueeze/Split at 13, Dropout at 12, the other
//     Reduce* at 18, DFT at 20); Split gains num_outputs at 18;
//   - Softmax, LogSoftmax, Hardmax (13 stopped flattening to 2-D) get an
//     explicit axis; allowed only when the old axis is the last dimension,
//     which needs the input rank from shape inference;
//   - RoiAlign (16) keeps its old output_half_pixel sampling explicitly;
//   - GridSample (20) mode names bilinear/bicubic become linear/cubic.
// Refused (reason MODEL_OPSET_UPGRADE_UNSUPPORTED, naming the op and node):
// Softmax family off the last axis or of unknown rank, Resize with
// tf_half_pixel_for_nn (gone at 13), BatchNormalization with training outputs
// (14), GroupNormalization (scale/bias meaning changed at 21), source opsets
// below 11, and local functions that import the default domain.
// Only default-domain nodes are touched. ir_version is raised to at least 7
// (target 13) or 10 (target 21). A model already at or above `target` is
// left unchanged. On failure the model is unchanged.
Status UpgradeOpset(onnx::ModelProto& model, int target);

}  // namespace quantd
