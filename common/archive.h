// Calibration sets travel as tar archives (optionally gzip/xz/zstd
// compressed). Extraction is the hostile-input boundary: every limit is
// enforced while streaming, before bytes reach the disk.
#pragma once

#include <cstdint>
#include <filesystem>

#include "common/input_limits.h"
#include "common/status.h"

namespace quantd {

struct ExtractedArchive {
  int64_t files = 0;
  int64_t bytes = 0;
};

// Extracts the regular files and folders of `archive` under `destination`
// (created if missing). Refused, with reason ARCHIVE_UNSAFE or
// ARCHIVE_LIMIT_EXCEEDED and a message naming the entry: absolute paths,
// `..` components, links, devices, duplicate names, and anything over a
// limit. Unreadable data is ARCHIVE_INVALID. On failure the destination is
// removed again so no partial set is left behind.
StatusOr<ExtractedArchive> ExtractArchive(const std::filesystem::path& archive,
                                          const std::filesystem::path& destination, const ArchiveLimits& limits);

// Writes the regular files under `source` (recursively, sorted by path, so
// the same folder always gives the same bytes and digest) as a POSIX tar.
Status CreateTarArchive(const std::filesystem::path& source, const std::filesystem::path& archive);

}  // namespace quantd
