#pragma once

#include <cstdint>

#include "common/status.h"
#include "worker/pipeline/pipeline.h"

namespace quantd::worker {

struct PipelineLimits {
  int64_t memory_bytes = 0;  // data segment + private mappings; 0: none
  int time_seconds = 0;      // wall clock; 0: none
};

// Runs the pipeline in a child process (this binary again, with
// --run-pipeline), so a job's memory and time can be bounded and a crash
// or an exhausted limit ends the job, not the worker. Progress and logs
// arrive at `observer` as they happen; its CancelRequested() stops the
// child. A job over its limit ends with MEMORY_LIMIT_EXCEEDED or
// TIME_LIMIT_EXCEEDED (see IsLimitExceeded).
StatusOr<pipeline::PipelineResult> RunPipelineProcess(const pipeline::PipelineRequest& request,
                                                      const PipelineLimits& limits,
                                                      pipeline::PipelineObserver& observer);

// Failures that running the job again cannot fix.
bool IsLimitExceeded(const Status& status);

// main() of `quantd-worker --run-pipeline ...`, the child side.
int PipelineProcessMain(int argc, char** argv);

}  // namespace quantd::worker
