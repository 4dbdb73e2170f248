// deploy/k8s, checked without a cluster: every manifest parses, the
// kustomizations hold together, every container runs a flag line the real
// binaries accept, pods are locked down and sized, the ConfigMaps hold
// configuration quantd accepts, and the probes, services, workers and
// autoscalers point at things that exist.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>

#include "common/config/quant_config.h"
#include "common/ids.h"
#include "server/server_config.h"
#include "tests/deploy/deploy_util.h"

namespace quantd::deploy_test {
namespace {

namespace fs = std::filesystem;

struct Manifest {
  fs::path file;
  YAML::Node doc;
  std::string kind, name;
};

struct Container {
  const Manifest* owner;
  YAML::Node pod;  // the pod spec
  YAML::Node node;
  std::string binary;
  std::vector<std::string> argv;  // after the binary
  std::string where() const {
    return owner->file.string() + ": " + owner->kind + "/" + owner->name + "/" + node["name"].as<std::string>("");
  }
};

fs::path K8sDir() {
  return SourceDir() / "deploy" / "k8s";
}

// Child lookups that never insert into the tree: yaml-cpp's non-const
// operator[] and Node assignment both modify the document.
YAML::Node At(const YAML::Node& node, std::initializer_list<const char*> path) {
  YAML::Node current;
  current.reset(node);
  for (const char* key : path) {
    if (!current.IsDefined() || !current.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    const YAML::Node& view = current;
    YAML::Node next = view[key];
    if (!next.IsDefined()) return YAML::Node(YAML::NodeType::Undefined);
    current.reset(next);
  }
  return current;
}

std::string Text(const YAML::Node& node) {
  return node && node.IsScalar() ? node.as<std::string>() : "";
}

std::vector<std::string> Strings(const YAML::Node& node) {
  std::vector<std::string> values;
  if (node && node.IsSequence()) {
    for (const auto& item : node) values.push_back(item.as<std::string>());
  }
  return values;
}

class ManifestTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    manifests_ = new std::vector<Manifest>();
    kustomizations_ = new std::vector<Manifest>();
    std::vector<fs::path> files;
    for (const auto& entry : fs::recursive_directory_iterator(K8sDir())) {
      auto extension = entry.path().extension();
      if (entry.is_regular_file() && (extension == ".yaml" || extension == ".yml")) files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& file : files) {
      std::vector<YAML::Node> docs;
      try {
        docs = YAML::LoadAllFromFile(file.string());
      } catch (const YAML::Exception& e) {
        parse_errors_ += file.string() + ": " + e.what() + "\n";
        continue;
      }
      for (const auto& doc : docs) {
        if (!doc || doc.IsNull()) continue;
        Manifest manifest{file, doc, Text(At(doc, {"kind"})), Text(At(doc, {"metadata", "name"}))};
        (file.filename() == "kustomization.yaml" ? kustomizations_ : manifests_)->push_back(manifest);
      }
    }
    for (const auto& binary : {"quantd", "quantd-worker", "quantctl"}) {
      auto help = Capture({(BinDir() / binary).string(), "--help"});
      specs_[binary] = ParseHelp(binary, help.out);
    }
  }
  static void TearDownTestSuite() {
    delete manifests_;
    delete kustomizations_;
  }

  static std::vector<const Manifest*> OfKind(const std::string& kind) {
    std::vector<const Manifest*> found;
    for (const auto& manifest : *manifests_) {
      if (manifest.kind == kind) found.push_back(&manifest);
    }
    return found;
  }
  static const Manifest* Find(const std::string& kind, const std::string& name) {
    for (const auto& manifest : *manifests_) {
      if (manifest.kind == kind && manifest.name == name) return &manifest;
    }
    return nullptr;
  }
  // Patches (files a kustomization lists under patches) restate only part
  // of a resource.
  static bool IsPatch(const Manifest& manifest) {
    for (const auto& kustomization : *kustomizations_) {
      for (const auto& patch : At(kustomization.doc, {"patches"})) {
        if (kustomization.file.parent_path() / Text(At(patch, {"path"})) == manifest.file) return true;
      }
    }
    return false;
  }

