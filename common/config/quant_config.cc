#include "common/config/quant_config.h"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <utility>

namespace quantd::config {
namespace {

constexpr std::string_view kCommon = "common_quant_param";
constexpr std::string_view kMixedBit = "mixed_bit_weight_quant_param";
constexpr std::string_view kFull = "full_quant_param";
constexpr std::string_view kDynamic = "dynamic_quant_param";
constexpr std::string_view kPreprocess = "data_preprocess_param";

struct SectionSchema {
  std::string_view name;
  std::vector<std::string_view> keys;
};

const std::vector<SectionSchema>& Schema() {
  static const std::vector<SectionSchema> schema = {
      {kCommon,
       {"quant_type", "bit_num", "min_quant_weight_size", "min_quant_weight_channel", "skip_quant_node",
        "debug_info_save_path"}},
      {kMixedBit, {"init_scale", "auto_tune"}},
      {kFull, {"activation_quant_method", "bias_correction", "target_device"}},
      {kDynamic, {"operator_form"}},
      {kPreprocess,
       {"calibrate_path", "calibrate_size", "input_type", "image_to_format", "normalize_mean", "normalize_std",
        "resize_width", "resize_height", "resize_method", "center_crop_width", "center_crop_height"}},
  };
  return schema;
}

const SectionSchema* FindSection(std::string_view name) {
  for (const auto& s : Schema()) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

// Only the sections, their keys and one level of list or mapping below a key
// are meaningful, so a well-formed config never nests deeper than this.
constexpr int kMaxYamlDepth = 4;
// Aliases let a small text describe a huge tree; visiting is capped instead
// of trying to recognise them.
constexpr int kMaxYamlNodes = 100000;
constexpr int64_t kMaxU16 = 65535;

// ---------------------------------------------------------------------------
// Small text helpers.

std::string_view Trim(std::string_view s) {
  size_t b = 0;
  size_t e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && ToLower(a) == ToLower(b);
}

// User text is echoed into messages that end up in logs and RPC replies, so
// it is bounded and stripped of control characters.
std::string Quote(std::string_view s) {
  constexpr size_t kMaxEcho = 64;
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < kMaxEcho; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      out += '?';
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kMaxEcho) out += "...";
  out += '"';
  return out;
}

std::string FormatDouble(double v) {
  std::array<char, 64> buf{};
  auto [ptr, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  if (ec != std::errc()) return "?";
  return std::string(buf.data(), ptr);
}

std::string AtLine(int line) { return line > 0 ? " (line " + std::to_string(line) + ")" : std::string(); }

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1);
  std::vector<size_t> cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t subst = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, subst});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// Closest candidate within edit distance 2, compared case-insensitively.
std::optional<std::string_view> Closest(std::string_view word,
                                        const std::vector<std::string_view>& candidates) {
  constexpr size_t kMaxDistance = 2;
  if (word.size() > 64) return std::nullopt;
  const std::string lower = ToLower(word);
  std::optional<std::string_view> best;
  size_t best_distance = kMaxDistance + 1;
  for (std::string_view c : candidates) {
    const size_t d = EditDistance(lower, c);
    if (d < best_distance) {
      best_distance = d;
      best = c;
    }
  }
  return best;
}

std::string Join(const std::vector<std::string_view>& items, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += sep;
    out += items[i];
  }
  return out;
}

Status Error(std::string_view reason, std::string message) {
  return InvalidArgument(std::string(reason), std::move(message));
}

// ---------------------------------------------------------------------------
// Both spellings are first turned into this untyped form, and one reader
// gives it meaning; that is what keeps the YAML and INI forms equivalent.

struct RawValue {
  enum class Kind { kScalar, kSequence, kMapping, kUnsupported };
  Kind kind = Kind::kScalar;
  std::string scalar;
  std::vector<std::string> items;
  std::vector<std::pair<std::string, std::string>> pairs;
  // For kUnsupported: what was found, for the message.
  std::string found;
};

struct RawEntry {
  std::string key;
  RawValue value;
  int line = 0;
};

struct RawSection {
  std::string name;
  int line = 0;
  // Set when a YAML section is not a mapping; says what it was.
  std::optional<std::string> not_a_mapping;
  std::vector<RawEntry> entries;
};

using RawDoc = std::vector<RawSection>;

// ---------------------------------------------------------------------------
// INI form.

bool IsIniComment(std::string_view trimmed) {
  return !trimmed.empty() && (trimmed[0] == '#' || trimmed[0] == ';');
}

std::vector<std::string_view> SplitLines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    start = end + 1;
  }
  return lines;
}

bool LooksLikeIni(std::string_view text) {
  for (std::string_view line : SplitLines(text)) {
    const std::string_view t = Trim(line);
    if (t.empty() || IsIniComment(t)) continue;
    return t.front() == '[';
  }
  return false;
}

// The seed's .cfg files are written with bare values, but quoting a value is
// common enough (and means the same in YAML) that it is honoured.
std::string Unquote(std::string_view v) {
  if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front()) {
    return std::string(v.substr(1, v.size() - 2));
  }
  return std::string(v);
}

