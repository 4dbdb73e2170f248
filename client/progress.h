#pragma once

#include <ostream>
#include <string>

#include "quantd/v1/quantd.pb.h"

namespace quantd::client {

// Renders job progress: a redrawn bar on a terminal, plain lines otherwise
// (logs, CI, pipes).
class ProgressPrinter {
 public:
  ProgressPrinter(bool tty, std::ostream& out) : tty_(tty), out_(out) {}
  void OnEvent(const v1::JobEvent& event);
  void OnProgress(const std::string& stage, double fraction);
  void OnLog(const std::string& text);
  void Finish();

 private:
  void ClearBar();

  bool tty_;
  std::ostream& out_;
  bool bar_shown_ = false;
  std::string last_stage_;
  int last_percent_ = -1;
};

}  // namespace quantd::client
