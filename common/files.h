#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "common/status.h"

namespace quantd {

// Writes through a temporary file in the same folder, fsyncs it, renames it
// over the target and fsyncs the folder, so readers never see a torn file
// and a crash leaves either the old or the new content.
Status WriteFileAtomic(const std::filesystem::path& target, std::string_view content);

// Makes a finished temporary file durable and moves it into place.
Status CommitFileAtomic(const std::filesystem::path& temp, const std::filesystem::path& target);

StatusOr<std::string> ReadFile(const std::filesystem::path& file, int64_t max_bytes);

Status FsyncPath(const std::filesystem::path& path);

}  // namespace quantd
