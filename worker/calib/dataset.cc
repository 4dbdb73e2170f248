#include "worker/calib/dataset.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <optional>
#include <string_view>
#include <utility>

#include "common/files.h"

namespace quantd::calib {
namespace {

constexpr int64_t kMaxSampleFileBytes = int64_t{256} << 20;

uint32_t BigEndian(std::string_view bytes, size_t at, int width) {
  uint32_t value = 0;
  for (int i = 0; i < width; ++i) value = (value << 8) | static_cast<uint8_t>(bytes[at + static_cast<size_t>(i)]);
  return value;
}

uint32_t LittleEndian32(std::string_view bytes, size_t at) {
  uint32_t value = 0;
  for (int i = 3; i >= 0; --i) value = (value << 8) | static_cast<uint8_t>(bytes[at + static_cast<size_t>(i)]);
  return value;
}

// Width and height an encoded PNG, JPEG or BMP declares in its header;
// nullopt for other formats or a header too short to tell.
std::optional<std::pair<int64_t, int64_t>> DeclaredImageSize(std::string_view bytes) {
  if (bytes.size() >= 24 && bytes.substr(0, 8) == std::string_view("\x89PNG\r\n\x1a\n", 8) &&
      bytes.substr(12, 4) == "IHDR") {
    return std::make_pair(int64_t{BigEndian(bytes, 16, 4)}, int64_t{BigEndian(bytes, 20, 4)});
  }
  if (bytes.size() >= 26 && bytes.substr(0, 2) == "BM") {
    const auto width = static_cast<int32_t>(LittleEndian32(bytes, 18));
    const auto height = static_cast<int32_t>(LittleEndian32(bytes, 22));  // negative: stored top-down
    return std::make_pair(std::abs(int64_t{width}), std::abs(int64_t{height}));
  }
  if (bytes.size() >= 4 && static_cast<uint8_t>(bytes[0]) == 0xFF && static_cast<uint8_t>(bytes[1]) == 0xD8) {
    // Walk the marker segments up to the first start-of-frame.
    size_t at = 2;
    while (at + 4 <= bytes.size()) {
      if (static_cast<uint8_t>(bytes[at]) != 0xFF) return std::nullopt;
      const uint8_t marker = static_cast<uint8_t>(bytes[at + 1]);
      if (marker == 0xFF) {  // fill byte
        ++at;
        continue;
      }
      if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {  // no payload
        at += 2;
        continue;
      }
      const size_t length = BigEndian(bytes, at + 2, 2);
      const bool start_of_frame =
          marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
      if (start_of_frame) {
        if (at + 9 > bytes.size()) return std::nullopt;
        return std::make_pair(int64_t{BigEndian(bytes, at + 7, 2)}, int64_t{BigEndian(bytes, at + 5, 2)});
      }
      if (length < 2) return std::nullopt;
      at += 2 + length;
    }
  }
  return std::nullopt;
}

using runtime::DataType;
using runtime::Shape;
using runtime::Tensor;

std::string Describe(const InputSpec& spec) {
  return "input '" + spec.name + "' (" + runtime::ToString(spec.dtype) + " " + runtime::ShapeToString(spec.shape) + ")";
}

// The sample shape: batch 1, every other dimension must be known.
StatusOr<Shape> SampleShape(const InputSpec& spec, const std::string& why) {
  Shape shape = spec.shape;
  if (!shape.empty() && shape[0] < 0) shape[0] = 1;
  for (size_t i = 1; i < shape.size(); ++i) {
    if (shape[i] < 0) {
      return InvalidArgument("CALIBRATION_SHAPE_UNKNOWN",
                             Describe(spec) + " has a dynamic dimension " + std::to_string(i) + "; " + why);
    }
  }
  return shape;
}

bool HasExtension(const std::filesystem::path& file, std::initializer_list<const char*> extensions) {
  auto ext = file.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return std::any_of(extensions.begin(), extensions.end(), [&](const char* e) { return ext == e; });
}

}  // namespace

ImageLayout GuessImageLayout(const Shape& shape) {
  if (shape.size() != 4) return ImageLayout::kNchw;
  auto is_channels = [](int64_t d) { return d == 1 || d == 3; };
  if (is_channels(shape[3]) && !is_channels(shape[1])) return ImageLayout::kNhwc;
  return ImageLayout::kNchw;
}

StatusOr<CalibrationDataset> CalibrationDataset::Open(const config::DataPreprocessParam& param,
                                                      const std::vector<config::CalibrationSource>& folders,
                                                      const std::vector<InputSpec>& inputs,
                                                      const ImageLimits& image_limits) {
  CalibrationDataset dataset;
  dataset.param_ = param;
  dataset.image_limits_ = image_limits;
  const auto& sources = folders.empty() ? param.calibrate_path : folders;
  if (sources.empty()) {
    return InvalidArgument("CALIBRATION_MISSING",
                           "full quantization needs calibration data: set "
                           "data_preprocess_param.calibrate_path or pass --calib NAME=DIR");
  }
  for (const auto& source : sources) {
    auto spec =
        std::find_if(inputs.begin(), inputs.end(), [&](const InputSpec& s) { return s.name == source.input_name; });
    if (spec == inputs.end()) {
      std::string names;
      for (const auto& s : inputs) names += (names.empty() ? "" : ", ") + s.name;
      return InvalidArgument("CALIBRATION_UNKNOWN_INPUT", "calibration data names input '" + source.input_name +
                                                              "', but the model's inputs are: " + names);
    }
    InputFiles files{*spec, source.dir, {}};
    std::error_code ec;
    if (!std::filesystem::is_directory(source.dir, ec)) {
      return InvalidArgument("CALIBRATION_DIR_MISSING", "calibration folder '" + source.dir.substr(0, 200) +
                                                            "' for input '" + source.input_name + "' does not exist");
    }
    // Sorted by file name, compared as strings made once (building path
    // objects in every comparison costs more than listing the folder).
    std::vector<std::pair<std::string, std::filesystem::path>> named;
    for (const auto& entry : std::filesystem::directory_iterator(source.dir, ec)) {
      if (!entry.is_regular_file(ec)) continue;
      const auto& path = entry.path();
      bool wanted =
          param.input_type == config::InputType::kImage
              ? HasExtension(path, {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"})
          : param.input_type == config::InputType::kBin ? HasExtension(path, {".bin"})
                                                        : HasExtension(path, {".npy"});
      if (wanted) named.emplace_back(path.filename().native(), path);
    }
    std::sort(named.begin(), named.end());
    for (auto& [name, path] : named) files.files.push_back(std::move(path));
    if (files.files.empty()) {
      return InvalidArgument("CALIBRATION_EMPTY", "calibration folder for input '" + source.input_name + "' holds no " +
                                                      config::ToString(param.input_type) + " files");
    }
    dataset.inputs_.push_back(std::move(files));
  }
  for (const auto& spec : inputs) {
    bool covered = std::any_of(dataset.inputs_.begin(), dataset.inputs_.end(),
                               [&](const InputFiles& f) { return f.spec.name == spec.name; });
    if (!covered) {
      return InvalidArgument("CALIBRATION_INPUT_UNCOVERED",
                             "model input '" + spec.name + "' has no calibration folder; add " + spec.name + ":DIR");
    }
  }
  const auto& first = dataset.inputs_.front();
  for (const auto& other : dataset.inputs_) {
    if (other.files.size() != first.files.size()) {
      return InvalidArgument("CALIBRATION_COUNT_MISMATCH",
                             "calibration folders differ in file count: '" + first.dir.string() + "' (input '" +
                                 first.spec.name + "') has " + std::to_string(first.files.size()) + ", '" +
                                 other.dir.string() + "' (input '" + other.spec.name + "') has " +
                                 std::to_string(other.files.size()) + "; files are paired by sorted name");
    }
  }
  dataset.count_ = first.files.size();
  if (param.calibrate_size > 0) dataset.count_ = std::min(dataset.count_, static_cast<size_t>(param.calibrate_size));
  return dataset;
}

StatusOr<Sample> CalibrationDataset::Load(size_t index) const {
  Sample sample;
  for (const auto& input : inputs_) {
    const auto& file = input.files[index];
    StatusOr<Tensor> tensor = param_.input_type == config::InputType::kImage ? LoadImage(input, file)
                              : param_.input_type == config::InputType::kBin ? LoadBin(input, file)
                                                                             : LoadNpy(input, file);
    if (!tensor.ok()) return tensor.status();
    sample.emplace(input.spec.name, std::move(*tensor));
  }
  return sample;
}

void WarmUpImageCodecs() {
  // Looking up an encoder is enough to build the whole registry.
  (void)cv::haveImageWriter(".png");
}

StatusOr<Tensor> CalibrationDataset::LoadImage(const InputFiles& input, const std::filesystem::path& file) const {
  const auto& spec = input.spec;
  if (spec.shape.size() != 4) {
    return InvalidArgument("CALIBRATION_IMAGE_FOR_NON_IMAGE_INPUT",
                           Describe(spec) + " is not 4-D, so it cannot take IMAGE calibration data");
  }
  std::error_code ec;
  auto file_bytes = static_cast<int64_t>(std::filesystem::file_size(file, ec));
  if (ec || file_bytes > kMaxSampleFileBytes) {
    return InvalidArgument("CALIBRATION_FILE_TOO_LARGE",
                           "calibration image " + file.filename().string() + " is too large");
  }
  QUANTD_ASSIGN_OR_RETURN(auto bytes, ReadFile(file, kMaxSampleFileBytes));
  // The pixel limit is checked against the size the header declares, before
  // anything is decoded: a small file may declare a huge image. Formats not
  // recognised here are checked after decoding (OpenCV itself refuses more
  // than 2^30 pixels up front).
  if (auto declared = DeclaredImageSize(bytes);
      declared && declared->first * declared->second > image_limits_.max_pixels) {
    return InvalidArgument("CALIBRATION_IMAGE_TOO_LARGE",
                           "image " + file.filename().string() + " declares " + std::to_string(declared->first) + "x" +
                               std::to_string(declared->second) + ", more than " +
                               std::to_string(image_limits_.max_pixels) + " pixels (limits.max_image_pixels)");
  }
  cv::Mat image;
  try {
    const cv::Mat encoded(1, static_cast<int>(bytes.size()), CV_8U, bytes.data());
    image = cv::imdecode(encoded, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception& e) {
    return InvalidArgument("CALIBRATION_IMAGE_UNREADABLE",
                           "cannot decode image " + file.filename().string() + ": " + e.what());
  }
  if (image.empty()) {
    return InvalidArgument(
        "CALIBRATION_IMAGE_UNREADABLE",
        "cannot decode calibration image " + file.filename().string() + " for input '" + spec.name + "'");
  }
  if (static_cast<int64_t>(image.total()) > image_limits_.max_pixels) {
    return InvalidArgument("CALIBRATION_IMAGE_TOO_LARGE",
                           "image " + file.filename().string() + " is " + std::to_string(image.cols) + "x" +
                               std::to_string(image.rows) + ", more than " + std::to_string(image_limits_.max_pixels) +
                               " pixels (limits.max_image_pixels)");
  }
  if (image.depth() != CV_8U) {
    cv::Mat converted;
    double scale = image.depth() == CV_16U ? 1.0 / 257.0 : 1.0;
    image.convertTo(converted, CV_8U, scale);
    image = converted;
  }
  if (image.channels() == 4) cv::cvtColor(image, image, cv::COLOR_BGRA2BGR);
  switch (param_.image_to_format) {
    case config::ImageFormat::kGray:
      if (image.channels() == 3) cv::cvtColor(image, image, cv::COLOR_BGR2GRAY);
      break;
    case config::ImageFormat::kRgb:
      cv::cvtColor(image, image, image.channels() == 1 ? cv::COLOR_GRAY2RGB : cv::COLOR_BGR2RGB);
      break;
    case config::ImageFormat::kBgr:
      if (image.channels() == 1) cv::cvtColor(image, image, cv::COLOR_GRAY2BGR);
      break;
    case config::ImageFormat::kUnchanged: break;
  }
  if (param_.resize_width && param_.resize_height) {
    int interpolation = param_.resize_method == config::ResizeMethod::kNearest ? cv::INTER_NEAREST
                        : param_.resize_method == config::ResizeMethod::kCubic ? cv::INTER_CUBIC
                                                                               : cv::INTER_LINEAR;
    cv::resize(image, image, cv::Size(*param_.resize_width, *param_.resize_height), 0, 0, interpolation);
  }
  if (param_.center_crop_width && param_.center_crop_height) {
    int width = *param_.center_crop_width, height = *param_.center_crop_height;
    if (width > image.cols || height > image.rows) {
      return InvalidArgument("CALIBRATION_CROP_TOO_LARGE",
                             "center crop " + std::to_string(width) + "x" + std::to_string(height) +
                                 " is larger than image " + file.filename().string() + " (" +
                                 std::to_string(image.cols) + "x" + std::to_string(image.rows) + ")");
    }
    image = image(cv::Rect((image.cols - width) / 2, (image.rows - height) / 2, width, height)).clone();
  }
  const auto layout = GuessImageLayout(spec.shape);
  const int64_t channels = layout == ImageLayout::kNchw ? spec.shape[1] : spec.shape[3];
  const int64_t height = layout == ImageLayout::kNchw ? spec.shape[2] : spec.shape[1];
  const int64_t width = layout == ImageLayout::kNchw ? spec.shape[3] : spec.shape[2];
  if (channels > 0 && channels != image.channels()) {
    return InvalidArgument("CALIBRATION_CHANNEL_MISMATCH", Describe(spec) + " expects " + std::to_string(channels) +
                                                               " channel(s), but image " + file.filename().string() +
                                                               " has " + std::to_string(image.channels()) +
                                                               " after preprocessing; set image_to_format");
  }
  if ((height > 0 && height != image.rows) || (width > 0 && width != image.cols)) {
    return InvalidArgument("CALIBRATION_SIZE_MISMATCH",
                           Describe(spec) + " expects " + std::to_string(width) + "x" + std::to_string(height) +
                               " images, but " + file.filename().string() + " is " + std::to_string(image.cols) + "x" +
                               std::to_string(image.rows) + " after preprocessing; set resize_width/resize_height");
  }
  const int c = image.channels(), h = image.rows, w = image.cols;
  Shape shape = layout == ImageLayout::kNchw ? Shape{1, c, h, w} : Shape{1, h, w, c};
  if (spec.dtype == DataType::kUint8) {
    if (!param_.normalize_mean.empty()) {
      return InvalidArgument("CALIBRATION_NORMALIZE_UINT8",
                             Describe(spec) + " takes uint8, so normalize_mean/std cannot apply");
    }
    Tensor tensor(DataType::kUint8, shape);
    auto* out = tensor.data<uint8_t>();
    for (int y = 0; y < h; ++y) {
      const uint8_t* row = image.ptr<uint8_t>(y);
      for (int x = 0; x < w; ++x) {
        for (int k = 0; k < c; ++k) {
          size_t index = layout == ImageLayout::kNchw ? (static_cast<size_t>(k) * h + y) * w + x
                                                      : (static_cast<size_t>(y) * w + x) * c + k;
          out[index] = row[x * c + k];
        }
      }
    }
    return tensor;
  }
  if (spec.dtype != DataType::kFloat) {
    return InvalidArgument("CALIBRATION_DTYPE", Describe(spec) + ": IMAGE data feeds float32 or uint8 inputs only");
  }
  std::vector<float> mean(static_cast<size_t>(c), 0.0f), inv_std(static_cast<size_t>(c), 1.0f);
  if (!param_.normalize_mean.empty()) {
    if (static_cast<int>(param_.normalize_mean.size()) != c) {
      return InvalidArgument("CALIBRATION_NORMALIZE_CHANNELS",
                             "normalize_mean has " + std::to_string(param_.normalize_mean.size()) +
                                 " values but the image has " + std::to_string(c) + " channel(s)");
    }
    for (int k = 0; k < c; ++k) {
      mean[static_cast<size_t>(k)] = static_cast<float>(param_.normalize_mean[static_cast<size_t>(k)]);
      inv_std[static_cast<size_t>(k)] = static_cast<float>(1.0 / param_.normalize_std[static_cast<size_t>(k)]);
    }
  }
  Tensor tensor(DataType::kFloat, shape);
  auto* out = tensor.data<float>();
  for (int y = 0; y < h; ++y) {
    const uint8_t* row = image.ptr<uint8_t>(y);
    for (int x = 0; x < w; ++x) {
      for (int k = 0; k < c; ++k) {
        size_t index = layout == ImageLayout::kNchw ? (static_cast<size_t>(k) * h + y) * w + x
                                                    : (static_cast<size_t>(y) * w + x) * c + k;
        out[index] =
            (static_cast<float>(row[x * c + k]) - mean[static_cast<size_t>(k)]) * inv_std[static_cast<size_t>(k)];
      }
    }
  }
  return tensor;
}

StatusOr<Tensor> CalibrationDataset::LoadBin(const InputFiles& input, const std::filesystem::path& file) const {
  QUANTD_ASSIGN_OR_RETURN(auto shape, SampleShape(input.spec,
                                                  "BIN files carry no shape, so every dimension but the "
                                                  "batch must be fixed in the model"));
  Tensor tensor(input.spec.dtype, shape);
  std::error_code ec;
  auto bytes = static_cast<int64_t>(std::filesystem::file_size(file, ec));
  if (ec || bytes != static_cast<int64_t>(tensor.bytes())) {
    return InvalidArgument("CALIBRATION_BIN_SIZE", "calibration file " + file.filename().string() + " is " +
                                                       std::to_string(bytes) + " bytes, but " + Describe(input.spec) +
                                                       " needs " + std::to_string(tensor.bytes()) +
                                                       " bytes for one sample");
  }
  std::ifstream in(file, std::ios::binary);
  in.read(static_cast<char*>(tensor.raw()), static_cast<std::streamsize>(tensor.bytes()));
  if (!in) return InvalidArgument("CALIBRATION_BIN_UNREADABLE", "cannot read " + file.filename().string());
  return tensor;
}

StatusOr<Tensor> CalibrationDataset::LoadNpy(const InputFiles& input, const std::filesystem::path& file) const {
  QUANTD_ASSIGN_OR_RETURN(auto tensor, ReadNpy(file, kMaxSampleFileBytes));
  const auto& spec = input.spec;
  if (tensor.dtype() != spec.dtype) {
    return InvalidArgument("CALIBRATION_NPY_DTYPE", file.filename().string() + " holds " +
                                                        runtime::ToString(tensor.dtype()) + ", but " + Describe(spec) +
                                                        " needs " + runtime::ToString(spec.dtype));
  }
  Shape shape = tensor.shape();
  if (shape.size() + 1 == spec.shape.size()) shape.insert(shape.begin(), 1);
  bool matches = shape.size() == spec.shape.size() && (shape.empty() || shape[0] == 1);
  for (size_t i = 1; matches && i < shape.size(); ++i) matches = spec.shape[i] < 0 || spec.shape[i] == shape[i];
  if (!matches) {
    return InvalidArgument("CALIBRATION_NPY_SHAPE", file.filename().string() + " has shape " +
                                                        runtime::ShapeToString(tensor.shape()) + ", but " +
                                                        Describe(spec) + " takes one sample of that shape");
  }
  return tensor.Reshaped(shape);
}

StatusOr<Tensor> ReadNpy(const std::filesystem::path& file, int64_t max_bytes) {
  QUANTD_ASSIGN_OR_RETURN(auto bytes, ReadFile(file, max_bytes));
  auto bad = [&](const std::string& why) {
    return InvalidArgument("NPY_INVALID", file.filename().string() + " is not a valid .npy file: " + why);
  };
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) return bad("missing magic");
  int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, header_start;
  if (major == 1) {
    header_len =
        static_cast<unsigned char>(bytes[8]) | (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return bad("truncated header");
    header_len = 0;
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    header_start = 12;
  } else {
    return bad("unsupported version " + std::to_string(major));
  }
  if (header_start + header_len > bytes.size()) return bad("truncated header");
  std::string header = bytes.substr(header_start, header_len);
  auto value_of = [&](const std::string& key) -> std::string {
    auto at = header.find("'" + key + "'");
    if (at == std::string::npos) return "";
    auto colon = header.find(':', at);
    if (colon == std::string::npos) return "";
    auto begin = header.find_first_not_of(' ', colon + 1);
    if (begin == std::string::npos) return "";
    char open = header[begin];
    if (open == '\'') return header.substr(begin + 1, header.find('\'', begin + 1) - begin - 1);
    if (open == '(') return header.substr(begin + 1, header.find(')', begin) - begin - 1);
    return header.substr(begin, header.find_first_of(",}", begin) - begin);
  };
  std::string descr = value_of("descr"), order = value_of("fortran_order"), shape_text = value_of("shape");
  if (order.rfind("True", 0) == 0) return bad("Fortran order is not supported");
  static const std::map<std::string, DataType> kTypes = {
      {"<f4", DataType::kFloat}, {"<f8", DataType::kDouble}, {"|u1", DataType::kUint8}, {"|i1", DataType::kInt8},
      {"<i4", DataType::kInt32}, {"<i8", DataType::kInt64},  {"|b1", DataType::kBool},  {"<u2", DataType::kUint16},
      {"<i2", DataType::kInt16}, {"<f2", DataType::kFloat16}};
  auto type = kTypes.find(descr);
  if (type == kTypes.end()) return bad("unsupported dtype '" + descr.substr(0, 16) + "'");
  Shape shape;
  size_t pos = 0;
  while (pos < shape_text.size()) {
    auto next = shape_text.find(',', pos);
    auto piece = shape_text.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
    piece.erase(std::remove(piece.begin(), piece.end(), ' '), piece.end());
    if (!piece.empty()) {
      try {
        auto dim = std::stoll(piece);
        if (dim < 0 || dim > (int64_t{1} << 40)) return bad("bad shape");
        shape.push_back(dim);
      } catch (const std::exception&) {
        return bad("bad shape");
      }
    }
    if (next == std::string::npos) break;
    pos = next + 1;
  }
  int64_t count = 1;
  for (auto d : shape) {
    if (d != 0 && count > max_bytes / d) return bad("shape is larger than the file");
    count *= d;
  }
  size_t need = static_cast<size_t>(count) * runtime::ElementSize(type->second);
  size_t data_start = header_start + header_len;
  if (bytes.size() - data_start != need) {
    return bad("holds " + std::to_string(bytes.size() - data_start) + " data bytes, its shape needs " +
               std::to_string(need));
  }
  Tensor tensor(type->second, shape);
  std::memcpy(tensor.raw(), bytes.data() + data_start, need);
  return tensor;
}

Status WriteNpy(const std::filesystem::path& file, const Tensor& tensor) {
  static const std::map<DataType, std::string> kDescr = {
      {DataType::kFloat, "<f4"}, {DataType::kDouble, "<f8"}, {DataType::kUint8, "|u1"}, {DataType::kInt8, "|i1"},
      {DataType::kInt32, "<i4"}, {DataType::kInt64, "<i8"},  {DataType::kBool, "|b1"},  {DataType::kUint16, "<u2"},
      {DataType::kInt16, "<i2"}, {DataType::kFloat16, "<f2"}};
  auto descr = kDescr.find(tensor.dtype());
  if (descr == kDescr.end()) {
    return InvalidArgument("NPY_UNSUPPORTED", "cannot write " + runtime::ToString(tensor.dtype()) + " as .npy");
  }
  std::string shape;
  for (auto d : tensor.shape()) shape += std::to_string(d) + ", ";
  if (tensor.shape().size() > 1) shape.resize(shape.size() - 2);
  std::string header = "{'descr': '" + descr->second + "', 'fortran_order': False, 'shape': (" + shape + "), }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(header.size() & 0xFF));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
  out.append(static_cast<const char*>(tensor.raw()), tensor.bytes());
  return WriteFileAtomic(file, out);
}

}  // namespace quantd::calib
