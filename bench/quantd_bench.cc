// quantd side of the throughput benchmark (bench/run_bench.sh runs it next
// to bench/ort_bench.js, one process per model and batch size).
//
//   quantd_bench --model M.onnx --batch B [--threads T] [--warmup W]
//                [--iters N] [--min-seconds S] [--profile] [--no-fuse]
//
// Feeds every float graph input a deterministic pseudo-random tensor (the
// same generator as ort_bench.js, so both sides see identical values), with
// the one symbolic dimension set to B, and prints one JSON line:
//   ms_per_batch     median wall time of one Executor::Run over the timed runs
//   mean_ms          mean of the same runs
//   rss_baseline_kb  ru_maxrss before the model is loaded: the process with
//                    its shared libraries, which the report subtracts
//   rss_loaded_kb    ru_maxrss after Executor::Create
//   rss_peak_kb      ru_maxrss at the end
//   checksum         sum of every output element after the last run
// --profile adds a per-node time table (mean and minimum over the timed
// runs) on stderr, measured between consecutive tensor taps. --no-fuse runs
// Conv and its activation as separate nodes (see graph_fusion.h).
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "worker/onnx/model_io.h"
#include "worker/runtime/executor.h"

namespace {

long MaxRssKb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

struct Options {
  std::string model;
  int64_t batch = 0;
  int threads = 1;
  int warmup = 0;
  int iters = 0;
  double min_seconds = 1.0;
  bool profile = false;
  bool fuse = true;
};

[[noreturn]] void Usage(const std::string& error) {
  std::cerr << "quantd_bench: " << error << "\n"
            << "usage: quantd_bench --model M.onnx --batch B [--threads T] [--warmup W] [--iters N]"
               " [--min-seconds S] [--profile] [--no-fuse]\n";
  std::exit(2);
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i += 2) {
    const std::string arg = argv[i];
    if (arg == "--profile") {
      o.profile = true;
      --i;
      continue;
    }
    if (arg == "--no-fuse") {
      o.fuse = false;
      --i;
      continue;
    }
    if (i + 1 >= argc) Usage("option " + arg + " needs a value");
    const std::string value = argv[i + 1];
    try {
      if (arg == "--model") o.model = value;
      else if (arg == "--batch") o.batch = std::stoll(value);
      else if (arg == "--threads") o.threads = std::stoi(value);
      else if (arg == "--warmup") o.warmup = std::stoi(value);
      else if (arg == "--iters") o.iters = std::stoi(value);
      else if (arg == "--min-seconds") o.min_seconds = std::stod(value);
      else Usage("unknown option " + arg);
    } catch (const std::exception&) {
      Usage("bad value for " + arg + ": " + value);
    }
  }
  if (o.model.empty() || o.batch < 1 || o.threads < 1) Usage("--model, --batch >= 1 and --threads >= 1 are needed");
  return o;
}