StatusOr<RawDoc> ReadIni(std::string_view text) {
  RawDoc doc;
  int line_no = 0;
  for (std::string_view line : SplitLines(text)) {
    ++line_no;
    const std::string_view t = Trim(line);
    if (t.empty() || IsIniComment(t)) continue;
    if (t.front() == '[') {
      if (t.back() != ']') {
        return Error("CONFIG_SYNTAX", "line " + std::to_string(line_no) +
                                          ": a section header must be [name] alone on its line, got " +
                                          Quote(t));
      }
      const std::string_view name = Trim(t.substr(1, t.size() - 2));
      if (name.empty()) {
        return Error("CONFIG_SYNTAX", "line " + std::to_string(line_no) + ": empty section name");
      }
      doc.push_back(RawSection{std::string(name), line_no, std::nullopt, {}});
      continue;
    }
    const size_t eq = t.find('=');
    if (eq == std::string_view::npos) {
      return Error("CONFIG_SYNTAX",
                   "line " + std::to_string(line_no) + ": expected key=value or [section], got " + Quote(t));
    }
    const std::string_view key = Trim(t.substr(0, eq));
    if (key.empty()) {
      return Error("CONFIG_SYNTAX", "line " + std::to_string(line_no) + ": missing key before '='");
    }
    if (doc.empty()) {
      return Error("CONFIG_SYNTAX",
                   "line " + std::to_string(line_no) + ": key " + Quote(key) + " is outside any [section]");
    }
    RawEntry entry;
    entry.key = std::string(key);
    entry.line = line_no;
    entry.value.kind = RawValue::Kind::kScalar;
    entry.value.scalar = Unquote(Trim(t.substr(eq + 1)));
    doc.back().entries.push_back(std::move(entry));
  }
  return doc;
}

// ---------------------------------------------------------------------------
// YAML form.

int YamlLine(const YAML::Node& n, int fallback) {
  const YAML::Mark m = n.Mark();
  return m.line >= 0 ? m.line + 1 : fallback;
}

std::string DescribeYaml(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Scalar:
      return "the value " + Quote(n.Scalar());
    case YAML::NodeType::Undefined:
      break;
  }
  return "an undefined node";
}

Status CheckYamlShape(const YAML::Node& n, int depth, int* visited) {
  if (depth > kMaxYamlDepth) {
    return Error("CONFIG_TOO_LARGE", "line " + std::to_string(YamlLine(n, 0)) +
                                         ": YAML nests deeper than the configuration allows (" +
                                         std::to_string(kMaxYamlDepth) + " levels)");
  }
  if (++*visited > kMaxYamlNodes) {
    return Error("CONFIG_TOO_LARGE", "YAML expands to more than " + std::to_string(kMaxYamlNodes) + " nodes");
  }
  if (n.IsSequence()) {
    for (const auto& child : n) QUANTD_RETURN_IF_ERROR(CheckYamlShape(child, depth + 1, visited));
  } else if (n.IsMap()) {
    for (const auto& kv : n) {
      QUANTD_RETURN_IF_ERROR(CheckYamlShape(kv.first, depth + 1, visited));
      QUANTD_RETURN_IF_ERROR(CheckYamlShape(kv.second, depth + 1, visited));
    }
  }
  return Status::Ok();
}

// A YAML null stands for an empty value, as "key=" does in the INI form.
std::optional<std::string> YamlScalarOrEmpty(const YAML::Node& n) {
  if (n.IsNull()) return std::string();
  if (n.IsScalar()) return n.Scalar();
  return std::nullopt;
}

RawValue ToRawValue(const YAML::Node& n) {
  RawValue v;
  if (auto s = YamlScalarOrEmpty(n)) {
    v.kind = RawValue::Kind::kScalar;
    v.scalar = std::move(*s);
    return v;
  }
  if (n.IsSequence()) {
    v.kind = RawValue::Kind::kSequence;
    for (const auto& item : n) {
      auto s = YamlScalarOrEmpty(item);
      if (!s) {
        v.kind = RawValue::Kind::kUnsupported;
        v.found = "a list containing " + DescribeYaml(item);
        return v;
      }
      v.items.push_back(std::move(*s));
    }
    return v;
  }
  if (n.IsMap()) {
    v.kind = RawValue::Kind::kMapping;
    for (const auto& kv : n) {
      auto k = YamlScalarOrEmpty(kv.first);
      auto val = YamlScalarOrEmpty(kv.second);
      if (!k || !val) {
        v.kind = RawValue::Kind::kUnsupported;
        v.found = "a mapping containing " + DescribeYaml(k ? kv.second : kv.first);
        return v;
      }
      v.pairs.emplace_back(std::move(*k), std::move(*val));
    }
    return v;
  }
  v.kind = RawValue::Kind::kUnsupported;
  v.found = DescribeYaml(n);
  return v;
}

// Line (1-based) where a second YAML document starts, or 0.
int SecondDocumentLine(const std::string& text) {
  bool content = false, ended = false;
  int line_number = 0;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    std::string_view line(text.data() + pos, (end == std::string::npos ? text.size() : end) - pos);
    ++line_number;
    auto marker = [&](std::string_view m) {
      return line.substr(0, 3) == m && (line.size() == 3 || line[3] == ' ' || line[3] == '\t' || line[3] == '\r');
    };
    auto first = line.find_first_not_of(" \t\r");
    bool blank_or_comment = first == std::string_view::npos || line[first] == '#';
    if (marker("---")) {
      if (content || ended) return line_number;
    } else if (marker("...")) {
      ended = content;
    } else if (!blank_or_comment && line[0] != '%') {
      if (ended) return line_number;
      content = true;
    }
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  return 0;
}

