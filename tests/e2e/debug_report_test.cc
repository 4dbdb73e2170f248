// The quantization debug report (debug_info_save_path) end to end: a
// FULL_QUANT job through a real quantd with its artifacts fetched, a
// weight-quantization report from `quantctl convert`, and report.html
// rendered by a real headless Chromium.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <cmath>
#include <fstream>
#include <map>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "common/archive.h"
#include "common/files.h"
#include "tests/e2e/harness.h"

namespace quantd::testing {
namespace {

using Row = std::map<std::string, std::string>;

const std::vector<std::string> kDistributionColumns = {
    "NodeName", "NodeType", "TensorName", "InOutFlag", "DataTypeFlag", "TensorTypeFlag", "Min",  "Q1",
    "Median",   "Q3",       "Max",        "Mean",      "Var",          "Sparsity",       "Clip", "CosineSimilarity"};
const std::vector<std::string> kQuantParamColumns = {"NodeName",      "NodeType",      "TensorName", "ElementsNum",
                                                     "Dims",          "Scale",         "ZeroPoint",  "Bits",
                                                     "CorrectionVar", "CorrectionMean"};

std::string Slurp(const std::filesystem::path& file) {
  auto text = ReadFile(file, 256 << 20);
  if (!text.ok()) throw std::runtime_error(file.string() + ": " + text.status().message());
  return *text;
}

std::vector<std::string> SplitCsvLine(const std::string& line) {
  std::vector<std::string> fields(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    char c = line[i];
    if (quoted && c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
      fields.back() += '"';
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (c == ',' && !quoted) {
      fields.emplace_back();
    } else {
      fields.back() += c;
    }
  }
  return fields;
}

struct Csv {
  std::vector<std::string> header;
  std::vector<Row> rows;
};

Csv ReadCsv(const std::filesystem::path& file) {
  std::istringstream in(Slurp(file));
  Csv csv;
  std::string line;
  std::getline(in, line);
  csv.header = SplitCsvLine(line);
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto fields = SplitCsvLine(line);
    EXPECT_EQ(fields.size(), csv.header.size()) << file << ": " << line;
    Row row;
    for (size_t i = 0; i < fields.size() && i < csv.header.size(); ++i) row[csv.header[i]] = fields[i];
    csv.rows.push_back(row);
  }
  return csv;
}

nlohmann::json ReadJson(const std::filesystem::path& file) {
  return nlohmann::json::parse(Slurp(file));
}

onnx::ModelProto ReadModel(const std::filesystem::path& file) {
  onnx::ModelProto model;
  std::ifstream in(file, std::ios::binary);
  if (!model.ParseFromIstream(&in)) throw std::runtime_error("cannot parse " + file.string());
  return model;
}

std::vector<double> Numbers(const std::string& text) {
  std::vector<double> values;
  std::istringstream in(text);
  double value;
  while (in >> value) values.push_back(value);
  return values;
}

void WriteText(const std::filesystem::path& file, const std::string& text) {
  std::ofstream out(file);
  out << text;
}

std::string FullQuantConfig(int samples, const std::string& debug_path, const std::string& calib_dir,
                            const std::string& extra_common = "") {
  return "common_quant_param:\n  quant_type: FULL_QUANT\n  bit_num: 8\n  debug_info_save_path: " + debug_path + "\n" +
         extra_common +
         "full_quant_param:\n  activation_quant_method: MAX_MIN\n  bias_correction: true\n"
         "data_preprocess_param:\n  calibrate_path: input:" +
         calib_dir + "\n  calibrate_size: " + std::to_string(samples) +
         "\n  input_type: IMAGE\n  image_to_format: GRAY\n  normalize_mean: [0]\n  normalize_std: [255]\n";
}

// Every tensor of the bundled CNN is float, so each node contributes one
// Origin row per input and output.
size_t OriginRowsOf(const onnx::ModelProto& model) {
  size_t rows = 0;
  for (const auto& node : model.graph().node()) {
    for (const auto& input : node.input()) rows += !input.empty();
    for (const auto& output : node.output()) rows += !output.empty();
  }
  return rows;
}

// Dequant rows: each quantized node's inputs that come out of a
// DequantizeLinear in the produced model, and each of its outputs.
size_t DequantRowsOf(const onnx::ModelProto& quantized, const std::set<std::string>& quantized_nodes) {
  std::set<std::string> dequantized;
  for (const auto& node : quantized.graph().node()) {
    if (node.op_type() == "DequantizeLinear") dequantized.insert(node.output(0));
  }
  size_t rows = 0;
  for (const auto& node : quantized.graph().node()) {
    if (!quantized_nodes.count(node.name())) continue;
    for (const auto& input : node.input()) rows += dequantized.count(input);
    rows += static_cast<size_t>(node.output_size());
  }
  return rows;
}

void ExpectDistributionCsvIsConsistent(const Csv& csv, const std::string& file) {
  EXPECT_EQ(csv.header, kDistributionColumns) << file;
  std::set<std::tuple<std::string, std::string, std::string>> origin;
  for (const auto& row : csv.rows) {
    if (row.at("DataTypeFlag") == "Origin")
      origin.insert({row.at("NodeName"), row.at("TensorName"), row.at("InOutFlag")});
  }
  for (const auto& row : csv.rows) {
    const std::string where = file + " " + row.at("NodeName") + " " + row.at("TensorName");
    ASSERT_TRUE(row.at("InOutFlag") == "Input" || row.at("InOutFlag") == "Output") << where;
    ASSERT_TRUE(row.at("TensorTypeFlag") == "Activation" || row.at("TensorTypeFlag") == "Weight") << where;
    double min = std::stod(row.at("Min")), q1 = std::stod(row.at("Q1")), median = std::stod(row.at("Median"));
    double q3 = std::stod(row.at("Q3")), max = std::stod(row.at("Max")), mean = std::stod(row.at("Mean"));
    EXPECT_TRUE(min <= q1 && q1 <= median && median <= q3 && q3 <= max) << where;
    EXPECT_TRUE(min <= mean && mean <= max) << where;
    EXPECT_GE(std::stod(row.at("Var")), 0) << where;
    double sparsity = std::stod(row.at("Sparsity")), clip = std::stod(row.at("Clip"));
    EXPECT_TRUE(sparsity >= 0 && sparsity <= 1) << where;
    double cosine = std::stod(row.at("CosineSimilarity"));
    if (row.at("DataTypeFlag") == "Origin") {
      EXPECT_EQ(clip, 0) << where;
      EXPECT_EQ(cosine, 1) << where;
    } else {
      ASSERT_EQ(row.at("DataTypeFlag"), "Dequant") << where;
      EXPECT_TRUE(clip >= 0 && clip <= 1) << where;
      EXPECT_GT(cosine, 0.9) << where;
      EXPECT_LE(cosine, 1 + 1e-9) << where;
      EXPECT_TRUE(origin.count({row.at("NodeName"), row.at("TensorName"), row.at("InOutFlag")}))
          << where << " has no Origin row to line up with";
    }
  }
}

class DebugReportServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    QuantdProcess::Options options;
    options.local_workers = 1;
    options.yaml_lines = {"worker_heartbeat_ms: 100"};
    server_ = new QuantdProcess(options);
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  static QuantdProcess* server_;
  ScratchDir scratch_{"quantd-debug-report-"};
  const std::filesystem::path& out_ = scratch_.path();
};

QuantdProcess* DebugReportServiceTest::server_ = nullptr;

TEST_F(DebugReportServiceTest, FullQuantJobShipsTheSeedsReportFilesAsArtifacts) {
  const int samples = 8;
  auto calib = out_ / "calib";
  WriteFashionMnistImages(calib, samples, 0, /*train=*/true);
  // A path on the client's machine means nothing to the worker: the report
  // must come back as artifacts and nothing may be written there.
  auto client_path = out_ / "client-side-report";
  auto config = out_ / "full_quant_debug.yaml";
  WriteText(config, FullQuantConfig(samples, client_path.string(), "calib/"));
  auto fetched = out_ / "fetched";
  auto run = RunCommand({(BinDir() / "quantctl").string(), "--server", server_->address(), "submit", "--model",
                         BundledModel().string(), "--config", config.string(), "--calib", "input=" + calib.string(),
                         "--wait", "--out", fetched.string()});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_FALSE(std::filesystem::exists(client_path));

  auto summary = ReadJson(fetched / "summary.json");
  const auto& debug = summary["debug_report"];
  ASSERT_TRUE(debug["written"].get<bool>()) << debug.dump();
  EXPECT_EQ(debug["rounds"], samples);
  std::set<std::string> artifacts;
  for (const auto& name : debug["artifacts"]) {
    artifacts.insert(name.get<std::string>());
    EXPECT_TRUE(std::filesystem::is_regular_file(fetched / name.get<std::string>())) << name;
  }
  for (const char* name : {"report.html", "report.json", "quant_param.csv", "output_summary.csv", "debug_report.tar"}) {
    EXPECT_TRUE(artifacts.count(name)) << name;
  }
  bool timed = false;
  for (const auto& timing : summary["timings"]) timed = timed || timing["stage"] == "debug_report";
  EXPECT_TRUE(timed) << summary["timings"].dump();

  auto unpacked = out_ / "unpacked";
  auto extracted = ExtractArchive(fetched / "debug_report.tar", unpacked, ArchiveLimits{});
  ASSERT_TRUE(extracted.ok()) << extracted.status().message();

  auto original = ReadModel(BundledModel());
  auto quantized = ReadModel(fetched / "model.onnx");
  std::set<std::string> quantized_nodes;
  for (const auto& node : summary["full_quant"]["quantized_nodes"]) quantized_nodes.insert(node.get<std::string>());
  ASSERT_FALSE(quantized_nodes.empty());
  const size_t origin_rows = OriginRowsOf(original), dequant_rows = DequantRowsOf(quantized, quantized_nodes);
  for (int round = 0; round < samples; ++round) {
    char name[32];
    std::snprintf(name, sizeof(name), "round_%04d.csv", round);
    ASSERT_TRUE(std::filesystem::is_regular_file(unpacked / name)) << name;
    auto csv = ReadCsv(unpacked / name);
    ExpectDistributionCsvIsConsistent(csv, name);
    size_t origin = 0, dequant = 0;
    for (const auto& row : csv.rows) (row.at("DataTypeFlag") == "Origin" ? origin : dequant)++;
    EXPECT_EQ(origin, origin_rows) << name;
    EXPECT_EQ(dequant, dequant_rows) << name;
  }
  EXPECT_FALSE(std::filesystem::exists(unpacked / "round_0008.csv"));

  // quant_param.csv: activations against the ranges summary.json reports,
  // weights and biases against the original initializers.
  auto params = ReadCsv(fetched / "quant_param.csv");
  EXPECT_EQ(params.header, kQuantParamColumns);
  std::map<std::string, std::vector<int64_t>> initializer_dims;
  for (const auto& initializer : original.graph().initializer()) {
    initializer_dims[initializer.name()].assign(initializer.dims().begin(), initializer.dims().end());
  }
  const auto& ranges = summary["full_quant"]["activation_ranges"];
  size_t weights = 0, biases = 0, weighted_nodes = 0;
  for (const auto& node : original.graph().node()) {
    if (quantized_nodes.count(node.name()) && (node.op_type() == "Conv" || node.op_type() == "Gemm")) ++weighted_nodes;
  }
  for (const auto& row : params.rows) {
    const std::string& tensor = row.at("TensorName");
    auto scales = Numbers(row.at("Scale"));
    auto dims = Numbers(row.at("Dims"));
    double elements = 1;
    for (double d : dims) elements *= d;
    EXPECT_EQ(std::stod(row.at("ElementsNum")), elements) << tensor;
    EXPECT_EQ(Numbers(row.at("ZeroPoint")).size(), scales.size()) << tensor;
    if (auto dims_of = initializer_dims.find(tensor); dims_of != initializer_dims.end()) {
      EXPECT_EQ(dims, std::vector<double>(dims_of->second.begin(), dims_of->second.end())) << tensor;
      // Per output channel: axis 0 for Conv weights, for Gemm weights
      // (exported with transB=1) and for biases.
      EXPECT_EQ(static_cast<double>(scales.size()), dims[0]) << tensor;
      (row.at("Bits") == "32" ? biases : weights)++;
    } else {
      ASSERT_TRUE(ranges.contains(tensor)) << tensor << " is neither a weight nor a calibrated activation";
      double lo = std::min(ranges[tensor][0].get<double>(), 0.0), hi = std::max(ranges[tensor][1].get<double>(), 0.0);
      ASSERT_EQ(scales.size(), 1u) << tensor;
      EXPECT_NEAR(scales[0], (hi - lo) / 255.0, 1e-6 * scales[0] + 1e-12) << tensor;
      EXPECT_EQ(row.at("Bits"), "8");
    }
  }
  EXPECT_EQ(weights, weighted_nodes);
  EXPECT_EQ(biases, weighted_nodes);
  auto report = ReadJson(fetched / "report.json");
  EXPECT_EQ(report["schema"], "quantd.debug_report/v1");
  EXPECT_EQ(report["quant_params"].size(), params.rows.size());
  EXPECT_EQ(report["data_distribution"].size(), static_cast<size_t>(samples));

  auto outputs = ReadCsv(fetched / "output_summary.csv");
  EXPECT_EQ(outputs.header, (std::vector<std::string>{"Round", "OutputName", "CosineSimilarity", "MeanRelativeError"}));
  ASSERT_EQ(outputs.rows.size(), static_cast<size_t>(samples));
  for (const auto& row : outputs.rows) {
    EXPECT_EQ(row.at("OutputName"), "logits");
    EXPECT_GT(std::stod(row.at("CosineSimilarity")), 0.99);
    EXPECT_LT(std::stod(row.at("MeanRelativeError")), 0.1);
  }

  // The suggestion names the worst layers, and taking it keeps them float.
  const auto& worst = report["worst_layers"];
  ASSERT_FALSE(worst.empty());
  const std::string skip_line = report["suggested_skip_quant_node"];
  ASSERT_EQ(skip_line.rfind("skip_quant_node=", 0), 0u) << skip_line;
  for (const auto& layer : worst) {
    EXPECT_TRUE(quantized_nodes.count(layer["node"].get<std::string>()));
    EXPECT_NE(skip_line.find(layer["node"].get<std::string>()), std::string::npos);
    EXPECT_EQ(layer["histogram"]["origin"].size(), layer["histogram"]["dequant"].size());
  }
  EXPECT_EQ(debug["suggested_skip_quant_node"], skip_line);
  std::string skip_list = skip_line.substr(std::string("skip_quant_node=").size());
  auto skipped_config = out_ / "skip.yaml";
  WriteText(skipped_config,
            FullQuantConfig(samples, (out_ / "skip-report").string(), calib.string() + "/",
                            "  skip_quant_node: [" + std::regex_replace(skip_list, std::regex(","), ", ") + "]\n"));
  auto convert = RunCommand({(BinDir() / "quantctl").string(), "convert", "--model", BundledModel().string(),
                             "--config", skipped_config.string(), "--out", (out_ / "skipped").string()});
  ASSERT_EQ(convert.exit_code, 0) << convert.err;
  auto skipped_summary = ReadJson(out_ / "skipped" / "summary.json");
  std::set<std::string> kept_float;
  for (const auto& node : skipped_summary["full_quant"]["skipped"]) kept_float.insert(node["node"].get<std::string>());
  for (const auto& layer : worst) EXPECT_TRUE(kept_float.count(layer["node"].get<std::string>())) << layer["node"];

  // The quantized model is unchanged by the report and still runs in ONNX Runtime.
  auto ort = RunOrt({"eval", "--model", (fetched / "model.onnx").string(), "--reference", BundledModel().string(),
                     "--count", "1000"});
  EXPECT_GE(ort["accuracy"].get<double>(), ort["reference_accuracy"].get<double>() - 0.01) << ort.dump();
}

TEST(DebugReportTest, WeightQuantReportComparesEachQuantizedWeightWithItsOrigin) {
  ScratchDir scratch("quantd-debug-report-wq-");
  const auto& out = scratch.path();
  auto report_dir = out / "report";
  auto config = out / "weight_quant_debug.yaml";
  WriteText(config,
            "common_quant_param:\n  quant_type: WEIGHT_QUANT\n  bit_num: 4\n  min_quant_weight_channel: 0\n"
            "  debug_info_save_path: " +
                report_dir.string() + "\n");
  auto run = RunCommand({(BinDir() / "quantctl").string(), "convert", "--model", BundledModel().string(), "--config",
                         config.string(), "--out", (out / "model").string()});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  auto summary = ReadJson(out / "model" / "summary.json");
  EXPECT_EQ(summary["debug_report"]["dir"], report_dir.string());
  auto original = ReadModel(BundledModel());
  std::set<std::string> quantized_weights, float_initializers;
  for (const auto& weight : summary["weights"]["quantized"])
    quantized_weights.insert(weight["tensor"].get<std::string>());
  ASSERT_FALSE(quantized_weights.empty());
  for (const auto& initializer : original.graph().initializer()) {
    if (initializer.data_type() == onnx::TensorProto::FLOAT) float_initializers.insert(initializer.name());
  }
  size_t origin_rows = 0, dequant_rows = 0;
  for (const auto& node : original.graph().node()) {
    for (const auto& input : node.input()) {
      origin_rows += float_initializers.count(input);
      dequant_rows += quantized_weights.count(input);
    }
  }

  auto csv = ReadCsv(report_dir / "data_distribution.csv");
  ExpectDistributionCsvIsConsistent(csv, "data_distribution.csv");
  size_t origin = 0, dequant = 0;
  for (const auto& row : csv.rows) {
    EXPECT_EQ(row.at("TensorTypeFlag"), "Weight") << "no calibration data, so no activations";
    if (row.at("DataTypeFlag") == "Origin") {
      ++origin;
      continue;
    }
    ++dequant;
    EXPECT_TRUE(quantized_weights.count(row.at("TensorName")));
    // Symmetric max-abs scales represent every weight: nothing saturates.
    EXPECT_EQ(std::stod(row.at("Clip")), 0) << row.at("TensorName");
    EXPECT_LT(std::stod(row.at("CosineSimilarity")), 1.0) << "4-bit weights cannot be exact";
  }
  EXPECT_EQ(origin, origin_rows);
  EXPECT_EQ(dequant, dequant_rows);

  auto params = ReadCsv(report_dir / "quant_param.csv");
  EXPECT_EQ(params.header, kQuantParamColumns);
  ASSERT_EQ(params.rows.size(), summary["weights"]["quantized"].size());
  for (size_t i = 0; i < params.rows.size(); ++i) {
    const auto& weight = summary["weights"]["quantized"][i];
    const auto& row = params.rows[i];
    EXPECT_EQ(row.at("TensorName"), weight["tensor"]);
    EXPECT_EQ(row.at("Bits"), "4");
    auto dims = weight["dims"].get<std::vector<int64_t>>();
    EXPECT_EQ(Numbers(row.at("Scale")).size(), static_cast<size_t>(dims[weight["axis"].get<size_t>()]));
  }
  auto report = ReadJson(report_dir / "report.json");
  EXPECT_EQ(report["layer_cosine_basis"], "weight");
  EXPECT_FALSE(report["worst_layers"].empty());
  EXPECT_EQ(report["rounds"], 0);
}

TEST(DebugReportTest, BadDebugPathFailsTheConversionWithAClearReason) {
  ScratchDir scratch("quantd-debug-report-bad-");
  const auto& out = scratch.path();
  WriteText(out / "blocker", "a file where the report folder should go");
  auto config = out / "c.yaml";
  WriteText(config, "common_quant_param:\n  quant_type: WEIGHT_QUANT\n  bit_num: 8\n  debug_info_save_path: " +
                        (out / "blocker" / "report").string() + "\n");
  auto run = RunCommand({(BinDir() / "quantctl").string(), "convert", "--model", BundledModel().string(), "--config",
                         config.string(), "--out", (out / "model").string()});
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.err.find("debug_info_save_path"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("DEBUG_REPORT_IO"), std::string::npos) << run.err;
}

// Outlier removal cuts the calibrated ranges short of the data, so some
// activations saturate, and the Clip column has to show it.
TEST(DebugReportTest, RemovalOutlierCalibrationShowsClippedActivations) {
  ScratchDir scratch("quantd-debug-report-clip-");
  const auto& out = scratch.path();
  auto calib = out / "calib";
  WriteFashionMnistImages(calib, 4, 200, /*train=*/true);
  auto report_dir = out / "report";
  std::string text = FullQuantConfig(4, report_dir.string(), calib.string() + "/");
  text = std::regex_replace(text, std::regex("MAX_MIN"), "REMOVAL_OUTLIER");
  WriteText(out / "c.yaml", text);
  auto run = RunCommand({(BinDir() / "quantctl").string(), "convert", "--model", BundledModel().string(), "--config",
                         (out / "c.yaml").string(), "--out", (out / "model").string()});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  size_t clipped = 0;
  for (const char* name : {"round_0000.csv", "round_0001.csv", "round_0002.csv", "round_0003.csv"}) {
    auto csv = ReadCsv(report_dir / name);
    ExpectDistributionCsvIsConsistent(csv, name);
    for (const auto& row : csv.rows) {
      double clip = std::stod(row.at("Clip"));
      if (row.at("DataTypeFlag") != "Dequant" || row.at("TensorTypeFlag") != "Activation" || clip == 0) continue;
      ++clipped;
      EXPECT_LT(clip, 0.05) << name << " " << row.at("TensorName");
    }
  }
  EXPECT_GT(clipped, 0u) << "no activation saturated although outliers were cut from the ranges";
}

// report.html in a real browser: the chart and the histograms are drawn by
// the page's own script, so a page that fails to run leaves them out.
TEST(DebugReportBrowserTest, ReportHtmlRendersTheChartAndAHistogramPerWorstLayer) {
  ScratchDir scratch("quantd-debug-report-html-");
  const auto& out = scratch.path();
  auto calib = out / "calib";
  WriteFashionMnistImages(calib, 4, 100, /*train=*/true);
  auto report_dir = out / "report";
  auto config = out / "c.yaml";
  WriteText(config, FullQuantConfig(4, report_dir.string(), calib.string() + "/"));
  auto run = RunCommand({(BinDir() / "quantctl").string(), "convert", "--model", BundledModel().string(), "--config",
                         config.string(), "--out", (out / "model").string()});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  auto report = ReadJson(report_dir / "report.json");
  const size_t layers = report["layers"].size(), worst = report["worst_layers"].size();
  ASSERT_GT(layers, 0u);
  ASSERT_GT(worst, 0u);

  auto html = Slurp(report_dir / "report.html");
  EXPECT_EQ(html.find("<svg"), std::string::npos) << "the SVGs must come from the page's script";
  for (const char* external : {"src=", "href=", "@import", "url("}) {
    EXPECT_EQ(html.find(external), std::string::npos) << "report.html must be self-contained: " << external;
  }

  auto chromium = RunCommand({"/bin/sh", "-c", "command -v chromium"});
  ASSERT_EQ(chromium.exit_code, 0) << "chromium is missing: run ./quantd.sh deps";
  const std::string browser = chromium.out.substr(0, chromium.out.find('\n'));
  const std::string url = "file://" + (report_dir / "report.html").string();
  std::vector<std::string> flags = {browser,
                                    "--headless",
                                    "--no-sandbox",
                                    "--disable-gpu",
                                    "--disable-background-networking",
                                    "--disable-extensions",
                                    "--no-first-run",
                                    "--user-data-dir=" + (out / "profile").string()};
  auto dump_flags = flags;
  dump_flags.insert(dump_flags.end(), {"--dump-dom", url});
  auto dom = RunCommand(dump_flags);
  ASSERT_EQ(dom.exit_code, 0) << dom.err;
  auto count = [&](const std::string& pattern) {
    std::regex re(pattern);
    return static_cast<size_t>(
        std::distance(std::sregex_iterator(dom.out.begin(), dom.out.end(), re), std::sregex_iterator()));
  };
  EXPECT_EQ(count("data-rendered=\"true\""), 1u) << "the page's script did not finish";
  EXPECT_EQ(count("<svg[^>]*id=\"layer-cosine-chart\""), 1u);
  EXPECT_EQ(count("<rect[^>]*class=\"cos-bar\""), layers);
  EXPECT_EQ(count("<svg[^>]*class=\"histogram\""), worst);
  EXPECT_EQ(count("<path[^>]*class=\"hist-origin\""), worst);
  EXPECT_EQ(count("<path[^>]*class=\"hist-dequant\""), worst);
  for (const auto& layer : report["worst_layers"]) {
    EXPECT_NE(dom.out.find("data-node=\"" + layer["node"].get<std::string>() + "\""), std::string::npos);
  }
  EXPECT_NE(dom.out.find(report["suggested_skip_quant_node"].get<std::string>()), std::string::npos);

  // The screenshot is not blank: the bars of the worst layers are drawn red.
  auto shot = out / "shot.png";
  auto shot_flags = flags;
  shot_flags.insert(shot_flags.end(), {"--window-size=900,1400", "--screenshot=" + shot.string(), url});
  auto screenshot = RunCommand(shot_flags);
  ASSERT_EQ(screenshot.exit_code, 0) << screenshot.err;
  cv::Mat image = cv::imread(shot.string(), cv::IMREAD_COLOR);
  ASSERT_FALSE(image.empty());
  cv::Mat red;
  cv::inRange(image, cv::Scalar(0x20, 0x20, 0xb0), cv::Scalar(0x50, 0x50, 0xe0), red);  // BGR around #c53030
  EXPECT_GT(cv::countNonZero(red), 200) << "no worst-layer bars on the screenshot";
  cv::Mat gray;
  cv::cvtColor(image, gray, cv::COLOR_BGR2GRAY);
  cv::Scalar mean, stddev;
  cv::meanStdDev(gray, mean, stddev);
  EXPECT_GT(stddev[0], 10.0) << "the screenshot is blank";
}

}  // namespace
}  // namespace quantd::testing
