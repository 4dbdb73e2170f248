#include "worker/calib/dataset.h"

#include <gtest/gtest.h>

#include <fstream>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "common/files.h"
#include "common/ids.h"

namespace quantd::calib {
namespace {

using runtime::DataType;

const std::filesystem::path kPhotos = "/usr/share/doc/opencv-doc/examples/data";

class CalibDatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / NewId("calib-test-");
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path Folder(const std::string& name, const std::vector<std::string>& photos) {
    auto folder = dir_ / name;
    std::filesystem::create_directories(folder);
    for (const auto& photo : photos) std::filesystem::copy_file(kPhotos / photo, folder / photo);
    return folder;
  }
  std::filesystem::path dir_;
};

// The reference: the same preprocessing spelled out directly with OpenCV.
cv::Mat ReferenceRgbResizeCropNormalize(const std::filesystem::path& photo) {
  cv::Mat image = cv::imread(photo.string(), cv::IMREAD_COLOR);
  cv::cvtColor(image, image, cv::COLOR_BGR2RGB);
  cv::resize(image, image, cv::Size(256, 240), 0, 0, cv::INTER_LINEAR);
  image = image(cv::Rect((256 - 224) / 2, (240 - 200) / 2, 224, 200)).clone();
  cv::Mat as_float;
  image.convertTo(as_float, CV_32FC3);
  cv::subtract(as_float, cv::Scalar(123.675, 116.28, 103.53), as_float);
  cv::divide(as_float, cv::Scalar(58.395, 57.12, 57.375), as_float);
  return as_float;
}

TEST_F(CalibDatasetTest, ImagePreprocessingMatchesOpenCvReferenceInBothLayouts) {
  const std::vector<std::string> photos = {"baboon.jpg", "fruits.jpg", "HappyFish.jpg"};
  auto folder = Folder("images", photos);
  config::DataPreprocessParam param;
  param.present = true;
  param.input_type = config::InputType::kImage;
  param.image_to_format = config::ImageFormat::kRgb;
  param.resize_width = 256;
  param.resize_height = 240;
  param.center_crop_width = 224;
  param.center_crop_height = 200;
  param.normalize_mean = {123.675, 116.28, 103.53};
  param.normalize_std = {58.395, 57.12, 57.375};
  for (bool nhwc : {false, true}) {
    InputSpec spec{"image", DataType::kFloat, nhwc ? runtime::Shape{-1, 200, 224, 3} : runtime::Shape{-1, 3, 200, 224}};
    auto dataset = CalibrationDataset::Open(param, {{"image", folder.string()}}, {spec}, ImageLimits{});
    ASSERT_TRUE(dataset.ok()) << dataset.status().message();
    ASSERT_EQ(dataset->size(), photos.size());
    std::vector<std::string> sorted = photos;
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i < sorted.size(); ++i) {
      auto sample = dataset->Load(i);
      ASSERT_TRUE(sample.ok()) << sample.status().message();
      const auto& tensor = sample->at("image");
      ASSERT_EQ(tensor.shape(), (nhwc ? runtime::Shape{1, 200, 224, 3} : runtime::Shape{1, 3, 200, 224}));
      cv::Mat reference = ReferenceRgbResizeCropNormalize(kPhotos / sorted[i]);
      double max_diff = 0;
      for (int y = 0; y < 200; ++y) {
        for (int x = 0; x < 224; ++x) {
          for (int c = 0; c < 3; ++c) {
            float expected = reference.at<cv::Vec3f>(y, x)[c];
            size_t index =
                nhwc ? (static_cast<size_t>(y) * 224 + x) * 3 + c : (static_cast<size_t>(c) * 200 + y) * 224 + x;
            max_diff = std::max(max_diff, static_cast<double>(std::fabs(tensor.data<float>()[index] - expected)));
          }
        }
      }
      EXPECT_LT(max_diff, 1e-4) << sorted[i] << (nhwc ? " NHWC" : " NCHW");
    }
  }
}

