#pragma once

#include <sstream>
#include <string>
#include <string_view>

namespace quantd {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

// Process-wide logging to stderr: one line per record, either plain text or
// one JSON object per line (for log collectors).
void SetLogJson(bool json);
void SetLogComponent(std::string component);
void Log(LogLevel level, std::string_view message);

inline void LogInfo(std::string_view message) { Log(LogLevel::kInfo, message); }
inline void LogWarning(std::string_view message) { Log(LogLevel::kWarning, message); }
inline void LogError(std::string_view message) { Log(LogLevel::kError, message); }

}  // namespace quantd
