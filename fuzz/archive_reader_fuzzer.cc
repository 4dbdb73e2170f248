// Hostile archives must give a Status and never write outside the
// destination folder.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/archive.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto root = std::filesystem::temp_directory_path() / ("quantd-archive-fuzz-" + std::to_string(::getpid()));
  std::filesystem::create_directories(root);
  const auto archive = root / "input.tar";
  const auto destination = root / "out";
  {
    std::ofstream out(archive, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  quantd::ArchiveLimits limits;
  limits.max_total_bytes = 8 << 20;
  limits.max_entries = 1000;
  auto result = quantd::ExtractArchive(archive, destination, limits);
  (void)result;
  // Anything extracted must be inside the destination.
  for (const auto& entry : std::filesystem::directory_iterator(root)) {
    auto name = entry.path().filename().string();
    if (name != "input.tar" && name != "out") std::abort();
  }
  std::error_code ec;
  std::filesystem::remove_all(destination, ec);
  return 0;
}