TEST_F(CalibDatasetTest, GrayConversionAndCalibrateSizeLimit) {
  auto folder = Folder("gray", {"baboon.jpg", "fruits.jpg", "apple.jpg"});
  config::DataPreprocessParam param;
  param.input_type = config::InputType::kImage;
  param.image_to_format = config::ImageFormat::kGray;
  param.resize_width = 28;
  param.resize_height = 28;
  param.calibrate_size = 2;
  InputSpec spec{"input", DataType::kFloat, {-1, 1, 28, 28}};
  auto dataset = CalibrationDataset::Open(param, {{"input", folder.string()}}, {spec}, ImageLimits{});
  ASSERT_TRUE(dataset.ok()) << dataset.status().message();
  EXPECT_EQ(dataset->size(), 2u);
  auto sample = dataset->Load(0);
  ASSERT_TRUE(sample.ok());
  cv::Mat reference = cv::imread((kPhotos / "apple.jpg").string(), cv::IMREAD_COLOR);
  cv::cvtColor(reference, reference, cv::COLOR_BGR2GRAY);
  cv::resize(reference, reference, cv::Size(28, 28), 0, 0, cv::INTER_LINEAR);
  EXPECT_FLOAT_EQ(sample->at("input").data<float>()[5 * 28 + 7], static_cast<float>(reference.at<uint8_t>(5, 7)));
}

TEST_F(CalibDatasetTest, CountMismatchNamesBothFolders) {
  auto a = Folder("first", {"baboon.jpg", "fruits.jpg"});
  auto b = Folder("second", {"apple.jpg"});
  config::DataPreprocessParam param;
  param.input_type = config::InputType::kImage;
  std::vector<InputSpec> inputs = {{"x", DataType::kFloat, {-1, 3, -1, -1}}, {"y", DataType::kFloat, {-1, 3, -1, -1}}};
  auto dataset = CalibrationDataset::Open(param, {{"x", a.string()}, {"y", b.string()}}, inputs, ImageLimits{});
  ASSERT_FALSE(dataset.ok());
  EXPECT_EQ(dataset.status().reason(), "CALIBRATION_COUNT_MISMATCH");
  EXPECT_NE(dataset.status().message().find(a.string()), std::string::npos) << dataset.status().message();
  EXPECT_NE(dataset.status().message().find(b.string()), std::string::npos);
}

TEST_F(CalibDatasetTest, UnreadableImageAndWrongSizeFailWithClearReasons) {
  auto folder = dir_ / "broken";
  std::filesystem::create_directories(folder);
  ASSERT_TRUE(WriteFileAtomic(folder / "a.png", "this is not a png").ok());
  config::DataPreprocessParam param;
  param.input_type = config::InputType::kImage;
  InputSpec spec{"input", DataType::kFloat, {-1, 1, 28, 28}};
  auto dataset = CalibrationDataset::Open(param, {{"input", folder.string()}}, {spec}, ImageLimits{});
  ASSERT_TRUE(dataset.ok());
  auto sample = dataset->Load(0);
  EXPECT_EQ(sample.status().reason(), "CALIBRATION_IMAGE_UNREADABLE");
  EXPECT_NE(sample.status().message().find("a.png"), std::string::npos);

  auto big = Folder("big", {"baboon.jpg"});
  param.image_to_format = config::ImageFormat::kGray;
  auto wrong = CalibrationDataset::Open(param, {{"input", big.string()}}, {spec}, ImageLimits{});
  auto loaded = wrong->Load(0);
  EXPECT_EQ(loaded.status().reason(), "CALIBRATION_SIZE_MISMATCH");
  EXPECT_NE(loaded.status().message().find("resize_width"), std::string::npos) << loaded.status().message();
}

