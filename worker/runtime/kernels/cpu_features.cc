#include "worker/runtime/kernels/cpu_features.h"

#include <algorithm>
#include <cstdlib>
#include <string>

namespace quantd::runtime {

int VectorWidth() {
  static const int width = [] {
    int w = __builtin_cpu_supports("avx512f")                                   ? 16
            : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 8
                                                                                : 4;
    if (const char* cap = std::getenv("QUANTD_RUNTIME_ISA")) {
      const std::string name = cap;
      if (name == "avx2") w = std::min(w, 8);
      if (name == "sse") w = 4;
    }
    return w;
  }();
  return width;
}

}  // namespace quantd::runtime