StatusOr<RawDoc> ReadYaml(const std::string& text) {
  // yaml-cpp 0.7's LoadAll() loops forever on some inputs (a lone "," is
  // enough; found by fuzzing), so documents are counted here and only
  // Load() parses.
  if (int line = SecondDocumentLine(text)) {
    return Error("CONFIG_SYNTAX", "line " + std::to_string(line) + ": only one YAML document is allowed");
  }
  std::vector<YAML::Node> docs;
  try {
    docs.push_back(YAML::Load(text));
  } catch (const YAML::DeepRecursion& e) {
    return Error("CONFIG_TOO_LARGE", "line " + std::to_string(e.mark.line + 1) +
                                         ": YAML nests deeper than the configuration allows");
  } catch (const YAML::ParserException& e) {
    return Error("CONFIG_SYNTAX", "line " + std::to_string(e.mark.line + 1) + ": invalid YAML: " + e.msg);
  } catch (const YAML::Exception& e) {
    return Error("CONFIG_SYNTAX", std::string("invalid YAML: ") + e.msg);
  }
  RawDoc doc;
  const YAML::Node& root = docs[0];
  if (root.IsNull()) return doc;
  int visited = 0;
  QUANTD_RETURN_IF_ERROR(CheckYamlShape(root, 1, &visited));
  if (!root.IsMap()) {
    return Error("CONFIG_WRONG_TYPE",
                 "line " + std::to_string(YamlLine(root, 1)) +
                     ": the configuration must be a mapping from section names to settings, got " +
                     DescribeYaml(root));
  }
  for (const auto& kv : root) {
    RawSection section;
    section.line = YamlLine(kv.first, 0);
    if (!kv.first.IsScalar()) {
      return Error("CONFIG_WRONG_TYPE", "line " + std::to_string(section.line) +
                                            ": section names must be plain text, got " +
                                            DescribeYaml(kv.first));
    }
    section.name = kv.first.Scalar();
    const YAML::Node& body = kv.second;
    if (body.IsMap()) {
      for (const auto& entry_kv : body) {
        RawEntry entry;
        entry.line = YamlLine(entry_kv.first, section.line);
        if (!entry_kv.first.IsScalar()) {
          return Error("CONFIG_WRONG_TYPE", "line " + std::to_string(entry.line) + ": keys in [" +
                                                section.name + "] must be plain text, got " +
                                                DescribeYaml(entry_kv.first));
        }
        entry.key = entry_kv.first.Scalar();
        entry.value = ToRawValue(entry_kv.second);
        section.entries.push_back(std::move(entry));
      }
    } else if (!body.IsNull()) {
      section.not_a_mapping = DescribeYaml(body);
    }
    doc.push_back(std::move(section));
  }
  return doc;
}

// ---------------------------------------------------------------------------
// Typed reading, shared by both forms.

class Field {
 public:
  Field(std::string_view section, const RawEntry& entry)
      : label_(std::string(section) + "." + entry.key), entry_(entry) {}

  const std::string& label() const { return label_; }
  int line() const { return entry_.line; }

  Status WrongType(const std::string& what) const {
    return Error("CONFIG_WRONG_TYPE", label_ + ": " + what + AtLine(entry_.line));
  }
  Status OutOfRange(const std::string& what) const {
    return Error("CONFIG_VALUE_OUT_OF_RANGE", label_ + ": " + what + AtLine(entry_.line));
  }

  // Writes through a pointer rather than returning StatusOr<std::string>:
  // GCC 12 at -O3 reports a false maybe-uninitialized inside the optional.
  Status Scalar(std::string_view expected, std::string* out) const {
    const RawValue& v = entry_.value;
    switch (v.kind) {
      case RawValue::Kind::kScalar:
        *out = std::string(Trim(v.scalar));
        return Status::Ok();
      case RawValue::Kind::kSequence:
        return WrongType("expected " + std::string(expected) + ", got a list");
      case RawValue::Kind::kMapping:
        return WrongType("expected " + std::string(expected) + ", got a mapping");
      case RawValue::Kind::kUnsupported:
        break;
    }
    return WrongType("expected " + std::string(expected) + ", got " + v.found);
  }

  StatusOr<int64_t> Int(int64_t min, int64_t max, const std::string& allowed) const {
    std::string s;
    QUANTD_RETURN_IF_ERROR(Scalar("an integer", &s));
    return ParseIntText(s, min, max, allowed);
  }

  StatusOr<int64_t> ParseIntText(std::string_view s, int64_t min, int64_t max,
                                 const std::string& allowed) const {
    std::string_view digits = s;
    if (!digits.empty() && digits.front() == '+') digits.remove_prefix(1);
    int64_t value = 0;
    const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (ec == std::errc::result_out_of_range) {
      return OutOfRange(Quote(s) + " is out of range; allowed " + allowed);
    }
    if (digits.empty() || ec != std::errc() || ptr != digits.data() + digits.size()) {
      return WrongType(Quote(s) + " is not an integer");
    }
    if (value < min || value > max) {
      return OutOfRange(std::to_string(value) + " is out of range; allowed " + allowed);
    }
    return value;
  }

  StatusOr<double> ParseDoubleText(std::string_view s, const std::string& element) const {
    std::string_view digits = s;
    if (!digits.empty() && digits.front() == '+') digits.remove_prefix(1);
    double value = 0;
    const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (digits.empty() || ec == std::errc::invalid_argument || ptr != digits.data() + digits.size()) {
      return WrongType(element + Quote(s) + " is not a number");
    }
    if (ec == std::errc::result_out_of_range || !std::isfinite(value)) {
      return OutOfRange(element + Quote(s) + " is not a finite number");
    }
    return value;
  }

  StatusOr<double> Double() const {
    std::string s;
    QUANTD_RETURN_IF_ERROR(Scalar("a number", &s));
    return ParseDoubleText(s, "");
  }

  StatusOr<bool> Bool() const {
    std::string s;
    QUANTD_RETURN_IF_ERROR(Scalar("true or false", &s));
    if (EqualsIgnoreCase(s, "true")) return true;
    if (EqualsIgnoreCase(s, "false")) return false;
    return WrongType(Quote(s) + " is not a boolean; use true or false");
  }

  template <typename E>
  StatusOr<E> Enum(const std::vector<std::pair<std::string_view, E>>& spellings,
                   const std::string& allowed) const {
    std::string s;
    QUANTD_RETURN_IF_ERROR(Scalar("one of " + allowed, &s));
    for (const auto& [name, value] : spellings) {
      if (EqualsIgnoreCase(s, name)) return value;
    }
    return OutOfRange(Quote(s) + " is not allowed; use one of " + allowed);
  }

