// Plain loop implementations of the compute-heavy operators, written to be
// obviously correct rather than fast: every output element is computed
// independently from the ONNX definition, accumulating in double. The
// optimised kernels are checked against these.
//
// All functions take and return float32 tensors and validate their inputs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/runtime/tensor.h"

namespace quantd::runtime::reference {

// Attributes as they appear on the ONNX node; empty vectors mean "absent"
// (defaults are applied per the operator definition).
struct ConvParams {
  std::vector<int64_t> kernel_shape;
  std::vector<int64_t> strides;
  std::vector<int64_t> pads;
  std::vector<int64_t> dilations;
  std::string auto_pad = "NOTSET";
  int64_t group = 1;
  // ConvTranspose only.
  std::vector<int64_t> output_padding;
  std::vector<int64_t> output_shape;
};

struct PoolParams {
  std::vector<int64_t> kernel_shape;
  std::vector<int64_t> strides;
  std::vector<int64_t> pads;
  std::vector<int64_t> dilations;
  std::string auto_pad = "NOTSET";
  bool ceil_mode = false;
  bool count_include_pad = false;  // AveragePool
  int64_t storage_order = 0;       // MaxPool indices
};

// X [N, C, D1..Dk], W [M, C/group, k1..kk], optional B [M].
StatusOr<Tensor> Conv(const Tensor& x, const Tensor& w, const Tensor* bias, const ConvParams& params);
// X [N, C, D1..Dk], W [C, M/group, k1..kk], optional B [M].
StatusOr<Tensor> ConvTranspose(const Tensor& x, const Tensor& w, const Tensor* bias, const ConvParams& params);

// Y = alpha * op(A) * op(B) + beta * C, C unidirectionally broadcast to [M, N].
StatusOr<Tensor> Gemm(const Tensor& a, const Tensor& b, const Tensor* c, bool trans_a, bool trans_b, float alpha,
                      float beta);
// numpy.matmul semantics (1-D operands promoted and the added axis removed).
StatusOr<Tensor> MatMul(const Tensor& a, const Tensor& b);

// MaxPool; when `indices` is not null it receives the flat index (int64) of
// each maximum, in row-major (storage_order 0) or column-major order.
StatusOr<Tensor> MaxPool(const Tensor& x, const PoolParams& params, Tensor* indices = nullptr);
StatusOr<Tensor> AveragePool(const Tensor& x, const PoolParams& params);
StatusOr<Tensor> GlobalAveragePool(const Tensor& x);
StatusOr<Tensor> GlobalMaxPool(const Tensor& x);

}  // namespace quantd::runtime::reference
