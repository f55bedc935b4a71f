// A training step's launches as the GPU would run them, measured on the CUDA emulator's
// traffic counter (stability/ops/cuda/emulator/traffic.h): the real kernels of the CUDA
// backend run one step of the model, and each launch's device-memory bytes and tensor-core
// flops are counted. StepTraffic extrapolates them to a batch too large to emulate, and
// ProjectStep turns them into a step time on a GPU by each launch's roofline.
//
//   absl::StatusOr<std::vector<LaunchCost>> step = StepTraffic(config, /*batch=*/16, /*seq=*/1024);
//   StepProjection p = ProjectStep(*step, Gpu{});
//
// It is a projection, not a measurement of time: it assumes the efficiencies in Gpu, no
// overlap of launches, and DRAM traffic equal to each launch's footprint (what a launch
// reads of an L2 that kept nothing of the last one's). What it measures is what the kernels
// move and compute, which is what the bf16 path's levers change.
#ifndef TESTS_CUDA_STEP_TRAFFIC_H_
#define TESTS_CUDA_STEP_TRAFFIC_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "stability/model/config.h"
#include "stability/ops/cuda/emulator/traffic.h"

namespace stability::cuda_traffic {

// A launch or library call of the step (the traffic counter's record).
using LaunchCost = emu::WorkTraffic;

// One bf16 training step (forward, backward, AdamW with clipping; telemetry off; the fused
// tensor-core attention) of `config` on the CUDA backend, emulated and counted at batches of
// 1 and 2 and extrapolated launch by launch to `batch` (every count is affine in the batch:
// the activations' traffic and flops grow with it, the parameters' and the optimizer's do not).
// The second step is counted (the first allocates and plans).
absl::StatusOr<std::vector<LaunchCost>> StepTraffic(const model::ModelConfig& config, int64_t batch, int64_t seq);
// The same step counted at `batch` itself, not extrapolated.
absl::StatusOr<std::vector<LaunchCost>> MeasuredStepTraffic(const model::ModelConfig& config, int64_t batch,
                                                            int64_t seq);

// A counted step as a file (one launch a line: bytes read, bytes written, flops, library or
// kernel, name; tab-separated), so that a projection onto other GPU numbers, or a report of
// many methods counted by several processes, need not emulate again.
absl::Status WriteLaunchCosts(const std::string& path, const std::vector<LaunchCost>& step);
absl::StatusOr<std::vector<LaunchCost>> ReadLaunchCosts(const std::string& path);

// A GPU by its bf16 dense peak, its memory bandwidth and the efficiencies the projection
// assumes (defaults: H100 SXM; products at cuBLAS's typical share of peak on these shapes,
// memory-bound kernels at a typical share of the bandwidth, our tensor-core attention at a guess to
// be replaced by the first GPU report's BM_Attention rows, and a launch's least time).
struct Gpu {
  std::string name = "H100 SXM";
  double peak_tflops = 989.4;
  double bandwidth_tbs = 3.35;
  double product_efficiency = 0.70;
  double memory_efficiency = 0.80;
  double attention_efficiency = 0.30;
  double launch_us = 2.0;
};

struct ProjectedLaunch {
  LaunchCost cost;
  double us = 0;
  std::string bound;  // "memory", "compute" or "launch"
};
struct StepProjection {
  std::vector<ProjectedLaunch> launches;
  double us = 0;
};
StepProjection ProjectStep(const std::vector<LaunchCost>& step, const Gpu& gpu);

// The parameters in matrix products (N of MFU's 6N + 6·L·C·T; tools/gpu_bench.py's count):
// all but the learned position table and an untied input embedding.
double MatmulParameters(const model::ModelConfig& config);

}  // namespace stability::cuda_traffic

#endif  // TESTS_CUDA_STEP_TRAFFIC_H_
