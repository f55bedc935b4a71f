// The device-memory traffic of emulated work, for builds whose kernels are instrumented to
// count it (tools/cuda_emulator.bzl, instrument = "traffic"; traffic.cc).
//
//   emu::StartTraffic();
//   ... launches, cuBLAS calls, copies ...
//   for (const emu::WorkTraffic& w : emu::StopTraffic()) ...
//
// Each kernel launch's traffic is the 32-byte sectors of device memory it reads and writes,
// each counted once a launch (the DRAM traffic of a launch whose data the L2 keeps while it
// runs, and which finds nothing of its inputs there when it starts: an upper bound across
// launches, a lower one within; a sector read after the launch wrote it is the L2's, not a
// read), and the flops of its tensor-core products (WMMA, mma.sync). cuBLAS products, copies
// and sets count what their arguments say they read and write, and the product's flops.
// What this gives is the roofline of every launch of a training step, measured on its real
// kernels (tests/cuda/step_traffic.cc projects a step's time on a GPU from it).
#ifndef STABILITY_OPS_CUDA_EMULATOR_TRAFFIC_H_
#define STABILITY_OPS_CUDA_EMULATOR_TRAFFIC_H_

#include <string>
#include <vector>

namespace emu {

struct WorkTraffic {
  std::string name;      // the kernel, or the library call with its shape
  bool library = false;  // a cuBLAS product, a copy or a set: not one of our kernels
  double bytes_read = 0, bytes_written = 0;
  double flops = 0;  // tensor-core flops (WMMA, mma.sync; cuBLAS's products)
};

// Counts from now on (what was counted before is dropped).
void StartTraffic();
// Each launch and library call since StartTraffic, in order; stops counting.
std::vector<WorkTraffic> StopTraffic();

}  // namespace emu

#endif  // STABILITY_OPS_CUDA_EMULATOR_TRAFFIC_H_
