// The machine's measured fp32 peak: FMA throughput of all OpenMP threads running
// independent AVX2 (8-lane) FMA chains, and streaming memory bandwidth. Benchmarks and
// the PyTorch comparison divide by these to report a fraction of peak (MFU).
#ifndef STABILITY_OPS_CPU_PEAK_H_
#define STABILITY_OPS_CPU_PEAK_H_

namespace stability::cpu {

// FLOP/s (an FMA counts 2) with `threads` threads (0: all OpenMP threads). Takes ~0.3 s.
double MeasureFmaPeakFlops(int threads = 0);
// Bytes/s of a read+write stream over a buffer far larger than the caches. Takes ~0.3 s.
double MeasureMemoryBandwidth(int threads = 0);

}  // namespace stability::cpu

#endif  // STABILITY_OPS_CPU_PEAK_H_