  // A list is either a YAML sequence or the seed's comma-separated text,
  // optionally wrapped in [ ] as the seed writes normalize_mean.
  StatusOr<std::vector<std::string>> List() const {
    const RawValue& v = entry_.value;
    std::vector<std::string> out;
    if (v.kind == RawValue::Kind::kSequence) {
      for (const auto& item : v.items) out.emplace_back(Trim(item));
    } else {
      std::string s;
      QUANTD_RETURN_IF_ERROR(Scalar("a comma-separated list", &s));
      std::string_view body = s;
      if (body.size() >= 2 && body.front() == '[' && body.back() == ']') {
        body = Trim(body.substr(1, body.size() - 2));
      }
      if (body.empty()) return out;
      size_t start = 0;
      while (true) {
        const size_t comma = body.find(',', start);
        out.emplace_back(Trim(
            body.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start)));
        if (comma == std::string_view::npos) break;
        start = comma + 1;
      }
    }
    for (size_t i = 0; i < out.size(); ++i) {
      if (out[i].empty()) return WrongType("element " + std::to_string(i + 1) + " of the list is empty");
    }
    return out;
  }

  StatusOr<std::vector<double>> DoubleList() const {
    QUANTD_ASSIGN_OR_RETURN(std::vector<std::string> items, List());
    std::vector<double> out;
    for (size_t i = 0; i < items.size(); ++i) {
      QUANTD_ASSIGN_OR_RETURN(double d, ParseDoubleText(items[i], "element " + std::to_string(i + 1) + " "));
      out.push_back(d);
    }
    return out;
  }

  // "name:dir,name2:dir2", a list of "name:dir", or a YAML mapping name: dir.
  StatusOr<std::vector<CalibrationSource>> CalibrationSources() const {
    const RawValue& v = entry_.value;
    std::vector<CalibrationSource> out;
    if (v.kind == RawValue::Kind::kMapping) {
      for (const auto& [name, dir] : v.pairs) {
        out.push_back({std::string(Trim(name)), std::string(Trim(dir))});
      }
    } else {
      QUANTD_ASSIGN_OR_RETURN(std::vector<std::string> items, List());
      for (const auto& item : items) {
        // ONNX graphs converted from TensorFlow name inputs like "x:0", so the
        // name/dir separator is the last colon, not the first.
        const size_t colon = item.rfind(':');
        if (colon == std::string::npos) {
          return WrongType("entry " + Quote(item) + " must be written input_name:dir");
        }
        out.push_back({std::string(Trim(std::string_view(item).substr(0, colon))),
                       std::string(Trim(std::string_view(item).substr(colon + 1)))});
      }
    }
    std::set<std::string> names;
    for (const auto& src : out) {
      if (src.input_name.empty() || src.dir.empty()) {
        return WrongType("entry " + Quote(src.input_name + ":" + src.dir) +
                         " must be written input_name:dir with both parts non-empty");
      }
      if (!names.insert(src.input_name).second) {
        return Error("CONFIG_DUPLICATE_KEY",
                     label_ + ": input " + Quote(src.input_name) + " is listed twice" + AtLine(entry_.line));
      }
    }
    return out;
  }

 private:
  std::string label_;
  const RawEntry& entry_;
};

const std::string kU16Range = "0..65535";
const std::string kPositiveU16Range = "1..65535";
const std::string kQuantTypes = "WEIGHT_QUANT, FULL_QUANT, DYNAMIC_QUANT";

const std::vector<std::pair<std::string_view, QuantType>> kQuantTypeSpellings = {
    {"WEIGHT_QUANT", QuantType::kWeightQuant},
    {"FULL_QUANT", QuantType::kFullQuant},
    {"DYNAMIC_QUANT", QuantType::kDynamicQuant},
};
// RemovalOutlier is how the seed's parameter table spells it.
const std::vector<std::pair<std::string_view, ActivationQuantMethod>> kActivationSpellings = {
    {"MAX_MIN", ActivationQuantMethod::kMaxMin},
    {"KL", ActivationQuantMethod::kKl},
    {"REMOVAL_OUTLIER", ActivationQuantMethod::kRemovalOutlier},
    {"RemovalOutlier", ActivationQuantMethod::kRemovalOutlier},
};
const std::vector<std::pair<std::string_view, TargetDevice>> kTargetSpellings = {
    {"DEFAULT", TargetDevice::kDefault},
    {"NVGPU", TargetDevice::kNvGpu},
};
const std::vector<std::pair<std::string_view, DynamicOperatorForm>> kOperatorFormSpellings = {
    {"ORT_FUSED", DynamicOperatorForm::kOrtFused},
    {"STANDARD", DynamicOperatorForm::kStandard},
};
const std::vector<std::pair<std::string_view, InputType>> kInputTypeSpellings = {
    {"IMAGE", InputType::kImage},
    {"BIN", InputType::kBin},
    {"NPY", InputType::kNpy},
};
const std::vector<std::pair<std::string_view, ImageFormat>> kImageFormatSpellings = {
    {"UNCHANGED", ImageFormat::kUnchanged},
    {"RGB", ImageFormat::kRgb},
    {"GRAY", ImageFormat::kGray},
    {"BGR", ImageFormat::kBgr},
};
// NEARST is the seed table's spelling.
const std::vector<std::pair<std::string_view, ResizeMethod>> kResizeSpellings = {
    {"LINEAR", ResizeMethod::kLinear},
    {"NEAREST", ResizeMethod::kNearest},
    {"NEARST", ResizeMethod::kNearest},
    {"CUBIC", ResizeMethod::kCubic},
};