// 32-bit LCG (Numerical Recipes constants); value = top 24 bits / 2^24.
// ort_bench.js produces the identical sequence.
void FillRandom(float* data, int64_t n, uint32_t seed) {
  uint32_t x = seed;
  for (int64_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    data[i] = static_cast<float>(x >> 8) / 16777216.0f;
  }
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

int Fail(const std::string& what, const quantd::Status& status) {
  std::cerr << "quantd_bench: " << what << ": " << status.message() << " (" << status.reason() << ")\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using quantd::runtime::DataType;
  using quantd::runtime::Tensor;
  const Options opts = ParseArgs(argc, argv);
  const long rss_baseline = MaxRssKb();

  auto model = quantd::LoadModel(opts.model, quantd::ModelLimits{});
  if (!model.ok()) return Fail("loading " + opts.model, model.status());
  quantd::runtime::ExecutorOptions exec_options;
  exec_options.num_threads = opts.threads;
  exec_options.fuse_activations = opts.fuse;
  auto executor = quantd::runtime::Executor::Create(*model, exec_options);
  if (!executor.ok()) return Fail("preparing " + opts.model, executor.status());
  *model = onnx::ModelProto();  // the executor holds its own copy of what it needs

  std::map<std::string, Tensor> feeds;
  uint32_t index = 0;
  for (const auto& info : (*executor)->inputs()) {
    if (info.optional) {
      ++index;
      continue;
    }
    if (info.dtype != DataType::kFloat || !info.has_shape) {
      std::cerr << "quantd_bench: input '" << info.name << "' is not a float tensor of known rank\n";
      return 1;
    }
    quantd::runtime::Shape shape = info.shape;
    int dynamic = 0;
    for (auto& d : shape) {
      if (d < 1) {
        d = opts.batch;
        ++dynamic;
      }
    }
    if (dynamic > 1) {
      std::cerr << "quantd_bench: input '" << info.name << "' has more than one dynamic dimension\n";
      return 1;
    }
    Tensor t(DataType::kFloat, shape);
    FillRandom(t.data<float>(), t.size(), 12345u + index);
    feeds.emplace(info.name, std::move(t));
    ++index;
  }
  const long rss_loaded = MaxRssKb();

  using Clock = std::chrono::steady_clock;
  // Per-node time: the gap since the previous tap (or the start of the run).
  std::map<int, double> node_ms, node_min_ms;
  std::map<int, std::string> node_label;
  Clock::time_point last_tap;
  bool timing = false;
  quantd::runtime::RunOptions run_options;
  if (opts.profile) {
    run_options.tap = [&](const onnx::NodeProto& node, int node_index, const std::string&, const Tensor&) {
      const auto now = Clock::now();
      if (timing && now > last_tap) {
        const double ms = std::chrono::duration<double, std::milli>(now - last_tap).count();
        node_ms[node_index] += ms;
        auto [it, fresh] = node_min_ms.emplace(node_index, ms);
        if (!fresh) it->second = std::min(it->second, ms);
        node_label[node_index] = node.op_type() + " " + node.name();
      }
      last_tap = Clock::now();
    };
  }
  auto run_once = [&]() -> quantd::StatusOr<std::map<std::string, Tensor>> {
    last_tap = Clock::now();
    return (*executor)->Run(feeds, run_options);
  };
  const int warmup = opts.warmup > 0 ? opts.warmup : (opts.batch >= 16 ? 3 : 20);
  for (int i = 0; i < warmup; ++i) {
    auto r = run_once();
    if (!r.ok()) return Fail("running " + opts.model, r.status());
  }
  const int min_iters = opts.iters > 0 ? opts.iters : (opts.batch >= 16 ? 10 : 100);
  std::vector<double> times;
  std::map<std::string, Tensor> last;
  timing = true;
  const auto start = Clock::now();
  while (true) {
    const auto t0 = Clock::now();
    auto r = run_once();
    const auto t1 = Clock::now();
    if (!r.ok()) return Fail("running " + opts.model, r.status());
    last = std::move(r).value();
    times.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    if (static_cast<int>(times.size()) >= min_iters &&
        std::chrono::duration<double>(t1 - start).count() >= opts.min_seconds) {
      break;
    }
  }
  double checksum = 0;
  for (const auto& info : (*executor)->outputs()) {
    const Tensor& t = last.at(info.name);
    if (t.dtype() == DataType::kFloat) {
      for (int64_t i = 0; i < t.size(); ++i) checksum += t.data<float>()[i];
    }
  }
  double mean = 0;
  for (double t : times) mean += t;
  mean /= static_cast<double>(times.size());
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  const size_t mid = sorted.size() / 2;
  const double median = sorted.size() % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;

  if (opts.profile) {
    double total = 0;
    for (const auto& [index, ms] : node_ms) total += ms;
    double min_total = 0;
    for (const auto& [index, ms] : node_min_ms) min_total += ms;
    std::fprintf(stderr, "%8s %8s %6s  %s\n", "mean ms", "min ms", "share", "node");
    for (const auto& [index, ms] : node_ms) {
      std::fprintf(stderr, "%8.4f %8.4f %5.1f%%  %s\n", ms / static_cast<double>(times.size()), node_min_ms[index],
                   100.0 * ms / total, node_label[index].c_str());
    }
    std::fprintf(stderr, "%8.4f %8.4f         total\n", total / static_cast<double>(times.size()), min_total);
  }

  std::ostringstream json;
  json.precision(10);
  json << "{\"side\":\"quantd\",\"model\":" << JsonString(opts.model) << ",\"batch\":" << opts.batch
       << ",\"threads\":" << opts.threads << ",\"iterations\":" << times.size() << ",\"ms_per_batch\":" << median
       << ",\"mean_ms\":" << mean << ",\"rss_baseline_kb\":" << rss_baseline << ",\"rss_loaded_kb\":" << rss_loaded
       << ",\"rss_peak_kb\":" << MaxRssKb() << ",\"checksum\":" << checksum << "}";
  std::cout << json.str() << std::endl;
  return 0;
}