  static YAML::Node PodSpec(const Manifest& manifest) {
    if (manifest.kind == "CronJob") return At(manifest.doc, {"spec", "jobTemplate", "spec", "template", "spec"});
    static const std::set<std::string> workloads = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"};
    if (workloads.count(manifest.kind)) return At(manifest.doc, {"spec", "template", "spec"});
    return YAML::Node(YAML::NodeType::Undefined);
  }

  // Entry point of the image when a container sets no command.
  static std::string ImageEntrypoint() {
    auto stages = ProjectDockerfile();
    for (const auto& instruction : stages.back().instructions) {
      if (instruction.keyword != "ENTRYPOINT") continue;
      std::smatch match;
      if (std::regex_search(instruction.args, match, std::regex(R"re(\["([^"]+)")re"))) {
        return fs::path(match[1].str()).filename();
      }
    }
    return "";
  }

  static std::vector<Container> Containers(bool include_patches = false) {
    std::vector<Container> containers;
    auto entrypoint = ImageEntrypoint();
    for (const auto& manifest : *manifests_) {
      if (!include_patches && IsPatch(manifest)) continue;
      auto pod = PodSpec(manifest);
      if (!pod) continue;
      for (const char* list : {"initContainers", "containers"}) {
        for (const auto& node : At(pod, {list})) {
          Container container{&manifest, pod, node, "", {}};
          auto command = Strings(At(node, {"command"}));
          container.binary = command.empty() ? entrypoint : fs::path(command[0]).filename().string();
          if (!command.empty()) container.argv.assign(command.begin() + 1, command.end());
          for (const auto& arg : Strings(At(node, {"args"}))) container.argv.push_back(arg);
          containers.push_back(container);
        }
      }
    }
    return containers;
  }

  static std::string FlagValue(const std::vector<std::string>& argv, const std::string& flag) {
    for (size_t i = 0; i + 1 < argv.size(); ++i) {
      if (argv[i] == flag) return argv[i + 1];
    }
    return "";
  }

  static std::vector<Manifest>* manifests_;
  static std::vector<Manifest>* kustomizations_;
  static std::map<std::string, BinarySpec> specs_;
  static std::string parse_errors_;
};

std::vector<Manifest>* ManifestTest::manifests_ = nullptr;
std::vector<Manifest>* ManifestTest::kustomizations_ = nullptr;
std::map<std::string, BinarySpec> ManifestTest::specs_;
std::string ManifestTest::parse_errors_;

TEST_F(ManifestTest, EveryFileParsesAndEveryObjectNamesItsKind) {
  EXPECT_TRUE(parse_errors_.empty()) << parse_errors_;
  ASSERT_GT(manifests_->size(), 10u);
  for (const auto& manifest : *manifests_) {
    EXPECT_FALSE(Text(At(manifest.doc, {"apiVersion"})).empty()) << manifest.file;
    EXPECT_FALSE(manifest.kind.empty()) << manifest.file;
    EXPECT_FALSE(manifest.name.empty()) << manifest.file;
  }
  for (const auto& kustomization : *kustomizations_) {
    EXPECT_EQ(Text(At(kustomization.doc, {"apiVersion"})), "kustomize.config.k8s.io/v1beta1") << kustomization.file;
    EXPECT_EQ(kustomization.kind, "Kustomization") << kustomization.file;
  }
  // Objects are unique per kind and name once rendered: a duplicate in one
  // tree would make kustomize fail.
  std::map<std::string, fs::path> seen;
  for (const auto& manifest : *manifests_) {
    if (IsPatch(manifest)) continue;
    auto key = manifest.kind + "/" + manifest.name;
    auto [it, inserted] = seen.emplace(key, manifest.file);
    EXPECT_TRUE(inserted) << key << " in both " << it->second << " and " << manifest.file;
  }
}

TEST_F(ManifestTest, KustomizationsReferToFilesThatExistAndLeaveNoneOut) {
  ASSERT_GE(kustomizations_->size(), 4u);
  std::set<std::string> overlays;
  for (const auto& kustomization : *kustomizations_) {
    auto dir = kustomization.file.parent_path();
    if (dir.parent_path().filename() == "overlays") overlays.insert(dir.filename());
    std::set<fs::path> used;
    for (const auto& resource : Strings(At(kustomization.doc, {"resources"}))) {
      auto path = fs::weakly_canonical(dir / resource);
      if (fs::is_directory(path)) {
        EXPECT_TRUE(fs::exists(path / "kustomization.yaml")) << kustomization.file << ": " << resource;
      } else {
        EXPECT_TRUE(fs::is_regular_file(path)) << kustomization.file << ": missing " << resource;
      }
      used.insert(path);
    }
    for (const auto& patch : At(kustomization.doc, {"patches"})) {
      auto path = fs::weakly_canonical(dir / Text(At(patch, {"path"})));
      ASSERT_TRUE(fs::is_regular_file(path)) << kustomization.file << ": missing patch " << path;
      used.insert(path);
      // The patched object must come from the kustomization's resources.
      auto doc = YAML::LoadFile(path.string());
      auto kind = Text(At(doc, {"kind"})), name = Text(At(doc, {"metadata", "name"}));
      bool found = false;
      for (const auto& manifest : *manifests_) {
        found |= manifest.kind == kind && manifest.name == name && !IsPatch(manifest);
      }
      EXPECT_TRUE(found) << path << " patches " << kind << "/" << name << ", which no manifest defines";
    }
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.path().extension() != ".yaml" || entry.path().filename() == "kustomization.yaml") continue;
      EXPECT_TRUE(used.count(fs::weakly_canonical(entry.path())))
          << entry.path() << " is in a kustomization's folder but not listed in it";
    }
    for (const auto& image : At(kustomization.doc, {"images"})) {
      EXPECT_EQ(Text(At(image, {"name"})), "quantd") << kustomization.file;
      EXPECT_EQ(Text(At(image, {"newTag"})), ProjectVersion()) << kustomization.file;
    }
  }
  EXPECT_TRUE(overlays.count("cpu-only") && overlays.count("gpu") && overlays.count("postgres"));
}

TEST_F(ManifestTest, EveryContainerRunsAFlagLineItsBinaryAccepts) {
  auto containers = Containers(true);
  ASSERT_GE(containers.size(), 5u);
  for (const auto& container : containers) {
    auto spec = specs_.find(container.binary);
    if (spec == specs_.end()) {
      ADD_FAILURE() << container.where() << " runs '" << container.binary << "', which the image does not have";
      continue;
    }
    if (container.argv.empty() && IsPatch(*container.owner)) continue;  // a patch adding env or mounts only
    auto error = CheckArguments(spec->second, container.argv);
    EXPECT_TRUE(error.empty()) << container.where() << ": " << container.binary << ": " << error;
  }
}

TEST_F(ManifestTest, ImagesAreTheProjectImageAtTheProjectVersion) {
  for (const auto& container : Containers(true)) {
    auto image = Text(At(container.node, {"image"}));
    if (image.empty() && IsPatch(*container.owner)) continue;
    EXPECT_EQ(image, "quantd:" + ProjectVersion()) << container.where();
  }
}

TEST_F(ManifestTest, PodsRunAsTheImageUserWithALockedDownSizedContainer) {
  std::string user;
  auto stages = ProjectDockerfile();
  for (const auto& instruction : stages.back().instructions) {
    if (instruction.keyword == "USER") user = instruction.args.substr(0, instruction.args.find(':'));
  }
  ASSERT_FALSE(user.empty());
  for (const auto& container : Containers()) {
    auto where = container.where();
    auto pod_security = At(container.pod, {"securityContext"});
    auto security = At(container.node, {"securityContext"});
    bool non_root = At(security, {"runAsNonRoot"}) ? At(security, {"runAsNonRoot"}).as<bool>()
                                                   : At(pod_security, {"runAsNonRoot"}).as<bool>(false);
    EXPECT_TRUE(non_root) << where;
    auto uid = At(security, {"runAsUser"}) ? At(security, {"runAsUser"}) : At(pod_security, {"runAsUser"});
    EXPECT_EQ(Text(uid), user) << where << ": runAsUser should be the image's USER";
    EXPECT_TRUE(At(security, {"readOnlyRootFilesystem"}).as<bool>(false)) << where;
    EXPECT_FALSE(At(security, {"allowPrivilegeEscalation"}).as<bool>(true)) << where;
    auto drop = Strings(At(security, {"capabilities", "drop"}));
    EXPECT_NE(std::find(drop.begin(), drop.end(), "ALL"), drop.end()) << where;
    for (const char* kind : {"requests", "limits"}) {
      for (const char* resource : {"cpu", "memory"}) {
        EXPECT_FALSE(Text(At(container.node, {"resources", kind, resource})).empty())
            << where << ": resources." << kind << "." << resource;
      }
    }
    // A read-only root needs every written path on a volume; and every
    // mount needs its volume.
    std::set<std::string> volumes;
    for (const auto& volume : At(container.pod, {"volumes"})) volumes.insert(Text(At(volume, {"name"})));
    bool has_tmp = false;
    for (const auto& mount : At(container.node, {"volumeMounts"})) {
      EXPECT_TRUE(volumes.count(Text(At(mount, {"name"})))) << where << ": no volume " << Text(At(mount, {"name"}));
      has_tmp |= Text(At(mount, {"mountPath"})) == "/tmp";
    }
    EXPECT_TRUE(has_tmp) << where << ": /tmp must be a writable volume";
  }
}

TEST_F(ManifestTest, VolumesReferToObjectsDefinedHere) {
  for (const auto& container : Containers(true)) {
    for (const auto& volume : At(container.pod, {"volumes"})) {
      std::vector<std::pair<std::string, YAML::Node>> references = {
          {"ConfigMap", At(volume, {"configMap"})},
          {"Secret", At(volume, {"secret"})},
          {"PersistentVolumeClaim", At(volume, {"persistentVolumeClaim"})},
      };
      for (const auto& source : At(volume, {"projected", "sources"})) {
        references.emplace_back("Secret", At(source, {"secret"}));
        references.emplace_back("ConfigMap", At(source, {"configMap"}));
      }
      for (const auto& [kind, reference] : references) {
        if (!reference) continue;
        auto name = Text(At(reference, {"name"}));
        if (name.empty()) name = Text(At(reference, {"secretName"}));
        if (name.empty()) name = Text(At(reference, {"claimName"}));
        EXPECT_NE(Find(kind, name), nullptr) << container.where() << ": " << kind << " " << name << " is not defined";
      }
    }
    for (const auto& env : At(container.node, {"env"})) {
      auto secret = At(env, {"valueFrom", "secretKeyRef"});
      if (!secret) continue;
      auto* manifest = Find("Secret", Text(At(secret, {"name"})));
      ASSERT_NE(manifest, nullptr) << container.where();
      EXPECT_TRUE(At(manifest->doc, {"stringData", Text(At(secret, {"key"})).c_str()}))
          << container.where() << ": the Secret has no key " << Text(At(secret, {"key"}));
    }
  }
}

TEST_F(ManifestTest, ConfigMapsHoldConfigurationTheProgramsAccept) {
  int server_configs = 0, quant_configs = 0;
  for (const auto& manifest : OfKind("ConfigMap")) {
    for (const auto& entry : At(manifest->doc, {"data"})) {
      auto key = entry.first.as<std::string>();
      auto text = entry.second.as<std::string>();
      if (key == "quantd.yaml") {
        ++server_configs;
        auto file = fs::temp_directory_path() / NewId("quantd-yaml-");
        std::ofstream(file) << text;
        server::ServerConfig config;
        auto status = server::LoadServerConfigFile(file, config);
        fs::remove(file);
        EXPECT_TRUE(status.ok()) << manifest->file << ": " << status.message();
        // The checks quantd runs at start, beyond reading the file: a
        // listener on every interface needs authentication.
        auto consistent = server::ValidateServerConfig(config);
        EXPECT_TRUE(consistent.ok()) << manifest->file << ": quantd would refuse to start: " << consistent.message();
        EXPECT_TRUE(config.auth_enabled()) << manifest->file << ": a cluster service needs tenant tokens";
        EXPECT_EQ(config.listen.substr(config.listen.rfind(':')), ":50051") << manifest->file;
        if (config.job_store == server::JobStoreBackend::kPostgres) {
          EXPECT_EQ(config.postgres_dsn.find("password"), std::string::npos)
              << manifest->file << ": the password belongs in the Secret (PGPASSWORD)";
        }
      } else if (fs::path(key).extension() == ".yaml" || fs::path(key).extension() == ".cfg") {
        ++quant_configs;
        auto parsed = config::ParseQuantConfig(text);
        EXPECT_TRUE(parsed.ok()) << manifest->file << ": " << key << ": " << parsed.status().message();
      }
    }
  }
  EXPECT_GE(server_configs, 2) << "the base and the postgres overlay each carry a quantd.yaml";
  EXPECT_GE(quant_configs, 1);
}

TEST_F(ManifestTest, QuantdProbesItsGrpcHealthServiceAndTheServiceReachesIt) {
  // The health services quantd registers: "" always, plus each named one.
  auto main_source = ReadText(SourceDir() / "server" / "main.cc");
  std::set<std::string> health = {""};
  std::regex serving(R"re(SetServingStatus\("([^"]*)")re");
  for (auto it = std::sregex_iterator(main_source.begin(), main_source.end(), serving); it != std::sregex_iterator();
       ++it) {
    health.insert((*it)[1]);
  }
  ASSERT_TRUE(health.count("quantd.v1.QuantService"));

  int servers = 0;
  for (const auto& container : Containers()) {
    if (container.binary != "quantd") continue;
    ++servers;
    auto where = container.where();
    int grpc_port = 0;
    for (const auto& port : At(container.node, {"ports"})) {
      if (Text(At(port, {"name"})) == "grpc") grpc_port = At(port, {"containerPort"}).as<int>();
    }
    EXPECT_EQ(grpc_port, 50051) << where;
    for (const char* probe : {"readinessProbe", "livenessProbe"}) {
      auto grpc = At(container.node, {probe, "grpc"});
      ASSERT_TRUE(grpc) << where << ": " << probe << " must be a gRPC health probe";
      EXPECT_EQ(At(grpc, {"port"}).as<int>(0), grpc_port) << where << ": " << probe;
      EXPECT_TRUE(health.count(Text(At(grpc, {"service"}))))
          << where << ": " << probe << " asks for service '" << Text(At(grpc, {"service"})) << "'";
    }
    EXPECT_EQ(Text(At(container.node, {"readinessProbe", "grpc", "service"})), "quantd.v1.QuantService") << where;
    // Its data dir is a persistent volume.
    bool data_on_pvc = false;
    for (const auto& mount : At(container.node, {"volumeMounts"})) {
      if (Text(At(mount, {"mountPath"})) != "/var/lib/quantd") continue;
      for (const auto& volume : At(container.pod, {"volumes"})) {
        data_on_pvc |= Text(At(volume, {"name"})) == Text(At(mount, {"name"})) && At(volume, {"persistentVolumeClaim"});
      }
    }
    EXPECT_TRUE(data_on_pvc) << where;

    auto labels = At(container.owner->doc, {"spec", "template", "metadata", "labels"});
    auto* service = Find("Service", "quantd");
    ASSERT_NE(service, nullptr);
    for (const auto& selector : At(service->doc, {"spec", "selector"})) {
      EXPECT_EQ(Text(At(labels, {selector.first.as<std::string>().c_str()})), selector.second.as<std::string>())
          << "Service quantd does not select " << where;
    }
  }
  EXPECT_EQ(servers, 1);
}

TEST_F(ManifestTest, CpuAndGpuWorkersConnectToTheServiceAndGpuOnesLandOnGpuNodes) {
  std::set<std::string> service_ports;
  for (const auto* service : OfKind("Service")) {
    for (const auto& port : At(service->doc, {"spec", "ports"})) {
      service_ports.insert(service->name + ":" + Text(At(port, {"port"})));
    }
  }
  std::set<std::string> devices;
  for (const auto& container : Containers()) {
    auto server_flag = FlagValue(container.argv, "--server");
    if (container.binary == "quantctl" && !server_flag.empty()) {
      EXPECT_TRUE(service_ports.count(server_flag)) << container.where() << ": no Service at " << server_flag;
    }
    if (container.binary != "quantd-worker") continue;
    auto where = container.where();
    EXPECT_EQ(container.owner->kind, "Deployment") << where;
    EXPECT_TRUE(service_ports.count(server_flag)) << where << ": no Service at " << server_flag;
    auto device = FlagValue(container.argv, "--device");
    devices.insert(device);
    auto grace = At(container.pod, {"terminationGracePeriodSeconds"}).as<int>(30);
    EXPECT_GE(grace, 120) << where << ": a stopping worker needs time to hand its job back";
    bool has_gpu_limit = static_cast<bool>(At(container.node, {"resources", "limits", "nvidia.com/gpu"}));
    if (device == "gpu") {
      EXPECT_TRUE(has_gpu_limit) << where;
      EXPECT_TRUE(At(container.pod, {"nodeSelector"}) && At(container.pod, {"nodeSelector"}).size() > 0) << where;
      bool tolerates_gpu = false;
      for (const auto& toleration : At(container.pod, {"tolerations"})) {
        tolerates_gpu |= Text(At(toleration, {"key"})) == "nvidia.com/gpu";
      }
      EXPECT_TRUE(tolerates_gpu) << where;
      EXPECT_GE(grace, 600) << where;
    } else {
      EXPECT_FALSE(has_gpu_limit) << where;
    }
  }
  EXPECT_EQ(devices, (std::set<std::string>{"cpu", "gpu"}));
}

// quantd.yaml asks for tokens, so every worker and every client of the
// service presents one, from a file in a volume of its own pod.
TEST_F(ManifestTest, WorkersAndClientsOfTheServicePresentATokenFromTheirPod) {
  int checked = 0;
  for (const auto& container : Containers()) {
    bool talks_to_server = container.binary == "quantd-worker" ||
                           (container.binary == "quantctl" && !FlagValue(container.argv, "--server").empty());
    if (!talks_to_server) continue;
    ++checked;
    auto where = container.where();
    auto token_file = FlagValue(container.argv, "--token-file");
    ASSERT_FALSE(token_file.empty()) << where << ": no --token-file";
    bool mounted = false;
    for (const auto& mount : At(container.node, {"volumeMounts"})) {
      auto path = Text(At(mount, {"mountPath"}));
      if (token_file.rfind(path + "/", 0) != 0) continue;
      for (const auto& volume : At(container.pod, {"volumes"})) {
        if (Text(At(volume, {"name"})) != Text(At(mount, {"name"}))) continue;
        auto secret = At(volume, {"secret"});
        ASSERT_TRUE(secret) << where << ": " << token_file << " must come from a Secret";
        for (const auto& item : At(secret, {"items"})) {
          mounted |= path + "/" + Text(At(item, {"path"})) == token_file;
        }
      }
    }
    EXPECT_TRUE(mounted) << where << ": " << token_file << " is not a file of a mounted Secret";
    // Workers and tenants hold different credentials.
    bool worker_file = token_file.find("worker-token") != std::string::npos;
    EXPECT_EQ(worker_file, container.binary == "quantd-worker") << where << ": " << token_file;
  }
  EXPECT_GE(checked, 3) << "the CPU and GPU workers and the batch submit Job";
}

TEST_F(ManifestTest, BatchJobsSubmitAndWaitOrConvertWithoutAServer) {
  bool submit_wait = false, convert = false;
  for (const auto& container : Containers()) {
    if (container.binary != "quantctl" || container.owner->kind != "Job") continue;
    const auto& argv = container.argv;
    auto has = [&](const std::string& word) { return std::find(argv.begin(), argv.end(), word) != argv.end(); };
    EXPECT_EQ(Text(At(container.pod, {"restartPolicy"})), "Never") << container.where();
    if (has("submit") && has("--wait") && has("--out")) submit_wait = true;
    if (has("convert")) {
      convert = true;
      EXPECT_FALSE(has("--server")) << container.where() << ": convert runs with no server";
    }
  }
  EXPECT_TRUE(submit_wait);
  EXPECT_TRUE(convert);
}

TEST_F(ManifestTest, AutoscalingScalesTheCpuWorkersOnTheQueueDepthMetric) {
  auto metrics_source = ReadText(SourceDir() / "server" / "metrics.cc");
  ASSERT_NE(metrics_source.find("\"quantd_queue_depth\""), std::string::npos)
      << "quantd no longer exports quantd_queue_depth";
  auto scalers = OfKind("ScaledObject");
  auto hpas = OfKind("HorizontalPodAutoscaler");
  scalers.insert(scalers.end(), hpas.begin(), hpas.end());
  ASSERT_FALSE(scalers.empty());
  for (const auto* scaler : scalers) {
    auto target = Text(At(scaler->doc, {"spec", "scaleTargetRef", "name"}));
    auto* deployment = Find("Deployment", target);
    ASSERT_NE(deployment, nullptr) << scaler->file << ": no Deployment " << target;
    bool runs_cpu_workers = false;
    for (const auto& container : Containers()) {
      runs_cpu_workers |= container.owner == deployment && container.binary == "quantd-worker" &&
                          FlagValue(container.argv, "--device") == "cpu";
    }
    EXPECT_TRUE(runs_cpu_workers) << scaler->file;
    YAML::Emitter emitter;
    emitter << At(scaler->doc, {"spec"});
    EXPECT_NE(std::string(emitter.c_str()).find("quantd_queue_depth"), std::string::npos) << scaler->file;
  }
}

TEST_F(ManifestTest, ThePostgresOverlaySharesOneQueueAndOneBlobVolume) {
  auto dir = K8sDir() / "overlays" / "postgres";
  bool shared_volume = false, several_replicas = false, password_from_secret = false;
  for (const auto& manifest : *manifests_) {
    if (manifest.file.parent_path() != dir) continue;
    if (manifest.kind == "PersistentVolumeClaim" && manifest.name == "quantd-data") {
      auto modes = Strings(At(manifest.doc, {"spec", "accessModes"}));
      shared_volume = std::find(modes.begin(), modes.end(), "ReadWriteMany") != modes.end();
    }
    if (manifest.kind == "Deployment" && manifest.name == "quantd") {
      several_replicas = At(manifest.doc, {"spec", "replicas"}).as<int>(1) > 1 &&
                         Text(At(manifest.doc, {"spec", "strategy", "type"})) != "Recreate";
      for (const auto& container : At(manifest.doc, {"spec", "template", "spec", "containers"})) {
        for (const auto& env : At(container, {"env"})) {
          password_from_secret |= Text(At(env, {"name"})) == "PGPASSWORD" && At(env, {"valueFrom", "secretKeyRef"});
        }
      }
    }
  }
  EXPECT_TRUE(shared_volume) << "replicas must share the blob store";
  EXPECT_TRUE(several_replicas);
  EXPECT_TRUE(password_from_secret);
}

}  // namespace
}  // namespace quantd::deploy_test