Status ApplyEntry(std::string_view section, const RawEntry& entry, QuantConfig* cfg) {
  const Field f(section, entry);
  const std::string& key = entry.key;
  if (section == kCommon) {
    CommonQuantParam& c = cfg->common;
    if (key == "quant_type") {
      QUANTD_ASSIGN_OR_RETURN(c.quant_type, f.Enum(kQuantTypeSpellings, kQuantTypes));
    } else if (key == "bit_num") {
      // The bound depends on quant_type, which may come later in the
      // section, so only the type is checked here and the range in
      // ValidateQuantConfig.
      QUANTD_ASSIGN_OR_RETURN(int64_t bits,
                              f.Int(std::numeric_limits<int>::min(), std::numeric_limits<int>::max(),
                                    "0..16 for WEIGHT_QUANT, 8 for FULL_QUANT and DYNAMIC_QUANT"));
      c.bit_num = static_cast<int>(bits);
    } else if (key == "min_quant_weight_size") {
      QUANTD_ASSIGN_OR_RETURN(c.min_quant_weight_size, f.Int(0, kMaxU16, kU16Range));
    } else if (key == "min_quant_weight_channel") {
      QUANTD_ASSIGN_OR_RETURN(c.min_quant_weight_channel, f.Int(0, kMaxU16, kU16Range));
    } else if (key == "skip_quant_node") {
      QUANTD_ASSIGN_OR_RETURN(c.skip_quant_node, f.List());
    } else if (key == "debug_info_save_path") {
      QUANTD_RETURN_IF_ERROR(f.Scalar("a folder path", &c.debug_info_save_path));
    }
  } else if (section == kMixedBit) {
    if (key == "init_scale") {
      QUANTD_ASSIGN_OR_RETURN(cfg->mixed_bit.init_scale, f.Double());
    } else if (key == "auto_tune") {
      QUANTD_ASSIGN_OR_RETURN(cfg->mixed_bit.auto_tune, f.Bool());
    }
  } else if (section == kFull) {
    FullQuantParam& p = cfg->full;
    if (key == "activation_quant_method") {
      QUANTD_ASSIGN_OR_RETURN(p.activation_quant_method,
                              f.Enum(kActivationSpellings, "MAX_MIN, KL, REMOVAL_OUTLIER"));
    } else if (key == "bias_correction") {
      QUANTD_ASSIGN_OR_RETURN(p.bias_correction, f.Bool());
    } else if (key == "target_device") {
      QUANTD_ASSIGN_OR_RETURN(p.target_device, f.Enum(kTargetSpellings, "NVGPU, DEFAULT"));
    }
  } else if (section == kDynamic) {
    if (key == "operator_form") {
      QUANTD_ASSIGN_OR_RETURN(cfg->dynamic.operator_form, f.Enum(kOperatorFormSpellings, "ORT_FUSED, STANDARD"));
    }
  } else if (section == kPreprocess) {
    DataPreprocessParam& p = cfg->preprocess;
    auto optional_u16 = [&](std::optional<int>* out) -> Status {
      QUANTD_ASSIGN_OR_RETURN(int64_t v, f.Int(1, kMaxU16, kPositiveU16Range));
      *out = static_cast<int>(v);
      return Status::Ok();
    };
    if (key == "calibrate_path") {
      QUANTD_ASSIGN_OR_RETURN(p.calibrate_path, f.CalibrationSources());
    } else if (key == "calibrate_size") {
      QUANTD_ASSIGN_OR_RETURN(int64_t v, f.Int(1, kMaxU16, kPositiveU16Range));
      p.calibrate_size = static_cast<int>(v);
    } else if (key == "input_type") {
      QUANTD_ASSIGN_OR_RETURN(p.input_type, f.Enum(kInputTypeSpellings, "IMAGE, BIN, NPY"));
    } else if (key == "image_to_format") {
      QUANTD_ASSIGN_OR_RETURN(p.image_to_format, f.Enum(kImageFormatSpellings, "RGB, GRAY, BGR"));
    } else if (key == "normalize_mean") {
      QUANTD_ASSIGN_OR_RETURN(p.normalize_mean, f.DoubleList());
    } else if (key == "normalize_std") {
      QUANTD_ASSIGN_OR_RETURN(p.normalize_std, f.DoubleList());
    } else if (key == "resize_width") {
      QUANTD_RETURN_IF_ERROR(optional_u16(&p.resize_width));
    } else if (key == "resize_height") {
      QUANTD_RETURN_IF_ERROR(optional_u16(&p.resize_height));
    } else if (key == "resize_method") {
      QUANTD_ASSIGN_OR_RETURN(p.resize_method, f.Enum(kResizeSpellings, "LINEAR, NEAREST, CUBIC"));
    } else if (key == "center_crop_width") {
      QUANTD_RETURN_IF_ERROR(optional_u16(&p.center_crop_width));
    } else if (key == "center_crop_height") {
      QUANTD_RETURN_IF_ERROR(optional_u16(&p.center_crop_height));
    }
  }
  return Status::Ok();
}

Status UnknownKey(const SectionSchema& schema, const RawEntry& entry) {
  std::string msg = std::string(schema.name) + "." + entry.key + ": unknown key" + AtLine(entry.line);
  for (const auto& other : Schema()) {
    if (std::find(other.keys.begin(), other.keys.end(), entry.key) != other.keys.end()) {
      msg += "; " + entry.key + " belongs in [" + std::string(other.name) + "]";
      return Error("CONFIG_UNKNOWN_KEY", msg);
    }
  }
  if (auto near = Closest(entry.key, schema.keys)) {
    msg += "; did you mean " + std::string(*near) + "?";
  } else {
    msg += "; known keys are " + Join(schema.keys, ", ");
  }
  return Error("CONFIG_UNKNOWN_KEY", msg);
}

Status UnknownSection(const RawSection& section) {
  std::vector<std::string_view> names;
  for (const auto& s : Schema()) names.push_back(s.name);
  std::string msg = "[" + section.name + "]: unknown section" + AtLine(section.line);
  if (auto near = Closest(section.name, names)) {
    msg += "; did you mean [" + std::string(*near) + "]?";
  } else {
    msg += "; known sections are " + Join(names, ", ");
  }
  return Error("CONFIG_UNKNOWN_SECTION", msg);
}

