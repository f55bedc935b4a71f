// Checkpoints: <run>/checkpoints/step_00000100/{model.safetensors, state.json}.
//
// model.safetensors holds parameters, buffers and optimizer state; state.json the step,
// data position, detector state and config, plus the checksum of model.safetensors.
// Written into step_X.tmp/ (each file fsynced), then the folder is renamed: a crash never
// leaves a folder that looks complete. Loading verifies the checksum; a half-written or
// corrupt checkpoint is an error naming it, and FindLatestCheckpoint skips .tmp folders.
#ifndef STABILITY_TRAIN_CHECKPOINT_H_
#define STABILITY_TRAIN_CHECKPOINT_H_

#include <cmath>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "stability/base/safetensors.h"

namespace stability::train {

// The fields of state.json the trainer resumes from, type-checked.
struct CheckpointState {
  int64_t step = 0;
  int64_t optimizer_step = 0;
  int64_t data_epoch = 0, data_next = 0;
  nlohmann::json detector;  // the divergence / spike detector's own state (an object)
  double best_val_loss = NAN;  // NaN: no evaluation yet
  double wall_time_s = 0;
  int64_t world_size = 1;  // data-parallel ranks that wrote it
};

// Checks every field's presence and type; a hostile or damaged state.json is an error
// naming the field, never an exception or a crash.
absl::StatusOr<CheckpointState> ParseCheckpointState(const nlohmann::json& state);

struct Checkpoint {
  std::string path;  // the step folder
  SafetensorsFile tensors;
  nlohmann::json state;
  CheckpointState parsed;
};

// Writes checkpoint `step` and keeps only the newest `keep` checkpoints.
absl::Status WriteCheckpoint(const std::string& checkpoints_dir, int64_t step, const SafetensorsFile& tensors,
                             nlohmann::json state, int64_t keep);

// The newest complete checkpoint folder, or NotFound.
absl::StatusOr<std::string> FindLatestCheckpoint(const std::string& checkpoints_dir);

absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& step_dir);

// Writes `text` to `path` atomically (temp file, fsync, rename).
absl::Status WriteFileAtomically(const std::string& path, const std::string& text);

}  // namespace stability::train

#endif  // STABILITY_TRAIN_CHECKPOINT_H_
