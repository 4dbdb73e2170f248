#include "common/input_limits_proto.h"

namespace quantd {
namespace {

template <typename T, typename P>
void TakeIfSet(T& field, P value) {
  if (value > 0) field = static_cast<T>(value);
}

}  // namespace

v1::InputLimits InputLimitsToProto(const InputLimits& limits) {
  v1::InputLimits proto;
  proto.set_max_model_bytes(limits.model.max_model_bytes);
  proto.set_max_graph_nodes(limits.model.max_nodes);
  proto.set_max_graph_depth(limits.model.max_graph_depth);
  proto.set_max_tensor_elements(limits.model.max_tensor_elements);
  proto.set_max_archive_bytes(limits.archive.max_archive_bytes);
  proto.set_max_archive_entries(limits.archive.max_entries);
  proto.set_max_archive_entry_bytes(limits.archive.max_entry_bytes);
  proto.set_max_archive_total_bytes(limits.archive.max_total_bytes);
  proto.set_max_compression_ratio(limits.archive.max_compression_ratio);
  proto.set_max_archive_path_depth(limits.archive.max_path_depth);
  proto.set_max_image_pixels(limits.image.max_pixels);
  return proto;
}

InputLimits InputLimitsFromProto(const v1::InputLimits& proto) {
  InputLimits limits;
  TakeIfSet(limits.model.max_model_bytes, proto.max_model_bytes());
  TakeIfSet(limits.model.max_nodes, proto.max_graph_nodes());
  TakeIfSet(limits.model.max_graph_depth, proto.max_graph_depth());
  TakeIfSet(limits.model.max_tensor_elements, proto.max_tensor_elements());
  TakeIfSet(limits.archive.max_archive_bytes, proto.max_archive_bytes());
  TakeIfSet(limits.archive.max_entries, proto.max_archive_entries());
  TakeIfSet(limits.archive.max_entry_bytes, proto.max_archive_entry_bytes());
  TakeIfSet(limits.archive.max_total_bytes, proto.max_archive_total_bytes());
  TakeIfSet(limits.archive.max_compression_ratio, proto.max_compression_ratio());
  TakeIfSet(limits.archive.max_path_depth, proto.max_archive_path_depth());
  TakeIfSet(limits.image.max_pixels, proto.max_image_pixels());
  return limits;
}

}  // namespace quantd
