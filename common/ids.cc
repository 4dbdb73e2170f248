#include "common/ids.h"

#include <openssl/rand.h>

#include <chrono>
#include <cstdio>

namespace quantd {

std::string NewId(const std::string& prefix) {
  unsigned char bytes[8];
  RAND_bytes(bytes, sizeof(bytes));
  char hex[17];
  for (int i = 0; i < 8; ++i) std::snprintf(hex + 2 * i, 3, "%02x", bytes[i]);
  return prefix + hex;
}

int64_t UnixMillisNow() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace quantd
