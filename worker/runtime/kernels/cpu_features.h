// CPU vector width shared by the hand-vectorised kernels.
#pragma once

namespace quantd::runtime {

// Widest vector width to use, in floats: the CPU's, capped by
// QUANTD_RUNTIME_ISA=avx2|sse (to compare code paths, and to test the
// narrower ones on wider machines).
int VectorWidth();

}  // namespace quantd::runtime