TEST_F(CalibDatasetTest, BinMustMatchTheInputByteSizeAndNpyRoundTrips) {
  auto folder = dir_ / "bins";
  std::filesystem::create_directories(folder);
  std::vector<float> values(2 * 3, 1.5f);
  ASSERT_TRUE(WriteFileAtomic(folder / "0.bin", std::string(reinterpret_cast<const char*>(values.data()), 24)).ok());
  ASSERT_TRUE(WriteFileAtomic(folder / "1.bin", std::string(20, '\0')).ok());
  config::DataPreprocessParam param;
  param.input_type = config::InputType::kBin;
  InputSpec spec{"x", DataType::kFloat, {-1, 2, 3}};
  auto dataset = CalibrationDataset::Open(param, {{"x", folder.string()}}, {spec}, ImageLimits{});
  ASSERT_TRUE(dataset.ok());
  auto good = dataset->Load(0);
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(good->at("x").shape(), (runtime::Shape{1, 2, 3}));
  EXPECT_EQ(good->at("x").data<float>()[4], 1.5f);
  auto bad = dataset->Load(1);
  EXPECT_EQ(bad.status().reason(), "CALIBRATION_BIN_SIZE");
  EXPECT_NE(bad.status().message().find("24 bytes"), std::string::npos) << bad.status().message();

  auto tensor = runtime::Tensor::FromVector<float>({2, 3}, {1, 2, 3, 4, 5, 6});
  ASSERT_TRUE(WriteNpy(dir_ / "t.npy", tensor).ok());
  auto read = ReadNpy(dir_ / "t.npy", 1 << 20);
  ASSERT_TRUE(read.ok()) << read.status().message();
  EXPECT_EQ(read->shape(), tensor.shape());
  EXPECT_EQ(read->data<float>()[5], 6.0f);
  ASSERT_TRUE(WriteFileAtomic(dir_ / "bad.npy", std::string("\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'", 26)).ok());
  EXPECT_EQ(ReadNpy(dir_ / "bad.npy", 1 << 20).status().reason(), "NPY_INVALID");
}

// The pixel limit applies to the size a header declares, before decoding:
// a few bytes may promise a 100000 x 100000 image.
TEST_F(CalibDatasetTest, DeclaredImageSizeIsCheckedBeforeDecoding) {
  auto folder = dir_ / "declared";
  std::filesystem::create_directories(folder);
  // PNG signature and an IHDR chunk declaring 100000 x 100000, then nothing.
  std::string png("\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\x01\x86\xa0\0\x01\x86\xa0\x08\0\0\0\0", 29);
  ASSERT_TRUE(WriteFileAtomic(folder / "huge.png", png).ok());
  config::DataPreprocessParam param;
  param.input_type = config::InputType::kImage;
  InputSpec spec{"input", DataType::kFloat, {-1, 1, 28, 28}};
  auto dataset = CalibrationDataset::Open(param, {{"input", folder.string()}}, {spec}, ImageLimits{});
  ASSERT_TRUE(dataset.ok());
  auto sample = dataset->Load(0);
  EXPECT_EQ(sample.status().reason(), "CALIBRATION_IMAGE_TOO_LARGE");
  EXPECT_NE(sample.status().message().find("100000x100000"), std::string::npos) << sample.status().message();

  // Real JPEG (a marker walk to the frame header) and BMP headers are read
  // the same way: a limit below their size refuses them by their declared
  // dimensions.
  const cv::Mat baboon = cv::imread((kPhotos / "baboon.jpg").string());
  ASSERT_FALSE(baboon.empty());
  auto photos = Folder("photos", {"baboon.jpg"});
  ASSERT_TRUE(cv::imwrite((photos / "copy.bmp").string(), baboon));
  ImageLimits small;
  small.max_pixels = 1000;
  auto limited = CalibrationDataset::Open(param, {{"input", photos.string()}}, {spec}, small);
  ASSERT_TRUE(limited.ok());
  const std::string size = std::to_string(baboon.cols) + "x" + std::to_string(baboon.rows);
  for (size_t i = 0; i < 2; ++i) {
    auto refused = limited->Load(i);
    EXPECT_EQ(refused.status().reason(), "CALIBRATION_IMAGE_TOO_LARGE");
    EXPECT_NE(refused.status().message().find("declares " + size), std::string::npos) << refused.status().message();
  }
}

}  // namespace
}  // namespace quantd::calib
