// InputLimits travel from quantd to its workers with every leased job.
#pragma once

#include "common/input_limits.h"
#include "quantd/v1/quantd.pb.h"

namespace quantd {

v1::InputLimits InputLimitsToProto(const InputLimits& limits);

// Fields left at 0 (a server that sends no limits) keep the built-in defaults.
InputLimits InputLimitsFromProto(const v1::InputLimits& proto);

}  // namespace quantd
