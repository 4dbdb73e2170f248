#include "client/progress.h"

#include <algorithm>
#include <cstdio>

#include "client/client.h"

namespace quantd::client {

void ProgressPrinter::ClearBar() {
  if (bar_shown_) {
    out_ << "\r\033[K";
    bar_shown_ = false;
  }
}

void ProgressPrinter::OnProgress(const std::string& stage, double fraction) {
  int percent = static_cast<int>(std::clamp(fraction, 0.0, 1.0) * 100.0 + 0.5);
  if (tty_) {
    constexpr int kWidth = 30;
    int filled = percent * kWidth / 100;
    char line[128];
    std::snprintf(line, sizeof(line), "\r\033[K[%-*s] %3d%% %s", kWidth, std::string(filled, '#').c_str(), percent,
                  stage.c_str());
    out_ << line << std::flush;
    bar_shown_ = true;
  } else if (stage != last_stage_ || percent == 100 || percent / 25 != last_percent_ / 25) {
    out_ << "progress " << stage << " " << percent << "%\n" << std::flush;
  }
  last_stage_ = stage;
  last_percent_ = percent;
}

void ProgressPrinter::OnLog(const std::string& text) {
  ClearBar();
  out_ << text << "\n" << std::flush;
}

void ProgressPrinter::OnEvent(const v1::JobEvent& event) {
  if (event.has_progress()) {
    OnProgress(event.progress().stage(), event.progress().fraction());
  } else if (event.has_log()) {
    OnLog(event.log().text());
  } else if (event.has_state()) {
    std::string line = "state " + StateName(event.state().state());
    if (!event.state().message().empty()) line += ": " + event.state().message();
    if (!event.state().reason().empty()) line += " [" + event.state().reason() + "]";
    OnLog(line);
  } else if (event.has_artifact()) {
    OnLog("artifact " + event.artifact().name() + " (" + std::to_string(event.artifact().size_bytes()) + " bytes)");
  }
}

void ProgressPrinter::Finish() {
  if (bar_shown_) {
    out_ << "\n";
    bar_shown_ = false;
  }
}

}  // namespace quantd::client
