#include "common/archive.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>
#include <vector>

namespace quantd {
namespace {

struct ReadArchiveDeleter {
  void operator()(struct archive* a) const { archive_read_free(a); }
};
struct WriteArchiveDeleter {
  void operator()(struct archive* a) const { archive_write_free(a); }
};

Status Unsafe(const std::string& entry, const std::string& why) {
  return InvalidArgument("ARCHIVE_UNSAFE", "archive entry '" + entry.substr(0, 200) + "' " + why);
}

Status OverLimit(const std::string& what) { return ResourceExhausted("ARCHIVE_LIMIT_EXCEEDED", what); }

// Returns the normalised relative path, or an error if it could escape.
StatusOr<std::filesystem::path> SafeRelativePath(const std::string& name, int max_depth) {
  if (name.empty()) return Unsafe(name, "has an empty name");
  if (name.find('\0') != std::string::npos) return Unsafe(name, "has a NUL in its name");
  std::filesystem::path path(name);
  if (path.is_absolute() || name.front() == '/') return Unsafe(name, "is an absolute path");
  std::filesystem::path clean;
  int depth = 0;
  for (const auto& part : path) {
    auto text = part.string();
    if (text.empty() || text == ".") continue;
    if (text == "..") return Unsafe(name, "climbs out of the archive with '..'");
    clean /= part;
    if (++depth > max_depth)
      return Unsafe(name,
                    "is nested deeper than " + std::to_string(max_depth) + " folders (limits.max_archive_path_depth)");
  }
  if (clean.empty()) return Unsafe(name, "names no file");
  return clean;
}

Status ExtractInto(struct archive* reader, const std::filesystem::path& destination, const ArchiveLimits& limits,
                   int64_t archive_bytes, ExtractedArchive& result) {
  std::set<std::string> seen;
  struct archive_entry* entry = nullptr;
  int64_t entries = 0;
  std::vector<char> buffer(1 << 16);
  while (true) {
    int rc = archive_read_next_header(reader, &entry);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) {
      return InvalidArgument("ARCHIVE_INVALID", std::string("not a readable tar archive: ") +
                                                    (archive_error_string(reader) ? archive_error_string(reader) : "?"));
    }
    if (++entries > limits.max_entries) {
      return OverLimit("archive has more than " + std::to_string(limits.max_entries) +
                       " entries (limits.max_archive_entries)");
    }
    const char* raw_name = archive_entry_pathname(entry);
    std::string name = raw_name ? raw_name : "";
    QUANTD_ASSIGN_OR_RETURN(auto relative, SafeRelativePath(name, limits.max_path_depth));
    auto type = archive_entry_filetype(entry);
    if (archive_entry_hardlink(entry) != nullptr || type == AE_IFLNK) {
      return Unsafe(name, "is a link; only regular files and folders are allowed");
    }
    auto target = destination / relative;
    if (type == AE_IFDIR) {
      std::error_code ec;
      std::filesystem::create_directories(target, ec);
      if (ec) return Internal("IO_ERROR", "cannot create " + target.string() + ": " + ec.message());
      continue;
    }
    if (type != AE_IFREG) return Unsafe(name, "is not a regular file or folder");
    if (!seen.insert(relative.string()).second) return Unsafe(name, "appears twice");
    if (archive_entry_size_is_set(entry) && archive_entry_size(entry) > limits.max_entry_bytes) {
      return OverLimit("archive entry '" + name + "' is " + std::to_string(archive_entry_size(entry)) +
                       " bytes; the limit is " + std::to_string(limits.max_entry_bytes) +
                       " (limits.max_archive_entry_bytes)");
    }
    std::error_code ec;
    std::filesystem::create_directories(target.parent_path(), ec);
    // O_NOFOLLOW|O_EXCL: nothing in the fresh destination may redirect the write.
    int fd = ::open(target.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return Unsafe(name, std::string("cannot be created safely: ") + std::strerror(errno));
    int64_t entry_bytes = 0;
    Status status;
    while (status.ok()) {
      la_ssize_t n = archive_read_data(reader, buffer.data(), buffer.size());
      if (n == 0) break;
      if (n < 0) {
        status = InvalidArgument("ARCHIVE_INVALID", "corrupt data in archive entry '" + name + "': " +
                                                        (archive_error_string(reader) ? archive_error_string(reader) : "?"));
        break;
      }
      entry_bytes += n;
      result.bytes += n;
      if (entry_bytes > limits.max_entry_bytes) {
        status = OverLimit("archive entry '" + name + "' exceeds " + std::to_string(limits.max_entry_bytes) +
                           " bytes (limits.max_archive_entry_bytes)");
      } else if (result.bytes > limits.max_total_bytes) {
        status = OverLimit("archive expands past " + std::to_string(limits.max_total_bytes) +
                           " bytes (limits.max_archive_total_bytes)");
      } else if (static_cast<double>(result.bytes) > limits.max_compression_ratio * static_cast<double>(std::max<int64_t>(archive_bytes, 1024))) {
        status =
            OverLimit("archive expands more than " + std::to_string(static_cast<int>(limits.max_compression_ratio)) +
                      "x its size (limits.max_compression_ratio; a compression bomb?)");
      } else if (::write(fd, buffer.data(), static_cast<size_t>(n)) != n) {
        status = Internal("IO_ERROR", "cannot write " + target.string() + ": " + std::strerror(errno));
      }
    }
    ::close(fd);
    QUANTD_RETURN_IF_ERROR(status);
    ++result.files;
  }
  return Status::Ok();
}

}  // namespace

StatusOr<ExtractedArchive> ExtractArchive(const std::filesystem::path& archive, const std::filesystem::path& destination,
                                          const ArchiveLimits& limits) {
  std::error_code ec;
  auto archive_bytes = static_cast<int64_t>(std::filesystem::file_size(archive, ec));
  if (ec) return NotFound("ARCHIVE_NOT_FOUND", "cannot read archive " + archive.string() + ": " + ec.message());
  if (archive_bytes > limits.max_archive_bytes) {
    return OverLimit("archive is " + std::to_string(archive_bytes) + " bytes; the limit is " +
                     std::to_string(limits.max_archive_bytes) + " (limits.max_archive_bytes)");
  }
  std::unique_ptr<struct archive, ReadArchiveDeleter> reader(archive_read_new());
  archive_read_support_filter_gzip(reader.get());
  archive_read_support_filter_xz(reader.get());
  archive_read_support_filter_zstd(reader.get());
  archive_read_support_format_tar(reader.get());
  if (archive_read_open_filename(reader.get(), archive.c_str(), 1 << 16) != ARCHIVE_OK) {
    return InvalidArgument("ARCHIVE_INVALID", std::string("not a readable tar archive: ") +
                                                  (archive_error_string(reader.get()) ? archive_error_string(reader.get()) : "?"));
  }
  bool existed = std::filesystem::exists(destination, ec);
  std::filesystem::create_directories(destination, ec);
  ExtractedArchive result;
  Status status = ExtractInto(reader.get(), destination, limits, archive_bytes, result);
  if (!status.ok()) {
    if (!existed) std::filesystem::remove_all(destination, ec);
    return status;
  }
  return result;
}

Status CreateTarArchive(const std::filesystem::path& source, const std::filesystem::path& archive) {
  std::error_code ec;
  if (!std::filesystem::is_directory(source, ec)) {
    return NotFound("CALIBRATION_DIR_NOT_FOUND", source.string() + " is not a folder");
  }
  std::vector<std::filesystem::path> files;
  for (auto it = std::filesystem::recursive_directory_iterator(source, ec); it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) break;
    if (it->is_regular_file(ec) && !it->is_symlink(ec)) files.push_back(it->path());
  }
  if (ec) return Internal("IO_ERROR", "cannot list " + source.string() + ": " + ec.message());
  std::sort(files.begin(), files.end());
  std::unique_ptr<struct archive, WriteArchiveDeleter> writer(archive_write_new());
  archive_write_set_format_pax_restricted(writer.get());
  if (archive_write_open_filename(writer.get(), archive.c_str()) != ARCHIVE_OK) {
    return Internal("IO_ERROR", "cannot create " + archive.string());
  }
  std::vector<char> buffer(1 << 16);
  for (const auto& file : files) {
    auto relative = std::filesystem::relative(file, source, ec).generic_string();
    auto size = static_cast<int64_t>(std::filesystem::file_size(file, ec));
    std::unique_ptr<struct archive_entry, decltype(&archive_entry_free)> entry(archive_entry_new(), archive_entry_free);
    archive_entry_set_pathname(entry.get(), relative.c_str());
    archive_entry_set_size(entry.get(), size);
    archive_entry_set_filetype(entry.get(), AE_IFREG);
    archive_entry_set_perm(entry.get(), 0644);
    archive_entry_set_mtime(entry.get(), 0, 0);  // reproducible bytes
    if (archive_write_header(writer.get(), entry.get()) != ARCHIVE_OK) {
      return Internal("IO_ERROR", std::string("cannot add ") + relative + ": " + archive_error_string(writer.get()));
    }
    std::ifstream in(file, std::ios::binary);
    while (in) {
      in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
      auto n = in.gcount();
      if (n > 0 && archive_write_data(writer.get(), buffer.data(), static_cast<size_t>(n)) != n) {
        return Internal("IO_ERROR", "cannot write " + archive.string());
      }
    }
  }
  if (archive_write_close(writer.get()) != ARCHIVE_OK) return Internal("IO_ERROR", "cannot finish " + archive.string());
  return Status::Ok();
}

}  // namespace quantd