Status MissingKey(std::string_view section, std::string_view key, const std::string& why) {
  return Error("CONFIG_MISSING_KEY", std::string(section) + "." + std::string(key) + ": missing; " + why);
}

StatusOr<QuantConfig> Interpret(const RawDoc& doc, const ValidationContext& ctx) {
  QuantConfig cfg;
  std::map<std::string, int, std::less<>> section_lines;
  std::map<std::string, int, std::less<>> seen;  // "section.key" -> line
  for (const RawSection& section : doc) {
    const SectionSchema* schema = FindSection(section.name);
    if (schema == nullptr) return UnknownSection(section);
    if (auto [it, inserted] = section_lines.emplace(section.name, section.line); !inserted) {
      return Error("CONFIG_DUPLICATE_KEY", "[" + section.name + "]: section appears twice (lines " +
                                               std::to_string(it->second) + " and " +
                                               std::to_string(section.line) + ")");
    }
    if (section.not_a_mapping) {
      return Error("CONFIG_WRONG_TYPE", "[" + section.name + "]: expected a mapping of key: value, got " +
                                            *section.not_a_mapping + AtLine(section.line));
    }
    if (section.name == kPreprocess) cfg.preprocess.present = true;
    for (const RawEntry& entry : section.entries) {
      if (std::find(schema->keys.begin(), schema->keys.end(), entry.key) == schema->keys.end()) {
        return UnknownKey(*schema, entry);
      }
      const std::string label = section.name + "." + entry.key;
      if (auto [it, inserted] = seen.emplace(label, entry.line); !inserted) {
        return Error("CONFIG_DUPLICATE_KEY", label + ": set twice (lines " + std::to_string(it->second) +
                                                 " and " + std::to_string(entry.line) + ")");
      }
      QUANTD_RETURN_IF_ERROR(ApplyEntry(section.name, entry, &cfg));
    }
  }

  auto has = [&](std::string_view section, std::string_view key) {
    return seen.contains(std::string(section) + "." + std::string(key));
  };
  if (!has(kCommon, "quant_type")) {
    return MissingKey(kCommon, "quant_type", "it is mandatory; use one of " + kQuantTypes);
  }
  if (cfg.common.quant_type == QuantType::kFullQuant && !ctx.calibration_supplied_separately) {
    const std::string why =
        "FULL_QUANT needs a calibration set: give [data_preprocess_param] "
        "with calibrate_path, calibrate_size and input_type";
    for (std::string_view key : {"calibrate_path", "calibrate_size", "input_type"}) {
      if (!has(kPreprocess, key)) return MissingKey(kPreprocess, key, why);
    }
  }
  QUANTD_RETURN_IF_ERROR(ValidateQuantConfig(cfg, ctx));
  return cfg;
}

Status OutOfRange(std::string_view section, std::string_view key, const std::string& what) {
  return Error("CONFIG_VALUE_OUT_OF_RANGE", std::string(section) + "." + std::string(key) + ": " + what);
}

Status Inconsistent(std::string_view section, std::string_view key, const std::string& what) {
  return Error("CONFIG_INCONSISTENT", std::string(section) + "." + std::string(key) + ": " + what);
}

Status CheckU16(std::string_view section, std::string_view key, int64_t v, int64_t min) {
  if (v < min || v > kMaxU16) {
    return OutOfRange(section, key,
                      std::to_string(v) + " is out of range; allowed " + std::to_string(min) + "..65535");
  }
  return Status::Ok();
}

Status CheckPair(std::string_view first_key, const std::optional<int>& first, std::string_view second_key,
                 const std::optional<int>& second) {
  if (first.has_value() != second.has_value()) {
    const std::string_view given = first ? first_key : second_key;
    const std::string_view missing = first ? second_key : first_key;
    return Inconsistent(kPreprocess, given, "set without " + std::string(missing) + "; give both or neither");
  }
  if (first) {
    QUANTD_RETURN_IF_ERROR(CheckU16(kPreprocess, first_key, *first, 1));
    QUANTD_RETURN_IF_ERROR(CheckU16(kPreprocess, second_key, *second, 1));
  }
  return Status::Ok();
}

