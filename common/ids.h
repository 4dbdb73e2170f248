#pragma once

#include <cstdint>
#include <string>

namespace quantd {

// Random identifier: prefix + 16 hex digits from a CSPRNG-seeded generator.
std::string NewId(const std::string& prefix);
int64_t UnixMillisNow();

}  // namespace quantd
