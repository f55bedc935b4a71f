// TrainConfig: everything a run needs besides the model: data, batch, schedule, optimizer,
// intervals, divergence detection, output. Written to <run>/config.json as
// {"model": {...}, "train": {...}}; `stability train --config=FILE` reads the same shape,
// and every field is also a flag of `stability train` (README: "stability train").
#ifndef STABILITY_TRAIN_TRAIN_CONFIG_H_
#define STABILITY_TRAIN_TRAIN_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "stability/model/config.h"

namespace stability::train {

struct TrainConfig {
  // Data and output.
  std::string data;     // folder of train_*.bin / val_*.bin; "" = the bundled corpus (prepared on first use)
  std::string out;      // run folder; "" = runs/<size>-<variant>-lr<lr>-seed<seed>
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
  std::string precision = "fp32";  // fp32 | bf16 (GPU: bf16 matrix products, fp32 everything else)
  // auto | gemm | fused: gemm materialises the T×T probabilities (every device); fused
  // recomputes them in tiles (GPU; tensor cores in bf16). auto: fused in bf16, else gemm.
  std::string attention = "auto";
  int64_t threads = 0;  // OpenMP threads; 0 = all cores

  // Batch and length.
  int64_t steps = 300;
  int64_t batch = 8;
  int64_t seq = 0;          // 0 = the model's seq_len
  int64_t grad_accum = 1;   // micro-batches per step

  // Schedule and optimizer.
  double lr = 3e-3;
  double min_lr = 3e-4;
  int64_t warmup = 30;
  std::string schedule = "cosine";  // cosine | linear | constant
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;
  bool decay_all = false;   // weight decay on norms, biases and embeddings too
  double clip = 1.0;        // global-norm clip; 0 = off

  // Evaluation, telemetry, checkpoints.
  int64_t eval_interval = 50;    // 0 = only at the end
  int64_t eval_batches = 8;
  int64_t telemetry_interval = 1;
  int64_t checkpoint_interval = 100;  // 0 = only at the end
  int64_t keep_checkpoints = 2;       // 0 = none written: a run that cannot be resumed (benchmarks)
  // Step (from 1) whose time is broken down by kernel (GPU) or op (CPU) into
  // <out>/kernel_profile.md (Backend::StartKernelProfile); 0 = none.
  int64_t profile_step = 0;

  // Divergence: a non-finite loss or gradient norm ends the run at once; after warmup, a
  // loss above divergence_factor × the loss at initialisation for divergence_patience
  // consecutive steps ends it too. divergence_factor = 0 turns the second rule off.
  double divergence_factor = 1.0;
  int64_t divergence_patience = 10;

  // Loss-spike protection (off by default, and off in sweeps that measure divergence):
  // skip the update of a step whose loss or gradient norm is more than spike_skip_factor
  // standard deviations above the mean of the last spike_window updates (OLMo-core's
  // skip-step; it uses 6 sigmas over 128 steps). Skipped steps are counted in metrics
  // ("skipped") and the summary.
  double spike_skip_factor = 0.0;
  int64_t spike_window = 128;

  // ZeRO stage for data-parallel runs: 0 = every rank keeps all AdamW moments; 1 = each
  // rank keeps 1/ranks of them and updates that part of the parameters, which are then
  // all-gathered (bitwise the same training; optimizer memory per rank ÷ ranks).
  int64_t zero = 0;

  uint64_t seed = 1;

  absl::Status Validate() const;
  nlohmann::json ToJson() const;
};

std::vector<std::string> TrainConfigFieldNames();
// Sets the fields in `j` on top of `config`, then validates.
absl::Status ApplyTrainJson(const nlohmann::json& j, TrainConfig* config);

// A whole run's configuration: {"model": ..., "train": ...}.
struct RunConfig {
  model::ModelConfig model;
  TrainConfig train;
  nlohmann::json ToJson() const { return {{"model", model.ToJson()}, {"train", train.ToJson()}}; }
};
absl::StatusOr<RunConfig> RunConfigFromJson(const nlohmann::json& j);

}  // namespace stability::train

#endif  // STABILITY_TRAIN_TRAIN_CONFIG_H_
