// Limits on untrusted input (models, calibration archives, images). The
// defaults suit a single machine; quantd.yaml's `limits` section overrides
// them and the server hands them to the worker with every job, so the
// pipeline enforces what the operator configured.
#pragma once

#include <cstdint>

namespace quantd {

struct ModelLimits {
  int64_t max_model_bytes = 2LL << 30;  // file plus all external data
  int64_t max_nodes = 1'000'000;        // summed over all subgraphs
  int max_graph_depth = 8;              // the main graph is depth 1
  int64_t max_tensor_elements = 1LL << 32;
};

struct ArchiveLimits {
  int64_t max_archive_bytes = int64_t{4} << 30;
  int64_t max_entries = 200000;
  int64_t max_entry_bytes = int64_t{1} << 30;
  int64_t max_total_bytes = int64_t{16} << 30;
  // Extracted bytes per archive byte; zip bombs reach thousands.
  double max_compression_ratio = 100.0;
  int max_path_depth = 8;
};

struct ImageLimits {
  // Width × height of one decoded calibration image.
  int64_t max_pixels = int64_t{64} << 20;
};

struct InputLimits {
  ModelLimits model;
  ArchiveLimits archive;
  ImageLimits image;
};

}  // namespace quantd