Status ValidatePreprocess(const QuantConfig& cfg, const ValidationContext& ctx) {
  const DataPreprocessParam& p = cfg.preprocess;
  const bool full = cfg.common.quant_type == QuantType::kFullQuant;
  if (full && !ctx.calibration_supplied_separately) {
    const std::string why =
        "FULL_QUANT needs a calibration set: give [data_preprocess_param] "
        "with calibrate_path, calibrate_size and input_type";
    if (!p.present || p.calibrate_path.empty()) return MissingKey(kPreprocess, "calibrate_path", why);
    if (p.calibrate_size == 0) return MissingKey(kPreprocess, "calibrate_size", why);
  }
  QUANTD_RETURN_IF_ERROR(CheckU16(kPreprocess, "calibrate_size", p.calibrate_size, 0));

  std::set<std::string> names;
  for (const auto& src : p.calibrate_path) {
    if (src.input_name.empty() || src.dir.empty()) {
      return Error("CONFIG_WRONG_TYPE",
                   std::string(kPreprocess) + ".calibrate_path: every entry needs an input name and a dir");
    }
    if (!names.insert(src.input_name).second) {
      return Error("CONFIG_DUPLICATE_KEY", std::string(kPreprocess) + ".calibrate_path: input " +
                                               Quote(src.input_name) + " is listed twice");
    }
  }

  const auto& mean = p.normalize_mean;
  const auto& stdev = p.normalize_std;
  if (mean.empty() != stdev.empty()) {
    return Inconsistent(kPreprocess, mean.empty() ? "normalize_std" : "normalize_mean",
                        "set without " + std::string(mean.empty() ? "normalize_mean" : "normalize_std") +
                            "; dst = (src - mean) / std needs both");
  }
  if (!mean.empty()) {
    if (mean.size() != 1 && mean.size() != 3) {
      return OutOfRange(kPreprocess, "normalize_mean",
                        "has " + std::to_string(mean.size()) + " elements; allowed 1 or 3 (one per channel)");
    }
    if (stdev.size() != mean.size()) {
      return Inconsistent(kPreprocess, "normalize_std",
                          "has " + std::to_string(stdev.size()) + " elements but normalize_mean has " +
                              std::to_string(mean.size()) + "; they must match");
    }
    for (size_t i = 0; i < mean.size(); ++i) {
      if (!std::isfinite(mean[i])) {
        return OutOfRange(kPreprocess, "normalize_mean",
                          "element " + std::to_string(i + 1) + " is not finite");
      }
      if (!std::isfinite(stdev[i]) || stdev[i] == 0) {
        return OutOfRange(kPreprocess, "normalize_std",
                          "element " + std::to_string(i + 1) + " is " + FormatDouble(stdev[i]) +
                              "; allowed any finite non-zero number");
      }
    }
    const size_t channels = mean.size();
    if ((p.image_to_format == ImageFormat::kGray && channels != 1) ||
        ((p.image_to_format == ImageFormat::kRgb || p.image_to_format == ImageFormat::kBgr) &&
         channels != 3)) {
      return Inconsistent(kPreprocess, "normalize_mean",
                          std::to_string(channels) + " element(s) do not match image_to_format " +
                              ToString(p.image_to_format) + ", which has " +
                              (p.image_to_format == ImageFormat::kGray ? "1 channel" : "3 channels"));
    }
  }

  QUANTD_RETURN_IF_ERROR(CheckPair("resize_width", p.resize_width, "resize_height", p.resize_height));
  QUANTD_RETURN_IF_ERROR(
      CheckPair("center_crop_width", p.center_crop_width, "center_crop_height", p.center_crop_height));
  if (p.resize_width && p.center_crop_width &&
      (*p.center_crop_width > *p.resize_width || *p.center_crop_height > *p.resize_height)) {
    return Inconsistent(kPreprocess, "center_crop_width",
                        "crop " + std::to_string(*p.center_crop_width) + "x" +
                            std::to_string(*p.center_crop_height) + " is larger than the resized image " +
                            std::to_string(*p.resize_width) + "x" + std::to_string(*p.resize_height));
  }

  // Image preprocessing would be silently skipped for raw tensors, which is
  // almost always a mistake in the config rather than an intention.
  if (p.input_type != InputType::kImage) {
    std::string_view image_only;
    if (p.image_to_format != ImageFormat::kUnchanged) {
      image_only = "image_to_format";
    } else if (!mean.empty()) {
      image_only = "normalize_mean";
    } else if (p.resize_width) {
      image_only = "resize_width";
    } else if (p.center_crop_width) {
      image_only = "center_crop_width";
    }
    if (!image_only.empty()) {
      return Inconsistent(kPreprocess, image_only,
                          "only applies to input_type IMAGE, but input_type is " + ToString(p.input_type));
    }
  }
  return Status::Ok();
}

}  // namespace

Status ValidateQuantConfig(const QuantConfig& cfg, const ValidationContext& ctx) {
  const CommonQuantParam& c = cfg.common;
  if (c.quant_type == QuantType::kWeightQuant) {
    if (c.bit_num < 0 || c.bit_num > 16) {
      return OutOfRange(kCommon, "bit_num",
                        std::to_string(c.bit_num) + " is out of range; WEIGHT_QUANT allows 0..16");
    }
  } else if (c.bit_num != 8) {
    return OutOfRange(
        kCommon, "bit_num",
        std::to_string(c.bit_num) + " is out of range; " + ToString(c.quant_type) + " allows only 8");
  }
  QUANTD_RETURN_IF_ERROR(CheckU16(kCommon, "min_quant_weight_size", c.min_quant_weight_size, 0));
  QUANTD_RETURN_IF_ERROR(CheckU16(kCommon, "min_quant_weight_channel", c.min_quant_weight_channel, 0));
  for (const auto& node : c.skip_quant_node) {
    if (node.empty()) {
      return Error("CONFIG_WRONG_TYPE",
                   std::string(kCommon) + ".skip_quant_node: node names must not be empty");
    }
  }

  const double scale = cfg.mixed_bit.init_scale;
  if (!(scale > 0.0 && scale < 1.0)) {
    return OutOfRange(kMixedBit, "init_scale",
                      FormatDouble(scale) + " is out of range; allowed (0, 1), both ends excluded");
  }
  const bool mixed_bit = c.quant_type == QuantType::kWeightQuant && c.bit_num == 0;
  if (mixed_bit && cfg.mixed_bit.auto_tune && !ctx.calibration_supplied_separately &&
      cfg.preprocess.calibrate_path.empty()) {
    return MissingKey(kPreprocess, "calibrate_path",
                      std::string(kMixedBit) +
                          ".auto_tune compares the float and the quantized model outputs on calibration data; "
                          "give [data_preprocess_param] with calibrate_path (and input_type and image "
                          "preprocessing as the model expects), or set auto_tune to false");
  }
  return ValidatePreprocess(cfg, ctx);
}

namespace {

// Offset of the first byte that does not belong to a well-formed UTF-8
// sequence (overlong forms and surrogates included), or npos.
size_t FirstInvalidUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    auto byte = static_cast<unsigned char>(text[i]);
    if (byte < 0x80) {
      ++i;
      continue;
    }
    size_t length;
    uint32_t code;
    if ((byte & 0xE0) == 0xC0) {
      length = 2;
      code = byte & 0x1F;
    } else if ((byte & 0xF0) == 0xE0) {
      length = 3;
      code = byte & 0x0F;
    } else if ((byte & 0xF8) == 0xF0) {
      length = 4;
      code = byte & 0x07;
    } else {
      return i;
    }
    if (i + length > text.size()) return i;
    for (size_t k = 1; k < length; ++k) {
      auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80) return i;
      code = (code << 6) | (next & 0x3F);
    }
    static constexpr uint32_t kMinimum[] = {0, 0, 0x80, 0x800, 0x10000};
    if (code < kMinimum[length] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return i;
    i += length;
  }
  return std::string_view::npos;
}

}  // namespace

