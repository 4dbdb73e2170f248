// Calibration data: the files named by data_preprocess_param, read and
// preprocessed one sample at a time so memory does not grow with the
// number of samples.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common/config/quant_config.h"
#include "common/input_limits.h"
#include "common/status.h"
#include "worker/runtime/tensor.h"

namespace quantd::calib {

// A model input as the dataset must produce it. Dynamic dimensions are -1;
// a sample always has batch 1.
struct InputSpec {
  std::string name;
  runtime::DataType dtype = runtime::DataType::kFloat;
  runtime::Shape shape;
};

enum class ImageLayout { kNchw, kNhwc };

// Where a 4-D image input keeps its channels: NCHW if dim 1 is 1 or 3 and
// dim 3 is not, NHWC in the opposite case, NCHW when ambiguous.
ImageLayout GuessImageLayout(const runtime::Shape& shape);

using Sample = std::map<std::string, runtime::Tensor>;

class CalibrationDataset {
 public:
  // Lists and pairs the files of every input (sorted by file name) and
  // checks counts; nothing is decoded yet. `folders` replace calibrate_path
  // when not empty (the service extracts uploaded archives there). Images
  // beyond `image_limits` are refused when their sample is loaded.
  static StatusOr<CalibrationDataset> Open(const config::DataPreprocessParam& param,
                                           const std::vector<config::CalibrationSource>& folders,
                                           const std::vector<InputSpec>& inputs, const ImageLimits& image_limits);

  size_t size() const { return count_; }
  // Decodes and preprocesses sample `index` (batch 1) for every input.
  StatusOr<Sample> Load(size_t index) const;

 private:
  struct InputFiles {
    InputSpec spec;
    std::filesystem::path dir;
    std::vector<std::filesystem::path> files;
  };
  StatusOr<runtime::Tensor> LoadImage(const InputFiles& input, const std::filesystem::path& file) const;
  StatusOr<runtime::Tensor> LoadBin(const InputFiles& input, const std::filesystem::path& file) const;
  StatusOr<runtime::Tensor> LoadNpy(const InputFiles& input, const std::filesystem::path& file) const;

  config::DataPreprocessParam param_;
  ImageLimits image_limits_;
  std::vector<InputFiles> inputs_;
  size_t count_ = 0;
};

// OpenCV builds its codec registry on the first decode; Debian's build
// registers the GDAL and GDCM drivers then, which takes milliseconds.
// Callers run this on a thread while doing other work (loading the model),
// which keeps it off the calibration run.
void WarmUpImageCodecs();

// Reads a .npy file (format 1.0–3.0, little-endian, C order).
StatusOr<runtime::Tensor> ReadNpy(const std::filesystem::path& file, int64_t max_bytes);
Status WriteNpy(const std::filesystem::path& file, const runtime::Tensor& tensor);

}  // namespace quantd::calib
