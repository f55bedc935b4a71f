// Prints the measured fp32 FMA peak and memory bandwidth as JSON (for tools/compare_pytorch.py).
#include <omp.h>

#include <cstdio>

#include "stability/ops/cpu/peak.h"

int main() {
  std::printf("{\"threads\": %d, \"fma_flops\": %.6e, \"memory_bytes_per_s\": %.6e}\n", omp_get_max_threads(),
              stability::cpu::MeasureFmaPeakFlops(), stability::cpu::MeasureMemoryBandwidth());
  return 0;
}
