// Dynamic quantization: the float weights of MatMul and Gemm (and the
// embedding tables Gather reads) become 8-bit integers at conversion time,
// while their float inputs are quantized at run time (range measured per
// call), so no calibration data is needed. A weight or bias that reaches its
// node through Identity nodes (how PyTorch writes deduplicated parameters)
// counts as the initializer behind them; Identity copies nothing reads
// afterwards are removed.
//
// A MatMul (or Gemm) Y = X * W with W a float initializer becomes, in the
// default form, one ONNX Runtime operator:
//
//   com.microsoft DynamicQuantizeMatMul(X, W_q, W_scale, W_zp [, bias]) -> Y
//
// which quantizes X to uint8 per call, multiplies in integers and applies
// the scales and the bias. A MatMul's PyTorch-style bias (an Add of a 1-D
// constant that only it feeds) and a Gemm's row-broadcast C go into the
// bias input. For runtimes without ONNX Runtime's operators the standard
// form spells the same arithmetic in standard operators:
//
//   DynamicQuantizeLinear(X)              -> X_q (uint8), X_scale, X_zp
//   MatMulInteger(X_q, W_q, X_zp, W_zp)   -> int32
//   Cast(to = FLOAT)                      -> float
//   Mul(X_scale, W_scale)                 -> multiplier, one per column
//   Mul(float, multiplier)                -> Y            (MatMul; Gemm without C)
//   Add(..., beta * C)                    -> Y            (Gemm with C)
//
// which ONNX Runtime 1.30's CPU provider fuses back into
// MatMulIntegerToFloat (bias included) and, where X feeds a single quantized
// node, with its DynamicQuantizeLinear into DynamicQuantizeMatMul. Both
// forms compute the same values; the fused one writes about a quarter of the
// graph bytes per MatMul (230 instead of 900 on the bundled transformer),
// which matters for small models.
//
// Embedding tables read by Gather (along axis 0) are stored as int8 rows
// with one float scale per row, which is what makes an NLP model with a
// large vocabulary small; only the rows a call looks up are converted:
//
//   Gather(table_q, ids)                  -> int8 rows
//   Gather(row_scale [V, 1, ...], ids)    -> their scales
//   Cast(to = FLOAT), Mul                 -> Y
//
// standard operators in both forms. A table some other node reads in float
// is left alone, since the float copy would have to stay beside it.
//
// W_q is W quantized symmetrically per output column (values -127..127) and
// stored as [K, N]: a Gemm's transB weight is transposed at conversion and
// its alpha folded into W_scale. W_q is UINT8 with zero point 128 (one
// scalar shared by all weights) rather than INT8: x86 CPUs without VNNI
// multiply uint8 x int8 with VPMADDUBSW, whose 16-bit pair sums saturate
// for large weights and activations, and ONNX Runtime does not avoid that by
// default; uint8 x uint8 takes a path that cannot overflow.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "common/status.h"
#include "worker/quant/full_quant.h"

namespace quantd {

enum class DynamicQuantForm {
  kOnnxRuntimeFused,  // com.microsoft DynamicQuantizeMatMul
  kStandardOnnx,      // DynamicQuantizeLinear + MatMulInteger + Cast + Mul
};

struct DynamicQuantOptions {
  DynamicQuantForm form = DynamicQuantForm::kOnnxRuntimeFused;
  // Node names kept in float.
  std::set<std::string> skip_quant_node;
  // A weight or table is quantized only if it has MORE elements than this.
  int64_t min_quant_weight_size = 0;
};

struct DynamicQuantReport {
  // MatMul/Gemm nodes first, then Gathers.
  std::vector<std::string> quantized_nodes;
  std::vector<SkippedNode> skipped;
  int output_opset = 0;
  // MatMul bias Adds taken into fused nodes (and so removed).
  int fused_bias_adds = 0;
  // Per stored weight (one per tensor and layout it is read in) and table:
  // 4 bytes per float element before; integer payload and scale tensors
  // after, plus the one zero point byte all MatMul/Gemm weights share.
  int64_t float_weight_bytes = 0;
  int64_t quantized_weight_bytes = 0;
};

// Rewrites the main graph's MatMul nodes whose second input is a rank-2
// FLOAT initializer, Gemm nodes with transA = 0 and a FLOAT initializer B,
// and Gather nodes on axis 0 of a FLOAT initializer of rank 2 or more, as
// described above. A fused node keeps the name of the node it
// replaces. In the standard form an activation read by several quantized
// nodes is quantized once. Float weights (and Gemm C constants) nothing
// reads any more are dropped. The fused form adds the com.microsoft opset
// import and keeps the default opset. The standard form keeps opsets from 11
// on, since every operator it uses exists from 11; older ones are handed to
// UpgradeOpset (target 13) when anything would be quantized, which currently
// refuses sources below 11, so they fail with its error. Nothing is changed
// when no node qualifies. Weights with NaN or infinity are skipped, not
// errors.
StatusOr<DynamicQuantReport> QuantizeDynamic(onnx::ModelProto& model, const DynamicQuantOptions& options);

}  // namespace quantd
