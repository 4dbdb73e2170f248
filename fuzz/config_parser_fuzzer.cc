// Hostile YAML/INI configs must give a Status, never a crash.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/config/quant_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto strict = quantd::config::ParseQuantConfig(text);
  quantd::config::ValidationContext separate;
  separate.calibration_supplied_separately = true;
  auto relaxed = quantd::config::ParseQuantConfig(text, separate);
  (void)strict;
  (void)relaxed;
  return 0;
}
