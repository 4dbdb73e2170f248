// Hostile ONNX bytes must give a Status, never a crash or a hang.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "worker/onnx/model_io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  quantd::ModelLimits limits;
  limits.max_model_bytes = 1 << 20;
  limits.max_tensor_elements = 1 << 20;
  auto model = quantd::ParseModelBytes(std::string_view(reinterpret_cast<const char*>(data), size), limits);
  (void)model;
  return 0;
}
