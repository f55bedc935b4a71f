// The training loop: one run folder, from a RunConfig.
//
//   <out>/config.json     the RunConfig ({"model", "train"}): `--config=` reproduces the run
//   <out>/metrics.jsonl   one object per step: step (1-based count of updates), lr, loss,
//                         grad_norm, tokens_per_s, elapsed_s, every telemetry value by its
//                         fixed name (every telemetry_interval steps), val_loss and val_ppl
//                         on eval steps
//   <out>/summary.json    final/best val loss and perplexity, diverged (step, reason),
//                         steps, wall time, tokens/s, loss at initialisation
//   <out>/checkpoints/    see checkpoint.h
//
// Divergence (TrainConfig): a non-finite loss or gradient norm, or after warmup a loss
// above divergence_factor × the loss at initialisation for divergence_patience steps in a
// row, ends the run early; summary.json records when and why.
#ifndef STABILITY_TRAIN_TRAINER_H_
#define STABILITY_TRAIN_TRAINER_H_

#include <atomic>
#include <cstdio>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "stability/dist/communicator.h"
#include "stability/train/train_config.h"

namespace stability::train {

struct TrainOptions {
  // Data parallelism: every rank runs RunTraining with its communicator; each reads its own
  // slice of every batch, gradients and losses are averaged, only rank 0 writes the run
  // folder. nullptr: a single process.
  dist::Communicator* comm = nullptr;
  bool resume = false;       // continue the run in config.train.out from its latest checkpoint
  int64_t stop_after = 0;    // > 0: stop after this step with a checkpoint, as if interrupted
  FILE* progress = nullptr;  // progress line and messages (stderr in the CLI); nullptr: quiet
  const std::atomic<bool>* stop_requested = nullptr;  // set by a signal handler: checkpoint and stop
  // Called after every step with its metrics row; returning false stops the run (checkpointed).
  std::function<bool(const nlohmann::json&)> on_step;
};

// Runs (or resumes) training; returns summary.json's content. With several ranks, --batch
// is per rank (the global batch is batch × ranks), a checkpoint records the number of ranks
// and resuming needs the same number. Errors in the config, data,
// output folder or checkpoint come back before any training work.
absl::StatusOr<nlohmann::json> RunTraining(RunConfig config, const TrainOptions& options);

// The data folder used when TrainConfig::data is empty: the bundled corpus, GPT-2 tokens,
// prepared on first use into <data root>/data/gutenberg-gpt2.
std::string DefaultDataDir();

}  // namespace stability::train

#endif  // STABILITY_TRAIN_TRAINER_H_