StatusOr<QuantConfig> ParseQuantConfig(std::string_view text, const ValidationContext& ctx) {
  if (text.size() > kMaxConfigBytes) {
    return Error("CONFIG_TOO_LARGE", "configuration is " + std::to_string(text.size()) +
                                         " bytes; the limit is " + std::to_string(kMaxConfigBytes));
  }
  if (text.find('\0') != std::string_view::npos) {
    return Error("CONFIG_SYNTAX", "configuration contains a NUL byte; it must be text");
  }
  // yaml-cpp 0.7 can loop forever on malformed UTF-8 (found by fuzzing), so
  // only well-formed UTF-8 text reaches it.
  if (auto bad = FirstInvalidUtf8(text); bad != std::string_view::npos) {
    return Error("CONFIG_SYNTAX", "configuration is not UTF-8 text (invalid byte at offset " + std::to_string(bad) + ")");
  }
  constexpr std::string_view kBom = "\xEF\xBB\xBF";
  if (text.starts_with(kBom)) text.remove_prefix(kBom.size());

  RawDoc doc;
  if (LooksLikeIni(text)) {
    QUANTD_ASSIGN_OR_RETURN(doc, ReadIni(text));
  } else {
    QUANTD_ASSIGN_OR_RETURN(doc, ReadYaml(std::string(text)));
  }
  return Interpret(doc, ctx);
}

std::string ToString(QuantType v) {
  switch (v) {
    case QuantType::kWeightQuant:
      return "WEIGHT_QUANT";
    case QuantType::kFullQuant:
      return "FULL_QUANT";
    case QuantType::kDynamicQuant:
      return "DYNAMIC_QUANT";
  }
  return "UNKNOWN";
}

std::string ToString(ActivationQuantMethod v) {
  switch (v) {
    case ActivationQuantMethod::kMaxMin:
      return "MAX_MIN";
    case ActivationQuantMethod::kKl:
      return "KL";
    case ActivationQuantMethod::kRemovalOutlier:
      return "REMOVAL_OUTLIER";
  }
  return "UNKNOWN";
}

std::string ToString(TargetDevice v) {
  switch (v) {
    case TargetDevice::kDefault:
      return "DEFAULT";
    case TargetDevice::kNvGpu:
      return "NVGPU";
  }
  return "UNKNOWN";
}

std::string ToString(DynamicOperatorForm v) {
  switch (v) {
    case DynamicOperatorForm::kOrtFused: return "ORT_FUSED";
    case DynamicOperatorForm::kStandard: return "STANDARD";
  }
  return "UNKNOWN";
}

std::string ToString(InputType v) {
  switch (v) {
    case InputType::kImage:
      return "IMAGE";
    case InputType::kBin:
      return "BIN";
    case InputType::kNpy:
      return "NPY";
  }
  return "UNKNOWN";
}

std::string ToString(ImageFormat v) {
  switch (v) {
    case ImageFormat::kUnchanged:
      return "UNCHANGED";
    case ImageFormat::kRgb:
      return "RGB";
    case ImageFormat::kGray:
      return "GRAY";
    case ImageFormat::kBgr:
      return "BGR";
  }
  return "UNKNOWN";
}

std::string ToString(ResizeMethod v) {
  switch (v) {
    case ResizeMethod::kLinear:
      return "LINEAR";
    case ResizeMethod::kNearest:
      return "NEAREST";
    case ResizeMethod::kCubic:
      return "CUBIC";
  }
  return "UNKNOWN";
}

nlohmann::json ToJson(const QuantConfig& cfg) {
  auto opt = [](const std::optional<int>& v) -> nlohmann::json {
    return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
  };
  nlohmann::json calibrate_path = nlohmann::json::array();
  for (const auto& src : cfg.preprocess.calibrate_path) {
    calibrate_path.push_back({{"input_name", src.input_name}, {"dir", src.dir}});
  }
  const auto& c = cfg.common;
  const auto& p = cfg.preprocess;
  return {
      {std::string(kCommon),
       {
           {"quant_type", ToString(c.quant_type)},
           {"bit_num", c.bit_num},
           {"min_quant_weight_size", c.min_quant_weight_size},
           {"min_quant_weight_channel", c.min_quant_weight_channel},
           {"skip_quant_node", c.skip_quant_node},
           {"debug_info_save_path", c.debug_info_save_path},
       }},
      {std::string(kMixedBit),
       {
           {"init_scale", cfg.mixed_bit.init_scale},
           {"auto_tune", cfg.mixed_bit.auto_tune},
       }},
      {std::string(kFull),
       {
           {"activation_quant_method", ToString(cfg.full.activation_quant_method)},
           {"bias_correction", cfg.full.bias_correction},
           {"target_device", ToString(cfg.full.target_device)},
       }},
      {std::string(kDynamic), {{"operator_form", ToString(cfg.dynamic.operator_form)}}},
      {std::string(kPreprocess),
       {
           {"present", p.present},
           {"calibrate_path", calibrate_path},
           {"calibrate_size", p.calibrate_size},
           {"input_type", ToString(p.input_type)},
           {"image_to_format", ToString(p.image_to_format)},
           {"normalize_mean", p.normalize_mean},
           {"normalize_std", p.normalize_std},
           {"resize_width", opt(p.resize_width)},
           {"resize_height", opt(p.resize_height)},
           {"resize_method", ToString(p.resize_method)},
           {"center_crop_width", opt(p.center_crop_width)},
           {"center_crop_height", opt(p.center_crop_height)},
       }},
  };
}

}  // namespace quantd::config
